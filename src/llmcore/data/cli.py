"""``llmcore prepare``: build or load a tokenizer, then tokenize a corpus into ``train.bin`` / ``val.bin``.

Writes ``OUT/tokenizer/`` (the tokenizer, reloadable with ``load_tokenizer``), ``OUT/train.bin``,
``OUT/val.bin`` and ``OUT/meta.json``; see :mod:`llmcore.data.shards` for the format.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import corpora
from .shards import build_tokenizer, check_val_fraction, prepare


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="tokenize text files into train.bin / val.bin",
        description="Tokenize text into flat id files for training. Without --data, uses the bundled "
                    "Shakespeare corpus; the split is by position (last --val-fraction of characters -> val).",
    )
    p.add_argument("--data", nargs="+", action="extend", metavar="PATH",
                   help="UTF-8 text files, .gz files or directories of *.txt / *.txt.gz (default: Shakespeare)")
    p.add_argument("--tokenizer", default="char", metavar="char|byte|sp|DIR",
                   help="char (alphabet of the data), byte (UTF-8 bytes), sp (train a sentencepiece BPE on the "
                        "data) or a saved tokenizer directory (default: char)")
    p.add_argument("--vocab-size", type=int, metavar="N", help="vocabulary size for --tokenizer sp (default 4096)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                   help="share of characters, taken from the end, for val.bin (default 0.1)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="tokenizer processes (default: all cores for large inputs, in-process for small ones)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.data] if args.data else None
    corpora.resolve_paths(paths)  # fail on a bad path or value before training a tokenizer
    check_val_fraction(args.val_fraction)
    out = Path(args.out)
    tokenizer = build_tokenizer(args.tokenizer, paths, args.vocab_size)
    tokenizer.save(out / "tokenizer")
    meta = prepare(paths, tokenizer, out, val_fraction=args.val_fraction, num_workers=args.workers,
                   progress=False if args.no_progress else None)
    print(f"prepared {meta['n_train_tokens']:,} train + {meta['n_val_tokens']:,} val tokens from "
          f"{meta['n_chars']:,} characters ({meta['tokenizer']} tokenizer, vocab {meta['vocab_size']}, "
          f"{meta['dtype']}) in {out}")
    return 0
