"""Bundled models resolve by name wherever a model directory is accepted, a local directory shadows a bundled
name, and ``llmcore models`` lists them. These tests use a stand-in bundle of tiny random models; the real
bundled models are checked in tests/test_bundled_models.py."""

from __future__ import annotations

import json

import pytest
import torch

import llmcore.bundled as bundled
from llmcore import ModelConfig, TransformerLM, generate_text
from llmcore.cli import main
from llmcore.errors import CheckpointError
from llmcore.models import load_model
from llmcore.models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer
from llmcore.tokenizer import CharTokenizer, load_tokenizer
from llmcore.translation.translator import Translator

SPECIALS = ("<bos>", "<eos>", "<pad>", "<2en>", "<2zh>")


@pytest.fixture
def bundle(tmp_path, monkeypatch):
    """A bundle dir with a tiny LM ``tiny-lm`` and a tiny translator ``en-zh``, in place of the package's."""
    root = tmp_path / "bundle"
    tok = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz ,.?!你好谢", specials=SPECIALS)
    torch.manual_seed(0)
    lm = TransformerLM(ModelConfig.from_preset("debug", vocab_size=tok.vocab_size))
    lm.save_pretrained(root / "tiny-lm", tokenizer=tok)
    s2s = Seq2SeqTransformer(Seq2SeqConfig(vocab_size=tok.vocab_size, max_seq_len=32, d_model=32, n_layers=1,
                                           n_heads=4, pos_encoding="learned"))
    s2s.save_pretrained(root / "en-zh", tokenizer=tok)
    index = {"models": {"tiny-lm": {"task": "text-generation", "parameters": lm.num_parameters(), "bytes": 1000,
                                    "metrics": {"val_loss": 9.9}, "command": "python scripts/train_bundled.py x"},
                        "en-zh": {"task": "translation", "parameters": s2s.num_parameters(), "bytes": 2000},
                        "listed-but-missing": {"task": "translation"}}}
    (root / bundled.INDEX_FILE).write_text(json.dumps(index), encoding="utf-8")
    monkeypatch.setattr(bundled, "BUNDLED_DIR", root)
    monkeypatch.chdir(tmp_path)  # relative names are looked up here first
    return {"root": root, "tok": tok, "lm": lm, "s2s": s2s}


def test_a_bundled_name_loads_everywhere_a_directory_does(bundle, capsys):
    lm, tok = bundle["lm"], bundle["tok"]
    assert set(bundled.bundled_models()) == {"tiny-lm", "en-zh"}  # an entry without its directory is not listed
    loaded = TransformerLM.from_pretrained("tiny-lm")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), lm.state_dict().values()))
    assert type(load_model("tiny-lm")) is TransformerLM
    assert load_tokenizer("tiny-lm").encode("hello") == tok.encode("hello")
    text = generate_text("tiny-lm", "hello", max_new_tokens=5)
    assert main(["generate", "--model", "tiny-lm", "--prompt", "hello", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out == "hello" + text + "\n"
    assert TransformerLM.from_pretrained(bundled.Path("tiny-lm")).config.d_model == 32  # a bare Path name too
    bundled.Path("text.txt").write_text("hello world, how are you? " * 20, encoding="utf-8")
    assert main(["eval", "--model", "tiny-lm", "--data", "text.txt"]) == 0
    assert capsys.readouterr().out.startswith("text.txt: loss ")
    # The translator: by name, and by default when `llmcore translate` gets no --model.
    expected = Translator(bundle["s2s"].eval(), tok).translate(["hello"], num_beams=4, no_repeat_ngram_size=3)
    assert Translator.from_pretrained("en-zh").translate(["hello"], num_beams=4, no_repeat_ngram_size=3) == expected
    assert main(["translate", "hello"]) == 0
    assert capsys.readouterr().out == expected[0] + "\n"


def test_a_local_directory_shadows_a_bundled_name(bundle, tmp_path, capsys):
    other = TransformerLM(ModelConfig.from_preset("debug", vocab_size=bundle["tok"].vocab_size, d_model=64))
    other.save_pretrained(tmp_path / "tiny-lm", tokenizer=bundle["tok"])  # ./tiny-lm, the cwd of the test
    assert TransformerLM.from_pretrained("tiny-lm").config.d_model == 64
    assert bundled.resolve_model_dir("tiny-lm") == bundled.Path("tiny-lm")
    for spelled_as_a_path in ("./en-zh", "en-zh/"):  # a path that does not exist stays a path
        assert bundled.resolve_model_dir(spelled_as_a_path) == bundled.Path(spelled_as_a_path)
    # An unknown name says which names exist.
    with pytest.raises(CheckpointError, match=r"does not exist.*Bundled models: en-zh, tiny-lm \(llmcore models\)"):
        TransformerLM.from_pretrained("no-such-model")


def test_llmcore_models_lists_the_bundle(bundle, capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "tiny-lm  (text-generation)" in out and "val_loss 9.9" in out and "python scripts/train_bundled.py x" in out
    assert "en-zh  (translation)" in out and "listed-but-missing" not in out
    assert main(["models", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"tiny-lm", "en-zh"}


def test_a_bundled_base_is_recorded_by_name_and_merge_and_convert_resolve_it(bundle, tmp_path, capsys):
    (tmp_path / "text.txt").write_text("hello world, how are you? " * 40, encoding="utf-8")
    assert main(["finetune", "--model", "tiny-lm", "--task", "lm", "--data", "text.txt", "--strategy", "lora",
                 "--max-steps", "2", "--block-size", "16", "--out", "ft"]) == 0
    saved = json.loads((tmp_path / "ft" / "adapter_config.json").read_text())["base_model"]
    assert saved == "tiny-lm"  # by name: it resolves wherever llmcore is installed next
    capsys.readouterr()
    assert main(["generate", "--model", "ft", "--prompt", "hello", "--max-new-tokens", "3"]) == 0
    assert main(["merge", "--adapter", "ft", "--out", "merged"]) == 0  # the base found by its name
    assert main(["convert", "tiny-lm", "lc-out", "--to", "llmcore"]) == 0  # SRC by name, tokenizer included
    assert (tmp_path / "lc-out" / "tokenizer").is_dir()
