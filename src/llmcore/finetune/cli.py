"""``llmcore finetune``: fine-tune a saved model on text, source→target pairs or labelled texts.

    llmcore finetune --model runs/base --data pairs.tsv --task pairs --src-col en --tgt-col zh \\
        --strategy lora --lora-rank 8 --max-steps 300 --out runs/en-zh-lora

The model directory must hold a tokenizer (``tokenizer/``, as ``save_pretrained(dir, tokenizer=tok)``
writes). The output directory gets the fine-tuned model (``config.json`` + ``model.safetensors`` +
``tokenizer/``), or for ``--strategy lora`` only the adapter (``adapter_config.json`` +
``adapter_model.safetensors``, loaded with :func:`llmcore.finetune.load_adapter` onto the base model),
plus ``finetune.json`` with the settings and final metrics. A tenth of the data (``--val-frac``) is held
out for validation.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

STRATEGIES = ("full", "freeze", "gradual-unfreeze", "discriminative", "ulmfit", "lora")
TASKS = ("lm", "pairs", "classify")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("finetune", help="fine-tune a saved model (full, frozen, ULMFiT, LoRA)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model directory (config.json, model.safetensors, tokenizer/)")
    p.add_argument("--data", required=True, help="text file (lm) or TSV/JSONL file (pairs, classify)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--task", choices=TASKS, default="lm", help="lm: plain text; pairs: src->tgt; classify")
    p.add_argument("--strategy", choices=STRATEGIES, default="full")
    p.add_argument("--freeze-first-n", type=int, default=None,
                   help="freeze: freeze the embeddings and the first N blocks (default: half the blocks)")
    p.add_argument("--unfreeze-every", type=int, default=None,
                   help="gradual-unfreeze/ulmfit: steps between unfreezing (default: spread over the run)")
    p.add_argument("--lr-factor", type=float, default=2.6, help="discriminative/ulmfit: lr ratio between layers")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--lora-targets", default="qkv_proj,out_proj", help="comma-separated module-name patterns")
    p.add_argument("--max-steps", type=int, default=500)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--val-frac", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--block-size", type=int, default=None, help="lm: window length (default: model context)")
    p.add_argument("--max-len", type=int, default=None, help="pairs/classify: max tokens per example")
    p.add_argument("--bucket", type=int, default=1,
                   help="pairs/classify: draw batches of similar length from a pool of BUCKET batches (1 = off)")
    p.add_argument("--src-col", default="src")
    p.add_argument("--tgt-col", default="tgt")
    p.add_argument("--template", default="{src}", help="pairs: prompt template name or format string with {src}")
    p.add_argument("--src-lang-tag", default=None)
    p.add_argument("--tgt-lang-tag", default=None)
    p.add_argument("--text-col", default="text")
    p.add_argument("--label-col", default="label")
    p.add_argument("--pooling", choices=("last", "mean"), default="last")
    p.set_defaults(func=run)


def _split(items: list[Any], val_frac: float, seed: int) -> tuple[list[Any], list[Any]]:
    from ..errors import ConfigError, DataError

    if not 0.0 < val_frac < 1.0:
        raise ConfigError(f"--val-frac {val_frac} must be in (0, 1).")
    items = list(items)
    random.Random(seed).shuffle(items)
    n_val = max(1, round(len(items) * val_frac))
    if len(items) - n_val < 1:
        raise DataError(f"{len(items)} examples are too few to hold out {val_frac:.0%} for validation.")
    return items[n_val:], items[:n_val]


def build_strategies(args: argparse.Namespace, n_groups: int, n_blocks: int, keep: tuple[str, ...] = ()
                     ) -> list[Any]:
    """The strategy objects for ``--strategy`` and its options."""
    from .lora import LoRA
    from .strategies import DiscriminativeLR, Freeze, Full, GradualUnfreeze, ulmfit

    every = args.unfreeze_every or max(1, args.max_steps // (n_groups + 1))
    if args.strategy == "full":
        return [Full()]
    if args.strategy == "freeze":
        n = args.freeze_first_n if args.freeze_first_n is not None else n_blocks // 2
        return [Freeze(first_n_blocks=n, embeddings=True)]
    if args.strategy == "gradual-unfreeze":
        return [GradualUnfreeze(every_n_steps=every)]
    if args.strategy == "discriminative":
        return [Full(), DiscriminativeLR(args.lr_factor)]
    if args.strategy == "ulmfit":
        return ulmfit(factor=args.lr_factor, every_n_steps=every)
    targets = [t.strip() for t in args.lora_targets.split(",") if t.strip()]
    return [LoRA(args.lora_rank, args.lora_alpha, targets=targets, modules_to_save=keep)]


def run(args: argparse.Namespace) -> int:
    import torch

    from ..data import TokenDataset, read_text
    from ..errors import CheckpointError
    from ..models import TransformerLM
    from ..models.classifier import ClassificationDataset, SequenceClassifier, classification_loss
    from ..tokenizer import load_tokenizer
    from ..training import TrainConfig, Trainer
    from .lora import save_adapter
    from .pairs import PairDataset, read_pairs
    from .strategies import count_parameters, layer_groups

    model_dir, out = Path(args.model), Path(args.out)
    lm = TransformerLM.from_pretrained(model_dir)
    try:
        tok = load_tokenizer(model_dir)
    except Exception as e:  # a TokenizerError naming what is missing
        raise CheckpointError(f"{model_dir} has no usable tokenizer ({e}); save the model with "
                              "save_pretrained(dir, tokenizer=tok).") from e
    max_len = args.max_len or lm.config.max_seq_len
    loss_fn, model, keep = None, lm, ()
    if args.task == "lm":
        ids = torch.tensor(tok.encode(read_text(args.data)), dtype=torch.long)
        cut = int(len(ids) * (1 - args.val_frac))
        block = args.block_size or lm.config.max_seq_len
        train, val = TokenDataset(ids[:cut], block), TokenDataset(ids[cut:], block, split="val")
    elif args.task == "pairs":
        tr, va = _split(read_pairs(args.data, args.src_col, args.tgt_col), args.val_frac, args.seed)
        kw = dict(template=args.template, src_lang_tag=args.src_lang_tag, tgt_lang_tag=args.tgt_lang_tag,
                  max_len=min(max_len, lm.config.max_seq_len + 1), too_long="drop")
        train, val = PairDataset(tr, tok, **kw), PairDataset(va, tok, **kw)
    else:
        rows = read_pairs(args.data, args.text_col, args.label_col)
        names = sorted({label for _, label in rows})
        tr, va = _split(rows, args.val_frac, args.seed)
        train, val = (ClassificationDataset([t for t, _ in part], [lb for _, lb in part], tok, max_len, names)
                      for part in (tr, va))
        model = SequenceClassifier(lm, len(names), pooling=args.pooling, pad_id=train.pad_id)
        loss_fn, keep = classification_loss, ("head",)
    if args.task != "lm":
        train.bucket = args.bucket
    groups = layer_groups(model)
    strategies = build_strategies(args, len(groups), len(groups) - 2, keep)
    cfg = TrainConfig(max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr, min_lr=args.lr / 10,
                      warmup_steps=min(100, args.max_steps // 10), eval_interval=max(1, args.max_steps // 5),
                      seed=args.seed, device=args.device, num_samples=0)
    trainer = Trainer(model, cfg, train, val_data=val, strategies=strategies, loss_fn=loss_fn)
    summary = trainer.fit()
    metrics = trainer.evaluate(max_batches=10**9)
    out.mkdir(parents=True, exist_ok=True)
    if args.strategy == "lora":
        save_adapter(model, out, strategies[0], extra={"base_model": str(model_dir), "task": args.task})
        tok.save(out / "tokenizer")
    else:
        model.save_pretrained(out, tokenizer=tok)
    report = {"task": args.task, "strategy": args.strategy, "base_model": str(model_dir),
              "trainable_parameters": count_parameters(model, trainable_only=True),
              "total_parameters": count_parameters(model), "steps": summary["steps"], **metrics}
    (out / "finetune.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report))
    return 0
