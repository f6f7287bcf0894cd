"""Issue 16, CLI argument errors: every mistake on the command line is one stderr line with exit status 2.

Each case goes through ``llmcore.cli.main``: argparse errors (no usage block), arguments bounded by what can
exist (beams x rows x tokens against the device's memory, templates without format specs), non-UTF-8 input,
and configuration validated before ``train`` writes its first byte (``OUT`` is not created).
"""

from __future__ import annotations

import io
import sys

import pytest
import torch

from helpers import one_line_error
from llmcore import ModelConfig
from llmcore.models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer
from llmcore.models.transformer import TransformerLM
from llmcore.tokenizer import CharTokenizer

TAGS = ("<bos>", "<eos>", "<pad>", "<2en>", "<2zh>")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("models")
    tok = CharTokenizer.from_text("hello good night abcdefghijklmnopqrstuvwxyz你好", specials=TAGS)
    Seq2SeqTransformer(Seq2SeqConfig(vocab_size=tok.vocab_size, max_seq_len=24, d_model=32, n_layers=1, n_heads=4,
                                     pos_encoding="learned")).save_pretrained(root / "s2s", tokenizer=tok)
    cfg = ModelConfig.from_preset("debug", vocab_size=tok.vocab_size)
    TransformerLM(cfg).save_pretrained(root / "lm", tokenizer=tok)
    hostile = cfg.replace(extra={"translation": {"template": "{src:>2000000000}"}})
    TransformerLM(hostile).save_pretrained(root / "template", tokenizer=tok)
    return root


# ------------------------------------------------------------------------------------------- argparse
@pytest.mark.parametrize("argv, shown", [
    (["train", "--lr", "abc"], "invalid float value: 'abc'"),
    (["train", "--device", "tpu9"], "invalid choice: 'tpu9'"),
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
    (["translate", "--model", "m", "--num-beams", "1e8", "hi"], "invalid int value: '1e8'"),
    (["translate", "--model", "m", "--batch-size", "1e8", "hi"], "invalid int value: '1e8'"),
])
def test_argparse_errors_are_one_line(argv, shown, tmp_path, capsys):
    out = tmp_path / "out"
    line = one_line_error(capsys, [*argv, "--out", str(out)] if argv[0] == "train" else argv, argv[0])
    assert shown in line and f"llmcore {argv[0]} --help" in line
    assert not out.exists()


def test_nested_command_errors_name_the_nested_command(capsys):
    line = one_line_error(capsys, ["tokenizer", "encode"], "tokenizer encode")
    assert "--tokenizer" in line


# ------------------------------------------------------------------------------------------- bounded by memory
@pytest.mark.parametrize("command, model, extra", [
    ("translate", "s2s", ["--num-beams", "100000000", "hello"]),
    ("generate", "lm", ["--num-beams", "100000000", "--max-new-tokens", "5", "--prompt", "hello"]),
    ("generate", "lm", ["--num-beams", "1000", "--max-new-tokens", "10000000", "--prompt", "hello"]),
    ("eval", "s2s", ["--task", "translate", "--num-beams", "100000000", "--max-batches", "1"]),
])
def test_beams_rows_and_tokens_are_bounded_by_the_device_memory(command, model, extra, models, capsys,
                                                                 monkeypatch):
    from llmcore.generation import config

    monkeypatch.setattr(config, "device_memory_bytes", lambda device: 16 * 2**30)  # the same on every machine
    line = one_line_error(capsys, [command, "--model", str(models / model), *extra], command)
    assert "GiB" in line and "--num-beams" in line


def test_translation_template_with_a_format_spec_is_refused(models, capsys):
    line = one_line_error(capsys, ["translate", "--model", str(models / "template"), "--max-new-tokens", "2",
                                   "hello"], "translate")
    assert "{src:>2000000000}" in line and "only plain {src}" in line


@pytest.mark.parametrize("template", ["{src:>2000000000}", "{src!r}", "{src.__class__}", "{other} {src}", "{src"])
def test_pair_templates_fill_plain_src_only(template):
    from llmcore.errors import ConfigError
    from llmcore.finetune.pairs import check_template

    with pytest.raises(ConfigError, match="template"):
        check_template(template)
    assert check_template("a {{literal}} {src}") == "a {{literal}} {src}"


def test_translate_max_new_tokens_zero_is_refused(models, capsys):
    line = one_line_error(capsys, ["translate", "--model", str(models / "s2s"), "--max-new-tokens", "0", "hello"],
                          "translate")
    assert "--max-new-tokens 0" in line


# ------------------------------------------------------------------------------------------- input bytes
def test_binary_input_file_to_translate(models, tmp_path, capsys):
    (tmp_path / "in.txt").write_bytes(b"a\xff\xfeb\x00\n")
    line = one_line_error(capsys, ["translate", "--model", str(models / "s2s"), "--input", str(tmp_path / "in.txt")],
                          "translate")
    assert "not UTF-8" in line and "offset 1" in line


@pytest.mark.parametrize("command", ["translate", "tokenizer"])
def test_non_utf8_stdin(command, models, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"hello\n\xff\xfe\n")))
    argv = (["translate", "--model", str(models / "s2s")] if command == "translate"
            else ["tokenizer", "encode", "--tokenizer", str(models / "s2s" / "tokenizer")])
    line = one_line_error(capsys, argv, command)
    assert "standard input is not UTF-8" in line


# ------------------------------------------------------------------------------------------- train validates first
@pytest.mark.parametrize("extra, shown", [
    (["--preset", "nope"], "Unknown preset 'nope'"),
    (["--preset", "../../x"], "Unknown preset '../../x'"),
    (["--set", "dropout=abc"], "dropout='abc'"),
    (["--set", "n_heads=7"], "n_heads=7"),
])
def test_train_configuration_is_checked_before_out_is_written(extra, shown, tmp_path, capsys):
    out = tmp_path / "out"
    line = one_line_error(capsys, ["train", *extra, "--max-steps", "1", "--out", str(out)], "train")
    assert shown in line
    assert not out.exists()
