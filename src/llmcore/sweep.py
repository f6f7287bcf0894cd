"""Hyper-parameter sweeps: grid or random search over ``llmcore train`` settings, resumable.

Each point of the search is an ordinary training run, made by calling :func:`llmcore.training.run.train`
in-process with one :class:`~llmcore.training.run.RunConfig`, into ``OUT/run-<key=value,...>/``: a normal run
directory that ``from_pretrained``, ``llmcore plot`` and ``llmcore eval`` understand. ::

    llmcore sweep --grid lr=1e-3,3e-3 --grid n_layers=2,4 --out sweeps/lr --max-steps 200 --preset char-small
    llmcore sweep --grid lr=3e-4,1e-3,3e-3 --grid dropout=0,0.1,0.2 --random 4 --seed 0 --out sweeps/rand

A grid key is any ``RunConfig`` field (``preset``, ``tokenizer``, ``data``, ``arch``, ...) or any ``ModelConfig``
/ ``TrainConfig`` field (``lr``, ``max_steps``, ``n_layers``, ``dropout``, ``weight_decay``, ...).
Every key and every value is checked before the first run starts, so a typo costs nothing. Other arguments
pass through to every run; in ``llmcore sweep`` ``--seed`` seeds the random search, so the training seed is
set with ``--set seed=N`` (or swept with ``--grid seed=1,2,3``).

Resuming: a finished run leaves ``sweep_result.json`` in its directory and is skipped next time; an interrupted
one continues from its newest checkpoint (the Trainer's exact resume), so re-running the same command after a
crash only trains what is missing. Results go to ``OUT/results.csv``, sorted by best validation loss. A run
that diverges (:class:`~llmcore.errors.TrainingError`) is recorded as failed and the sweep goes on.

This is deliberately not a scheduler: runs are sequential, in one process. For parallel sweeps, launch
several ``llmcore sweep --random ... --seed ...`` or plain ``llmcore train`` processes.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import random
import re
import time
from pathlib import Path
from typing import Any

from .config import parse_assignment, parse_value
from .errors import ConfigError, TrainingError
from .io import read_json, read_jsonl

logger = logging.getLogger("llmcore.sweep")

RESULT_FILE = "sweep_result.json"  # written into a run directory when its run is complete
RESULTS_CSV = "results.csv"
METRIC_COLUMNS = ["best_val_loss", "best_step", "final_val_loss", "final_train_loss", "steps", "stopped_early",
                  "time_s"]
# RunConfig fields that the sweep itself decides (the run directory, resuming, the override dicts).
_RESERVED = {"out_dir", "resume", "model", "train"}


def _run_fields() -> set[str]:
    from .training.run import RunConfig

    return {f.name for f in dataclasses.fields(RunConfig)} - _RESERVED


def _config_fields() -> set[str]:
    from .config import ModelConfig
    from .training import TrainConfig

    return {f.name for f in dataclasses.fields(ModelConfig)} | {f.name for f in dataclasses.fields(TrainConfig)}


def _route(key: str, run_fields: set[str], fields: set[str], where: str) -> None:
    """ConfigError unless ``key`` is a RunConfig, ModelConfig or TrainConfig field."""
    if key not in run_fields and key not in fields:
        raise ConfigError(f"Unknown {where} key {key!r}: use a RunConfig field ({', '.join(sorted(run_fields))}) "
                          f"or a ModelConfig/TrainConfig field ({', '.join(sorted(fields))}).")


def run_config(base: dict[str, Any], point: dict[str, Any], out: Path) -> Any:
    """The :class:`~llmcore.training.run.RunConfig` of one run: ``base`` settings, then the grid point."""
    from .training.run import RunConfig, split_overrides

    run_fields = _run_fields()
    run, overrides = {}, {}
    for key, value in {**base, **point}.items():
        (run if key in run_fields else overrides)[key] = value
    model, train = split_overrides(overrides)
    return RunConfig(**run, model=model, train=train, out_dir=str(out))


# ---------------------------------------------------------------------------------------------- points of the search
def _fmt(value: Any) -> str:
    """A short, file-name-safe rendering of a value for run names (1e-3 -> 0.001, [a, b] -> a+b)."""
    if isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, (list, tuple)):
        text = "+".join(_fmt(v) for v in value)
    else:
        text = str(value)
    return re.sub(r"[\s/\\:]+", "_", text) or "_"


def run_name(point: dict[str, Any]) -> str:
    """``{"lr": 0.001, "n_layers": 2}`` -> ``"run-lr=0.001,n_layers=2"`` (``"run-base"`` for an empty grid)."""
    return "run-" + (",".join(f"{k}={_fmt(v)}" for k, v in point.items()) or "base")


def points(grid: dict[str, list[Any]], random_n: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """The runs of a search: the full grid, or ``random_n`` distinct grid points drawn with ``seed``.

    Random points are kept in grid order, so ``--random N`` with a larger N runs a superset and earlier
    results are reused.
    """
    keys = list(grid)
    values = [list(dict.fromkeys(_hashable(v) for v in grid[k])) for k in keys]  # duplicates removed, in order
    for k, vs in zip(keys, values):
        if not vs:
            raise ConfigError(f"Grid key {k!r} has no values; give at least one, e.g. --grid {k}=V1,V2.")
    total = 1
    for vs in values:
        total *= len(vs)
    if random_n is None or random_n >= total:
        chosen = range(total)
    elif random_n < 1:
        raise ConfigError(f"--random {random_n} must be a positive number of runs.")
    else:
        chosen = sorted(random.Random(seed).sample(range(total), random_n))
    out = []
    for index in chosen:  # mixed-radix decoding: no need to build the (maybe huge) product
        point, rest = {}, index
        for k, vs in reversed(list(zip(keys, values))):
            rest, i = divmod(rest, len(vs))
            point[k] = _unhashable(vs[i])
        out.append({k: point[k] for k in keys})
    return out


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _unhashable(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


# ---------------------------------------------------------------------------------------------- results
def read_results(run_dir: str | Path) -> dict[str, Any]:
    """Summary of a run directory from its ``metrics.jsonl`` (works for finished and interrupted runs)."""
    run_dir = Path(run_dir)
    train, val = [], []
    for rec in read_jsonl(run_dir / "metrics.jsonl"):
        if "val_loss" in rec:
            val.append(rec)
        elif "train_loss" in rec:
            train.append(rec)
    best = min(val, key=lambda r: r["val_loss"]) if val else None
    steps = max((r.get("step", 0) for r in train + val), default=0)
    cfg_path = run_dir / "train_config.json"
    max_steps = read_json(cfg_path, "run's TrainConfig").get("max_steps") if cfg_path.is_file() else None
    return {"best_val_loss": best and best["val_loss"], "best_step": best and best["step"],
            "final_val_loss": val[-1]["val_loss"] if val else None,
            "final_train_loss": train[-1]["train_loss"] if train else None, "steps": steps,
            "stopped_early": bool(max_steps and steps < max_steps)}


def _sort_key(row: dict[str, Any]) -> tuple[bool, float]:
    v = row.get("best_val_loss")
    return (v is None, v if v is not None else 0.0)


def write_csv(rows: list[dict[str, Any]], keys: list[str], path: str | Path) -> Path:
    """``results.csv``: one row per run, grid values and metrics, sorted by best validation loss."""
    path = Path(path)
    columns = ["run", *keys, *METRIC_COLUMNS, "error", "run_dir"]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in sorted(rows, key=_sort_key):
            writer.writerow({k: (_fmt(row[k]) if k in keys else row.get(k)) for k in columns})
    return path


def format_table(rows: list[dict[str, Any]], keys: list[str]) -> str:
    """A fixed-width text table of the rows (as sorted), for the terminal."""
    columns = [*keys, "best_val_loss", "best_step", "final_train_loss", "steps", "status"]

    def cell(row: dict[str, Any], k: str) -> str:
        v = row.get(k)
        if v is None:
            return "-"
        return f"{v:.4f}" if isinstance(v, float) and "loss" in k else _fmt(v)

    body = [[cell(r, k) for k in columns] for r in rows]
    widths = [max(len(k), *(len(b[i]) for b in body)) if body else len(k) for i, k in enumerate(columns)]
    lines = ["  ".join(k.ljust(w) for k, w in zip(columns, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- the sweep
def sweep(base_args: dict[str, Any], grid: dict[str, list[Any]], out_dir: str | Path, random_n: int | None = None,
          seed: int = 0) -> list[dict[str, Any]]:
    """Train one run per grid point (or ``random_n`` random points) into ``out_dir``; rows sorted by val loss.

    Args:
        base_args: settings shared by every run: RunConfig fields (``preset``, ``data``, ``tokenizer``, ...)
            and/or ModelConfig / TrainConfig fields (``max_steps``, ``dropout``, ``progress``, ...).
        grid: key -> list of values; keys as for ``base_args``.
        out_dir: the sweep directory; run ``i`` goes to ``out_dir/run-<key=value,...>/``.
        random_n: sample this many distinct grid points (``seed``) instead of running the whole grid.

    Returns:
        one dict per run: ``run``, the grid values, ``best_val_loss``, ``best_step``, ``final_val_loss``,
        ``final_train_loss``, ``steps``, ``stopped_early``, ``time_s``, ``status`` (``trained``, ``resumed``,
        ``skipped`` when already complete, ``failed``), ``error`` and ``run_dir``; best first.
    """
    from .training import distributed as dist
    from .training import run as runs
    from .training.checkpoint import latest_checkpoint

    run_fields, fields = _run_fields(), _config_fields()
    base = {k.replace("-", "_"): v for k, v in base_args.items()}
    grid = {k.replace("-", "_"): (list(v) if isinstance(v, (list, tuple)) else [v]) for k, v in grid.items()}
    for where, items in (("base_args", base), ("grid", grid)):
        for key in items:
            _route(key, run_fields, fields, where)
    out = Path(out_dir)
    plan = []
    for point in points(grid, random_n, seed):  # build and check every run before training any
        config = run_config(base, point, out / run_name(point))
        config.check()
        plan.append((point, config))
    is_main = dist.detect().is_main
    if is_main:
        from .rundir import claim_dir

        claim_dir(out, "llmcore sweep", legacy=("sweep",))  # each run directory is claimed by train()
        (out / "sweep.json").write_text(json.dumps({"base_args": base, "grid": grid, "random": random_n,
                                                    "seed": seed}, indent=2, default=str) + "\n", encoding="utf-8")
    rows: list[dict[str, Any]] = []
    for i, (point, config) in enumerate(plan, 1):
        run_dir = config.out
        done = run_dir / RESULT_FILE
        if done.is_file():
            row = {**read_json(done, "result of a finished sweep run"), "status": "skipped"}
            logger.info("[%d/%d] %s: already complete, skipped", i, len(plan), run_dir.name)
        else:
            config.resume = latest_checkpoint(run_dir) is not None
            status, error = ("resumed" if config.resume else "trained"), None
            logger.info("[%d/%d] %s: %s", i, len(plan), run_dir.name, "resuming" if config.resume else "training")
            t0 = time.perf_counter()
            try:
                runs.train(config)
            except TrainingError as e:  # a diverging setting is a result, not a reason to stop the sweep
                status, error = "failed", str(e)
                logger.warning("%s failed: %s", run_dir.name, e)
            row = {"run": run_dir.name, **point, **read_results(run_dir),
                   "time_s": round(time.perf_counter() - t0, 1), "error": error, "run_dir": str(run_dir)}
            if is_main:
                run_dir.mkdir(parents=True, exist_ok=True)
                done.write_text(json.dumps({**row, "status": status}, indent=2, default=str) + "\n",
                                encoding="utf-8")
            row["status"] = status
        rows.append(row)
        if is_main:  # after every run, so a long sweep can be inspected while it goes
            write_csv(rows, list(grid), out / RESULTS_CSV)
    return sorted(rows, key=_sort_key)


# ---------------------------------------------------------------------------------------------- grid syntax
def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``["lr=1e-3,3e-3", "n_layers=2,4"]`` -> ``{"lr": [0.001, 0.003], "n_layers": [2, 4]}``."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, values = parse_assignment(item, "--grid", "lr=1e-3,3e-3 (KEY=V1,V2,...)")
        if key in grid:
            raise ConfigError(f"--grid {key} is given twice; list all its values once: --grid {key}=V1,V2.")
        grid[key] = [parse_value(v.strip()) for v in values.split(",")]
    return grid


__all__ = ["sweep", "run_config", "points", "run_name", "read_results", "write_csv", "format_table", "parse_grid"]
