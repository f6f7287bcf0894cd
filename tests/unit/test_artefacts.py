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


# ---------------------------------------------------------------------------------------------- LoRA
@pytest.fixture
def base(tiny_config, tmp_path):
    """A tiny byte-level LM with the translator's tags, its directory and a text file to fine-tune on."""
    from llmcore.models import TransformerLM
    from llmcore.tokenizer import ByteTokenizer

    tok = ByteTokenizer(specials=("<bos>", "<eos>", "<pad>", "<2en>", "<2zh>"))
    TransformerLM(tiny_config.replace(vocab_size=tok.vocab_size)).save_pretrained(tmp_path / "base", tokenizer=tok)
    text = tmp_path / "lm.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    return tmp_path / "base", text


FAST = ["--batch-size", "2", "--device", "cpu", "--no-progress", "--set", "eval_batches=1"]


def test_lora_adapter_merges_and_loads_in_every_command(base, tmp_path, capsys):
    import torch

    from llmcore.finetune import load_adapter_model
    from llmcore.models import load_model

    model, text = base
    adapter, merged = tmp_path / "lora", tmp_path / "lora-merged"
    assert main(["finetune", "--model", str(model), "--data", str(text), "--out", str(adapter), "--strategy", "lora",
                 "--max-steps", "4", "--lr", "0.02", *FAST]) == 0
    assert main(["merge", "--adapter", str(adapter)]) == 0  # default --out: ADAPTER-merged
    assert f"model in {merged}" in capsys.readouterr().out
    assert (merged / "config.json").is_file() and (merged / "tokenizer").is_dir()
    ids = torch.randint(0, 100, (2, 16))
    with torch.no_grad():
        want = load_adapter_model(adapter)(ids)  # base + unmerged adapter
        got = load_model(merged)(ids)
        plain = load_model(model)(ids)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert (want - plain).abs().max() > 1e-3  # the adapter changed the model: the comparison above means something
    outputs = []
    for d in (adapter, merged):
        assert main(["generate", "--model", str(d), "--prompt", "the quick", "--max-new-tokens", "12",
                     "--device", "cpu"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[0].startswith("the quick")
    for d in (adapter, merged):
        assert main(["eval", "--model", str(d), "--data", str(text), "--device", "cpu", "--max-batches", "2"]) == 0
        outputs.append(capsys.readouterr().out.split(": ", 1)[1])
    assert outputs[2] == outputs[3]  # same loss / perplexity / accuracy printed
    # a moved base is named with the fix; --base points at it
    model.rename(tmp_path / "moved")
    assert main(["merge", "--adapter", str(adapter), "--out", str(tmp_path / "m2")]) == 2
    assert "--base BASE_DIR" in capsys.readouterr().err
    assert main(["merge", "--adapter", str(adapter), "--out", str(tmp_path / "m2"), "--base", str(tmp_path / "moved")]) == 0
    assert main(["merge", "--adapter", str(tmp_path / "moved")]) == 2
    assert "has no adapter_config.json" in capsys.readouterr().err
