"""``llmcore classify --model DIR "text" ...``: the predicted class of each text, by the names saved with the model.

    llmcore finetune --model runs/base --data reviews.tsv --task classify --out runs/sentiment
    llmcore classify --model runs/sentiment "a wonderful film" "two hours I will not get back"
    llmcore classify --model runs/sentiment --data texts.txt        # one text per line

Prints one line per text: ``LABEL<TAB>PROBABILITY<TAB>TEXT``. ``--model`` may be a LoRA adapter directory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..training.config import TrainConfig
from .common import add_dataclass_args, add_model_command, given, make_config


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_model_command(subparsers, "classify", help="predict the class of texts with a classify fine-tune",
                          description=__doc__)
    p.add_argument("--model", required=True, metavar="DIR", help="classifier directory (finetune --task classify)")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to classify")
    p.add_argument("--data", metavar="FILE", help="UTF-8 file of texts to classify, one per line")
    add_dataclass_args(p, TrainConfig, ["batch_size", "device"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import DataError
    from ..finetune.classification import label_names, predict
    from .common import load_classifier

    texts = list(args.texts)
    if args.data:
        if not Path(args.data).is_file():
            raise DataError(f"--data {args.data} does not exist; pass a UTF-8 file with one text per line.")
        texts += [line for line in Path(args.data).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise DataError("No texts to classify; pass them as arguments or with --data FILE (one per line).")
    train = make_config(TrainConfig, given(args, TrainConfig, ["batch_size", "device"]))
    model, tok = load_classifier(args.model, train.device)
    names = label_names(model)
    for text, (label, prob) in zip(texts, predict(model, tok, texts, batch_size=train.batch_size)):
        print(f"{names[label]}\t{prob:.4f}\t{text}")
    return 0
