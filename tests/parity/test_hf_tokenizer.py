"""Tokenizer parity with Hugging Face ``transformers``: llmcore's ids = ``AutoTokenizer``'s, both directions.

Two tokenizers are built in the test (no downloads): a GPT-2-style byte-level BPE trained with `tokenizers`
and saved through ``PreTrainedTokenizerFast.save_pretrained``, and a Llama-style sentencepiece model saved
through ``LlamaTokenizer(vocab_file=...)``. ``load_tokenizer(dir)`` must encode a mixed English / Chinese /
emoji / whitespace corpus exactly as ``AutoTokenizer.from_pretrained(dir)`` does and decode it back; an
llmcore sentencepiece tokenizer exported with ``save_pretrained(format="hf")`` must load in ``AutoTokenizer``
with the same ids. Last, ``llmcore generate`` on a GPT-2 directory saved by transformers gives transformers'
greedy text.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from llmcore import TransformerLM
from llmcore.cli import main
from llmcore.tokenizer import HFTokenizer, SentencePieceTokenizer, load_tokenizer

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
pytest.importorskip("google.protobuf")  # transformers reads a sentencepiece tokenizer.model with it

pytestmark = pytest.mark.parity

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "en_zh_small.txt"
CORPUS = [
    "Hello, world! To be, or not to be: that is the question.",
    "  two leading spaces, and three trailing   ",
    "multiple     spaces\tand\ttabs\t\there",
    "line one\nline two\n\nafter a blank line\n",
    "中文句子，你好，世界。我们在测试分词器。",
    "emoji 😀🎉👍🏽 and family 👨‍👩‍👧 mixed with 中文 and English",
    "numbers 3.14159 and 2024-01-01, café naïve e\u0301",
    " ",
    "\n",
    "\t \n  \t",
]


def _training_lines() -> list[str]:
    return FIXTURE.read_text(encoding="utf-8").splitlines() + CORPUS * 3


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
    """A byte-level BPE as GPT-2's (ByteLevel pre-tokenizer/decoder, <|endoftext|>), saved by transformers."""
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tk = tokenizers.Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(_training_lines(), trainer=trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|endoftext|>",
                                                eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    d = tmp_path_factory.mktemp("gpt2")
    fast.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def spm_tok() -> SentencePieceTokenizer:
    return SentencePieceTokenizer.train(_training_lines(), 2000)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    """A Llama-style sentencepiece model (dummy prefix, <unk>/<s>/</s>, byte fallback) saved by LlamaTokenizer."""
    import sentencepiece

    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_training_lines()), model_writer=out, vocab_size=2000, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    d = tmp_path_factory.mktemp("llama")
    (d / "tokenizer.model").write_bytes(out.getvalue())
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    # transformers >= 5 converts tokenizer.model in from_pretrained (LlamaTokenizer(vocab_file=) ignores it);
    # the saved directory is a real Llama one: tokenizer.json + configs, with tokenizer.model kept beside them
    transformers.AutoTokenizer.from_pretrained(d).save_pretrained(d / "hf")
    (d / "hf" / "tokenizer.model").write_bytes(out.getvalue())
    return d / "hf"


def _auto(d: Path):
    return transformers.AutoTokenizer.from_pretrained(d)


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_load_tokenizer_encodes_like_auto_tokenizer(which, gpt2_dir, llama_dir) -> None:
    d = gpt2_dir if which == "gpt2" else llama_dir
    ours, theirs = load_tokenizer(d), _auto(d)
    assert type(ours) is HFTokenizer  # tokenizer.json first, even beside Llama's tokenizer.model
    assert ours.vocab_size == len(theirs) > 500
    assert (ours.bos_id, ours.eos_id) == (theirs.bos_token_id, theirs.eos_token_id)
    # whether transformers' template adds a bos (GPT-2: never); llmcore adds it only when asked
    adds_bos = theirs("x")["input_ids"][0] == theirs.bos_token_id
    assert not adds_bos or which == "llama"
    for text in CORPUS:
        ids = ours.encode(text)
        assert len(ids) > 0 and ids == theirs(text, add_special_tokens=False)["input_ids"], text
        assert ours.encode(text, add_bos=adds_bos) == theirs(text, add_special_tokens=True)["input_ids"], text
        assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True)
        if which == "gpt2":  # byte-level BPE is lossless: Chinese and emoji come back whole
            assert ours.decode(ids) == text
    assert ours.encode(CORPUS) == [theirs(t, add_special_tokens=False)["input_ids"] for t in CORPUS]
    assert ours.decode_batch(ours.encode(CORPUS)) == [theirs.decode(r) for r in ours.encode(CORPUS)]
    # specials never come from text (llmcore's rule), as with transformers' split_special_tokens=True
    literal = f"a {theirs.eos_token} b"
    split = transformers.AutoTokenizer.from_pretrained(d, split_special_tokens=True)
    assert ours.encode(literal) == split(literal, add_special_tokens=False)["input_ids"]
    assert ours.eos_id not in ours.encode(literal)


def test_gpt2_vocab_and_merges_without_tokenizer_json(gpt2_dir, tmp_path) -> None:
    """GPT-2's older files: vocab.json + merges.txt (written by the `tokenizers` model) load as the same BPE."""
    tk = tokenizers.Tokenizer.from_file(str(gpt2_dir / "tokenizer.json"))
    d = tmp_path / "old"
    d.mkdir()
    tk.model.save(str(d))  # vocab.json + merges.txt
    ours = load_tokenizer(d)
    ref = load_tokenizer(gpt2_dir)
    assert (ours.bos_id, ours.eos_id, ours.unk_id) == (ref.eos_id,) * 3  # GPT-2's <|endoftext|> default
    for text in CORPUS:
        assert ours.encode(text) == ref.encode(text) and ours.decode(ours.encode(text)) == text


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_hf_tokenizer_round_trips_through_a_run_directory_and_export(which, gpt2_dir, llama_dir, tmp_path) -> None:
    d = gpt2_dir if which == "gpt2" else llama_dir
    tok = load_tokenizer(d)
    back = load_tokenizer(tok.save(tmp_path / "run" / "tokenizer"))
    assert type(back) is HFTokenizer and back.special_tokens == tok.special_tokens
    assert (back.bos_id, back.eos_id, back.pad_id, back.unk_id) == (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id)
    exported = tok.save_hf(tmp_path / "export")
    theirs = _auto(exported)
    for text in CORPUS:
        assert back.encode(text) == tok.encode(text) == theirs(text, add_special_tokens=False)["input_ids"]


def test_sentencepiece_export_encodes_identically_in_auto_tokenizer(spm_tok, tmp_path, tiny_config) -> None:
    """llmcore sentencepiece -> save_pretrained(format="hf") -> AutoTokenizer: same ids, same text."""
    model = TransformerLM(tiny_config)
    d = model.save_pretrained(tmp_path / "hf", format="hf", tokenizer=spm_tok)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    assert (cfg["tokenizer_class"], cfg["bos_token"], cfg["eos_token"], cfg["pad_token"]) == \
        ("LlamaTokenizer", "<s>", "</s>", "<pad>")
    theirs = _auto(d)
    assert (theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id) == (spm_tok.bos_id, spm_tok.eos_id,
                                                                               spm_tok.pad_id)
    for text in CORPUS:
        ids = spm_tok.encode(text)
        assert theirs(text)["input_ids"] == ids, text  # bos/eos off, as llmcore's encode
        assert theirs.decode(ids) == text
    assert type(load_tokenizer(d)) is SentencePieceTokenizer  # the run's own tokenizer/ comes first


def test_llmcore_generate_on_a_transformers_gpt2_directory_matches_greedy_text(gpt2_dir, tmp_path, capsys) -> None:
    """A tiny random GPT-2 saved by transformers beside its own byte-level BPE: `llmcore generate` reads both
    and prints the text transformers' greedy generate decodes to."""
    tok = transformers.AutoTokenizer.from_pretrained(gpt2_dir)
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                  initializer_range=0.3, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    d = tmp_path / "gpt2"
    hf.save_pretrained(d)
    tok.save_pretrained(d)
    prompt = "Hello 世界 😀"
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                          pad_token_id=tok.eos_token_id)
    expected = tok.decode(out[0], skip_special_tokens=True)
    assert out.shape[1] > ids.shape[1] + 4 and len(expected) > len(prompt)  # real new text to compare
    assert main(["generate", "--model", str(d), "--prompt", prompt, "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out == expected + "\n"
