"""``llmcore prepare``: build or load a tokenizer, then tokenize a corpus into ``train.bin`` / ``val.bin``.

Writes ``OUT/tokenizer/`` (the tokenizer, reloadable with ``load_tokenizer``), ``OUT/train.bin``,
``OUT/val.bin`` and ``OUT/meta.json``; see :mod:`llmcore.data.shards` for the format.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..training.run import RunConfig
from .common import add_dataclass_args, given, make_config

DATA_FLAGS = ["data", "tokenizer", "vocab_size", "val_fraction"]  # RunConfig fields, shared with train


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="tokenize text files into train.bin / val.bin",
        description="Tokenize text into flat id files for training. Without --data, uses the bundled "
                    "Shakespeare corpus; the split is by position (last --val-fraction of characters -> val).",
    )
    add_dataclass_args(p, RunConfig, DATA_FLAGS)
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--workers", type=int, metavar="N",
                   help="tokenizer processes (default: all cores for large inputs, in-process for small ones)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data import build_tokenizer, prepare, resolve_paths
    from ..rundir import claim_dir

    opts = make_config(RunConfig, given(args, RunConfig, DATA_FLAGS))  # checks --val-fraction
    paths = [Path(p) for p in opts.data] if opts.data else None
    resolve_paths(paths)  # fail on a bad path before training a tokenizer
    out = Path(args.out)
    claim_dir(out, "llmcore prepare", legacy=("prepared",))  # never into a directory of the user's files
    tokenizer = build_tokenizer(opts.tokenizer, paths, opts.vocab_size)
    tokenizer.save(out / "tokenizer")
    meta = prepare(paths, tokenizer, out, val_fraction=opts.val_fraction, num_workers=args.workers,
                   progress=False if args.no_progress else None)
    print(f"prepared {meta['n_train_tokens']:,} train + {meta['n_val_tokens']:,} val tokens from "
          f"{meta['n_chars']:,} characters ({meta['tokenizer']} tokenizer, vocab {meta['vocab_size']}, "
          f"{meta['dtype']}) in {out}")
    return 0
