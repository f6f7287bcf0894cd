"""``llmcore convert SRC DST [--to hf|llmcore]``: rewrite a model directory in the other format.

SRC may be an llmcore directory or a Hugging Face GPT-2 / Llama-family one (``TransformerLM.from_pretrained``
reads both); the target format defaults to the one SRC is not in. A ``tokenizer/`` subdirectory is copied.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from ..errors import CheckpointError
from .common import add_model_command


def run(args: argparse.Namespace) -> int:
    from ..io import CONFIG_NAME, read_json
    from ..models.hf import save_hf
    from ..models.pretrained import read_model_dir
    from .common import load_model_dir

    src, dst = Path(args.src), Path(args.dst)
    _, _, src_format = read_model_dir(src)  # CheckpointError for a bad SRC
    model = load_model_dir(src)
    to = args.to or ("hf" if src_format == "llmcore" else "llmcore")
    if dst.resolve() == src.resolve():
        raise CheckpointError(f"DST {dst} is SRC; write the converted model to another directory.")
    if args.max_shard_size is not None and to != "hf":
        raise CheckpointError("--max-shard-size applies to --to hf only.")
    if to == "hf":
        save_hf(model, dst, max_shard_size=args.max_shard_size)
    else:
        model.save_pretrained(dst, format="llmcore")
    if (src / "tokenizer").is_dir():
        shutil.copytree(src / "tokenizer", dst / "tokenizer", dirs_exist_ok=True)
    c = model.config
    kind = read_json(dst / CONFIG_NAME)["model_type"] if to == "hf" else type(model).__name__
    print(f"converted {src} ({src_format}) -> {dst} ({to}, {kind}): {c.n_layers} layers, d_model {c.d_model}, "
          f"{model.num_parameters() / 1e6:.2f}M parameters")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_model_command(subparsers, "convert", description=__doc__,
                          help="convert a model directory between llmcore and Hugging Face formats")
    p.add_argument("src", help="model directory to read (llmcore or Hugging Face format)")
    p.add_argument("dst", help="directory to write")
    p.add_argument("--to", choices=("hf", "llmcore"), default=None,
                   help="target format (default: the format SRC is not in)")
    p.add_argument("--max-shard-size", default=None,
                   help="hf only: split weights into shards of at most this size, e.g. 2GB")
    p.set_defaults(func=run)
