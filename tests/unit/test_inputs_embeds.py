"""Embeddings in, anywhere ids go in: ``inputs_embeds`` in TransformerLM.forward and in generation.

Equivalences on tiny random models (RoPE and learned absolute positions):

* ``inputs_embeds = get_input_embeddings()(ids)`` gives bitwise the logits of ``ids`` and the same greedy,
  beam and seeded sampled tokens;
* with a prefix of random embeddings, cached decoding equals recomputing the full forward each step;
* a left-padded batch of prefixes and texts of different lengths equals each row decoded alone;
* streaming yields the tokens generate returns;

and the bad inputs (both / neither, wrong shape or dtype, a prompt longer than the context, a model that takes
no embeddings) each raise one LLMCoreError naming the fix.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llmcore import ConfigError, DataError, GenerationError, LLMCoreError, ModelConfig, TransformerLM
from llmcore.generation import beam_search, generate, stream
from llmcore.models.lstm import LSTMLM

V, D, CTX = 128, 32, 64
NO_EOS = dict(eos_token_id=[])  # every row runs to max_new_tokens, so outputs have equal, known widths


def _build(pos: str) -> TransformerLM:
    torch.manual_seed(0)
    # init_std 0.1: logits far from uniform, so float noise between two equal computations cannot flip an argmax
    if pos == "rope":  # Llama layout: RoPE, RMSNorm, SwiGLU, GQA, untied head
        cfg = ModelConfig.from_preset("debug", vocab_size=V, init_std=0.1)
    else:  # GPT-2 layout: learned absolute positions added to the embeddings, LayerNorm, tied head
        cfg = ModelConfig(vocab_size=V, max_seq_len=CTX, d_model=D, n_layers=2, n_heads=4, activation="gelu_tanh",
                          pos_encoding="learned", norm="layernorm", bias=True, init_std=0.1)
    return TransformerLM(cfg).eval()


MODELS = {pos: _build(pos) for pos in ("rope", "learned")}


@pytest.fixture(params=["rope", "learned"])
def lm(request) -> TransformerLM:
    return MODELS[request.param]


def _embed(model: TransformerLM, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.get_input_embeddings()(ids)


def _reference_greedy(model: TransformerLM, prefix: torch.Tensor | None, ids: torch.Tensor,
                      n: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Greedy decoding the slow way: the full forward of [prefix ; embed(ids so far)] at every step, no cache."""
    new, logits = [], []
    seq = ids
    with torch.no_grad():
        for _ in range(n):
            x = _embed(model, seq) if prefix is None else torch.cat([prefix, _embed(model, seq)], dim=1)
            last = model(inputs_embeds=x)[:, -1]  # (B, V)
            tok = last.argmax(-1)
            logits.append(last)
            new.append(tok)
            seq = torch.cat([seq, tok[:, None]], dim=1)
    return torch.stack(new, dim=1), logits


class Recorder:
    """A logits processor that keeps a copy of every step's logits and changes nothing."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        self.seen.append(logits.clone())
        return logits


# ====================================================================== (a) embed(ids) == ids
def test_forward_embeds_of_ids_bitwise(lm):
    ids = torch.randint(0, V, (3, 11))
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, :4] = 0  # one left-padded row: positions come from the mask on both paths
    with torch.no_grad():
        for kw in ({}, {"attention_mask": mask}):
            ref = lm(ids, **kw)
            out = lm(inputs_embeds=_embed(lm, ids), **kw)
            assert torch.equal(out, ref)
            assert torch.equal(lm.forward_hidden(inputs_embeds=_embed(lm, ids), **kw), lm.forward_hidden(ids, **kw))
        # positions are still added to the vectors: the same embeddings shifted one place give other logits
        shifted = lm(inputs_embeds=_embed(lm, ids), position_ids=torch.arange(1, 12).expand(3, 11))
        assert not torch.allclose(shifted, lm(ids))


def test_forward_embeds_prefill_then_ids_matches_full(lm):
    """A cache prefilled from embeddings, then fed ids, gives the logits of one forward over all the ids."""
    ids = torch.randint(0, V, (2, 9))
    cache = lm.make_cache(2)
    with torch.no_grad():
        first = lm(inputs_embeds=_embed(lm, ids[:, :6]), kv_cache=cache)
        rest = lm(ids[:, 6:], kv_cache=cache)
        full = lm(ids)
    torch.testing.assert_close(torch.cat([first, rest], dim=1), full, atol=1e-5, rtol=1e-5)


def test_get_and_set_input_embeddings(lm):
    assert lm.get_input_embeddings() is lm.tok_embeddings
    model = _build("learned")  # tied head: set_input_embeddings must re-tie it
    new = nn.Embedding(V, D)
    model.set_input_embeddings(new)
    assert model.get_input_embeddings() is new and model.lm_head.weight is new.weight
    ids = torch.randint(0, V, (1, 5))
    with torch.no_grad():
        assert torch.equal(model(ids), model(inputs_embeds=new(ids)))
    with pytest.raises(ConfigError, match=r"nn\.Embedding\(128, 32\).*new ModelConfig"):
        model.set_input_embeddings(nn.Embedding(V, D + 1))


DECODING = {
    "greedy": dict(),
    "beam": dict(num_beams=3, num_return_sequences=2),
    "sample": dict(do_sample=True, temperature=0.9, top_k=20, top_p=0.9, seed=3, num_return_sequences=2),
}


@pytest.mark.parametrize("mode", list(DECODING))
def test_generate_embeds_of_ids_same_tokens(lm, mode):
    ids = torch.randint(0, V, (2, 7))
    opts = dict(max_new_tokens=8, **NO_EOS, **DECODING[mode])
    ref = generate(lm, ids, **opts)  # (B·R, 7 + 8)
    out = generate(lm, inputs_embeds=_embed(lm, ids), **opts)
    assert out.shape == (ref.shape[0], 8)  # embeddings alone: only the new tokens come back
    assert torch.equal(out, ref[:, 7:])
    assert torch.equal(lm.generate(inputs_embeds=_embed(lm, ids), **opts), out)  # the model method too
    # the embeddings decide the continuation: another prompt's embeddings give other tokens
    other = generate(lm, inputs_embeds=_embed(lm, (ids + 1) % V), **opts)
    assert not torch.equal(other, out)


def test_generate_embeds_of_padded_ids_with_mask(lm):
    ids = torch.tensor([[5, 17, 99, 3, 42], [0, 0, 0, 11, 2]])
    mask = torch.tensor([[1] * 5, [0, 0, 0, 1, 1]])
    for opts in ({}, {"num_beams": 2}):
        ref = generate(lm, ids, mask, max_new_tokens=6, **NO_EOS, **opts)
        out = generate(lm, attention_mask=mask, inputs_embeds=_embed(lm, ids), max_new_tokens=6, **NO_EOS, **opts)
        assert torch.equal(out, ref[:, 5:])


# ====================================================================== (b) prefix: cached == uncached
@pytest.mark.parametrize("with_ids", [True, False])
def test_prefix_cached_equals_recompute(lm, with_ids):
    torch.manual_seed(1)
    prefix = torch.randn(2, 5, D)  # e.g. projected image features
    ids = torch.randint(0, V, (2, 4)) if with_ids else torch.zeros(2, 0, dtype=torch.long)
    ref_tokens, ref_logits = _reference_greedy(lm, prefix, ids, 10)
    rec = Recorder()
    out = generate(lm, ids if with_ids else None, inputs_embeds=prefix, max_new_tokens=10, logits_processors=[rec],
                   **NO_EOS)
    assert torch.equal(out, torch.cat([ids, ref_tokens], dim=1))  # the ids given, then the new tokens
    torch.testing.assert_close(torch.stack(rec.seen), torch.stack(ref_logits), atol=1e-5, rtol=1e-5)
    # generation without a cache re-feeds the prefix every step: the same tokens again
    assert torch.equal(generate(lm, ids if with_ids else None, inputs_embeds=prefix, max_new_tokens=10,
                                use_cache=False, **NO_EOS), out)
    # the prefix is really read: without it the continuation differs
    if with_ids:
        assert not torch.equal(generate(lm, ids, max_new_tokens=10, **NO_EOS), out)


def test_prefix_beam_cached_equals_uncached(lm):
    torch.manual_seed(2)
    prefix, ids = torch.randn(2, 3, D), torch.randint(0, V, (2, 3))
    opts = dict(max_new_tokens=7, num_beams=3, num_return_sequences=3, **NO_EOS)
    cached, s1 = beam_search(lm, ids, inputs_embeds=prefix, return_scores=True, **opts)
    uncached, s2 = beam_search(lm, ids, inputs_embeds=prefix, return_scores=True, use_cache=False, **opts)
    assert torch.equal(cached, uncached)
    torch.testing.assert_close(s1, s2, atol=1e-5, rtol=1e-5)
    assert torch.equal(cached[:, :3], ids.repeat_interleave(3, dim=0))


def test_prefix_sliding_window_past_context():
    """Generation may run past the context with sliding_window: the prefix then slides out like any token."""
    lm = MODELS["rope"]
    torch.manual_seed(3)
    prefix, ids = torch.randn(1, 10, D), torch.randint(0, V, (1, 4))
    out = generate(lm, ids, inputs_embeds=prefix, max_new_tokens=60, sliding_window=True, **NO_EOS)
    assert out.shape == (1, 64)
    # the first steps, inside the context, are those of plain cached decoding
    short = generate(lm, ids, inputs_embeds=prefix, max_new_tokens=20, **NO_EOS)
    assert torch.equal(out[:, :24], short)


# ====================================================================== (c) batch == each row alone
ROWS = [(2, 5), (4, 1), (0, 3), (1, 2)]  # (prefix length, text length) per row: every mix of short and long


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A left-padded batch: prefix (B, 4, D), ids (B, 5), mask (B, 9) = [prefix part | ids part], and the rows."""
    g = torch.Generator().manual_seed(seed)
    P, T = max(p for p, _ in ROWS), max(t for _, t in ROWS)
    # padding holds large garbage (not zeros): it changes everything if the mask does not hide it
    prefix = 50 * torch.randn(len(ROWS), P, D, generator=g)
    ids = torch.randint(0, V, (len(ROWS), T), generator=g)
    mask = torch.zeros(len(ROWS), P + T, dtype=torch.long)
    alone = []
    for i, (p, t) in enumerate(ROWS):
        prefix[i, P - p:] = torch.randn(p, D, generator=g)
        mask[i, P - p:P] = 1
        mask[i, P + T - t:] = 1
        alone.append((prefix[i:i + 1, P - p:], ids[i:i + 1, T - t:]))
    return prefix, ids, mask, alone


def test_forward_mixed_prefix_batch_equals_alone(lm):
    prefix, ids, mask, alone = _batch(0)
    P, T = prefix.shape[1], ids.shape[1]
    with torch.no_grad():
        batched = lm(inputs_embeds=torch.cat([prefix, _embed(lm, ids)], dim=1), attention_mask=mask)
        for i, (p_i, ids_i) in enumerate(alone):
            solo = lm(inputs_embeds=torch.cat([p_i, _embed(lm, ids_i)], dim=1))
            real = mask[i].bool()
            torch.testing.assert_close(batched[i, real], solo[0], atol=1e-5, rtol=1e-5)
    assert mask.shape == (len(ROWS), P + T)


# the processors see the ids only: the prefix must not count as padding (or as text) for them
PENALTIES = dict(repetition_penalty=3.0, no_repeat_ngram_size=1, min_new_tokens=2, eos_token_id=[7])


@pytest.mark.parametrize("opts", [dict(**NO_EOS), dict(use_cache=False, **NO_EOS), dict(num_beams=3, **NO_EOS),
                                  PENALTIES], ids=["cached", "uncached", "beam", "processors"])
def test_generate_mixed_prefix_batch_equals_alone(lm, opts):
    prefix, ids, mask, alone = _batch(1)
    T = ids.shape[1]
    out = generate(lm, ids, mask, inputs_embeds=prefix, max_new_tokens=8, pad_token_id=0, **opts)
    for i, (p_i, ids_i) in enumerate(alone):
        emb = p_i if p_i.shape[1] else None  # a row without a prefix is decoded as plain ids
        solo = generate(lm, ids_i, inputs_embeds=emb, max_new_tokens=8, pad_token_id=0, **opts)
        n = solo.shape[1] - ids_i.shape[1]  # a row may stop at EOS early (the processors case)
        assert torch.equal(out[i, T:T + n], solo[0, ids_i.shape[1]:]), f"row {i} {ROWS[i]}"
        assert (out[i, T + n:] == 0).all()


def test_generate_embeds_only_batch_equals_alone(lm):
    """Whole prompts as embeddings of different lengths, left-padded: each row as if alone."""
    torch.manual_seed(4)
    lens = [6, 2, 4]
    x = 50 * torch.randn(3, 6, D)
    mask = torch.zeros(3, 6, dtype=torch.long)
    for i, n in enumerate(lens):
        x[i, 6 - n:] = torch.randn(n, D)
        mask[i, 6 - n:] = 1
    out = generate(lm, attention_mask=mask, inputs_embeds=x, max_new_tokens=6, **NO_EOS)
    for i, n in enumerate(lens):
        assert torch.equal(out[i], generate(lm, inputs_embeds=x[i:i + 1, 6 - n:], max_new_tokens=6, **NO_EOS)[0])


# ====================================================================== (d) streaming
class WordTok:
    """Sentencepiece-like stand-in: id i is the word " w{i}", and a decoded text drops its leading space.

    So a continuation keeps its first space only when decoded after the prompt's last ids, which tells
    whether streaming found each row's real ids behind its prefix.
    """

    bos_id = eos_id = pad_id = None

    def decode(self, ids, skip_special=True):
        return "".join(f" w{i}" for i in ids).lstrip(" ")


def test_stream_with_embeddings_matches_generate(lm):
    prefix, ids, mask, _ = _batch(2)
    T = ids.shape[1]
    opts = dict(max_new_tokens=7, **NO_EOS)
    full = generate(lm, ids, mask, inputs_embeds=prefix, **opts)
    steps = list(stream(lm, ids, mask, inputs_embeds=prefix, **opts))
    assert torch.equal(torch.stack(steps, dim=1), full[:, T:])
    # embeddings only, seeded sampling
    sampled = dict(opts, do_sample=True, top_p=0.95, seed=5)
    x = torch.cat([prefix, _embed(lm, ids)], dim=1)[2:3, -6:]  # a row with no padding
    ref = generate(lm, inputs_embeds=x, **sampled)
    assert torch.equal(torch.stack(list(stream(lm, inputs_embeds=x, **sampled)), dim=1), ref)
    # text deltas (a tokenizer, a mask over prefix + ids) join to each row's continuation, as it reads after
    # the row's real prompt ids (with its leading space)
    tok = WordTok()
    deltas = list(stream(lm, ids, mask, inputs_embeds=prefix, tokenizer=tok, **opts))
    texts = ["".join(step[i] for step in deltas) for i in range(len(ROWS))]
    assert texts == ["".join(f" w{t}" for t in row) for row in full[:, T:].tolist()]
    # no prompt ids at all: the continuation is decoded on its own
    text = "".join(stream(lm, inputs_embeds=x, tokenizer=tok, **sampled))
    assert text == tok.decode(ref[0].tolist())


# ====================================================================== (e) errors
def test_forward_errors(lm):
    ids = torch.randint(0, V, (2, 4))
    with pytest.raises(DataError, match="exactly one of input_ids.*got both.*torch.cat"):
        lm(ids, inputs_embeds=_embed(lm, ids))
    with pytest.raises(DataError, match="exactly one of input_ids.*got neither"):
        lm()
    with pytest.raises(DataError, match=r"shape \(batch, seq_len, 32\).*got \(4, 32\).*x\[None\]"):
        lm(inputs_embeds=torch.randn(4, D))
    with pytest.raises(DataError, match=r"shape \(batch, seq_len, 32\).*got \(2, 4, 16\).*nn\.Linear"):
        lm(inputs_embeds=torch.randn(2, 4, 16))
    with pytest.raises(DataError, match=r"dtype torch.float64.*\.to\(torch.float32\)"):
        lm(inputs_embeds=torch.randn(2, 4, D, dtype=torch.float64))
    with pytest.raises(DataError, match="dtype torch.int64.*token ids go in input_ids"):
        lm(inputs_embeds=torch.zeros(2, 4, D, dtype=torch.long))
    with pytest.raises(DataError, match="length 65 exceeds max_seq_len=64.*shorten"):
        lm(inputs_embeds=torch.randn(1, CTX + 1, D))
    cache = lm.make_cache(1)
    with torch.no_grad():
        lm(inputs_embeds=torch.randn(1, 60, D), kv_cache=cache)
    with pytest.raises(DataError, match=r"length 65 \(60 cached \+ 5 new\) exceeds max_seq_len=64"):
        lm(inputs_embeds=torch.randn(1, 5, D), kv_cache=cache)


def _raises(exc: type[LLMCoreError], match: str, *args, **kwargs) -> None:
    with pytest.raises(exc, match=match) as info:
        generate(*args, **kwargs)
    assert isinstance(info.value, LLMCoreError) and "\n" not in str(info.value)  # one line for the CLI


def test_generate_errors(lm):
    ids = torch.randint(0, V, (2, 4))
    prefix = torch.randn(2, 3, D)
    _raises(GenerationError, "pass input_ids .* inputs_embeds", lm, None)
    _raises(DataError, r"\(batch, seq_len, 32\)", lm, ids, inputs_embeds=torch.randn(2, 3, 8))
    _raises(DataError, r"\(batch, seq_len, 32\)", lm, ids, inputs_embeds=torch.randn(3, D))
    _raises(DataError, r"float64.*\.to\(torch.float32\)", lm, ids, inputs_embeds=prefix.double())
    _raises(GenerationError, "3 rows but input_ids has 2.*expand", lm, ids, inputs_embeds=torch.randn(3, 3, D))
    # the context counts the prefix; a prompt with a prefix must fit it even with a sliding window
    _raises(GenerationError, r"Prompt length 64 \(60 prefix embeddings \+ 4 ids\) \+ max_new_tokens 1 = 65 .*"
            "lower max_new_tokens to at most 0", lm, ids, inputs_embeds=torch.randn(2, 60, D), max_new_tokens=1)
    _raises(GenerationError, r"Prompt length 65 \(61 prefix embeddings \+ 4 ids\) exceeds .*max_seq_len=64.*"
            "shorten the prefix", lm, ids, inputs_embeds=torch.randn(2, 61, D), sliding_window=True)
    _raises(GenerationError, r"Prompt length 70 \(70 prefix embeddings \+ 0 ids\)", lm,
            inputs_embeds=torch.randn(1, 70, D))
    # masks: they cover the whole prompt, each part left-padded, a real id last
    _raises(GenerationError, r"\(2, 4\).*3 prefix embeddings \+ 4 ids: \(2, 7\).*whole prompt", lm, ids,
            torch.ones(2, 4), inputs_embeds=prefix)
    bad = torch.ones(2, 7, dtype=torch.long)
    bad[1, 2] = 0  # a hole at the end of the prefix: right padding inside it
    _raises(GenerationError, r"rows \[1\] .*left-pad each part", lm, ids, bad, inputs_embeds=prefix)
    bad = torch.ones(2, 7, dtype=torch.long)
    bad[0, 3:] = 0  # row 0: prefix only, no id
    _raises(GenerationError, r"rows \[0\] have no real token id after their prefix.*whole prompt as inputs_embeds",
            lm, ids, bad, inputs_embeds=prefix)
    with pytest.raises(GenerationError, match="does not support beam search"):
        next(stream(lm, ids, inputs_embeds=prefix, num_beams=2))


def test_model_without_embeddings_input():
    lstm = LSTMLM(ModelConfig(vocab_size=64, max_seq_len=32, d_model=32, n_layers=1, n_heads=4)).eval()
    ids = torch.randint(0, 64, (1, 3))
    assert generate(lstm, ids, max_new_tokens=2, **NO_EOS).shape == (1, 5)  # ids still work
    for fn in (generate, beam_search):
        with pytest.raises(GenerationError, match="LSTMLM does not take inputs_embeds.*pass token ids as input_ids"):
            fn(lstm, ids, inputs_embeds=torch.randn(1, 2, 32), max_new_tokens=2)
    with pytest.raises(GenerationError, match="does not take inputs_embeds"):
        next(stream(lstm, inputs_embeds=torch.randn(1, 2, 32)))
