"""``llmcore prepare``: build or load a tokenizer, then tokenize a corpus into token shards.

Writes ``OUT/tokenizer/`` (the tokenizer, reloadable with ``load_tokenizer``), ``OUT/train-00000.bin``, ...,
``OUT/val-00000.bin``, ... and ``OUT/meta.json``, the index; see :mod:`llmcore.data.shards` for the format.
With ``--dask local:N`` or ``--dask tcp://HOST:PORT`` the tokenizing runs on a Dask cluster and writes the same
files (:mod:`llmcore.data.dask_prepare`).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from ..errors import ConfigError
from ..training.run import RunConfig
from .common import add_dataclass_args, given, make_config

DATA_FLAGS = ["data", "tokenizer", "vocab_size", "val_fraction", "dask"]  # RunConfig fields, shared with train
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """``"64M"`` -> 67108864: bytes, with an optional K / M / G (binary) suffix."""
    m = re.fullmatch(r"\s*(\d+)\s*([kmg]?)i?b?\s*", text.lower())
    if not m or int(m.group(1)) < 1:
        raise ConfigError(f"--shard-size {text}: give a positive number of bytes, e.g. 32M, 1G or 500000")
    return int(m.group(1)) * _UNITS[m.group(2)]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="tokenize text files into token shards (train-*.bin / val-*.bin)",
        description="Tokenize text into flat id files for training. Without --data, uses the bundled "
                    "Shakespeare corpus; the split is by position (last --val-fraction of characters -> val).",
    )
    add_dataclass_args(p, RunConfig, DATA_FLAGS)
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--workers", type=int, metavar="N",
                   help="tokenizer processes (default: all cores for large inputs, in-process for small ones)")
    p.add_argument("--shard-size", metavar="SIZE", default="32M",
                   help="uncompressed files larger than this are split into byte ranges of about this size, cut "
                        "at a line end: one shard (and one Dask task) each")
    p.add_argument("--text-field", metavar="NAME", default="text", help="the field of a JSONL record that holds text")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data import build_tokenizer, prepare, resolve_paths
    from ..rundir import claim_dir

    opts = make_config(RunConfig, given(args, RunConfig, DATA_FLAGS))  # checks --val-fraction and --dask
    shard_bytes = parse_size(args.shard_size)
    if opts.dask is not None:
        from ..data.dask_prepare import import_distributed

        import_distributed()  # a missing extra fails before a tokenizer is trained
    paths = [Path(p) for p in opts.data] if opts.data else None
    resolve_paths(paths)  # fail on a bad path before training a tokenizer
    out = Path(args.out)
    claim_dir(out, "llmcore prepare", legacy=("prepared",))  # never into a directory of the user's files
    tokenizer = build_tokenizer(opts.tokenizer, paths, opts.vocab_size, text_field=args.text_field)
    tokenizer.save(out / "tokenizer")
    meta = prepare(paths, tokenizer, out, val_fraction=opts.val_fraction, num_workers=args.workers,
                   progress=False if args.no_progress else None, shard_bytes=shard_bytes,
                   text_field=args.text_field, dask=opts.dask)
    shards = len(meta["shards"]["train"]) + len(meta["shards"]["val"])
    print(f"prepared {meta['n_train_tokens']:,} train + {meta['n_val_tokens']:,} val tokens from "
          f"{meta['n_chars']:,} characters ({meta['tokenizer']} tokenizer, vocab {meta['vocab_size']}, "
          f"{meta['dtype']}, {shards} shard{'s' * (shards != 1)}) in {out}")
    return 0
