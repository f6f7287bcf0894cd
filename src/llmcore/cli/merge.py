"""``llmcore merge --adapter DIR``: fold a LoRA adapter into its base model and write a normal model directory.

    llmcore finetune --model runs/base --data pairs.tsv --task pairs --strategy lora --out runs/en-zh-lora
    llmcore merge --adapter runs/en-zh-lora --out runs/en-zh

The result (``config.json`` + ``model.safetensors`` + ``tokenizer/``) loads in every command and exports with
``llmcore convert`` like any model; its logits equal the base with the adapter applied up to float rounding.
The adapter's task settings (translation tags, class names) and a classifier head come along. Commands also
take the adapter directory itself as ``--model``; merging removes the adapter's extra matrix products.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_model_command


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_model_command(subparsers, "merge", help="fold a LoRA adapter into its base model (a normal model dir)",
                          description=__doc__)
    p.add_argument("--adapter", required=True, metavar="DIR",
                   help="adapter directory (adapter_config.json), e.g. the --out of finetune --strategy lora")
    p.add_argument("--out", metavar="DIR", help="directory of the merged model (default: ADAPTER-merged)")
    p.add_argument("--base", metavar="DIR",
                   help="base model directory (default: the base_model recorded in adapter_config.json)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import CheckpointError
    from ..finetune.lora import ADAPTER_CONFIG, is_adapter_dir, merge_adapter
    from ..rundir import claim_dir

    adapter = Path(args.adapter)
    if not is_adapter_dir(adapter):
        raise CheckpointError(f"--adapter {adapter} has no {ADAPTER_CONFIG}; pass the --out of "
                              "llmcore finetune --strategy lora.")
    out = Path(args.out) if args.out else adapter.with_name(adapter.name + "-merged")
    if out.resolve() != adapter.resolve():  # (merge_adapter refuses the adapter directory itself)
        claim_dir(out, "llmcore merge", legacy=())  # new, empty or an earlier merge's: never a user's files
    merge_adapter(adapter, out, base=args.base)
    print(f"merged the adapter in {adapter} into its base; model in {out}")
    return 0
