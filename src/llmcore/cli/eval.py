"""``llmcore eval --model DIR``: language-model loss, perplexity and token accuracy, BLEU / chrF, or accuracy.

``--task lm`` (default) scores the run's validation split (``DIR/data``), or ``--data`` text files tokenized
with the model's tokenizer. ``--task translate`` translates the sources of a pair file (``--data``), or of a
shipped English-Chinese split, and prints corpus BLEU and chrF against the references. ``--task classify``
scores a ``finetune --task classify`` model on a TSV/JSONL file of labelled texts (``--text-col`` /
``--label-col``): accuracy, loss and the confusion matrix by the class names saved with the model.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..config import check_field, is_int
from ..errors import DataError
from ..generation.config import GenerationConfig
from ..training.config import TrainConfig
from .common import add_dataclass_args, add_model_command, given, make_config
from .translate import TRANSLATE_DEFAULTS


@dataclass
class EvalConfig:
    """Options only ``eval`` has (batch size, device and dtype come from TrainConfig, decoding from
    GenerationConfig)."""

    max_batches: int | None = None  # stop after N batches; None = the whole split
    split: str = "test"  # translate: shipped split used when --data is not given
    src_col: str = "en"  # translate: source column of --data
    tgt_col: str = "zh"  # translate: reference column of --data
    bleu_tokenize: str = "zh"  # translate: sacrebleu tokenizer
    text_col: str = "text"  # classify: text column of --data
    label_col: str = "label"  # classify: label column of --data

    def __post_init__(self) -> None:  # the split is checked by the translation data loader, where it is known
        check_field(self, "max_batches", lambda v: v is None or is_int(v, 1), "None or a positive integer")


EVAL_HELP = {"max_batches": "stop after N batches (default: all)",
             "split": "translate: split of the shipped English-Chinese pairs when --data is not given",
             "src_col": "translate: source column of --data", "tgt_col": "translate: reference column of --data",
             "bleu_tokenize": "translate: sacrebleu tokenizer (zh, 13a, intl, ...)",
             "text_col": "classify: text column of --data", "label_col": "classify: label column of --data"}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_model_command(subparsers, "eval", description=__doc__,
                          help="loss / perplexity / token accuracy, or BLEU / chrF of a translator")
    p.add_argument("--model", required=True, metavar="DIR", help="model (run) directory or bundled model name")
    p.add_argument("--task", choices=["lm", "translate", "classify"], default="lm",
                   help="what to measure (default: lm)")
    p.add_argument("--data", nargs="+", action="extend", metavar="PATH",
                   help="lm: text files to score, tokenized with the model's tokenizer (default: DIR/data val "
                        "split); translate: one TSV/JSONL file of pairs (default: the shipped --split); classify: one TSV/JSONL "
                        "file of labelled texts")
    add_dataclass_args(p, EvalConfig, ["max_batches", "split", "src_col", "tgt_col", "bleu_tokenize", "text_col",
                                          "label_col"],
                       help=EVAL_HELP)
    add_dataclass_args(p, TrainConfig, ["batch_size", "device", "dtype"])
    add_dataclass_args(p, GenerationConfig, ["num_beams", "no_repeat_ngram_size"], defaults=TRANSLATE_DEFAULTS,
                       help={"num_beams": "translate: beam width (1 = greedy)",
                             "no_repeat_ngram_size": "translate: never repeat an n-gram of this many tokens in a "
                                                     "translation (0 = off)"})
    p.add_argument("--baselines", action="store_true",
                   help="translate: also score copying the source, word-by-word CC-CEDICT lookup, a translation "
                        "memory (nearest training source by TF-IDF) and memory + dictionary (en->zh)")
    p.add_argument("--hypotheses", metavar="FILE", help="translate: write the translations here, one per line")
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    opts = make_config(EvalConfig, given(args, EvalConfig))
    train = make_config(TrainConfig, given(args, TrainConfig, ["batch_size", "device", "dtype"]))
    decoding = make_config(GenerationConfig, given(args, GenerationConfig, ["num_beams", "no_repeat_ngram_size"],
                                                   TRANSLATE_DEFAULTS))
    if args.task == "translate":
        return _translate(args, opts, train, decoding)
    if args.task == "classify":
        return _classify(args, opts, train)
    return _lm(args, opts, train)


def _classify(args: argparse.Namespace, opts: EvalConfig, train: TrainConfig) -> int:
    """Accuracy, loss and confusion matrix of a classifier on ``--data`` labelled texts."""
    from ..finetune.classification import ClassificationDataset, evaluate, label_names
    from ..finetune.pairs import read_pairs
    from .common import load_classifier

    if not args.data or len(args.data) > 1:
        raise DataError("--task classify takes one TSV/JSONL file of labelled texts: --data FILE (columns "
                        f"--text-col {opts.text_col}, --label-col {opts.label_col}).")
    model, tok = load_classifier(args.model, train.device)
    names = label_names(model)
    rows = read_pairs(args.data[0], opts.text_col, opts.label_col)
    data = ClassificationDataset([t for t, _ in rows], [lb for _, lb in rows], tok, model.config.max_seq_len, names,
                                 vocab_size=model.config.vocab_size)
    m = evaluate(model, data, train.batch_size, opts.max_batches)
    print(f"{args.data[0]}: {int(m['n'])} examples, accuracy {m['accuracy']:.4f}, loss {m['loss']:.4f}")
    width = max(len(n) for n in [*names, "true \\ predicted"])
    print("true \\ predicted".ljust(width) + "".join(f"  {n:>8}" for n in names))
    for name, row in zip(names, m["confusion"]):
        print(name.ljust(width) + "".join(f"  {c:>8}" for c in row))
    return 0


def _lm(args: argparse.Namespace, opts: EvalConfig, train: TrainConfig) -> int:
    from contextlib import nullcontext

    import numpy as np
    import torch

    from ..bundled import resolve_model_dir
    from ..data import TokenDataset, read_text
    from ..tokenizer import load_tokenizer
    from ..training.loss import eval_metrics, eval_sums
    from ..training.run import val_split
    from .common import load_model_dir, resolve_device

    model_dir = resolve_model_dir(args.model)  # a bundled name evaluates too (on --data: it has no data/)
    device = resolve_device(train.device)
    model = load_model_dir(model_dir, device=device)
    block = getattr(getattr(model, "config", None), "max_seq_len", 256)
    if args.data:
        ids = load_tokenizer(model_dir).encode(read_text([Path(p) for p in args.data]))
        data = TokenDataset(np.asarray(ids, dtype=np.int64), block)
        where = ", ".join(args.data)
    else:
        if not (model_dir / "data" / "meta.json").is_file():
            raise DataError(f"{model_dir / 'data'} has no prepared data; pass --data FILE to evaluate on text.")
        data, where = val_split(model_dir / "data", block), f"{model_dir / 'data'} (val split)"
        if data is None:
            raise DataError(f"The validation split in {model_dir / 'data'} is empty; pass --data FILE.")

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if train.dtype == "bfloat16" else nullcontext()

    batches = data.iter_eval(train.batch_size, opts.max_batches)
    metrics = eval_metrics(eval_sums(model, batches, device, autocast))
    print(f"{where}: loss {metrics['val_loss']:.4f}, perplexity {metrics['val_ppl']:.2f}, "
          f"token accuracy {metrics['val_acc']:.4f}")
    return 0


def _translate(args: argparse.Namespace, opts: EvalConfig, train: TrainConfig, decoding: GenerationConfig) -> int:
    """BLEU / chrF of DIR on ``--data`` pairs or the shipped ``--split``."""
    import json

    from ..finetune.pairs import read_pairs
    from ..generation.config import check_decoding_memory
    from ..translation.baselines import baseline_systems
    from ..translation.data import load_parallel
    from ..translation.metrics import evaluate_by_source
    from ..translation.translator import Translator
    from .common import resolve_device

    if args.data and len(args.data) > 1:
        raise DataError(f"--task translate takes one pair file, got {len(args.data)}; concatenate them first.")
    if args.data:
        pairs, where = read_pairs(args.data[0], opts.src_col, opts.tgt_col), args.data[0]
        subsets = [None] * len(pairs)
    else:
        shipped = load_parallel(opts.split)
        pairs, where = [(p.en, p.zh) for p in shipped], f"shipped en-zh {opts.split} split"
        subsets = [p.source for p in shipped]  # scored per source (bible, hsk, tatoeba) as well as overall
    if opts.max_batches:
        pairs, subsets = pairs[:opts.max_batches * train.batch_size], subsets[:opts.max_batches * train.batch_size]
    sources, refs = [s for s, _ in pairs], [t for _, t in pairs]
    translator = Translator.from_pretrained(args.model, device=resolve_device(train.device))
    check_decoding_memory(decoding.replace(max_new_tokens=0), min(train.batch_size, max(len(sources), 1)),
                          translator.max_len, translator.model.config, translator.device)
    hyps = translator.translate(sources, num_beams=decoding.num_beams, batch_size=train.batch_size,
                                no_repeat_ngram_size=decoding.no_repeat_ngram_size)
    if args.hypotheses:
        Path(args.hypotheses).write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    systems = {str(args.model): hyps}
    if args.baselines:  # the memory systems say so when scored on the split they were fitted on
        fitted = baseline_systems(scored_on=None if args.data else opts.split)
        systems.update({name: f(sources) for name, f in fitted.items()})
    print(f"{where}: {len(pairs)} pairs, sacrebleu tokenize={opts.bleu_tokenize!r}, beams={decoding.num_beams}, "
          f"no-repeat n-gram={decoding.no_repeat_ngram_size or 'off'}")
    for name, out in systems.items():
        row = {"system": name}
        for subset, m in evaluate_by_source(out, refs, subsets, tokenize=opts.bleu_tokenize).items():
            key = "" if subset == "all" else f"_{subset}"
            row.update({f"bleu{key}": round(m["bleu"], 2), f"chrf{key}": round(m["chrf"], 2)})
        print(json.dumps(row, ensure_ascii=False))
    return 0
