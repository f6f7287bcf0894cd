"""Tests of llmcore.generation: processors on fixed logits, decoding equivalences, streaming, errors, CLI.

Two kinds of model: mocks returning fixed or scripted logits (to pin the sampling logic exactly), and a tiny
random TransformerLM for equivalences that must hold for a real network (cached = uncached, batched =
one at a time, sampling reproducible from a seed).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llmcore import ConfigError, DataError, GenerationError, LLMCoreError, ModelConfig, TransformerLM
from llmcore.generation import (
    add_logit_bias,
    beam_search,
    generate,
    min_p_filter,
    no_repeat_ngram,
    openai_penalties,
    repetition_penalty,
    stream,
    suppress_eos,
    top_k_filter,
    top_p_filter,
)

INF = float("inf")


# ---------------------------------------------------------------------- mock models
class MockCache:
    def __init__(self) -> None:
        self.length = 0
        self.reorders: list[list[int]] = []

    def reorder(self, index: torch.Tensor) -> None:
        self.reorders.append(index.tolist())


class FixedLM(nn.Module):
    """Returns the same logits (V,) for every row and position."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits))
        self.calls: list[tuple[int, ...]] = []

    def forward(self, input_ids, attention_mask=None, kv_cache=None):
        self.calls.append(tuple(input_ids.shape))
        B, T = input_ids.shape
        if kv_cache is not None:
            kv_cache.length += T
        return self.logits.expand(B, T, -1).clone()

    def make_cache(self, batch_size, max_len):
        return MockCache()


class ScriptLM(nn.Module):
    """Predicts ``script[i]`` after the i-th generated position (counted from the prompt end), sharply."""

    def __init__(self, script: list[int], vocab: int, prompt_len: int) -> None:
        super().__init__()
        self.script, self.vocab, self.prompt_len = script, vocab, prompt_len

    def forward(self, input_ids, attention_mask=None, kv_cache=None):
        B, T = input_ids.shape
        past = kv_cache.length if kv_cache is not None else 0
        if kv_cache is not None:
            kv_cache.length += T
        out = torch.zeros(B, T, self.vocab)
        for t in range(T):
            step = past + t + 1 - self.prompt_len  # index of the token this position predicts
            if 0 <= step < len(self.script):
                out[:, t, self.script[step]] = 10.0
        return out

    def make_cache(self, batch_size, max_len):
        return MockCache()


class CharTok:
    """A byte-level stand-in tokenizer (ids 0..255 are UTF-8 bytes; 256 = eos)."""

    bos_id, eos_id, pad_id = None, 256, None

    def encode(self, text, add_bos=False, add_eos=False):
        return list(text.encode())

    def decode(self, ids, skip_special=True):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


# ---------------------------------------------------------------------- a tiny real model
@pytest.fixture(scope="module")
def lm() -> TransformerLM:
    torch.manual_seed(0)
    # init_std 0.1: logits far from uniform, so float noise cannot flip an argmax
    return TransformerLM(ModelConfig.from_preset("debug", vocab_size=128, init_std=0.1)).eval()


@pytest.fixture(scope="module")
def gpt2_lm() -> TransformerLM:
    torch.manual_seed(1)
    cfg = ModelConfig(vocab_size=128, max_seq_len=64, d_model=32, n_layers=2, n_heads=4, activation="gelu_tanh",
                      init_std=0.1)
    return TransformerLM(cfg).eval()


def _left_pad(rows: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (T - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


PROMPTS = [[5, 17, 99, 3, 42, 8, 77], [11, 2], [64, 65, 66, 1]]


# ====================================================================== processors (pure functions)
def test_top_k_keeps_exactly_k():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.5, 1.5]])
    out = top_k_filter(None, logits, 3)
    assert torch.isfinite(out).sum() == 3
    assert torch.isfinite(out[0, [1, 3, 5]]).all()
    assert torch.equal(out[0, [1, 3, 5]], logits[0, [1, 3, 5]])
    assert torch.isfinite(top_k_filter(None, logits, 100)).all()  # k larger than V keeps everything


def test_top_p_keeps_smallest_set_reaching_p():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = lambda p: torch.isfinite(top_p_filter(None, logits, p))[0].nonzero().flatten().tolist()  # noqa: E731
    assert kept(0.4) == [0]  # 0.5 alone reaches 0.4
    assert kept(0.75) == [0, 1]  # 0.5 < 0.75 <= 0.8
    assert kept(0.85) == [0, 1, 2]  # 0.8 < 0.85 <= 0.95
    assert kept(1.0) == [0, 1, 2, 3]
    assert kept(1e-6) == [0]  # the top token always survives


def test_min_p_scales_with_the_top_probability():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = lambda m: torch.isfinite(min_p_filter(None, logits, m))[0].nonzero().flatten().tolist()  # noqa: E731
    assert kept(0.25) == [0, 1, 2]  # threshold 0.125
    assert kept(0.5) == [0, 1]  # threshold 0.25
    assert kept(1.0) == [0]


def test_repetition_penalty_hf_semantics():
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    ids = torch.tensor([[0, 1, 0]])  # token 0 twice: still penalised once
    out = repetition_penalty(ids, logits, 2.0)
    assert torch.equal(out, torch.tensor([[1.0, -4.0, 1.0, -1.0]]))
    # left padding (first 2 positions) is not seen text
    out = repetition_penalty(torch.tensor([[2, 3, 0]]), logits, 2.0, ignore_before=torch.tensor([2]))
    assert torch.equal(out, torch.tensor([[1.0, -2.0, 1.0, -1.0]]))


def test_openai_penalties_count_generated_tokens_only():
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    ids = torch.tensor([[3, 0, 0, 2]])  # prompt [3]; generated 0 twice, 2 once
    out = openai_penalties(ids, logits, presence=0.5, frequency=0.25, prompt_len=1)
    # logit - 0.25 * count - 0.5 * (count > 0): token 0: 2 - 0.5 - 0.5; token 2: 1 - 0.25 - 0.5; 3 is prompt
    assert torch.equal(out, torch.tensor([[1.0, -2.0, 0.25, -1.0]]))
    assert torch.equal(openai_penalties(ids, logits, -1.0, 0.0, prompt_len=4), logits)  # nothing generated yet


def test_logit_bias_adds_to_named_tokens_and_refuses_ids_beyond_the_vocabulary():
    logits = torch.zeros(2, 5)
    out = add_logit_bias(torch.zeros(2, 1, dtype=torch.long), logits, {1: 3.0, 4: -100.0})
    assert out.tolist() == [[0.0, 3.0, 0.0, 0.0, -100.0]] * 2 and logits.abs().sum() == 0  # not in place
    with pytest.raises(GenerationError, match="outside the vocabulary of 5"):
        add_logit_bias(torch.zeros(1, 1, dtype=torch.long), logits[:1], {5: 1.0})


def test_penalties_and_logit_bias_steer_greedy_decoding():
    model = FixedLM([1.0, 1.0, 1.0, 1.0, 5.0, 1.0])  # 4 first; the rest tie, argmax takes the lowest id
    ids = torch.tensor([[4]])  # a token of the prompt is not penalised
    assert generate(model, ids, max_new_tokens=3, eos_token_id=[], frequency_penalty=2.0)[0, 1:].tolist() == [4, 4, 0]
    assert generate(model, ids, max_new_tokens=3, eos_token_id=[], presence_penalty=2.0)[0, 1:].tolist() == [4, 4, 4]
    out = generate(model, ids, max_new_tokens=3, eos_token_id=[], logit_bias={5: 10.0})
    assert out[0, 1:].tolist() == [5, 5, 5]
    with pytest.raises(ConfigError, match="frequency_penalty"):
        generate(model, ids, max_new_tokens=3, frequency_penalty=3.0)
    with pytest.raises(ConfigError, match="logit_bias"):
        generate(model, ids, max_new_tokens=3, logit_bias={"5": 1.0})


def test_no_repeat_ngram():
    logits = torch.zeros(2, 8)
    ids = torch.tensor([[1, 2, 1, 3, 1], [5, 6, 7, 5, 6]])
    out = no_repeat_ngram(ids, logits, 2)  # row 0: after 1 came 2 and 3; row 1: after 6 came 7
    assert torch.isinf(out[0]).nonzero().flatten().tolist() == [2, 3]
    assert torch.isinf(out[1]).nonzero().flatten().tolist() == [7]
    out = no_repeat_ngram(ids, logits, 3)  # row 1: (5, 6) -> 7 seen; row 0: (3, 1) never seen before
    assert not torch.isinf(out[0]).any()
    assert torch.isinf(out[1]).nonzero().flatten().tolist() == [7]
    assert torch.equal(no_repeat_ngram(ids[:, :1], logits, 2), logits)  # too short: nothing to ban


def test_suppress_eos_until_min_new_tokens():
    logits = torch.zeros(1, 4)
    assert torch.isinf(suppress_eos(torch.zeros(1, 5, dtype=torch.long), logits, [3], 4, 2)[0, 3])
    assert torch.equal(suppress_eos(torch.zeros(1, 6, dtype=torch.long), logits, [3], 4, 2), logits)


# ====================================================================== sampling logic through generate (mocks)
FIXED = [2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -1.5]


def _draws(**kw) -> set[int]:
    """One sampled token for each of 3000 rows."""
    out = generate(FixedLM(FIXED), torch.zeros(3000, 1, dtype=torch.long), max_new_tokens=1, do_sample=True,
                   seed=0, eos_token_id=[], **kw)
    return set(out[:, 1].tolist())


def test_sampling_respects_filters():
    assert _draws() == set(range(8))
    assert _draws(top_k=3) == {0, 1, 2}
    assert _draws(top_p=0.5) == {0, 1}  # p = softmax(FIXED): 0.37, 0.23, 0.14, ...
    assert _draws(min_p=0.5) == {0, 1}  # 0.23 / 0.37 = 0.61 >= 0.5 > 0.37
    assert _draws(top_k=5, top_p=0.7, temperature=0.5) == {0, 1}


def test_temperature_zero_and_tiny_are_greedy(lm):
    ids = torch.tensor([PROMPTS[0]])
    greedy = generate(lm, ids, max_new_tokens=10)
    assert torch.equal(generate(lm, ids, max_new_tokens=10, do_sample=True, temperature=0.0), greedy)
    assert torch.equal(generate(lm, ids, max_new_tokens=10, do_sample=True, temperature=1e-4, seed=3), greedy)


def test_seed_reproducible_and_global_rng_untouched(lm):
    ids = torch.tensor([PROMPTS[0], PROMPTS[0]])
    state = torch.get_rng_state()
    a = generate(lm, ids, max_new_tokens=12, do_sample=True, seed=7)
    b = generate(lm, ids, max_new_tokens=12, do_sample=True, seed=7)
    c = generate(lm, ids, max_new_tokens=12, do_sample=True, seed=8)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # rows draw independently


def test_repetition_penalty_and_ngram_change_greedy_output():
    model = ScriptLM([4] * 6, vocab=8, prompt_len=1)  # always prefers token 4
    ids = torch.tensor([[0]])
    assert generate(model, ids, max_new_tokens=4, eos_token_id=[])[0, 1:].tolist() == [4, 4, 4, 4]
    out = generate(model, ids, max_new_tokens=4, eos_token_id=[], no_repeat_ngram_size=1)
    assert len(set(out[0, 1:].tolist())) == 4  # unigram ban: all different
    model = FixedLM([1.0, 1.0, 1.0, 1.0, 5.0, 1.0])  # 4 first; the rest tie, argmax takes the lowest id
    out = generate(model, ids, max_new_tokens=3, eos_token_id=[], repetition_penalty=10.0)
    assert out[0, 1:].tolist() == [4, 1, 2]  # 5 / 10 < 1; the prompt's 0 counts as seen too


def test_min_new_tokens_and_eos_padding():
    model = FixedLM([0.0, 0.0, 5.0, 1.0])  # EOS (2) is the favourite, then 3
    ids = torch.zeros(2, 3, dtype=torch.long)
    out = generate(model, ids, max_new_tokens=10, eos_token_id=2)
    assert out.shape == (2, 4) and out[:, 3].tolist() == [2, 2]  # both rows end at once: decoding stops
    out = generate(model, ids, max_new_tokens=10, eos_token_id=2, min_new_tokens=3)
    assert out[0, 3:].tolist() == [3, 3, 3, 2]


def test_finished_rows_are_padded():
    model = ScriptLM([7, 2, 9, 9], vocab=10, prompt_len=1)
    ids = torch.tensor([[0], [1]])
    out = generate(model, ids, max_new_tokens=4, eos_token_id=[2, 5], pad_token_id=0)
    assert out.tolist() == [[0, 7, 2], [1, 7, 2]]  # everyone stopped after EOS: output ends there
    proc = lambda ids, logits: logits + torch.tensor([[0.0] * 10, [0.0] * 5 + [20.0] + [0.0] * 4])  # noqa: E731
    out = generate(model, ids, max_new_tokens=4, eos_token_id=[2, 5], pad_token_id=0, logits_processors=[proc])
    assert out.tolist() == [[0, 7, 2], [1, 5, 0]]  # row 1 hit the other EOS first, then pad


def test_user_processors_see_history_and_run_in_order():
    seen = []

    def record(ids, logits):
        seen.append(ids.shape[1])
        return logits

    ban_zero = lambda ids, logits: logits.index_fill(1, torch.tensor([0]), -INF)  # noqa: E731
    out = generate(FixedLM(FIXED), torch.zeros(1, 2, dtype=torch.long), max_new_tokens=3, eos_token_id=[],
                   logits_processors=[record, ban_zero])
    assert seen == [2, 3, 4]
    assert out[0, 2:].tolist() == [1, 1, 1]


# ====================================================================== equivalences on a real network
def _recorder(store):
    def rec(ids, logits):
        store.append(logits.clone())
        return logits
    return rec


@pytest.mark.parametrize("model_name", ["lm", "gpt2_lm"])
def test_cached_equals_uncached(model_name, request):
    model = request.getfixturevalue(model_name)
    ids, mask = _left_pad(PROMPTS)
    for m in (None, mask):
        la, lb = [], []
        a = generate(model, ids, m, max_new_tokens=16, logits_processors=[_recorder(la)])
        b = generate(model, ids, m, max_new_tokens=16, use_cache=False, logits_processors=[_recorder(lb)])
        assert torch.equal(a, b)
        for x, y in zip(la, lb):
            torch.testing.assert_close(x, y, atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_name", ["lm", "gpt2_lm"])
def test_left_padded_batch_equals_one_at_a_time(model_name, request):
    model = request.getfixturevalue(model_name)
    ids, mask = _left_pad(PROMPTS, pad=3)
    batched = generate(model, ids, mask, max_new_tokens=12, eos_token_id=[])
    T = ids.shape[1]
    for i, p in enumerate(PROMPTS):
        alone = generate(model, torch.tensor([p]), max_new_tokens=12, eos_token_id=[])
        assert batched[i, T:].tolist() == alone[0, len(p):].tolist()
    # the same holds for beam search
    beams = generate(model, ids, mask, max_new_tokens=8, num_beams=3, eos_token_id=[])
    for i, p in enumerate(PROMPTS):
        alone = generate(model, torch.tensor([p]), max_new_tokens=8, num_beams=3, eos_token_id=[])
        assert beams[i, T:].tolist() == alone[0, len(p):].tolist()


def test_beam_search_with_one_beam_is_greedy(lm):
    ids, mask = _left_pad(PROMPTS)
    greedy = generate(lm, ids, mask, max_new_tokens=10, eos_token_id=[])
    assert torch.equal(beam_search(lm, ids, mask, num_beams=1, max_new_tokens=10, eos_token_id=[]), greedy)
    assert torch.equal(generate(lm, ids, mask, num_beams=1, max_new_tokens=10, eos_token_id=[]), greedy)


def test_model_generate_method_and_eval_mode(lm):
    lm.train()
    out = lm.generate(torch.tensor([PROMPTS[1]]), max_new_tokens=5, do_sample=True, top_p=0.9, seed=0)
    assert out.shape == (1, 7) and lm.training  # mode restored
    lm.eval()


def test_overridden_forward_is_respected(lm):
    """The last-position LM-head shortcut must not bypass a subclass's own forward."""

    class Biased(TransformerLM):
        def forward(self, input_ids, attention_mask=None, kv_cache=None, position_ids=None):
            logits = super().forward(input_ids, attention_mask, kv_cache, position_ids)
            return logits.index_add(2, torch.tensor([9]), torch.full(logits.shape[:2] + (1,), 100.0))

    model = Biased(lm.config).eval()
    model.load_state_dict(lm.state_dict())
    out = generate(model, torch.tensor([PROMPTS[1]]), max_new_tokens=4, eos_token_id=[])
    assert out[0, 2:].tolist() == [9, 9, 9, 9]


def test_sliding_window_past_the_context(lm):
    ids = torch.tensor([PROMPTS[0]])
    with pytest.raises(GenerationError, match="max_seq_len=64"):
        generate(lm, ids, max_new_tokens=60)
    a = generate(lm, ids, max_new_tokens=70, sliding_window=True, eos_token_id=[])
    b = generate(lm, ids, max_new_tokens=70, sliding_window=True, use_cache=False, eos_token_id=[])
    assert a.shape == (1, 77) and torch.equal(a, b)
    assert torch.equal(a[:, :64], generate(lm, ids, max_new_tokens=57, eos_token_id=[]))


# ====================================================================== stop strings and streaming
def test_stop_string_spanning_tokens():
    text = "hello, world! more"
    model = ScriptLM(list(text.encode()), vocab=257, prompt_len=1)
    ids = torch.tensor([[ord(">")]])
    out = generate(model, ids, max_new_tokens=len(text), tokenizer=CharTok(), stop_strings=["o, w", "zzz"],
                   pad_token_id=0)
    assert bytes(out[0, 1:].tolist()).decode() == "hello, w"  # kept through the token completing the string
    out = generate(model, ids, max_new_tokens=len(text), tokenizer=CharTok(), stop_strings="ld!", num_beams=2)
    assert bytes(out[0, 1:].tolist()).decode() == "hello, world!"
    with pytest.raises(GenerationError, match="tokenizer"):
        generate(model, ids, stop_strings=["x"])


def test_stream_ids_match_generate(lm):
    ids, mask = _left_pad(PROMPTS)
    steps = list(stream(lm, ids, mask, max_new_tokens=9, do_sample=True, seed=4))
    full = generate(lm, ids, mask, max_new_tokens=9, do_sample=True, seed=4)
    assert torch.equal(torch.stack(steps, dim=1), full[:, ids.shape[1]:])


def test_stream_text_never_splits_characters():
    text = "héllo 世界 ok"
    model = ScriptLM(list(text.encode()) + [256], vocab=257, prompt_len=1)
    deltas = list(stream(model, torch.tensor([[ord("a")]]), max_new_tokens=40, tokenizer=CharTok()))
    assert all(isinstance(d, str) and "\ufffd" not in d for d in deltas)
    assert "".join(deltas) == text
    assert len(deltas) == len(text.encode()) + 1  # one per step, the EOS step included
    # batched: one list of deltas per step; the finished row yields ""
    model = ScriptLM(list(b"ab") + [256] + list(b"cd"), vocab=257, prompt_len=1)
    rows = list(stream(model, torch.tensor([[1], [2]]), max_new_tokens=5, tokenizer=CharTok()))
    assert rows == [["a", "a"], ["b", "b"], ["", ""]]


def test_stream_flushes_an_incomplete_character():
    model = ScriptLM([0xE4, 0xB8], vocab=257, prompt_len=1)  # the first two bytes of a 3-byte character
    deltas = list(stream(model, torch.tensor([[1]]), max_new_tokens=2, tokenizer=CharTok()))
    assert deltas[:2] == ["", ""] and "".join(deltas) == CharTok().decode([0xE4, 0xB8])


# ====================================================================== protocol: other model kinds
class RecurrentLM(nn.Module):
    """An LSTM-like model: no make_cache, so every step recomputes the sequence."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.rnn, self.head = nn.Embedding(16, 8), nn.GRU(8, 8, batch_first=True), nn.Linear(8, 16)

    def forward(self, input_ids, attention_mask=None, kv_cache=None):
        return self.head(self.rnn(self.emb(input_ids))[0])


class EncDecStub(nn.Module):
    """A decoder step that needs per-row encoder ``memory`` (B, S, D) on every call."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 12)
        torch.nn.init.normal_(self.head.weight, std=2.0)

    def forward(self, input_ids, attention_mask=None, kv_cache=None, memory=None, memory_mask=None):
        assert memory is not None and memory.shape[0] == input_ids.shape[0] == memory_mask.shape[0]
        if kv_cache is not None:
            kv_cache.length += input_ids.shape[1]
        ctx = (memory * memory_mask[..., None]).sum(1, keepdim=True)  # (B, 1, 4)
        return self.head(ctx + input_ids[..., None].float() * 0.1)  # (B, T, 12)

    def make_cache(self, batch_size, max_len):
        return MockCache()


def test_model_without_cache_and_encoder_decoder_kwargs():
    out = generate(RecurrentLM(), torch.tensor([[1, 2, 3]]), max_new_tokens=5)
    assert out.shape == (1, 8)
    model = EncDecStub()
    memory, memory_mask = torch.randn(2, 5, 4), torch.ones(2, 5)
    start = torch.zeros(2, 1, dtype=torch.long)
    kw = dict(memory=memory, memory_mask=memory_mask)
    greedy = generate(model, start, max_new_tokens=4, model_kwargs=kw, eos_token_id=[])
    assert greedy.shape == (2, 5)
    beams = generate(model, start, max_new_tokens=4, num_beams=3, num_return_sequences=2, model_kwargs=kw,
                     eos_token_id=[])
    assert beams.shape == (4, 5)
    samples = generate(model, start, max_new_tokens=4, do_sample=True, num_return_sequences=3, model_kwargs=kw)
    assert samples.shape == (6, 5)


def test_beam_search_reorders_the_cache():
    model = FixedLM(FIXED)
    generate(model, torch.zeros(2, 2, dtype=torch.long), max_new_tokens=3, num_beams=2, eos_token_id=[])
    assert model.calls[0] == (4, 2) and model.calls[1:] == [(4, 1), (4, 1)]  # prefill, then one token per step


# ====================================================================== bad input
@pytest.mark.parametrize("kw, err, match", [
    (dict(top_p=0.0), ConfigError, "top_p"),
    (dict(top_p=1.5), ConfigError, r"in \(0, 1\]"),
    (dict(temperature=-0.1), ConfigError, "temperature"),
    (dict(num_beams=4, do_sample=True), GenerationError, "num_beams=4"),
    (dict(top_k=-1), ConfigError, "top_k"),
    (dict(early_stopping="sometimes"), ConfigError, "early_stopping"),
    (dict(num_beams=2, num_return_sequences=3), ConfigError, "num_return_sequences"),
    (dict(max_new_token=5), ConfigError, "Unknown GenerationConfig options"),
])
def test_bad_options(lm, kw, err, match):
    with pytest.raises(err, match=match):
        generate(lm, torch.tensor([[1, 2]]), **kw)
    assert issubclass(err, LLMCoreError)


def test_bad_inputs(lm):
    with pytest.raises(GenerationError, match=r"Prompt length 60 \+ max_new_tokens 10 = 70 exceeds .*max_seq_len=64"):
        generate(lm, torch.ones(1, 60, dtype=torch.long), max_new_tokens=10)
    with pytest.raises(GenerationError, match="empty"):
        generate(lm, torch.zeros(1, 0, dtype=torch.long), max_new_tokens=3)
    out = generate(lm, torch.zeros(2, 0, dtype=torch.long), max_new_tokens=3, bos_token_id=1)
    assert out.shape == (2, 4) and out[:, 0].tolist() == [1, 1]
    with pytest.raises(GenerationError, match="pad on the left"):
        generate(lm, torch.ones(2, 3, dtype=torch.long), torch.tensor([[1, 1, 1], [1, 1, 0]]))
    with pytest.raises(GenerationError, match="2-D"):
        generate(lm, torch.ones(3, dtype=torch.long))
    with pytest.raises(GenerationError, match="beam search"):
        next(stream(lm, torch.ones(1, 3, dtype=torch.long), num_beams=2))


@pytest.mark.parametrize("bad", [128, -1])
@pytest.mark.parametrize("entry", ["generate", "stream", "beam_search"])
def test_out_of_vocab_prompt_raises_before_decoding(lm, entry, bad):
    """Models do not check ids in forward; generation checks the prompt once per call, before any model call."""
    calls = []
    hook = lm.register_forward_pre_hook(lambda module, args: calls.append(1))
    ids, mask = _left_pad([[5, 17, bad], [11, 2]])
    try:
        with pytest.raises(DataError, match=rf"Token id {bad} is outside the vocabulary \[0, 128\) in the prompt"):
            if entry == "generate":
                generate(lm, ids, mask, max_new_tokens=3)
            elif entry == "stream":
                next(stream(lm, ids, mask, max_new_tokens=3))
            else:
                beam_search(lm, ids, mask, num_beams=2, max_new_tokens=3)
    finally:
        hook.remove()
    assert calls == []


def test_runner_asks_for_the_last_position_only_when_the_model_can():
    """A model whose forward takes ``logits_to_keep`` gets 1 on every call; the tokens are those of full logits."""

    class KeepsLast(FixedLM):
        def forward(self, input_ids, attention_mask=None, kv_cache=None, logits_to_keep=0):
            self.kept = getattr(self, "kept", []) + [logits_to_keep]
            logits = super().forward(input_ids, attention_mask, kv_cache)
            return logits[:, -logits_to_keep:] if logits_to_keep else logits

    scores = [0.0, 3.0, 1.0, 2.0]
    keeps, plain = KeepsLast(scores), FixedLM(scores)
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(generate(keeps, ids, max_new_tokens=3, use_cache=False),
                       generate(plain, ids, max_new_tokens=3, use_cache=False))
    assert keeps.kept == [1, 1, 1]


# ====================================================================== command line
def test_cli_generate(tmp_path, capsys, monkeypatch):
    from llmcore.cli import generate as gen_cli
    from llmcore.cli import main

    torch.manual_seed(0)
    model = TransformerLM(ModelConfig.from_preset("char-small", vocab_size=259, init_std=0.1))
    try:
        from llmcore.tokenizer import ByteTokenizer

        model.save_pretrained(tmp_path, tokenizer=ByteTokenizer())
    except ImportError:  # the tokenizer package is not there: a stand-in
        model.save_pretrained(tmp_path)
        monkeypatch.setattr(gen_cli, "_load_tokenizer", lambda d: CharTok())
    args = ["generate", "--model", str(tmp_path), "--prompt", "Hi", "--max-new-tokens", "8"]
    assert main(args) == 0
    plain = capsys.readouterr().out
    assert plain.startswith("Hi")
    assert main(args + ["--stream"]) == 0
    assert capsys.readouterr().out == plain  # streaming prints the same text
    assert main(args + ["--top-k", "5", "--seed", "1"]) == 0
    assert main(args + ["--num-beams", "3"]) == 0
    capsys.readouterr()
    assert main(args + ["--top-p", "2"]) == 2
    assert "--top-p 2.0 is invalid" in capsys.readouterr().err  # the flag, not the Python field
