"""Generation on a user's path (issue 15): past the context, bounded buffers, the sampling rule, ``--stop``
escapes and the text-in / text-out helper.

Equivalences are against the obvious reference written out here: a nanoGPT-style loop that crops the
context to the last ``max_seq_len`` tokens and recomputes every step, and encode → generate → decode.
"""

from __future__ import annotations

import time
import warnings

import pytest
import torch
from torch import nn

import llmcore
from llmcore import ConfigError, DataError, GenerationError, ModelConfig, TransformerLM
from llmcore.cli import main
from llmcore.generation import beam_search, generate
from llmcore.generation import config as gen_config
from llmcore.generation.runner import INITIAL_ROOM
from llmcore.tokenizer import ByteTokenizer

CTX = 16  # the tiny model's context: every test below runs past it


@pytest.fixture
def fresh_warning(monkeypatch):
    """The once-per-process warning, re-armed for one test (and restored afterwards)."""
    monkeypatch.setattr(gen_config, "_warned_unused_sampling", False)


@pytest.fixture(scope="module")
def small() -> TransformerLM:
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("debug", vocab_size=259, max_seq_len=CTX, init_std=0.1)
    return TransformerLM(cfg).eval()


@pytest.fixture(scope="module")
def model_dir(small, tmp_path_factory):
    d = tmp_path_factory.mktemp("gen_model")
    small.save_pretrained(d, tokenizer=ByteTokenizer())
    return d


def cropped_greedy(model: nn.Module, ids: list[int], n: int, eos: int | None = None) -> list[int]:
    """nanoGPT's loop: feed the last max_seq_len tokens, no cache, take the argmax; the new ids."""
    seq = list(ids)
    with torch.no_grad():
        for _ in range(n):
            window = torch.tensor([seq[-model.config.max_seq_len:]])
            tok = int(model(window)[0, -1].argmax())
            seq.append(tok)
            if tok == eos:
                break
    return seq[len(ids):]


PROMPT = "ROMEO:"


# ====================================================================== past the context
def test_sliding_window_equals_manual_crop_token_for_token(small):
    ids = ByteTokenizer().encode(PROMPT)
    n = INITIAL_ROOM + 44  # past the context and past the first buffer, so the buffer has grown once
    out = generate(small, torch.tensor([ids]), max_new_tokens=n, sliding_window=True, eos_token_id=[])
    assert out[0, len(ids):].tolist() == cropped_greedy(small, ids, n)
    with pytest.raises(GenerationError, match=f"max_seq_len={CTX}.*sliding_window=True"):
        generate(small, torch.tensor([ids]), max_new_tokens=CTX)  # Python keeps the explicit error


def test_cli_slides_past_the_context_with_a_one_line_note(model_dir, small, capsys):
    n = 40
    args = ["generate", "--model", str(model_dir), "--prompt", PROMPT, "--max-new-tokens", str(n)]
    assert main(args) == 0
    captured = capsys.readouterr()
    tok = ByteTokenizer()
    expected = PROMPT + tok.decode(cropped_greedy(small, tok.encode(PROMPT), n, eos=tok.eos_id)) + "\n"
    assert captured.out == expected
    note = captured.err.strip().splitlines()
    assert len(note) == 1 and note[0].startswith("llmcore generate: note:")
    assert f"max_seq_len={CTX}" in note[0] and "--no-sliding-window" in note[0]
    assert main(args + ["--stream"]) == 0
    assert capsys.readouterr().out == expected  # streaming prints the same text
    assert main(["generate", "--model", str(model_dir), "--prompt", "Hi", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().err == ""  # no note when everything fits


@pytest.mark.parametrize("stream_flag", [[], ["--stream"]])
def test_no_sliding_window_fails_before_printing(model_dir, capsys, stream_flag):
    args = ["generate", "--model", str(model_dir), "--prompt", PROMPT, "--max-new-tokens", "40",
            "--no-sliding-window", *stream_flag]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert f"--max-new-tokens {CTX - len(PROMPT)} or less" in captured.err


def test_stream_prints_nothing_before_an_error_raised_by_the_first_step(model_dir, capsys, monkeypatch):
    """An out-of-vocabulary prompt id is found when decoding starts: the prompt must not be printed first."""
    from llmcore.cli import generate as gen_cli

    bad = ByteTokenizer()  # an instance, not a subclass: subclasses register themselves as tokenizer kinds
    monkeypatch.setattr(bad, "encode", lambda text, add_bos=False, add_eos=False: [1000])
    monkeypatch.setattr(gen_cli, "_load_tokenizer", lambda d: bad)
    assert main(["generate", "--model", str(model_dir), "--prompt", "x", "--stream"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "1000" in captured.err


# ====================================================================== bounded buffers
class EosAtOnce(nn.Module):
    """Always predicts token 0; records the size of the storage behind every ``input_ids`` it is fed."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.storage_bytes: list[int] = []

    def forward(self, input_ids, attention_mask=None, kv_cache=None):
        self.storage_bytes.append(input_ids.untyped_storage().nbytes())
        logits = torch.zeros(*input_ids.shape, 4)
        logits[..., 0] = 1.0
        return logits


@pytest.mark.parametrize("num_beams", [1, 3])
def test_huge_max_new_tokens_allocates_only_what_can_be_produced(num_beams):
    model = EosAtOnce()
    ids = torch.tensor([[1, 2, 3]])
    start = time.perf_counter()
    out = generate(model, ids, max_new_tokens=10**7, sliding_window=True, eos_token_id=0, num_beams=num_beams,
                   use_cache=False)
    assert time.perf_counter() - start < 5
    assert out.tolist() == [[1, 2, 3, 0]]
    # the buffer the prompt was fed from: prompt + INITIAL_ROOM ids (x beams), not 10^7
    assert max(model.storage_bytes) <= num_beams * (3 + INITIAL_ROOM) * 8


def test_absurd_max_new_tokens_is_a_clear_error(model_dir, small, capsys):
    with pytest.raises(ConfigError, match="at most 10,000,000"):
        generate(small, torch.tensor([[1]]), max_new_tokens=10**9, sliding_window=True)
    assert main(["generate", "--model", str(model_dir), "--max-new-tokens", "1000000000"]) == 2
    err = capsys.readouterr().err
    assert "--max-new-tokens 1000000000 is invalid" in err and "10,000,000" in err


def test_left_padded_batch_past_the_first_buffer_equals_one_at_a_time(small):
    """The padding mask grows with the ids buffer."""
    rows = [[5, 17, 99, 3], [11, 2]]
    ids = torch.tensor([[0, 0, 0, 0][: 4 - len(r)] + r for r in rows])
    mask = torch.tensor([[0] * (4 - len(r)) + [1] * len(r) for r in rows])
    n = INITIAL_ROOM + 4
    batch = generate(small, ids, mask, max_new_tokens=n, sliding_window=True, eos_token_id=[])
    for i, r in enumerate(rows):
        alone = generate(small, torch.tensor([r]), max_new_tokens=n, sliding_window=True, eos_token_id=[])
        assert batch[i, 4:].tolist() == alone[0, len(r):].tolist()


def test_beam_search_past_the_first_buffer_matches_greedy_with_one_beam(small):
    ids = torch.tensor([[5, 17, 99]])
    n = INITIAL_ROOM + 3
    greedy = generate(small, ids, max_new_tokens=n, sliding_window=True, eos_token_id=[])
    assert torch.equal(beam_search(small, ids, num_beams=1, max_new_tokens=n, sliding_window=True,
                                   eos_token_id=[]), greedy)


# ====================================================================== the sampling rule
def test_sampling_option_without_do_sample_is_greedy_and_warns_once(small, fresh_warning):
    ids = torch.tensor([[5, 17, 99]])
    greedy = generate(small, ids, max_new_tokens=6, eos_token_id=[])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = small.generate(ids, max_new_tokens=6, temperature=0.8, top_k=40, eos_token_id=[])
        b = small.generate(ids, max_new_tokens=6, top_p=0.5, eos_token_id=[])
    assert torch.equal(a, greedy) and torch.equal(b, greedy)
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(messages) == 1
    assert [w.filename for w in caught] == [__file__]  # it points at the user's line, not into llmcore
    assert "temperature=0.8, top_k=40" in messages[0] and "do_sample=True" in messages[0]


def test_no_warning_with_do_sample_or_greedy_spellings(small, fresh_warning):
    ids = torch.tensor([[5, 17, 99]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        generate(small, ids, max_new_tokens=3, do_sample=True, temperature=0.8, top_k=40, seed=0)
        generate(small, ids, max_new_tokens=3, temperature=0, top_k=0)  # explicit greedy / "off" values
        generate(small, ids, max_new_tokens=3)
    with pytest.warns(UserWarning, match="temperature=0.7 only affects sampling"):
        assert gen_config.GenerationConfig(temperature=0.7).unused_sampling_options() == ["temperature"]


def test_cli_sampling_needs_do_sample(model_dir, capsys, fresh_warning):
    base = ["generate", "--model", str(model_dir), "--prompt", "Hi", "--max-new-tokens", "6"]
    assert main(base) == 0
    greedy = capsys.readouterr().out
    assert main(base + ["--temperature", "0.8", "--top-k", "5"]) == 0
    captured = capsys.readouterr()
    assert captured.out == greedy
    assert captured.err == ("llmcore generate: warning: --temperature 0.8, --top-k 5 has no effect without "
                            "--do-sample (decoding is greedy); add --do-sample to sample\n")
    outs = set()
    for seed in range(4):
        assert main(base + ["--do-sample", "--temperature", "2.0", "--seed", str(seed)]) == 0
        captured = capsys.readouterr()
        assert captured.err == ""
        outs.add(captured.out)
    assert len(outs) > 1  # really sampling: different seeds give different text


# ====================================================================== --stop escapes
class Spells(nn.Module):
    """Emits the UTF-8 bytes of ``text`` one per step (a scripted byte-level LM without a context limit)."""

    def __init__(self, text: str, prompt_len: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.script, self.prompt_len = list(text.encode()), prompt_len

    def forward(self, input_ids, attention_mask=None, kv_cache=None):
        B, T = input_ids.shape
        step = T - self.prompt_len
        logits = torch.zeros(B, T, 259)
        logits[:, -1, self.script[min(step, len(self.script) - 1)]] = 10.0
        return logits


def test_cli_stop_newline_escape_stops_at_the_end_of_a_line(monkeypatch, capsys):
    from llmcore.cli import common
    from llmcore.cli import generate as gen_cli

    model = Spells("ab\ncd\nef", prompt_len=2)
    monkeypatch.setattr(common, "load_model_dir", lambda d, device="cpu": model)
    monkeypatch.setattr(gen_cli, "_load_tokenizer", lambda d: ByteTokenizer())
    base = ["generate", "--model", "unused", "--prompt", "Hi", "--max-new-tokens", "8"]
    assert main(base + ["--stop", "\\n"]) == 0
    assert capsys.readouterr().out == "Hiab\n\n"  # stopped after the newline (the CLI ends with its own)
    assert main(base + ["--stop", "\\u0063d"]) == 0  # \u0063 is "c"
    assert capsys.readouterr().out == "Hiab\ncd\n"
    assert main(base) == 0
    assert capsys.readouterr().out == "Hiab\ncd\nef\n"  # no stop string: all 8 tokens


@pytest.mark.parametrize("typed, meant", [
    ("\\n", "\n"), ("a\\tb", "a\tb"), ("\\\\n", "\\n"), ("\\u00e9t\\u00e9", "été"), ("été", "été"),
    ("\\x41", "A"), ("\\d+", "\\d+"), ("plain", "plain"), ("\\U0001F600", "\U0001F600"),
])
def test_unescape(typed, meant):
    from llmcore.cli.generate import unescape

    assert unescape(typed) == meant


# ====================================================================== text in, text out
def test_generate_text_equals_encode_generate_decode(model_dir, small):
    tok = ByteTokenizer()
    ids = tok.encode(PROMPT)
    seq = generate(small, torch.tensor([ids]), max_new_tokens=8, tokenizer=tok)
    expected = tok.decode(seq[0, len(ids):].tolist())
    assert llmcore.generate_text(model_dir, PROMPT, max_new_tokens=8) == expected  # from the directory
    assert llmcore.generate_text(small, PROMPT, tokenizer=tok, max_new_tokens=8) == expected  # from a model


def test_generate_text_batch_equals_one_at_a_time_and_cuts_finished_rows(small):
    tok = ByteTokenizer()
    prompts = ["ROMEO:", "Hi", "To be, or"]
    # A stop string ends rows at different steps, so the batch holds padding after some rows: it must not
    # show up in their text.
    kw = dict(max_new_tokens=12, sliding_window=True, stop_strings=["e", "a"])
    alone = [llmcore.generate_text(small, p, tokenizer=tok, **kw) for p in prompts]
    assert llmcore.generate_text(small, prompts, tokenizer=tok, **kw) == alone
    for p, text in zip(prompts, alone):
        ids = tok.encode(p)
        full = generate(small, torch.tensor([ids]), tokenizer=tok, **kw)
        assert text == tok.decode(full[0, len(ids):].tolist())


def test_generate_text_several_samples_and_errors(small):
    tok = ByteTokenizer()
    out = llmcore.generate_text(small, ["Hi", "Yo"], tokenizer=tok, max_new_tokens=4, do_sample=True, seed=0,
                                num_return_sequences=3)
    assert len(out) == 2 and all(len(group) == 3 and all(isinstance(t, str) for t in group) for group in out)
    with pytest.raises(GenerationError, match="tokenizer="):
        llmcore.generate_text(small, "Hi")
    with pytest.raises(GenerationError, match="prompt"):
        llmcore.generate_text(small, [], tokenizer=tok)
    with pytest.raises(DataError):
        llmcore.generate_text(small, "Hi", tokenizer=type("T", (), {"encode": lambda s, t, add_bos=False: [999],
                                                                     "decode": lambda s, i: ""})(),
                                max_new_tokens=4)
