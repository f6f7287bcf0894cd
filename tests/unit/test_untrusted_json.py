"""Issue 16, "wrong JSON types anywhere": a field of the wrong type in a model config.json (llmcore or
Hugging Face), a tokenizer settings file, metrics.jsonl or sweep_result.json is one line naming the file, the
field and what was expected (exit 2 through the CLI, an LLMCoreError from Python); never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import llmcore
from llmcore.cli import main
from llmcore.errors import LLMCoreError
from llmcore.io import read_jsonl
from llmcore.models import TransformerLM
from llmcore.sweep import sweep
from llmcore.tokenizer import CharTokenizer

TINY = dict(vocab_size=64, max_seq_len=32, d_model=32, n_layers=2, n_heads=4, pos_encoding="rope",
            norm="rmsnorm", activation="swiglu", bias=False, tie_embeddings=True)


def save_tiny(d: Path, fmt: str = "llmcore") -> Path:
    torch.manual_seed(0)
    TransformerLM(llmcore.ModelConfig(**TINY)).save_pretrained(d, format=fmt)
    return d


def edit_json(path: Path, change) -> None:
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def one_line_error(capsys, argv: list[str], *words: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def convert_fails(capsys, d: Path, *words: str) -> None:
    dst = d.parent / (d.name + "-out")
    one_line_error(capsys, ["convert", str(d), str(dst)], str(d / "config.json"), *words)
    assert not dst.exists()


LLMCORE_CASES = {
    "dropout-str": (lambda m: m["config"].update(dropout="abc"), ["dropout", "[0, 1)"]),
    "eps-str": (lambda m: m["config"].update(norm_eps="1e-5"), ["norm_eps", "> 0"]),
    "no-config": (lambda m: m.pop("config"), ["'config'", "expected an object"]),
    "config-list": (lambda m: m.update(config=[1, 2]), ["'config'", "list", "expected an object"]),
    "zero-heads": (lambda m: m["config"].update(n_heads=0), ["n_heads=0", "positive integer"]),
}


@pytest.mark.parametrize("case", sorted(LLMCORE_CASES))
def test_llmcore_config_field_of_wrong_type(tmp_path, capsys, case):
    change, words = LLMCORE_CASES[case]
    d = save_tiny(tmp_path / case)
    edit_json(d / "config.json", change)
    convert_fails(capsys, d, *words)
    with pytest.raises(LLMCoreError, match="config.json"):
        TransformerLM.from_pretrained(d)


def test_non_utf8_config(tmp_path, capsys):
    d = save_tiny(tmp_path / "m")
    (d / "config.json").write_bytes(b'{"format": "\xff\xfe"}')
    convert_fails(capsys, d, "UTF-8")


HF_CASES = {
    "eps-str": (lambda m: m.update(rms_norm_eps="1e-5"), ["rms_norm_eps", "expected a number"]),
    "zero-heads": (lambda m: m.update(num_attention_heads=0), ["num_attention_heads=0", "positive integer"]),
    "rope-scaling-list": (lambda m: m.update(rope_scaling=[1]), ["rope_scaling", "expected an object"]),
    "rope-parameters-list": (lambda m: m.update(rope_parameters=[1]), ["rope_parameters", "expected an object"]),
}


@pytest.mark.parametrize("case", sorted(HF_CASES))
def test_hf_config_field_of_wrong_type(tmp_path, capsys, case):
    change, words = HF_CASES[case]
    d = save_tiny(tmp_path / case, fmt="hf")
    edit_json(d / "config.json", change)
    convert_fails(capsys, d, *words)
    with pytest.raises(LLMCoreError, match="config.json"):
        TransformerLM.from_pretrained(d)


@pytest.mark.parametrize("fname", ["llmcore_tokenizer.json", "tokenizer.json"])
@pytest.mark.parametrize("case", ["kind-list", "chars-int"])
def test_tokenizer_settings_of_wrong_type(tmp_path, capsys, case, fname):
    src = CharTokenizer("helo wrd").save(tmp_path / "saved")
    d = tmp_path / "tok"
    d.mkdir()
    meta = json.loads((src / "llmcore_tokenizer.json").read_text())
    field, value = ("kind", ["char"]) if case == "kind-list" else ("chars", 5)
    meta[field] = value
    (d / fname).write_text(json.dumps(meta))
    one_line_error(capsys, ["tokenizer", "encode", "--tokenizer", str(d), "--text", "hello"],
                   str(d / fname), f"'{field}'", "expected")


def test_empty_sentencepiece_model(tmp_path, capsys):
    bare = tmp_path / "empty.model"
    bare.write_bytes(b"")
    one_line_error(capsys, ["tokenizer", "encode", "--tokenizer", str(bare), "--text", "hi"], str(bare), "empty")
    d = tmp_path / "spm"
    d.mkdir()
    (d / "llmcore_tokenizer.json").write_text(json.dumps({"kind": "sentencepiece", "format_version": 1,
                                                          "model_file": "tokenizer.model"}))
    (d / "tokenizer.model").write_bytes(b"")
    one_line_error(capsys, ["tokenizer", "encode", "--tokenizer", str(d), "--text", "hi"],
                   str(d / "tokenizer.model"), "empty")


@pytest.mark.parametrize("line", ["42", "[1, 2]"])
def test_metrics_line_that_is_not_an_object_is_skipped_with_a_warning(tmp_path, capsys, line):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    run.mkdir()
    good = [{"step": 1, "train_loss": 2.0, "lr": 1e-3}, {"step": 2, "train_loss": 1.5, "lr": 1e-3}]
    (run / "metrics.jsonl").write_text("\n".join([json.dumps(good[0]), line, json.dumps(good[1])]) + "\n")
    with pytest.warns(UserWarning, match=r"metrics\.jsonl.*line\(s\) \(2\).*not JSON objects"):
        assert read_jsonl(run / "metrics.jsonl") == good  # what the metrics logger reads on resume
    with pytest.warns(UserWarning, match="not JSON objects"):
        assert main(["plot", str(run)]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert (run / "loss_curve.png").is_file()


def test_plot_out_dir_reports_the_file_written(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "train_loss": 2.0, "lr": 1e-3}) + "\n")
    out = tmp_path / "figs"
    out.mkdir()
    assert main(["plot", str(run), "--out", str(out)]) == 0
    printed = Path(capsys.readouterr().out.strip().removeprefix("wrote "))
    assert printed == out / "loss_curve.png" and printed.is_file()
    assert not (tmp_path / "figs.png").exists()
    assert main(["plot", str(run), "--out", str(tmp_path / "noext")]) == 0
    printed = Path(capsys.readouterr().out.strip().removeprefix("wrote "))
    assert printed == tmp_path / "noext.png" and printed.is_file()


TEXT = "".join(f"To be, or not to be, that is the question {i}.\nWhether 'tis nobler in the mind.\n" for i in range(60))


def test_truncated_sweep_result(tmp_path, capsys):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    base = {"data": [str(corpus)], "preset": "debug", "max_steps": 1, "batch_size": 2, "eval_interval": 1,
            "progress": False, "num_samples": 0, "eval_batches": 1, "warmup_steps": 0}
    out = tmp_path / "sweep"
    sweep(base, {"lr": [1e-3]}, out)
    result = next(out.glob("*/sweep_result.json"))
    result.write_text(result.read_text()[:10])
    capsys.readouterr()
    one_line_error(capsys, ["sweep", "--grid", "lr=1e-3", "--out", str(out), "--data", str(corpus), "--preset",
                            "debug", "--max-steps", "1", "--batch-size", "2", "--eval-interval", "1",
                            "--no-progress"], str(result), "not valid")
