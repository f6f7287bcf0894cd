"""``llmcore train`` and ``llmcore eval``.

``llmcore train`` goes from text to a trained run directory in one command: it builds the tokenizer, prepares
the data into ``OUT/data`` (reused when the same data and tokenizer were prepared before), builds the model
from a preset plus ``--set key=value`` overrides, trains, and prints samples. With no ``--data`` it trains on
the bundled Shakespeare with a character tokenizer, nanoGPT's shakespeare-char "baby GPT" on a CPU::

    llmcore train --max-steps 600
    torchrun --nproc_per_node 4 -m llmcore train --data corpus/ --tokenizer sp --vocab-size 8000 --preset small

``llmcore eval --model OUT`` prints loss, perplexity and token accuracy on the run's validation split (or on
``--data`` files, tokenized with the run's tokenizer).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ModelConfig
from ..errors import CheckpointError, ConfigError, DataError
from . import distributed as dist
from .trainer import TrainConfig, Trainer

# CLI flag -> TrainConfig field, for the flags that map one to one.
FLAGS = {"max_steps": "max_steps", "batch_size": "batch_size", "grad_accum": "grad_accum", "lr": "lr",
         "eval_interval": "eval_interval", "patience": "patience", "seed": "seed", "device": "device",
         "dtype": "dtype"}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="pretrain a language model on text files (default: Shakespeare)",
                              description="Tokenize, prepare and train in one go; writes a run directory that "
                                          "from_pretrained, load_tokenizer and --resume understand.")
    p.add_argument("--data", nargs="+", action="extend", metavar="PATH",
                   help="UTF-8 text files or directories (default: the bundled Shakespeare)")
    p.add_argument("--tokenizer", default="char", metavar="char|byte|sp|DIR", help="tokenizer (default: char)")
    p.add_argument("--vocab-size", type=int, metavar="N", help="vocabulary size for --tokenizer sp")
    p.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                   help="last share of the text held out for validation (default 0.1)")
    p.add_argument("--preset", default="char-small", help="model preset (default: char-small)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a ModelConfig or TrainConfig field, e.g. --set dropout=0.1 --set warmup_steps=50")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--batch-size", type=int, help="sequences per micro-batch per process")
    p.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=float)
    p.add_argument("--eval-interval", type=int)
    p.add_argument("--patience", type=int, help="early stopping after N evaluations without improvement")
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/PRESET)")
    p.add_argument("--resume", action="store_true", help="continue the newest checkpoint in --out")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", choices=["float32", "bfloat16"])
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)

    e = subparsers.add_parser("eval", help="loss / perplexity / token accuracy, or BLEU / chrF of a translator",
                              description="Evaluate a model directory: language-model loss on its run's validation "
                                          "split or on text files (--task lm), or translation BLEU / chrF on "
                                          "sentence pairs (--task translate).")
    e.add_argument("--model", required=True, metavar="DIR", help="model (run) directory")
    e.add_argument("--task", choices=["lm", "translate"], default="lm")
    e.add_argument("--data", nargs="+", action="extend", metavar="PATH",
                   help="lm: text files to score, tokenized with the model's tokenizer (default: DIR/data val "
                        "split); translate: one TSV/JSONL file of pairs (default: the shipped --split)")
    e.add_argument("--split", choices=["train", "validation", "test"], default="test",
                   help="translate: split of the shipped English-Chinese pairs when --data is not given")
    e.add_argument("--src-col", default="en", help="translate: source column of --data")
    e.add_argument("--tgt-col", default="zh", help="translate: reference column of --data")
    e.add_argument("--num-beams", type=int, default=1, help="translate: beam width (1 = greedy)")
    e.add_argument("--no-repeat-ngram-size", type=int, default=0,
                   help="translate: never repeat an n-gram of this many tokens in a translation (0 = off)")
    e.add_argument("--bleu-tokenize", default="zh", help="translate: sacrebleu tokenizer (zh, 13a, intl, ...)")
    e.add_argument("--baselines", action="store_true",
                   help="translate: also score copying the source and word-by-word CC-CEDICT lookup (en->zh)")
    e.add_argument("--hypotheses", metavar="FILE", help="translate: write the translations here, one per line")
    e.add_argument("--batch-size", type=int, default=12)
    e.add_argument("--max-batches", type=int, help="stop after N batches (default: all)")
    e.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    e.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    e.set_defaults(func=run_eval)


# ---------------------------------------------------------------------------------------------- --set
def _parse_value(text: str) -> Any:
    """JSON when it parses (numbers, true/false/null, lists), else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def split_sets(items: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``["dropout=0.1", "warmup_steps=50"]`` -> (ModelConfig overrides, TrainConfig overrides)."""
    model_keys = {f.name for f in dataclasses.fields(ModelConfig)}
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    model, train = {}, {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--set {item!r} is not KEY=VALUE, e.g. --set dropout=0.1.")
        if key in model_keys:
            model[key] = _parse_value(value)
        elif key in train_keys:
            train[key] = _parse_value(value)
        else:
            raise ConfigError(f"Unknown --set key {key!r}; valid keys are ModelConfig fields "
                              f"({', '.join(sorted(model_keys))}) and TrainConfig fields ({', '.join(sorted(train_keys))}).")
    return model, train


# ---------------------------------------------------------------------------------------------- data
def _fingerprint(args: argparse.Namespace) -> dict[str, Any]:
    """What the prepared data depends on; a match means OUT/data can be reused as is."""
    from ..data import resolve_paths

    files = resolve_paths([Path(p) for p in args.data] if args.data else None)
    return {"files": [[str(f.resolve()), f.stat().st_size, int(f.stat().st_mtime)] for f in files],
            "tokenizer": str(args.tokenizer), "vocab_size": args.vocab_size, "val_fraction": args.val_fraction}


def prepare_data(args: argparse.Namespace, data_dir: Path, env: dist.DistEnv) -> Any:
    """Tokenizer + ``data_dir/{train,val}.bin``; rank 0 builds them (unless already there), the others wait."""
    from ..data import build_tokenizer, prepare
    from ..tokenizer import load_tokenizer

    stamp = data_dir / "source.json"
    if env.is_main:
        wanted = _fingerprint(args)
        fresh = not (stamp.is_file() and json.loads(stamp.read_text(encoding="utf-8")) == wanted
                     and (data_dir / "tokenizer").is_dir() and (data_dir / "meta.json").is_file())
        if fresh:
            paths = [Path(p) for p in args.data] if args.data else None
            tokenizer = build_tokenizer(args.tokenizer, paths, args.vocab_size)
            tokenizer.save(data_dir / "tokenizer")
            prepare(paths, tokenizer, data_dir, val_fraction=args.val_fraction)
            stamp.write_text(json.dumps(wanted, indent=2) + "\n", encoding="utf-8")
    dist.barrier(env)
    return load_tokenizer(data_dir / "tokenizer")


def _val_split(data_dir: Path, block_size: int) -> Any:
    from ..data import TokenDataset, load_meta

    if load_meta(data_dir).get("n_val_tokens", 0) <= block_size:
        return None  # no (or too little) held-out text: train without evaluation
    return TokenDataset(data_dir, block_size, split="val")


# ---------------------------------------------------------------------------------------------- commands
def run_train(args: argparse.Namespace) -> int:
    import torch

    from ..data import TokenDataset
    from ..models import TransformerLM

    logging.basicConfig(format="%(message)s")  # evaluation lines and samples when there is no progress bar
    logging.getLogger("llmcore").setLevel(logging.INFO)
    model_sets, train_sets = split_sets(args.sets)
    flags = {field: getattr(args, flag) for flag, field in FLAGS.items() if getattr(args, flag) is not None}
    out = Path(args.out or f"runs/{args.preset}")
    train_cfg = TrainConfig.from_dict({**train_sets, **flags, "out_dir": str(out),
                                       "compile": args.compile or train_sets.get("compile", False),
                                       "progress": not args.no_progress and train_sets.get("progress", True)})
    if args.resume and not (out / "trainer_state").is_dir():
        raise CheckpointError(f"No checkpoint to resume in {out / 'trainer_state'}; run without --resume to "
                              "start a fresh run, or point --out at the run directory.")
    env = dist.detect()
    env, created = dist.setup(dist.resolve_device(train_cfg.device, env), env)
    try:
        tokenizer = prepare_data(args, out / "data", env)
        model_cfg = ModelConfig.from_preset(args.preset, **{"vocab_size": tokenizer.vocab_size, **model_sets})
        torch.manual_seed(train_cfg.seed)  # the same initial weights on every rank and every run
        model = TransformerLM(model_cfg)
        train = TokenDataset(out / "data", model_cfg.max_seq_len, split="train")
        val = _val_split(out / "data", model_cfg.max_seq_len)
        summary = Trainer(model, train_cfg, train, val, tokenizer=tokenizer).fit(resume=args.resume)
    finally:
        dist.cleanup(created)
    if env.is_main:
        best = summary["best_val_loss"]
        print(f"trained {summary['steps']} steps ({summary['tokens_seen']:,} tokens, "
              f"{summary['tokens_per_s'] or 0:,.0f} tokens/s)"
              + (f"; val loss {summary['final_val_loss']:.4f}, best {best:.4f} at step {summary['best_step']}"
                 if best is not None else "")
              + (" (early stop)" if summary["stopped_early"] else "") + f"; model in {out}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    if args.task == "translate":
        from ..translation.cli import run_eval as run_translation_eval

        return run_translation_eval(args)
    from contextlib import nullcontext

    import torch

    from .. import models
    from ..data import TokenDataset, read_text
    from ..models.pretrained import read_json
    from ..tokenizer import load_tokenizer
    from .loss import eval_metrics, eval_sums

    model_dir = Path(args.model)
    if not (model_dir / "config.json").is_file():
        raise CheckpointError(f"{model_dir} is not a model directory (no config.json); pass the --out of a run.")
    arch = read_json(model_dir / "config.json").get("architecture", "TransformerLM")
    device = dist.resolve_device(args.device, dist.DistEnv())
    model = getattr(models, arch, models.TransformerLM).from_pretrained(model_dir, device=device)
    block = getattr(getattr(model, "config", None), "max_seq_len", 256)
    if args.data:
        ids = load_tokenizer(model_dir).encode(read_text([Path(p) for p in args.data]))
        data = TokenDataset(np.asarray(ids, dtype=np.int64), block)
        where = ", ".join(args.data)
    else:
        if not (model_dir / "data" / "meta.json").is_file():
            raise DataError(f"{model_dir / 'data'} has no prepared data; pass --data FILE to evaluate on text.")
        data, where = _val_split(model_dir / "data", block), f"{model_dir / 'data'} (val split)"
        if data is None:
            raise DataError(f"The validation split in {model_dir / 'data'} is empty; pass --data FILE.")

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == "bfloat16" else nullcontext()

    batches = data.iter_eval(args.batch_size, args.max_batches)
    metrics = eval_metrics(eval_sums(model, batches, device, autocast))
    print(f"{where}: loss {metrics['val_loss']:.4f}, perplexity {metrics['val_ppl']:.2f}, "
          f"token accuracy {metrics['val_acc']:.4f}")
    return 0
