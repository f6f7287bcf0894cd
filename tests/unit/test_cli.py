"""The command-line package: every --help, defaults from the dataclasses, plugins, the fine-tune run directory."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from llmcore import cli
from llmcore.cli import main
from llmcore.cli.common import field_default, import_plugin
from llmcore.cli.finetune import FINETUNE_DEFAULTS
from llmcore.config import ModelConfig
from llmcore.errors import ConfigError
from llmcore.generation.config import GenerationConfig
from llmcore.models import TransformerLM
from llmcore.registry import ARCHITECTURES
from llmcore.tokenizer import ByteTokenizer
from llmcore.training import TrainConfig
from llmcore.training.run import RunConfig

COMMANDS = ["tokenizer", "prepare", "train", "eval", "finetune", "generate", "translate", "convert", "sweep",
            "plot"]


def help_text(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines; compare with single spaces


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_runs(command, capsys):
    assert f"usage: llmcore {command}" in help_text(capsys, command)


def test_top_level_help_lists_commands_and_plugins(capsys):
    text = help_text(capsys)
    assert all(c in text for c in COMMANDS) and "llmcore.plugins" in text and "--import" in text


def test_python_dash_m_runs_the_console_script():
    out = subprocess.run([sys.executable, "-m", "llmcore", "--help"], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(Path(cli.__file__).parents[2]), "PATH": ""})
    assert "usage: llmcore" in out.stdout


def shown_default(text: str, flag: str) -> str:
    """The "(default: X)" of ``flag`` in a normalised help text."""
    options = text[text.index("options:"):]  # not the usage line
    m = re.search(re.escape(flag) + r" .*?\(default: ([^)]+)\)", options)
    assert m, f"{flag} shows no default"
    return m.group(1)


@pytest.mark.parametrize("command, flag, cls, field", [
    ("train", "--batch-size N", TrainConfig, "batch_size"),
    ("train", "--val-fraction X", RunConfig, "val_fraction"),
    ("train", "--preset NAME", RunConfig, "preset"),
    ("eval", "--batch-size N", TrainConfig, "batch_size"),
    ("eval", "--no-repeat-ngram-size N", GenerationConfig, "no_repeat_ngram_size"),
    ("translate", "--batch-size N", TrainConfig, "batch_size"),
    ("translate", "--num-beams N", GenerationConfig, "num_beams"),
    ("generate", "--max-new-tokens N", GenerationConfig, "max_new_tokens"),
    ("generate", "--temperature X", GenerationConfig, "temperature"),
    ("finetune", "--batch-size N", TrainConfig, "batch_size"),
    ("finetune", "--val-fraction X", RunConfig, "val_fraction"),
    ("prepare", "--val-fraction X", RunConfig, "val_fraction"),
    ("sweep", "--max-steps N", TrainConfig, "max_steps"),
])
def test_help_default_is_the_dataclass_default(command, flag, cls, field, capsys):
    assert shown_default(help_text(capsys, command), flag) == str(field_default(cls, field))


def test_finetune_defaults_are_the_named_overrides(capsys):
    text = help_text(capsys, "finetune")
    assert shown_default(text, "--lr X") == str(FINETUNE_DEFAULTS["lr"]) != str(TrainConfig.lr)
    assert shown_default(text, "--max-steps N") == str(FINETUNE_DEFAULTS["max_steps"])
    assert shown_default(text, "--seed N") == str(TrainConfig.seed)


def test_one_flag_name_per_concept(capsys):
    texts = {c: help_text(capsys, c) for c in ("finetune", "translate", "eval", "generate", "train")}
    assert "--val-frac " not in texts["finetune"] and "--src-lang-tag" not in texts["finetune"]
    assert "--src-tag" in texts["finetune"] and "--src-tag" in texts["translate"]
    for c in ("translate", "eval", "generate", "train", "finetune"):
        assert "--device {auto,cpu,cuda}" in texts[c], c
    assert all("--no-repeat-ngram-size" in texts[c] for c in ("translate", "eval", "generate"))


def test_flag_wins_over_set_and_unset_flags_leave_the_dataclass_default():
    from llmcore.cli.train import run_config_from_args

    parser = cli.build_parser()
    args = parser.parse_args(["train", "--set", "lr=0.5", "--set", "dropout=0.2", "--lr", "0.01", "--no-progress"])
    config = run_config_from_args(args)
    assert config.train == {"lr": 0.01, "progress": False} and config.model == {"dropout": 0.2}
    assert config.train_config().batch_size == TrainConfig.batch_size


PLUGIN = '''
from llmcore.models import TransformerLM
from llmcore.registry import ARCHITECTURES


class PluginLM(TransformerLM):
    """A user architecture: nothing new but its name."""


ARCHITECTURES.register("PluginLM", PluginLM)
'''


@pytest.fixture
def clean_registry():
    before = dict(ARCHITECTURES._table)
    yield
    ARCHITECTURES._table.clear()
    ARCHITECTURES._table.update(before)


def test_import_plugin_file_makes_arch_known_to_train(tmp_path, clean_registry, capsys):
    from llmcore.training.run import architecture

    with pytest.raises(ConfigError, match="PluginLM"):
        architecture("PluginLM")
    plugin = tmp_path / "my_arch.py"
    plugin.write_text(PLUGIN, encoding="utf-8")
    corpus = tmp_path / "text.txt"
    corpus.write_text("To be, or not to be, that is the question.\n" * 40, encoding="utf-8")
    out = tmp_path / "run"
    assert main(["train", "--import", str(plugin), "--arch", "PluginLM", "--data", str(corpus), "--out", str(out),
                 "--preset", "debug", "--max-steps", "1", "--batch-size", "2", "--no-progress",
                 "--set", "num_samples=0", "--set", "max_seq_len=16"]) == 0
    assert architecture("PluginLM").__name__ == "PluginLM"
    assert json.loads((out / "config.json").read_text())["architecture"] == "PluginLM"
    capsys.readouterr()
    assert main(["generate", "--import", str(plugin), "--model", str(out), "--prompt", "To",
                 "--max-new-tokens", "3", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("To")


def test_import_errors_are_one_line(tmp_path, capsys):
    assert main(["generate", "--import", str(tmp_path / "nope.py"), "--model", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="no module named 'no_such_module_xyz'"):
        import_plugin("no_such_module_xyz")


def test_unregistered_architecture_names_the_fix(tmp_path, capsys):
    TransformerLM(ModelConfig.from_preset("debug", vocab_size=259)).save_pretrained(tmp_path, tokenizer=ByteTokenizer())
    meta = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**meta, "architecture": "Unknown"}))
    assert main(["generate", "--model", str(tmp_path), "--max-new-tokens", "2"]) == 2
    assert "--import FILE_OR_MODULE" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- finetune
@pytest.fixture
def base(tiny_config, tmp_path):
    tok = ByteTokenizer()
    TransformerLM(tiny_config.replace(vocab_size=tok.vocab_size)).save_pretrained(tmp_path / "base", tokenizer=tok)
    text = tmp_path / "lm.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    return tmp_path / "base", text


def test_finetune_writes_a_run_directory_and_resumes_exactly(base, tmp_path, capsys):
    model, text = base
    common = ["finetune", "--model", str(model), "--data", str(text), "--batch-size", "2", "--device", "cpu",
              "--no-progress", "--eval-interval", "2", "--set", "eval_batches=1",
              "--lr", "0.001", "--set", "min_lr=0.001"]  # a flat schedule: the same whatever max_steps says
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main([*common, "--out", str(straight), "--max-steps", "4"]) == 0
    report = capsys.readouterr().out
    assert report.startswith("trained 4 steps") and "parameters trained" in report and "{" not in report
    assert main([*common, "--out", str(split), "--max-steps", "2"]) == 0
    assert main([*common, "--out", str(split), "--max-steps", "2"]) == 2  # checkpoints there: needs --resume
    assert "--resume" in capsys.readouterr().err
    assert main([*common, "--out", str(split), "--max-steps", "4", "--resume"]) == 0
    for out in (straight, split):
        assert (out / "trainer_state").is_dir() and (out / "model.safetensors").is_file()
        assert (out / "finetune.json").is_file()

    def evals(out):
        rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]

    assert [s for s, _ in evals(split)] == [2, 4]
    assert evals(split)[-1] == pytest.approx(evals(straight)[-1], rel=1e-5)  # resumed = uninterrupted


def test_finetune_patience_and_set(base, tmp_path, capsys):
    model, text = base
    out = tmp_path / "ft"
    assert main(["finetune", "--model", str(model), "--data", str(text), "--out", str(out), "--device", "cpu",
                 "--max-steps", "3", "--batch-size", "2", "--patience", "1", "--set", "warmup_steps=0",
                 "--no-progress"]) == 0
    cfg = json.loads((out / "train_config.json").read_text())
    assert cfg["patience"] == 1 and cfg["warmup_steps"] == 0 and cfg["lr"] == FINETUNE_DEFAULTS["lr"]
    assert main(["finetune", "--model", str(model), "--data", str(text), "--out", str(tmp_path / "x"),
                 "--set", "n_layers=3"]) == 2
    assert "only TrainConfig fields" in capsys.readouterr().err
