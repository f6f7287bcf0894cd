"""``llmcore convert SRC DST [--to hf|llmcore]``: rewrite a model directory in the other format.

SRC may be an llmcore directory or a Hugging Face GPT-2 / Llama-family one (``TransformerLM.from_pretrained``
reads both); the target format defaults to the one SRC is not in. SRC's tokenizer (a ``tokenizer/`` subdirectory, or a
Hugging Face directory's ``tokenizer.json`` / ``tokenizer.model``) goes with it: ``--to hf`` writes the files
``transformers.AutoTokenizer`` loads (same ids) beside the weights and keeps ``tokenizer/``; ``--to llmcore``
writes ``DST/tokenizer``. A byte or char tokenizer has no Hugging Face form: ``--to hf`` refuses it before
writing anything; pass ``--no-tokenizer`` to export the weights alone.

DST must be new, empty or an earlier ``llmcore convert`` output (it holds the marker ``.llmcore-run``); any
other directory is refused before a byte is written. Symbolic links inside SRC's ``tokenizer/`` are skipped
with a warning, never copied.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from ..errors import CheckpointError
from ..rundir import claim_dir, mark_dir
from .common import add_model_command


def _skip_symlinks(directory: str, names: list[str]) -> list[str]:
    """copytree ``ignore``: symbolic links in SRC are not copied (their target may be anything, e.g. a secret)."""
    links = [n for n in names if os.path.islink(os.path.join(directory, n))]
    for n in links:
        print(f"llmcore convert: warning: skipped the symbolic link {os.path.join(directory, n)} (links in SRC "
              "are not copied)", file=sys.stderr)
    return links


def run(args: argparse.Namespace) -> int:
    from ..bundled import resolve_model_dir
    from ..io import CONFIG_NAME, read_json
    from ..models.hf import save_hf
    from ..models.pretrained import read_model_dir
    from .common import load_model_dir

    src, dst = resolve_model_dir(args.src), Path(args.dst)  # SRC may be a bundled model's name
    _, _, src_format = read_model_dir(src)  # CheckpointError for a bad SRC
    model = load_model_dir(src)
    tokenizer = None if args.no_tokenizer else _source_tokenizer(src)
    to = args.to or ("hf" if src_format == "llmcore" else "llmcore")
    if dst.resolve() == src.resolve():
        raise CheckpointError(f"DST {dst} is SRC; write the converted model to another directory.")
    if args.max_shard_size is not None and to != "hf":
        raise CheckpointError("--max-shard-size applies to --to hf only.")
    # DST is new, empty or an earlier convert's (never a user's files); marked once the conversion succeeded
    claim_dir(dst, "llmcore convert", flag="DST", legacy=(), mark=False)
    if to == "hf":
        save_hf(model, dst, max_shard_size=args.max_shard_size, tokenizer=tokenizer)
        if tokenizer is not None and (src / "tokenizer").is_dir():  # the llmcore form too (exact settings)
            shutil.copytree(src / "tokenizer", dst / "tokenizer", dirs_exist_ok=True, ignore=_skip_symlinks)
    else:
        model.save_pretrained(dst, format="llmcore", tokenizer=tokenizer)
    mark_dir(dst, "llmcore convert", flag="DST")
    c = model.config
    kind = read_json(dst / CONFIG_NAME)["model_type"] if to == "hf" else type(model).__name__
    print(f"converted {src} ({src_format}) -> {dst} ({to}, {kind}): {c.n_layers} layers, d_model {c.d_model}, "
          f"{model.num_parameters() / 1e6:.2f}M parameters")
    return 0


def _source_tokenizer(src: Path):
    """SRC's tokenizer, or None when SRC holds no tokenizer file at all (a broken one is an error)."""
    from ..tokenizer import load_tokenizer

    names = ("tokenizer", "llmcore_tokenizer.json", "tokenizer.json", "tokenizer.model", "vocab.json")
    return load_tokenizer(src) if any((src / n).exists() for n in names) else None


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_model_command(subparsers, "convert", description=__doc__,
                          help="convert a model directory between llmcore and Hugging Face formats")
    p.add_argument("src", help="model directory to read (llmcore or Hugging Face format)")
    p.add_argument("dst", help="directory to write")
    p.add_argument("--to", choices=("hf", "llmcore"), default=None,
                   help="target format (default: the format SRC is not in)")
    p.add_argument("--max-shard-size", default=None,
                   help="hf only: split weights into shards of at most this size, e.g. 2GB")
    p.add_argument("--no-tokenizer", action="store_true",
                   help="write the weights only (e.g. for a byte/char tokenizer, which has no Hugging Face form)")
    p.set_defaults(func=run)
