"""Every artefact a command writes is usable by the next command (issue 15): a ``prepare`` output trains, a
LoRA adapter merges and loads, a classifier evaluates and predicts, a pairs fine-tune translates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmcore.cli import main
from llmcore.errors import ConfigError
from llmcore.training.run import RunConfig


def losses(out: Path) -> list[tuple[int, float]]:
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r[k]) for r in rows for k in ("train_loss", "val_loss") if k in r]


# ---------------------------------------------------------------------------------------------- prepare -> train
def test_train_on_a_prepared_directory_equals_training_on_its_text(tmp_path, capsys):
    text = tmp_path / "corpus.txt"
    text.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(200)),
                    encoding="utf-8")
    assert main(["prepare", "--data", str(text), "--tokenizer", "char", "--out", str(tmp_path / "prep"),
                 "--no-progress"]) == 0
    common = ["train", "--preset", "debug", "--max-steps", "4", "--batch-size", "2", "--eval-interval", "2",
              "--device", "cpu", "--no-progress", "--set", "max_seq_len=32", "--set", "log_interval=1"]
    assert main([*common, "--data", str(tmp_path / "prep"), "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--data", str(text), "--tokenizer", "char", "--out", str(tmp_path / "b")]) == 0
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert len(a) >= 4 and a == b  # same ids, same model, same order: the same losses exactly
    assert (tmp_path / "a" / "data" / "train.bin").read_bytes() == (tmp_path / "prep" / "train.bin").read_bytes()
    # resuming the run reuses its linked data; a tokenizer flag beside a prepared directory is refused
    assert main([*common, "--data", str(tmp_path / "prep"), "--out", str(tmp_path / "a"), "--max-steps", "6",
                 "--resume"]) == 0
    capsys.readouterr()
    assert main([*common, "--data", str(tmp_path / "prep"), "--tokenizer", "byte", "--out", str(tmp_path / "c")]) == 2
    assert "prepared directory with its own tokenizer" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="only --data entry"):
        RunConfig(data=[str(tmp_path / "prep"), str(text)])
