"""``llmcore finetune``: fine-tune a saved model on text, source→target pairs or labelled texts.

    llmcore finetune --model runs/base --data pairs.tsv --task pairs --src-col en --tgt-col zh \\
        --strategy lora --lora-rank 8 --max-steps 300 --out runs/en-zh-lora

The model directory must hold a tokenizer (``tokenizer/``, as ``save_pretrained(dir, tokenizer=tok)``
writes). ``--out`` becomes a normal run directory, as ``llmcore train`` writes: ``metrics.jsonl``,
checkpoints in ``trainer_state/`` (``--resume`` continues the newest exactly), the best model so far
(``config.json`` + ``model.safetensors`` + ``tokenizer/``) or for ``--strategy lora`` only the adapter
(``adapter_config.json`` + ``adapter_model.safetensors``, loaded with :func:`llmcore.finetune.load_adapter`
onto the base model), and ``finetune.json`` with the settings and final metrics. ``--val-fraction`` of the
data is held out for validation. The training flags are ``llmcore train``'s; a fine-tune's own defaults
(a lower learning rate, fewer steps) are listed in FINETUNE_DEFAULTS and shown in ``--help``.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from pathlib import Path
from typing import Any

from ..training.config import TrainConfig
from ..training.run import RunConfig, split_overrides
from .common import (
    add_dataclass_args,
    add_model_command,
    add_set_arg,
    field_default,
    given,
    make_config,
    parse_sets,
)

# Where a fine-tune departs from TrainConfig: a pretrained model wants a smaller step and a shorter run.
FINETUNE_DEFAULTS = {"max_steps": 500, "lr": 3e-4, "num_samples": 0}
TRAIN_FLAGS = ["max_steps", "batch_size", "grad_accum", "lr", "eval_interval", "patience", "seed", "device",
               "dtype", "progress"]
STRATEGIES = ("full", "freeze", "gradual-unfreeze", "discriminative", "ulmfit", "lora")
TASKS = ("lm", "pairs", "classify")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_model_command(subparsers, "finetune", help="fine-tune a saved model (full, frozen, ULMFiT, LoRA)",
                          description=__doc__)
    p.add_argument("--model", required=True, help="model directory (config.json, model.safetensors, tokenizer/) or "
                   "bundled model name (llmcore models)")
    p.add_argument("--data", required=True, help="text file (lm) or TSV/JSONL file (pairs, classify)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the newest checkpoint in --out")
    p.add_argument("--task", choices=TASKS, default="lm",
                   help="lm: plain text; pairs: src->tgt; classify (default: lm)")
    p.add_argument("--strategy", choices=STRATEGIES, default="full", help="what to train (default: full)")
    p.add_argument("--freeze-first-n", type=int, default=None,
                   help="freeze: freeze the embeddings and the first N blocks (default: half the blocks)")
    p.add_argument("--unfreeze-every", type=int, default=None,
                   help="gradual-unfreeze/ulmfit: steps between unfreezing (default: spread over the run)")
    p.add_argument("--lr-factor", type=float, default=2.6,
                   help="discriminative/ulmfit: lr ratio between layers (default: 2.6)")
    p.add_argument("--lora-rank", type=int, default=8, help="lora: rank (default: 8)")
    p.add_argument("--lora-alpha", type=float, default=16.0, help="lora: scale alpha (default: 16.0)")
    p.add_argument("--lora-targets", default="qkv_proj,out_proj",
                   help="lora: comma-separated module-name patterns (default: qkv_proj,out_proj)")
    add_dataclass_args(p, TrainConfig, TRAIN_FLAGS, defaults=FINETUNE_DEFAULTS)
    add_dataclass_args(p, RunConfig, ["val_fraction"])
    add_set_arg(p)
    p.add_argument("--block-size", type=int, default=None, help="lm: window length (default: model context)")
    p.add_argument("--max-len", type=int, default=None,
                   help="pairs/classify: max tokens per example, at most the model context (default: the context)")
    p.add_argument("--bucket", type=int, default=1,
                   help="pairs/classify: draw batches of similar length from a pool of BUCKET batches (default: "
                        "1 = off)")
    p.add_argument("--src-col", default="src", help="pairs: source column (default: src)")
    p.add_argument("--tgt-col", default="tgt", help="pairs: target column (default: tgt)")
    p.add_argument("--template", default="{src}",
                   help="pairs: prompt template name or format string with {src} (default: {src})")
    p.add_argument("--src-tag", default=None,
                   help="pairs: source-language tag, e.g. <2en> (default: <2en> when --tgt-tag is not given and "
                        "the tokenizer has the default tags, else none)")
    p.add_argument("--tgt-tag", default=None,
                   help="pairs: target-language tag translate starts the target after (default: <2zh> if the "
                        "tokenizer has <2en> and <2zh>; else required)")
    p.add_argument("--text-col", default="text", help="classify: text column (default: text)")
    p.add_argument("--label-col", default="label", help="classify: label column (default: label)")
    p.add_argument("--pooling", choices=("last", "mean"), default="last",
                   help="classify: how the sequence becomes one vector (default: last)")
    p.set_defaults(func=run)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from --set, then the flags, then the fine-tune defaults; schedule fields follow max_steps."""
    model_sets, sets = split_overrides(parse_sets(args.sets))
    if model_sets:
        raise_model_sets(model_sets)
    values = {**FINETUNE_DEFAULTS, **sets, **given(args, TrainConfig, TRAIN_FLAGS)}
    steps, lr = values["max_steps"], values["lr"]
    values.setdefault("min_lr", lr / 10)
    values.setdefault("warmup_steps", min(100, steps // 10))
    values.setdefault("eval_interval", max(1, steps // 5))
    return make_config(TrainConfig, {**values, "out_dir": args.out})


def raise_model_sets(model_sets: dict[str, Any]) -> None:
    from ..errors import ConfigError

    raise ConfigError(f"--set {', '.join(sorted(model_sets))}: a fine-tune keeps the saved model's "
                      "architecture, so only TrainConfig fields can be set; train a new model with llmcore train.")


def _check_fraction(val_frac: float) -> None:
    from ..errors import ConfigError

    if not 0.0 < val_frac < 1.0:
        raise ConfigError(f"--val-fraction {val_frac} must be in (0, 1) for a fine-tune, e.g. 0.1.")


def _split(items: list[Any], val_frac: float, seed: int) -> tuple[list[Any], list[Any]]:
    from ..errors import DataError

    _check_fraction(val_frac)
    items = list(items)
    random.Random(seed).shuffle(items)
    n_val = max(1, round(len(items) * val_frac))
    if len(items) - n_val < 1:
        raise DataError(f"{len(items)} examples are too few to hold out {val_frac:.0%} for validation.")
    return items[n_val:], items[:n_val]


def build_strategies(args: argparse.Namespace, max_steps: int, n_groups: int, n_blocks: int,
                     keep: tuple[str, ...] = ()) -> list[Any]:
    """The strategy objects for ``--strategy`` and its options."""
    from ..finetune.lora import LoRA
    from ..finetune.strategies import DiscriminativeLR, Freeze, Full, GradualUnfreeze, ulmfit

    every = args.unfreeze_every or max(1, max_steps // (n_groups + 1))
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
    from ..finetune.classification import ClassificationDataset, classification_loss
    from ..finetune.pairs import PairDataset, read_pairs
    from ..finetune.strategies import layer_groups
    from ..models.classifier import SequenceClassifier
    from ..tokenizer import load_tokenizer
    from ..training import Trainer
    from ..training import distributed as dist
    from .common import load_model_dir

    logging.basicConfig(format="%(message)s")  # evaluation lines when there is no progress bar, as in train
    logging.getLogger("llmcore").setLevel(logging.INFO)
    cfg = train_config(args)  # bad flags fail before the model loads
    val_fraction = getattr(args, "val_fraction", field_default(RunConfig, "val_fraction"))
    _check_fraction(val_fraction)
    from ..bundled import resolve_model_dir

    model_dir, out = resolve_model_dir(args.model), Path(args.out)  # a bundled name resolves to its package dir
    lm = load_model_dir(model_dir, merge=True)  # an adapter directory fine-tunes as its merged model
    try:
        tok = load_tokenizer(model_dir)
    except Exception as e:  # a TokenizerError naming what is missing
        raise CheckpointError(f"{model_dir} has no usable tokenizer ({e}); save the model with "
                              "save_pretrained(dir, tokenizer=tok).") from e
    context = lm.config.max_seq_len
    check_lengths(args, context)
    max_len = args.max_len or context
    loss_fn, model, keep = None, lm, ()
    if args.task == "lm":
        ids = torch.tensor(tok.encode(read_text(args.data)), dtype=torch.long)
        cut = int(len(ids) * (1 - val_fraction))
        block = args.block_size or context
        V = lm.config.vocab_size
        train, val = TokenDataset(ids[:cut], block, vocab_size=V), TokenDataset(ids[cut:], block, split="val", vocab_size=V)
    elif args.task == "pairs":
        settings = translation_settings(args, tok)  # fails before any data is read
        tr, va = _split(read_pairs(args.data, args.src_col, args.tgt_col), val_fraction, cfg.seed)
        kw = dict(template=settings["template"], src_lang_tag=settings["src_lang_tag"],
                  tgt_lang_tag=settings["tgt_lang_tag"], max_len=min(max_len, context + 1), too_long="drop",
                  vocab_size=lm.config.vocab_size)
        train, val = PairDataset(tr, tok, **kw), PairDataset(va, tok, **kw)
        # What `llmcore translate` reads back (Translator, saved_settings): the prompt this model learns.
        lm.config.extra = {**lm.config.extra, "translation": settings}
    else:
        rows = read_pairs(args.data, args.text_col, args.label_col)
        names = sorted({label for _, label in rows})
        tr, va = _split(rows, val_fraction, cfg.seed)
        train, val = (ClassificationDataset([t for t, _ in part], [lb for _, lb in part], tok, max_len, names,
                                            vocab_size=lm.config.vocab_size)
                      for part in (tr, va))
        torch.manual_seed(cfg.seed)  # the new head's initial weights: the same in every run (and on every rank)
        model = SequenceClassifier(lm, len(names), pooling=args.pooling)
        # The class names in id order, saved in config.json: `llmcore classify` prints them, eval counts by them.
        model.config.extra = {**model.config.extra, "label_names": names}
        loss_fn, keep = classification_loss, ("head",)
    if args.task != "lm":
        train.bucket = args.bucket
    groups = layer_groups(model)
    strategies = build_strategies(args, cfg.max_steps, len(groups), len(groups) - 2, keep)
    # Under torchrun this command owns the process group: it joins it here and leaves it at the very end, since
    # the evaluation and the adapter's gather after fit() are collectives too (the Trainer leaves it up).
    env, created = dist.setup(dist.resolve_device(cfg.device, dist.detect()))
    try:
        trainer = Trainer(model, cfg, train, val_data=val, tokenizer=tok, strategies=strategies, loss_fn=loss_fn)
        summary = trainer.fit(resume=args.resume)
        metrics = trainer.evaluate(max_batches=10**9)
        report = _finish(args, model, model_dir, out, strategies, summary, metrics, env.is_main)
    finally:
        dist.cleanup(created)
    if env.is_main:
        print(format_report(report, summary, out))
    return 0


def _finish(args: argparse.Namespace, model: Any, model_dir: Path, out: Path, strategies: list[Any],
            summary: dict[str, Any], metrics: dict[str, float], is_main: bool) -> dict[str, Any]:
    """The adapter (``--strategy lora``) and ``finetune.json``, written by rank 0; every rank calls it (under FSDP
    the adapter is gathered from the shards). Returns the report."""
    from ..finetune.lora import save_adapter
    from ..io import CONFIG_NAME, WEIGHTS_NAME
    from ..modules import num_parameters

    if args.strategy == "lora":
        # The checkpointer saved the LoRA-wrapped model whole; no command could load it as a base model, so
        # the run directory keeps the adapter (plus the checkpoints that --resume needs) instead.
        for name in (CONFIG_NAME, WEIGHTS_NAME) if is_main else ():
            (out / name).unlink(missing_ok=True)
        from ..bundled import bundled_path

        # A bundled base is recorded by name, which still resolves after llmcore is reinstalled elsewhere.
        base = args.model if bundled_path(str(args.model)) == model_dir else str(model_dir.resolve())
        extra: dict[str, Any] = {"base_model": base, "task": args.task,
                                 "config_extra": model.config.extra}  # what load_adapter_model puts back
        if args.task == "classify":
            extra["classifier"] = {"num_classes": model.num_classes, "pooling": model.pooling}
        save_adapter(model, out, strategies[0], extra=extra, write=is_main)
    report = {"task": args.task, "strategy": args.strategy, "base_model": str(model_dir),
              "trainable_parameters": num_parameters(model, trainable_only=True),
              "total_parameters": num_parameters(model), "steps": summary["steps"], **metrics}
    if is_main:
        (out / "finetune.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def check_lengths(args: argparse.Namespace, context: int) -> None:
    """Refuse --max-len / --block-size past the model's context (positions beyond it do not exist)."""
    from ..errors import ConfigError

    for flag, value in (("--max-len", args.max_len), ("--block-size", args.block_size)):
        if value is not None and not 1 <= value <= context:
            raise ConfigError(f"{flag} {value} is outside the model's context of {context} tokens (max_seq_len); "
                              f"pass {flag} {context} or less, or leave it out to use the whole context.")


def translation_settings(args: argparse.Namespace, tok: Any) -> dict[str, str | None]:
    """The prompt of a pairs fine-tune: ``--src-tag`` / ``--tgt-tag`` / ``--template``, checked against ``tok``.

    ``llmcore translate`` starts the target after a target-language tag, so a pairs model needs one. Without
    ``--tgt-tag`` the translator's defaults (<2en> / <2zh>) are used when the tokenizer has both as single
    tokens; otherwise this refuses at the start with the fix, instead of training a model translate rejects.
    """
    from ..errors import ConfigError, TokenizerError
    from ..finetune.pairs import TEMPLATES
    from ..tokenizer import language_tag_id
    from ..translation.translator import DEFAULTS

    src, tgt = args.src_tag, args.tgt_tag
    if tgt is None:
        try:
            for tag in (DEFAULTS["src_lang_tag"], DEFAULTS["tgt_lang_tag"]):
                language_tag_id(tok, tag)
        except TokenizerError as e:
            raise ConfigError(f"--task pairs needs --tgt-tag (the token translate starts the target after), and the "
                              f"tokenizer has no {DEFAULTS['tgt_lang_tag']} / {DEFAULTS['src_lang_tag']} to default "
                              f"to; pass --tgt-tag TAG (and --src-tag) naming one token of the tokenizer, e.g. a "
                              f"tokenizer trained with llmcore tokenizer train --user-defined-symbols '<2en>' '<2zh>'.") from e
        src = DEFAULTS["src_lang_tag"] if src is None else src
        tgt = DEFAULTS["tgt_lang_tag"]
        logging.getLogger("llmcore").info("pairs: language tags %s -> %s (the translator's defaults)", src, tgt)
    for tag, what in ((src, "--src-tag"), (tgt, "--tgt-tag")):
        if tag is not None:
            try:
                language_tag_id(tok, tag)
            except TokenizerError as e:
                raise ConfigError(f"{what} {tag!r} is not one token of the model's tokenizer; pass a tag the "
                                  "tokenizer has (train it with the tag as a user-defined symbol).") from e
    return {"src_lang_tag": src, "tgt_lang_tag": tgt, "template": TEMPLATES.get(args.template, args.template)}


def format_report(report: dict[str, Any], summary: dict[str, Any], out: Path) -> str:
    """The end-of-run summary for people (the same numbers are in OUT/finetune.json)."""
    from ..training.run import format_summary

    share = report["trainable_parameters"] / max(report["total_parameters"], 1)
    what = "adapter" if report["strategy"] == "lora" else "model"
    lines = [format_summary({**summary, "out_dir": str(out)}).replace("; model in", f"; {what} in"),
             f"  {report['task']} fine-tune of {report['base_model']}, strategy {report['strategy']}: "
             f"{report['trainable_parameters']:,} of {report['total_parameters']:,} parameters trained "
             f"({share:.1%})"]
    if "val_loss" in report:
        extra = f", accuracy {report['val_acc']:.4f}" if "val_acc" in report else ""
        lines.append(f"  final validation: loss {report['val_loss']:.4f}{extra}")
    return "\n".join(lines)
