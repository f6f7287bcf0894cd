"""Tests for llmcore.tokenizer: lossless round trips, specials, batching, save/load, errors and the CLI.

The sentencepiece model is trained once per module on tests/fixtures/en_zh_small.txt (English + Chinese,
about 0.1 s); nothing here reads the shared data folder or the network.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmcore import cli
from llmcore.errors import TokenizerError
from llmcore.tokenizer import (
    ByteTokenizer,
    CharTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    load_tokenizer,
)

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "en_zh_small.txt"
VOCAB = 2000

# Arbitrary Unicode, with the characters that break naive sentencepiece setups over-represented:
# leading/repeated spaces, tabs, newlines, "\r", sentencepiece's own "▁", CJK, emoji and combining marks.
TRICKY = [
    " ",
    "  ",
    "\t",
    "\n",
    "\r\n",
    "\u2581",
    "你",
    "好",
    "。",
    "😀",
    "é",
    "e\u0301",
    "<s>",
    "</s>",
    "<eos>",
]
texts = st.lists(st.one_of(st.text(max_size=8), st.sampled_from(TRICKY)), max_size=12).map("".join)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def spm_tok() -> SentencePieceTokenizer:
    return SentencePieceTokenizer.train(CORPUS, VOCAB)


@pytest.fixture(scope="module")
def corpus_lines() -> list[str]:
    return CORPUS.read_text(encoding="utf-8").splitlines()


def all_tokenizers(spm_tok: SentencePieceTokenizer) -> list[Tokenizer]:
    text = CORPUS.read_text(encoding="utf-8")
    return [spm_tok, ByteTokenizer(), CharTokenizer.from_text(text + "<>/", unk="replace")]


# ------------------------------------------------------------------------------------------- round trips
@FAST
@given(s=texts)
def test_byte_round_trip(s: str) -> None:
    tok = ByteTokenizer()
    ids = tok.encode(s)
    assert ids == list(s.encode("utf-8"))
    assert tok.decode(ids) == s


@FAST
@given(s=texts)
def test_sentencepiece_round_trip(spm_tok: SentencePieceTokenizer, s: str) -> None:
    ids = spm_tok.encode(s)
    assert all(0 <= i < spm_tok.vocab_size for i in ids)
    assert spm_tok.decode(ids) == s
    assert spm_tok.encode([s, s]) == [ids, ids]  # the batched path agrees with the single one


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(s=texts)
def test_sentencepiece_long_text_fast_path(spm_tok: SentencePieceTokenizer, s: str) -> None:
    # Long strings are split on newlines and encoded in parallel; the ids must equal one plain call's.
    big = (s + "\n") * (9000 // (len(s) + 1) + 1)
    plain = SentencePieceTokenizer(spm_tok.model_proto)  # newline_split off
    ids = spm_tok.encode(big, add_bos=True, add_eos=True)
    assert ids == plain.encode(big, add_bos=True, add_eos=True)
    assert spm_tok.decode(ids) == big


@FAST
@given(s=st.text(alphabet="abc \t\n你好", max_size=30))
def test_char_round_trip(s: str) -> None:
    tok = CharTokenizer.from_text("abc \t\n你好")
    assert tok.decode(tok.encode(s)) == s


def test_round_trip_whole_corpus_and_batch(spm_tok: SentencePieceTokenizer, corpus_lines: list[str]) -> None:
    text = CORPUS.read_text(encoding="utf-8")
    ids = spm_tok.encode(text)
    # The newline-split fast path gives exactly what one raw sentencepiece call gives.
    assert ids == spm_tok.sp.encode(text)
    assert spm_tok.decode(ids) == text
    assert spm_tok.decode_batch(spm_tok.encode(corpus_lines)) == corpus_lines


def test_decode_accepts_tensors(spm_tok: SentencePieceTokenizer) -> None:
    ids = spm_tok.encode("Hello, 你好", add_bos=True, add_eos=True)
    assert ids[0] == spm_tok.bos_id and ids[-1] == spm_tok.eos_id
    assert spm_tok.decode(torch.tensor(ids)) == "Hello, 你好"
    assert spm_tok.decode(ids, skip_special=False) == "<s>Hello, 你好</s>"
    with pytest.raises(TokenizerError, match="decode_batch"):
        spm_tok.decode(torch.tensor([ids]))


def test_sampling_changes_segmentation_not_text(spm_tok: SentencePieceTokenizer) -> None:
    s = "To be, or not to be, that is the question. 我们是同学。"
    best = spm_tok.encode(s)
    spm_tok.alpha = 0.5
    try:
        samples = [spm_tok.encode(s, sample=True) for _ in range(20)]
    finally:
        spm_tok.alpha = 0.1
    assert all(spm_tok.decode(x) == s for x in samples)
    assert any(x != best for x in samples)
    assert spm_tok.encode(s) == best  # sampling is off by default


# ------------------------------------------------------------------------------------------- specials
@pytest.mark.parametrize("kind", ["spm", "byte", "char"])
def test_specials_never_come_from_text(spm_tok: SentencePieceTokenizer, kind: str) -> None:
    tok = dict(zip(["spm", "byte", "char"], all_tokenizers(spm_tok)))[kind]
    special = set(tok.special_tokens.values())
    assert {tok.bos_id, tok.eos_id, tok.pad_id} <= special
    text = "<s></s><pad><unk><bos><eos> " + " ".join(tok.special_tokens)
    assert not special & set(tok.encode(text))
    assert tok.decode(tok.encode(text)) == text


def test_specials_never_come_from_random_text(spm_tok: SentencePieceTokenizer) -> None:
    toks = all_tokenizers(spm_tok)[:2]

    @FAST
    @given(s=texts)
    def check(s: str) -> None:
        for tok in toks:
            assert not set(tok.special_tokens.values()) & set(tok.encode(s))

    check()


def test_user_defined_symbols_are_matched_in_text() -> None:
    tok = SentencePieceTokenizer.train(CORPUS, VOCAB, user_defined_symbols=["<2zh>"])
    assert tok.encode("<2zh>你好")[0] == tok.token_to_id("<2zh>")
    assert "<2zh>" not in tok.special_tokens


def test_english_and_chinese_are_both_covered(spm_tok: SentencePieceTokenizer) -> None:
    assert spm_tok.training["character_coverage"] == 0.9995  # chosen automatically: the corpus is CJK-heavy
    zh = "神创造天地。你好，很高兴认识你。"
    ids = spm_tok.encode(zh)
    pieces = [spm_tok.id_to_token(i) for i in ids]
    assert not any(spm_tok.sp.is_byte(i) for i in ids), pieces
    for ch in "神天地你好我们":  # common characters have their own piece
        assert spm_tok.encode(ch) == [spm_tok.token_to_id(ch)]
    assert len(ids) < len(zh.encode("utf-8")) / 2
    en = "To be, or not to be, that is the question."
    assert len(spm_tok.encode(en)) < len(en) / 2


def test_ids_and_tokens(spm_tok: SentencePieceTokenizer) -> None:
    for tok in all_tokenizers(spm_tok):
        assert len(tok) == tok.vocab_size
        for token, i in tok.special_tokens.items():
            assert tok.token_to_id(token) == i and tok.id_to_token(i) == token
        with pytest.raises(TokenizerError, match="out of range"):
            tok.id_to_token(tok.vocab_size)
        with pytest.raises(TokenizerError):
            tok.token_to_id("no such token ~~~")
    assert (spm_tok.unk_id, spm_tok.bos_id, spm_tok.eos_id, spm_tok.pad_id) == (0, 1, 2, 3)
    b = ByteTokenizer()
    assert b.token_to_id("<0x41>") == 65 and b.id_to_token(65) == "<0x41>"
    assert (b.bos_id, b.eos_id, b.pad_id, b.unk_id) == (256, 257, 258, None)


def test_byte_decode_invalid_utf8_replaces() -> None:
    assert ByteTokenizer().decode([0x68, 0xFF, 0x69]) == "h\ufffdi"


def test_char_tokenizer_unknown_policy() -> None:
    text = "hello world"
    tok = CharTokenizer.from_text(text)
    assert tok.encode("hello") == [sorted(set(text)).index(c) for c in "hello"]  # nanoGPT ids
    with pytest.raises(TokenizerError, match=r"'z' \(U\+007A\)"):
        tok.encode("hellz")
    rep = CharTokenizer.from_text(text, unk="replace")
    assert rep.encode("hz")[1] == rep.unk_id == rep.token_to_id("<unk>")
    with pytest.raises(TokenizerError, match="unk="):
        CharTokenizer.from_text(text, unk="drop")


# ------------------------------------------------------------------------------------------- batching
@pytest.mark.parametrize("kind", ["spm", "byte", "char"])
def test_encode_batch_padding_sides(spm_tok: SentencePieceTokenizer, kind: str) -> None:
    tok = dict(zip(["spm", "byte", "char"], all_tokenizers(spm_tok)))[kind]
    batch = ["To be, or not to be", "你好", ""]
    rows = [tok.encode(t, add_bos=True) for t in batch]
    width = max(map(len, rows))
    for side in ("right", "left"):
        out = tok.encode_batch(batch, add_bos=True, padding_side=side)
        ids, mask = out["input_ids"], out["attention_mask"]
        assert ids.dtype == mask.dtype == torch.long and ids.shape == mask.shape == (3, width)
        for b, row in enumerate(rows):
            n = len(row)
            real = slice(0, n) if side == "right" else slice(width - n, width)
            pad = slice(n, width) if side == "right" else slice(0, width - n)
            assert ids[b, real].tolist() == row and mask[b, real].eq(1).all()
            assert ids[b, pad].eq(tok.pad_id).all() and mask[b, pad].eq(0).all()
        assert tok.decode_batch(ids) == batch


def test_encode_batch_truncation_is_explicit(spm_tok: SentencePieceTokenizer) -> None:
    batch = ["To be, or not to be, that is the question", "hi"]
    with pytest.raises(TokenizerError, match="longer than max_length=4.*truncation=True"):
        spm_tok.encode_batch(batch, max_length=4)
    out = spm_tok.encode_batch(batch, max_length=4, truncation=True)
    assert out["input_ids"].shape == (2, 4)
    assert out["input_ids"][0].tolist() == spm_tok.encode(batch[0])[:4]
    out = spm_tok.encode_batch(["hi"], padding="max_length", max_length=6)
    assert out["attention_mask"].tolist() == [
        [1] * len(spm_tok.encode("hi")) + [0] * (6 - len(spm_tok.encode("hi")))
    ]
    with pytest.raises(TokenizerError, match="needs max_length"):
        spm_tok.encode_batch(batch, truncation=True)
    with pytest.raises(TokenizerError, match="different lengths"):
        spm_tok.encode_batch(batch, padding=False)
    assert spm_tok.encode_batch(batch, padding=False, return_tensors=None)["input_ids"] == spm_tok.encode(
        batch
    )
    with pytest.raises(TokenizerError, match="needs a pad token"):
        CharTokenizer.from_text("ab", specials=()).encode_batch(["a", "ab"])


# ------------------------------------------------------------------------------------------- save / load
def test_save_load_every_kind(spm_tok: SentencePieceTokenizer, tmp_path: Path) -> None:
    sample = "  To be,\tor not\n\n你好😀 ▁"
    for tok in all_tokenizers(spm_tok):
        d = tok.save(tmp_path / tok.kind)
        assert sorted(f.name for f in d.glob("*.json")) == ["llmcore_tokenizer.json"]  # not HF's tokenizer.json
        back = load_tokenizer(d)
        assert type(back) is type(tok) and back.vocab_size == tok.vocab_size
        assert back.special_tokens == tok.special_tokens
        assert back.encode(sample) == tok.encode(sample)
        assert type(tok).load(d).encode(sample) == tok.encode(sample)
        # a model run directory holds the tokenizer in tokenizer/
        tok.save(tmp_path / f"run-{tok.kind}" / "tokenizer")
        assert load_tokenizer(tmp_path / f"run-{tok.kind}").encode(sample) == tok.encode(sample)
    with pytest.raises(TokenizerError, match="not a 'byte'"):
        ByteTokenizer.load(tmp_path / "char")


def test_load_bare_sentencepiece_model(spm_tok: SentencePieceTokenizer, tmp_path: Path) -> None:
    path = tmp_path / "other.model"
    path.write_bytes(spm_tok.model_proto)
    for tok in (SentencePieceTokenizer.load(path), load_tokenizer(path)):
        assert tok.encode("Hello 你好") == spm_tok.encode("Hello 你好")
        assert not tok.newline_split  # a foreign model gets no assumptions about newlines
        assert tok.decode(tok.encode("a\nb  c")) == "a\nb  c"


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="no tokenizer found in"):
        load_tokenizer(tmp_path)
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / "bad.model").write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="not a valid sentencepiece model"):
        load_tokenizer(tmp_path / "bad.model")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "tokenizer.json").write_text('{"kind": "wordpiece"}')
    with pytest.raises(TokenizerError, match="unknown tokenizer kind 'wordpiece'"):
        load_tokenizer(tmp_path / "x")


def test_directories_written_before_the_rename_still_load(spm_tok: SentencePieceTokenizer, tmp_path: Path) -> None:
    """Old llmcore directories hold ``tokenizer.json`` with a "kind" field; they load as before."""
    sample = "To be, or not 你好"
    for tok in all_tokenizers(spm_tok):
        d = tok.save(tmp_path / tok.kind)
        (d / "llmcore_tokenizer.json").rename(d / "tokenizer.json")
        for where in (d, d / "tokenizer.json"):
            back = load_tokenizer(where)
            assert type(back) is type(tok) and back.encode(sample) == tok.encode(sample)


@pytest.fixture(scope="module")
def llama_style_model() -> bytes:
    """A tiny sentencepiece model laid out like Llama's: <unk>=0, <s>=1, </s>=2 and no pad piece."""
    import sentencepiece

    out = io.BytesIO()
    lines = [line for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.isascii()]
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=out, vocab_size=300, model_type="bpe",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, bos_piece="<s>", eos_piece="</s>", minloglevel=2)
    return out.getvalue()


def _hf_dir(path: Path, model: bytes | None, config: dict, tokenizers_json: bool = True) -> Path:
    """A fake Hugging Face tokenizer directory: tokenizer.json of the `tokenizers` library, configs, .model."""
    import json

    path.mkdir(parents=True)
    if tokenizers_json:
        (path / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {}}}))
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    (path / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    if model is not None:
        (path / "tokenizer.model").write_bytes(model)
    return path


def test_hugging_face_directory_loads_its_sentencepiece_model(llama_style_model: bytes, tmp_path: Path) -> None:
    proto = llama_style_model
    reference = SentencePieceTokenizer(proto)
    config = {"bos_token": {"__type": "AddedToken", "content": "<s>"}, "eos_token": "</s>", "pad_token": None}
    tok = load_tokenizer(_hf_dir(tmp_path / "llama", proto, config, tokenizers_json=False))
    assert type(tok) is SentencePieceTokenizer
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id) == (1, 2, None, 0)
    assert tok.encode("Hello world, to be", add_bos=True) == reference.encode("Hello world, to be", add_bos=True)
    # a pad token the model lacks is taken from the config (Llama fine-tunes often pad with <unk>) ...
    padded = load_tokenizer(_hf_dir(tmp_path / "pad", proto, {"pad_token": "<unk>"}, tokenizers_json=False))
    assert padded.pad_id == 0 and padded.fill_id == 0
    assert padded.encode_batch(["a", "ab c"])["input_ids"][0].tolist()[-1] == 0
    # ... and survives saving the tokenizer with a model (llmcore_tokenizer.json records it)
    assert load_tokenizer(padded.save(tmp_path / "saved")).pad_id == 0


def test_hugging_face_directory_errors_say_what_was_found(llama_style_model: bytes, tmp_path: Path) -> None:
    proto = llama_style_model
    with pytest.raises(TokenizerError, match=r"names eos_token '<eos>' \(id None\), but tokenizer.model's eos id is 2"):
        load_tokenizer(_hf_dir(tmp_path / "bad-eos", proto, {"eos_token": "<eos>"}, tokenizers_json=False))
    with pytest.raises(TokenizerError, match=r"names bos_token '</s>' \(id 2\), but tokenizer.model's bos id is 1"):
        load_tokenizer(_hf_dir(tmp_path / "swapped", proto, {"bos_token": "</s>"}, tokenizers_json=False))
    # tokenizer.json comes first when `tokenizers` is installed: a broken one is an error naming the file
    with pytest.raises(TokenizerError, match=r"gpt2: not a valid Hugging Face tokenizer.json: Missing vocab/merges"):
        load_tokenizer(_hf_dir(tmp_path / "gpt2", None, {}))
    with pytest.raises(TokenizerError, match=r"no tokenizer found in .*\['special_tokens_map.json', 'tokenizer_config"):
        load_tokenizer(_hf_dir(tmp_path / "configs-only", None, {}, tokenizers_json=False))


def test_without_tokenizers_a_hf_directory_falls_back_to_sentencepiece_or_names_the_install(
        llama_style_model: bytes, tmp_path: Path, monkeypatch) -> None:
    """Precedence: tokenizer.json needs `tokenizers`; without it tokenizer.model is read, else the error says
    how to install it (the import is lazy, so blocking the module is enough)."""
    import llmcore.tokenizer.base as base

    monkeypatch.setattr(base, "tokenizers_available", lambda: False)
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # `import tokenizers` now raises ImportError
    both = load_tokenizer(_hf_dir(tmp_path / "both", llama_style_model, {}))
    assert type(both) is SentencePieceTokenizer and both.encode("Hello") == SentencePieceTokenizer(
        llama_style_model).encode("Hello")
    with pytest.raises(TokenizerError, match=r"needs the Hugging Face `tokenizers` library, which is not "
                                             r"installed; run pip install 'llmcore\[hf\]'"):
        load_tokenizer(_hf_dir(tmp_path / "json-only", None, {}))


def test_byte_and_char_tokenizers_refuse_hf_export(tmp_path: Path) -> None:
    for tok in (ByteTokenizer(), CharTokenizer.from_text("abc")):
        with pytest.raises(TokenizerError, match=f"a {tok.kind} tokenizer has no Hugging Face equivalent"):
            tok.save_hf(tmp_path / tok.kind)
        assert not (tmp_path / tok.kind).exists()  # nothing written


# ------------------------------------------------------------------------------------------- training errors
def test_training_errors_are_helpful(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(TokenizerError, match="empty corpus.*empty.txt"):
        SentencePieceTokenizer.train(empty, 300)
    with pytest.raises(TokenizerError, match="empty corpus"):
        SentencePieceTokenizer.train([], 300)
    with pytest.raises(TokenizerError, match=r"vocab_size=1000 is too large.*at most \d+"):
        SentencePieceTokenizer.train(["hello world", "foo bar"], 1000)
    with pytest.raises(TokenizerError, match=r"vocab_size=300 is too small.*at least \d+"):
        SentencePieceTokenizer.train(CORPUS, 300)
    with pytest.raises(TokenizerError, match="missing.txt does not exist"):
        SentencePieceTokenizer.train(tmp_path / "missing.txt", 300)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("ok\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(TokenizerError, match=r"latin1.txt is not UTF-8: line 2, byte 4 is 0xe9"):
        SentencePieceTokenizer.train([latin1], 300)
    with pytest.raises(TokenizerError, match="model_type='wordpiece'"):
        SentencePieceTokenizer.train(CORPUS, 300, model_type="wordpiece")


# ------------------------------------------------------------------------------------------- CLI
@pytest.fixture()
def only_tokenizer_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    # Other sub-commands are owned elsewhere; keep this test about ours.
    monkeypatch.setattr(cli, "COMMANDS", ["llmcore.cli.tokenizer"])


def test_cli_train_and_encode(tmp_path: Path, capsys, monkeypatch, only_tokenizer_cli) -> None:
    out = tmp_path / "tok"
    rc = cli.main(
        [
            "tokenizer",
            "train",
            "--input",
            str(CORPUS),
            "--vocab-size",
            str(VOCAB),
            "--model-type",
            "bpe",
            "--out",
            str(out),
            "--user-defined-symbols",
            "<2zh>",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "training" in captured.out and "chars per token" in captured.out
    tok = load_tokenizer(out)
    assert tok.vocab_size == VOCAB and tok.token_to_id("<2zh>") > 3

    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello world\n你好\n"))
    assert cli.main(["tokenizer", "encode", "--tokenizer", str(out), "--ids"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [list(map(int, line.split())) for line in lines] == tok.encode(["Hello world", "你好"])
    assert cli.main(["tokenizer", "encode", "--tokenizer", str(out), "--text", "Hello world"]) == 0
    assert capsys.readouterr().out.split() == [tok.id_to_token(i) for i in tok.encode("Hello world")]


def test_cli_errors_are_one_line(tmp_path: Path, capsys, only_tokenizer_cli) -> None:
    rc = cli.main(
        [
            "tokenizer",
            "train",
            "--input",
            str(tmp_path / "missing.txt"),
            "--vocab-size",
            "100",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "missing.txt does not exist" in err
    rc = cli.main(["tokenizer", "encode", "--tokenizer", str(tmp_path), "--text", "x"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "no tokenizer found" in err


def test_sampled_batch_encoding_varies_between_calls(tmp_path):
    """Subword regularisation must draw a new segmentation each call, for lists as for single strings."""
    lines = Path(__file__).parent.parent.joinpath("fixtures", "en_zh_small.txt").read_text(encoding="utf-8").splitlines()
    tok = SentencePieceTokenizer.train(lines, vocab_size=2000, seed=0)
    batch = ["the quick brown fox jumps over the lazy dog and then some more words here"] * 8
    draws = {tuple(map(tuple, tok.encode(batch, sample=True))) for _ in range(3)}
    assert len(draws) > 1
    assert all(tok.decode(row) == batch[0] for row in tok.encode(batch, sample=True))
