"""``llmcore sweep``: grid or random search over training settings (the search itself is :mod:`llmcore.sweep`).

    llmcore sweep --grid lr=1e-3,3e-3 --grid n_layers=2,4 --out sweeps/lr --max-steps 200 --preset char-small
    llmcore sweep --grid lr=3e-4,1e-3,3e-3 --grid dropout=0,0.1,0.2 --random 4 --seed 0 --out sweeps/rand

Every ``llmcore train`` option passes through to all runs. A grid key is a RunConfig field (``preset``,
``tokenizer``, ``data``, ...) or a ModelConfig / TrainConfig field (``lr``, ``n_layers``, ``dropout``, ...).
Here ``--seed`` seeds the random search; set the training seed with ``--set seed=N`` or ``--grid seed=1,2``.
Complete runs are skipped, interrupted ones resumed; results go to OUT/results.csv, best first.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .common import add_model_command
from .train import add_train_args, overrides_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_model_command(subparsers, "sweep", help="grid or random hyper-parameter search", description=__doc__)
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="values to sweep; a RunConfig, ModelConfig or TrainConfig field (repeatable)")
    p.add_argument("--random", type=int, metavar="N", help="run N random grid points instead of the whole grid")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of --random (default: 0); set the training seed with --set seed=N")
    p.add_argument("--out", required=True, metavar="DIR", help="sweep directory")
    add_train_args(p, exclude=("seed",))
    p.set_defaults(func=run_sweep)


def run_sweep(args: argparse.Namespace) -> int:
    from ..sweep import RESULTS_CSV, format_table, parse_grid, sweep

    logging.basicConfig(format="%(message)s")  # as `llmcore train` does: progress lines without a bar
    logging.getLogger("llmcore").setLevel(logging.INFO)
    grid = parse_grid(args.grid)
    rows = sweep(overrides_from_args(args, exclude=("seed",)), grid, args.out, random_n=args.random, seed=args.seed)
    print(format_table(rows, list(grid)))
    print(f"{len(rows)} runs; results in {Path(args.out) / RESULTS_CSV}")
    return 0
