"""Sweeps: grid expansion, run directories, results.csv order, skipping and resuming runs, early errors."""

from __future__ import annotations

import csv

import pytest

import llmcore.sweep as sweep_module
import llmcore.training.run as run_module
from llmcore.cli import main
from llmcore.errors import ConfigError, TrainingError
from llmcore.sweep import parse_grid, points, run_name, sweep

TEXT = "".join(f"To be, or not to be, that is the question {i}.\nWhether 'tis nobler in the mind.\n" for i in range(60))


@pytest.fixture
def base(tmp_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    return {"data": [str(corpus)], "preset": "debug", "max_steps": 2, "batch_size": 2, "eval_interval": 2,
            "progress": False, "num_samples": 0, "eval_batches": 1, "warmup_steps": 0}


@pytest.fixture
def count_runs(monkeypatch):
    calls = []
    real = run_module.train

    def counting(config):
        assert isinstance(config, run_module.RunConfig)  # the Python API, no argparse Namespace
        calls.append(config.out_dir)
        return real(config)

    monkeypatch.setattr(run_module, "train", counting)
    return calls


def test_points_grid_and_random():
    grid = {"lr": [1e-3, 3e-3], "n_layers": [2, 4]}
    assert points(grid) == [{"lr": 1e-3, "n_layers": 2}, {"lr": 1e-3, "n_layers": 4},
                            {"lr": 3e-3, "n_layers": 2}, {"lr": 3e-3, "n_layers": 4}]
    some = points(grid, random_n=2, seed=1)
    assert len(some) == 2 and all(p in points(grid) for p in some)
    assert some == points(grid, random_n=2, seed=1)  # reproducible
    assert points(grid, random_n=10) == points(grid)  # more than the grid: the whole grid
    assert run_name({"lr": 1e-3, "n_layers": 2}) == "run-lr=0.001,n_layers=2"
    assert parse_grid(["lr=1e-3,3e-3", "preset=debug"]) == {"lr": [1e-3, 3e-3], "preset": ["debug"]}


def test_sweep_runs_writes_sorted_csv_and_resumes(tmp_path, base, count_runs):
    out = tmp_path / "sweep"
    rows = sweep(base, {"lr": [1e-4, 3e-2], "n_layers": [1]}, out)
    assert len(count_runs) == 2
    dirs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert dirs == ["run-lr=0.0001,n_layers=1", "run-lr=0.03,n_layers=1"]
    for d in dirs:
        assert (out / d / "metrics.jsonl").is_file() and (out / d / "sweep_result.json").is_file()
    with (out / "results.csv").open(encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    losses = [float(r["best_val_loss"]) for r in table]
    assert losses == sorted(losses) and len(table) == 2
    assert [r["run"] for r in rows] == [r["run"] for r in table]
    assert {r["status"] for r in rows} == {"trained"}

    weights = out / dirs[0] / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    again = sweep(base, {"lr": [1e-4, 3e-2], "n_layers": [1]}, out)
    assert len(count_runs) == 2, "completed runs must not be trained again"
    assert weights.stat().st_mtime_ns == mtime
    assert {r["status"] for r in again} == {"skipped"}
    assert [r["best_val_loss"] for r in again] == [r["best_val_loss"] for r in rows]

    (out / dirs[1] / "sweep_result.json").unlink()  # as if killed after its last checkpoint
    resumed = sweep({**base, "max_steps": 3}, {"lr": [1e-4, 3e-2], "n_layers": [1]}, out)
    assert len(count_runs) == 3 and weights.stat().st_mtime_ns == mtime
    status = {r["run"]: (r["status"], r["steps"]) for r in resumed}
    assert status == {dirs[0]: ("skipped", 2), dirs[1]: ("resumed", 3)}


def test_unknown_key_fails_before_any_run(tmp_path, base, count_runs):
    with pytest.raises(ConfigError, match="n_layer"):
        sweep(base, {"lr": [1e-3], "n_layer": [2]}, tmp_path / "s")
    with pytest.raises(ConfigError, match="dropout"):  # a bad value is caught before training too
        sweep(base, {"lr": [1e-3], "dropout": [0.1, 1.5]}, tmp_path / "s")
    assert count_runs == [] and not (tmp_path / "s").exists()


def test_cli(tmp_path, base, capsys):
    out = tmp_path / "cli"
    argv = ["sweep", "--grid", "lr=1e-3", "--out", str(out), "--data", base["data"][0], "--preset", "debug",
            "--max-steps", "1", "--batch-size", "2", "--no-progress", "--set", "num_samples=0",
            "--set", "eval_batches=1"]
    assert main(argv) == 0
    assert "best_val_loss" in capsys.readouterr().out and (out / "results.csv").is_file()
    assert main(["sweep", "--grid", "bogus=1", "--out", str(out)]) == 2
    assert "bogus" in capsys.readouterr().err


def test_diverged_run_is_recorded_and_the_sweep_goes_on(tmp_path, base, monkeypatch):
    calls = []

    def diverge(config):
        calls.append(config.out_dir)
        raise TrainingError("Training diverged at step 1: the loss is nan.")

    monkeypatch.setattr(run_module, "train", diverge)
    rows = sweep(base, {"lr": [10.0, 20.0]}, tmp_path / "s")
    assert len(calls) == 2 and {r["status"] for r in rows} == {"failed"}
    assert all("diverged" in r["error"] for r in rows)
    assert {r["status"] for r in sweep(base, {"lr": [10.0, 20.0]}, tmp_path / "s")} == {"skipped"}
    assert len(calls) == 2


def test_sweep_builds_run_configs_without_argparse(tmp_path, base):
    config = sweep_module.run_config(base, {"lr": 3e-3, "n_layers": 1, "preset": "debug"}, tmp_path / "r")
    assert config.preset == "debug" and config.data == base["data"] and config.out_dir == str(tmp_path / "r")
    assert config.model == {"n_layers": 1}
    assert config.train == {"max_steps": 2, "batch_size": 2, "eval_interval": 2, "progress": False,
                            "num_samples": 0, "eval_batches": 1, "warmup_steps": 0, "lr": 3e-3}
    source = open(sweep_module.__file__, encoding="utf-8").read()
    assert "argparse" not in source and "Namespace" not in source
