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
from llmcore.tokenizer import ByteTokenizer
from llmcore.training import TrainConfig
from llmcore.training.run import RunConfig

COMMANDS = ["tokenizer", "prepare", "train", "eval", "finetune", "merge", "classify", "generate", "translate", "serve",
            "models", "convert", "sweep", "plot"]


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
    ("generate", "--no-repeat-ngram-size N", GenerationConfig, "no_repeat_ngram_size"),
    ("translate", "--batch-size N", TrainConfig, "batch_size"),
    ("generate", "--num-beams N", GenerationConfig, "num_beams"),
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


def test_translate_and_eval_default_to_the_examples_decoding(capsys):
    from llmcore.cli.translate import TRANSLATE_DEFAULTS

    assert TRANSLATE_DEFAULTS == {"num_beams": 4, "no_repeat_ngram_size": 3}
    for command in ("translate", "eval"):
        text = help_text(capsys, command)
        assert shown_default(text, "--num-beams N") == "4" != str(GenerationConfig.num_beams)
        assert shown_default(text, "--no-repeat-ngram-size N") == "3"


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


# ---------------------------------------------------------------------------------------------- help and errors
SRC = str(Path(cli.__file__).parents[2])


def run_python(code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter importing this checkout's llmcore (nothing imported beforehand)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": SRC})


def test_help_of_every_command_imports_no_torch():
    out = run_python(
        "import sys, llmcore\n"
        "from llmcore.cli import all_parsers, build_parser\n"
        "parsers = all_parsers(build_parser())\n"
        "texts = [p.format_help() for p in parsers]\n"
        "print(len(parsers), sorted(m for m in ('torch', 'numpy', 'safetensors') if m in sys.modules))\n")
    assert out.returncode == 0, out.stderr
    count, loaded = out.stdout.split(" ", 1)
    assert int(count) == len(COMMANDS) + 3 and loaded.strip() == "[]"  # + top level, tokenizer train / encode


def test_lazy_root_keeps_from_imports_dir_and_registries():
    # ONE fresh interpreter for both checks (each costs a torch import, ~2 s): the registry check first, while
    # nothing has imported llmcore.modules, then the lazy root's from-imports, which must load the trainer.
    out = run_python(
        "import sys, llmcore\n"
        "assert 'torch' not in sys.modules and 'llmcore.modules' not in sys.modules\n"
        # config validation finds the built-in names although nothing imported llmcore.modules yet
        "from llmcore.config import ModelConfig\n"
        "from llmcore.registry import ARCHITECTURES\n"
        "print(ModelConfig.from_preset('debug').norm, 'TransformerLM' in ARCHITECTURES)\n"
        "try:\n"
        "    ModelConfig.from_preset('debug', norm='scalenorm')\n"
        "except Exception as e:\n"
        "    print(f'{type(e).__name__}: {e}')\n"
        "assert 'llmcore.training.trainer' not in sys.modules\n"
        "from llmcore import Trainer, TransformerLM, ModelConfig, ConfigError, TrainingInterrupted\n"
        "assert set(llmcore.__all__) <= set(dir(llmcore)) and 'llmcore.training.trainer' in sys.modules\n"
        "print(Trainer.__module__, TransformerLM.__module__)\n")
    assert out.returncode == 0, out.stderr
    registry, error, root = out.stdout.splitlines()
    assert registry.split() == ["rmsnorm", "True"]
    assert error.startswith("ConfigError: ModelConfig.norm='scalenorm' is unknown; registered: layernorm, rmsnorm.")
    assert root.split() == ["llmcore.training.trainer", "llmcore.models.transformer"]


def test_lazy_package_rejects_unknown_names():
    import llmcore.training

    with pytest.raises(AttributeError, match="module 'llmcore.training' has no attribute 'Trainr'"):
        llmcore.training.Trainr  # noqa: B018


def all_help_texts() -> dict[str, str]:
    return {p.prog: p.format_help() for p in cli.all_parsers(cli.build_parser())}


def test_help_shows_plain_text_defaults_and_presets():
    from llmcore.config import PRESETS

    texts = all_help_texts()
    for prog, text in texts.items():
        assert not re.search(r"``|:(func|class|mod|meth|data):`|::$", text, re.M), prog
    for p in cli.all_parsers(cli.build_parser()):  # every option with a default value says it (None: "instead")
        for action in p._actions:
            if (action.option_strings and action.nargs != 0 and not action.required
                    and action.default not in (None, [])):
                assert "default" in (action.help or ""), (p.prog, action.option_strings)
    train = " ".join(texts["llmcore train"].split())
    assert f"--preset NAME model shape preset: {', '.join(PRESETS)}" in train
    assert "--seed SEED default: 0" in " ".join(texts["llmcore tokenizer train"].split())


@pytest.mark.parametrize("argv", [["--debug", "prepare"], ["prepare", "--debug"]])
def test_debug_is_accepted_before_or_after_the_command(argv, tmp_path, capsys):
    bad = [*argv, "--out", str(tmp_path / "p"), "--val-fraction", "2"]
    assert main([a for a in bad if a != "--debug"]) == 2 and "--val-fraction 2" in capsys.readouterr().err
    with pytest.raises(ConfigError):  # --debug: the traceback instead of one line
        main(bad)
    assert cli.build_parser().parse_args(["prepare", "--out", "x"]).debug is False


@pytest.mark.parametrize("message, shown", [
    ("... or pass sliding_window=True to keep only the last 64 tokens.", "or pass --sliding-window to keep"),
    ("build the tokenizer from text that contains it, or use unk='replace'", "or train with --tokenizer byte"),
    ("needs at least 65; use max_seq_len <= 40 (the model's context", "use --set max_seq_len=40 (or less)"),
    ("lower max_new_tokens to at most 3", "lower --max-new-tokens to at most 3"),
    ("(for val: a larger val_fraction)", "(for val: a larger --val-fraction)"),
    ("pass --resume (resume=True) to continue it", "pass --resume to continue it"),
])
def test_cli_hint_names_the_flag(message, shown):
    from llmcore.cli.common import cli_hint

    assert shown in cli_hint(message)


def test_library_errors_print_the_command_line_spelling(tmp_path, capsys):
    from llmcore.tokenizer import CharTokenizer

    CharTokenizer.from_text("abc").save(tmp_path / "tok")
    assert main(["tokenizer", "encode", "--tokenizer", str(tmp_path / "tok"), "--text", "abz"]) == 2
    err = capsys.readouterr().err
    assert "'z'" in err and "--tokenizer byte" in err and "or use unk='replace'" not in err

    from llmcore.cli.common import cli_hint
    from llmcore.data import TokenDataset
    from llmcore.errors import DataError

    with pytest.raises(DataError) as e:  # the key a user sets is max_seq_len, not the dataset's block_size
        TokenDataset(list(range(10)), block_size=64, split="val")
    assert "use max_seq_len <= 9 (the model's context" in str(e.value)
    assert "use --set max_seq_len=9 (or less)" in cli_hint(str(e.value))


def tiny_train(tmp_path, *extra: str) -> list[str]:
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog.\n" * 60, encoding="utf-8")
    return ["train", "--data", str(text), "--preset", "debug", "--out", str(tmp_path / "run"), "--device", "cpu",
            "--batch-size", "2", "--eval-interval", "2", "--max-steps", "6", "--set", "eval_batches=1", *extra]


def test_ctrl_c_names_the_step_and_resume_says_where_it_continues(tmp_path, capsys, caplog, monkeypatch):
    from llmcore.training.callbacks import MetricsLogger

    real = MetricsLogger.on_step_end

    def interrupt_at_step_3(self, trainer, info):
        real(self, trainer, info)
        if info["step"] == 3:
            raise KeyboardInterrupt  # what Ctrl-C raises inside the loop

    monkeypatch.setattr(MetricsLogger, "on_step_end", interrupt_at_step_3)
    assert main(tiny_train(tmp_path, "--no-progress")) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "llmcore train: interrupted at step 3; rerun with --resume to continue (from the checkpoint of step 2)")
    monkeypatch.setattr(MetricsLogger, "on_step_end", real)
    with caplog.at_level("INFO", logger="llmcore"):
        assert main(tiny_train(tmp_path, "--no-progress", "--resume")) == 0
    resumed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resumed from step")]
    assert resumed == [f"resumed from step 2 ({tmp_path / 'run' / 'trainer_state' / 'ckpt-000002'})"]


def test_ctrl_c_before_the_first_checkpoint_does_not_suggest_resume(tmp_path, capsys, monkeypatch):
    from llmcore.training.callbacks import MetricsLogger

    def interrupt(self, trainer, info):
        raise KeyboardInterrupt

    monkeypatch.setattr(MetricsLogger, "on_step_end", interrupt)
    assert main(tiny_train(tmp_path, "--no-progress")) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "llmcore train: interrupted at step 1, before the first checkpoint; rerun to start over")
