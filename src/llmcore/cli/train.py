"""``llmcore train``: text to a trained run directory in one command (a thin shell over ``training.run.train``).

It builds the tokenizer, prepares the data into ``OUT/data`` (reused when the same data and tokenizer were
prepared before), builds the model from a registered architecture (``--arch``), a preset and ``--set
key=value`` overrides, trains, and prints samples. With no ``--data`` it trains on the bundled Shakespeare
with a character tokenizer, nanoGPT's shakespeare-char "baby GPT" on a CPU::

    llmcore train --max-steps 600
    llmcore prepare --data corpus/ --tokenizer sp --out data/corpus && llmcore train --data data/corpus
    torchrun --nproc_per_node 4 -m llmcore train --data corpus/ --tokenizer sp --vocab-size 8000 --preset small
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from ..training.config import TrainConfig
from ..training.run import RunConfig, split_overrides
from .common import add_dataclass_args, add_model_command, add_set_arg, given, make_config, parse_sets

RUN_FLAGS = ["data", "tokenizer", "vocab_size", "val_fraction", "dask", "preset", "arch"]  # RunConfig fields
TRAIN_FLAGS = ["max_steps", "batch_size", "grad_accum", "lr", "eval_interval", "patience", "seed", "device",
               "dtype", "compile", "progress"]  # TrainConfig fields


RUN_HELP = {"data": "UTF-8 text files (.txt, .gz, .xz, .zst, .jsonl), glob patterns or directories of *.txt / "
                    "*.txt.gz, or one `llmcore prepare` output directory, used as is (default: the bundled "
                    "Shakespeare)"}


def add_train_args(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """The flags of one training run (shared with ``llmcore sweep``, which passes them to every run)."""
    add_dataclass_args(parser, RunConfig, [f for f in RUN_FLAGS if f not in exclude], help=RUN_HELP)
    add_set_arg(parser)
    add_dataclass_args(parser, TrainConfig, [f for f in TRAIN_FLAGS if f not in exclude])


def overrides_from_args(args: argparse.Namespace, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """RunConfig fields and ModelConfig / TrainConfig overrides given on the command line, flat.

    An explicit flag wins over the same key in ``--set``; ``exclude`` names flags the command uses otherwise.
    """
    chosen = [f for f in (*TRAIN_FLAGS, *RUN_FLAGS) if f not in exclude]
    return {**parse_sets(getattr(args, "sets", [])), **given(args, TrainConfig, chosen),
            **given(args, RunConfig, chosen)}


def run_config_from_args(args: argparse.Namespace) -> RunConfig:
    flat = overrides_from_args(args)
    run = {k: flat.pop(k) for k in RUN_FLAGS if k in flat}
    model, train = split_overrides(flat)
    return make_config(RunConfig, {**run, "model": model, "train": train, "out_dir": args.out, "resume": args.resume})


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_model_command(subparsers, "train", help="pretrain a language model on text files (default: Shakespeare)",
                          description=__doc__)
    add_train_args(p)
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/PRESET)")
    p.add_argument("--resume", action="store_true", help="continue the newest checkpoint in --out")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from ..training.run import format_summary, train

    logging.basicConfig(format="%(message)s")  # evaluation lines and samples when there is no progress bar
    logging.getLogger("llmcore").setLevel(logging.INFO)
    summary = train(run_config_from_args(args))
    if summary["is_main"]:
        print(format_summary(summary))
    return 0
