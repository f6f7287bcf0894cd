"""Hyper-parameter sweeps: grid or random search over ``llmcore train`` settings, resumable.

Each point of the search is an ordinary ``llmcore train`` run, made by calling the training command's own
function (:func:`llmcore.training.cli.run_train`) in-process, into ``OUT/run-<key=value,...>/``: a normal run
directory that ``from_pretrained``, ``llmcore plot`` and ``llmcore eval`` understand. ::

    llmcore sweep --grid lr=1e-3,3e-3 --grid n_layers=2,4 --out sweeps/lr --max-steps 200 --preset char-small
    llmcore sweep --grid lr=3e-4,1e-3,3e-3 --grid dropout=0,0.1,0.2 --random 4 --seed 0 --out sweeps/rand

A grid key is any ``llmcore train`` option (``lr``, ``max_steps``, ``preset``, ``tokenizer``, ...) or any
``ModelConfig`` / ``TrainConfig`` field (``n_layers``, ``dropout``, ``weight_decay``, ... passed as ``--set``).
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

import argparse
import csv
import dataclasses
import json
import logging
import random
import re
import time
from pathlib import Path
from typing import Any

from .errors import ConfigError, TrainingError

logger = logging.getLogger("llmcore.sweep")

RESULT_FILE = "sweep_result.json"  # written into a run directory when its run is complete
RESULTS_CSV = "results.csv"
METRIC_COLUMNS = ["best_val_loss", "best_step", "final_val_loss", "final_train_loss", "steps", "stopped_early",
                  "time_s"]
# train options that the sweep itself decides (the run directory, resuming) or that make no sense per run.
_RESERVED = {"help", "out", "resume", "func", "sets", "command", "debug"}


# ---------------------------------------------------------------------------------------------- the train parser
def _train_parser() -> argparse.ArgumentParser:
    """The ``llmcore train`` parser itself, so the sweep always accepts exactly what training accepts."""
    from .training.cli import register

    sub = argparse.ArgumentParser(add_help=False).add_subparsers()
    register(sub)
    return sub.choices["train"]


def _train_actions() -> dict[str, argparse.Action]:
    return {a.dest: a for a in _train_parser()._actions if a.dest not in _RESERVED}


def _config_fields() -> set[str]:
    from .config import ModelConfig
    from .training import TrainConfig

    return {f.name for f in dataclasses.fields(ModelConfig)} | {f.name for f in dataclasses.fields(TrainConfig)}


def _route(key: str, actions: dict[str, argparse.Action], fields: set[str], where: str) -> str:
    """"arg" (a train option) or "set" (a config field, passed as --set); ConfigError for anything else."""
    if key in actions:
        return "arg"
    if key in fields:
        return "set"
    raise ConfigError(f"Unknown {where} key {key!r}: use an `llmcore train` option ({', '.join(sorted(actions))}) "
                      f"or a ModelConfig/TrainConfig field ({', '.join(sorted(fields))}).")


def _coerce(key: str, value: Any, action: argparse.Action) -> Any:
    """Convert a value the way argparse would have converted the same text on the command line."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be true or false.")
        return value
    if action.nargs in ("+", "*"):  # e.g. --data: one grid value is one list of paths
        return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
    if value is not None and callable(action.type) and not isinstance(value, bool):
        try:
            value = action.type(str(value))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{key}={value!r} is invalid: {e}.") from None
    elif value is not None and not isinstance(value, str):
        value = str(value)
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{key}={value!r} is invalid; choose from {', '.join(map(str, action.choices))}.")
    return value


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


def _namespace(base: dict[str, Any], point: dict[str, Any], actions: dict[str, argparse.Action],
               fields: set[str], out: Path) -> argparse.Namespace:
    """The ``llmcore train`` arguments of one run: parser defaults, then base args, then the grid point."""
    ns = _train_parser().parse_args([])
    sets = list(base.get("sets") or [])
    for where, items in (("base_args", base), ("grid", point)):
        for key, value in items.items():
            if key == "sets":
                continue
            if _route(key, actions, fields, where) == "arg":
                setattr(ns, key, _coerce(key, value, actions[key]))
            else:
                sets.append(f"{key}={value if isinstance(value, str) else json.dumps(value)}")
    ns.sets, ns.out, ns.resume = sets, str(out), False
    return ns


def _check_run(ns: argparse.Namespace) -> None:
    """Build the run's configs without training, so bad values fail before the first run starts."""
    from .config import ModelConfig
    from .training import TrainConfig
    from .training.cli import FLAGS, split_sets

    model_sets, train_sets = split_sets(ns.sets)
    flags = {field: getattr(ns, flag) for flag, field in FLAGS.items() if getattr(ns, flag) is not None}
    TrainConfig.from_dict({**train_sets, **flags, "out_dir": ns.out})
    ModelConfig.from_preset(ns.preset, **model_sets)  # the real vocab_size comes from the tokenizer later


# ---------------------------------------------------------------------------------------------- results
def read_results(run_dir: str | Path) -> dict[str, Any]:
    """Summary of a run directory from its ``metrics.jsonl`` (works for finished and interrupted runs)."""
    run_dir = Path(run_dir)
    train, val = [], []
    path = run_dir / "metrics.jsonl"
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "val_loss" in rec:
            val.append(rec)
        elif "train_loss" in rec:
            train.append(rec)
    best = min(val, key=lambda r: r["val_loss"]) if val else None
    steps = max((r.get("step", 0) for r in train + val), default=0)
    cfg_path = run_dir / "train_config.json"
    max_steps = json.loads(cfg_path.read_text(encoding="utf-8")).get("max_steps") if cfg_path.is_file() else None
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
        base_args: settings shared by every run: ``llmcore train`` options by their Python name (``max_steps``,
            ``preset``, ``data``, ``tokenizer``, ``no_progress``, ``sets``: a list of ``"key=value"``) and/or
            ModelConfig / TrainConfig fields (``dropout``, ``warmup_steps``, ...).
        grid: key -> list of values; keys as for ``base_args``.
        out_dir: the sweep directory; run ``i`` goes to ``out_dir/run-<key=value,...>/``.
        random_n: sample this many distinct grid points (``seed``) instead of running the whole grid.

    Returns:
        one dict per run: ``run``, the grid values, ``best_val_loss``, ``best_step``, ``final_val_loss``,
        ``final_train_loss``, ``steps``, ``stopped_early``, ``time_s``, ``status`` (``trained``, ``resumed``,
        ``skipped`` when already complete, ``failed``), ``error`` and ``run_dir``; best first.
    """
    from .training import distributed as dist
    from .training.checkpoint import latest_checkpoint
    from .training.cli import run_train

    actions, fields = _train_actions(), _config_fields()
    base = {k.replace("-", "_"): v for k, v in base_args.items()}
    grid = {k.replace("-", "_"): (list(v) if isinstance(v, (list, tuple)) else [v]) for k, v in grid.items()}
    for where, items in (("base_args", base), ("grid", grid)):
        for key in items:
            if key != "sets" or where == "grid":
                _route(key, actions, fields, where)
    out = Path(out_dir)
    plan = []
    for point in points(grid, random_n, seed):  # build and check every run before training any
        ns = _namespace(base, point, actions, fields, out / run_name(point))
        _check_run(ns)
        plan.append((point, ns))
    is_main = dist.detect().is_main
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "sweep.json").write_text(json.dumps({"base_args": base, "grid": grid, "random": random_n,
                                                    "seed": seed}, indent=2, default=str) + "\n", encoding="utf-8")
    rows: list[dict[str, Any]] = []
    for i, (point, ns) in enumerate(plan, 1):
        run_dir = Path(ns.out)
        done = run_dir / RESULT_FILE
        if done.is_file():
            row = {**json.loads(done.read_text(encoding="utf-8")), "status": "skipped"}
            logger.info("[%d/%d] %s: already complete, skipped", i, len(plan), run_dir.name)
        else:
            ns.resume = latest_checkpoint(run_dir) is not None
            status, error = ("resumed" if ns.resume else "trained"), None
            logger.info("[%d/%d] %s: %s", i, len(plan), run_dir.name, "resuming" if ns.resume else "training")
            t0 = time.perf_counter()
            try:
                run_train(ns)
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


# ---------------------------------------------------------------------------------------------- command line
def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``["lr=1e-3,3e-3", "n_layers=2,4"]`` -> ``{"lr": [0.001, 0.003], "n_layers": [2, 4]}``."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key or not values.strip():
            raise ConfigError(f"--grid {item!r} is not KEY=V1,V2,..., e.g. --grid lr=1e-3,3e-3.")
        if key in grid:
            raise ConfigError(f"--grid {key} is given twice; list all its values once: --grid {key}=V1,V2.")
        grid[key] = [_parse_value(v.strip()) for v in values.split(",")]
    return grid


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def register(subparsers: argparse._SubParsersAction) -> None:
    train = _train_parser()
    p = subparsers.add_parser(
        "sweep", parents=[train], conflict_handler="resolve", help="grid or random hyper-parameter search",
        description="Train one `llmcore train` run per grid point into OUT/run-<key=value,...>/, skip runs that "
                    "are complete, resume interrupted ones, and write OUT/results.csv sorted by best "
                    "validation loss. Every `llmcore train` option passes through to all runs.")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="values to sweep; a train option or a ModelConfig/TrainConfig field (repeatable)")
    p.add_argument("--random", type=int, metavar="N", help="run N random grid points instead of the whole grid")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of --random (default 0); set the training seed with --set seed=N")
    p.add_argument("--out", required=True, metavar="DIR", help="sweep directory")
    p.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)  # a sweep always resumes
    p.set_defaults(func=run_sweep)


def run_sweep(args: argparse.Namespace) -> int:
    logging.basicConfig(format="%(message)s")  # as `llmcore train` does: progress lines without a bar
    logging.getLogger("llmcore").setLevel(logging.INFO)
    grid = parse_grid(args.grid)
    defaults = vars(_train_parser().parse_args([]))
    base = {k: getattr(args, k) for k in _train_actions() if k != "seed" and getattr(args, k) != defaults[k]}
    if args.sets:
        base["sets"] = list(args.sets)
    rows = sweep(base, grid, args.out, random_n=args.random, seed=args.seed)
    print(format_table(rows, list(grid)))
    print(f"{len(rows)} runs; results in {Path(args.out) / RESULTS_CSV}")
    return 0


__all__ = ["sweep", "points", "run_name", "read_results", "write_csv", "format_table", "parse_grid", "register"]
