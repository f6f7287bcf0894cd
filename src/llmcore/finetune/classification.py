"""Data, loss and evaluation for transfer to classification with :class:`~llmcore.models.SequenceClassifier`.

:class:`ClassificationDataset` gives the Trainer ``{"input_ids": (B, T), "attention_mask": (B, T),
"labels": (B,)}`` batches (right-padded), so ``SequenceClassifier.forward(input_ids, attention_mask)`` trains
with no adapter; the mask comes from the batch, never from a pad id. The Trainer's default loss already
handles class logits (B, C) against labels (B,); :func:`classification_loss` is the same sum with a clearer
error for mismatched shapes. :func:`evaluate` scores a classifier outside a Trainer (accuracy, loss, confusion
matrix; ``llmcore eval --task classify``) and :func:`predict` labels new texts (``llmcore classify``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.examples import ExampleDataset, check_rows_in_vocab, collate_pad
from ..errors import DataError
from ..modules import eval_mode


class ClassificationDataset(ExampleDataset):
    """Texts and class labels as right-padded batches: ``{"input_ids", "attention_mask", "labels"}``.

    Args:
        texts: the inputs.
        labels: class ids (ints in ``[0, num_classes)``) or class names (mapped to ids in sorted order unless
            ``label_names`` fixes the order).
        tokenizer: encodes each text (with ``<bos>`` when ``add_bos`` and the tokenizer has one).
        max_len: longer texts keep their first ``max_len`` tokens (documented truncation, not an error).
        label_names: the class names in id order.
        vocab_size: the model's vocabulary size (default: the tokenizer's); every id is checked against it
            once, here.
    """

    def __init__(self, texts: Sequence[str], labels: Sequence[int | str], tokenizer: Any, max_len: int = 128,
                 label_names: Sequence[str] | None = None, add_bos: bool = True,
                 vocab_size: int | None = None) -> None:
        if len(texts) != len(labels):
            raise DataError(f"{len(texts)} texts but {len(labels)} labels; give one label per text.")
        if not texts:
            raise DataError("ClassificationDataset got no texts.")
        if isinstance(labels[0], str) or label_names is not None:
            names = list(label_names) if label_names is not None else sorted(set(map(str, labels)))
            unknown = sorted(set(map(str, labels)) - set(names))
            if unknown:
                raise DataError(f"Labels {unknown[:5]} are not in label_names {names}.")
            self.label_names = names
            self.y = [names.index(str(lb)) for lb in labels]
        else:
            self.y = [int(lb) for lb in labels]
            self.label_names = [str(i) for i in range(max(self.y) + 1)]
            if min(self.y) < 0:
                raise DataError(f"Class id {min(self.y)} is negative; class ids are 0 .. num_classes-1.")
        if tokenizer.fill_id is None:
            raise DataError("The tokenizer has neither <pad> nor <eos>; classification batches need a pad id.")
        self.pad_id = int(tokenizer.fill_id)  # filler only: the mask marks it, so its value never matters
        bos = [tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else []
        self.ids = [(bos + list(tokenizer.encode(t)))[:max_len] for t in texts]
        empty = next((i for i, s in enumerate(self.ids) if not s), None)
        if empty is not None:
            raise DataError(f"Text {empty} encodes to no tokens; remove empty texts.")
        check_rows_in_vocab([*self.ids, [self.pad_id]], vocab_size if vocab_size is not None else tokenizer.vocab_size,
                            "the encoded texts")

    @property
    def num_tokens(self) -> int:
        """Real tokens in the set: the Trainer counts epochs in tokens (padding makes them come a bit early)."""
        return sum(map(len, self.ids))

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def __len__(self) -> int:
        return len(self.ids)

    def example_length(self, i: int) -> int:
        return len(self.ids[i])

    def collate(self, indices: Sequence[int], batch: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        """Right-padded to the longest text of ``batch`` (default: ``indices``); labels (B,) class ids."""
        width = max(len(self.ids[i]) for i in (batch if batch is not None else indices))
        x, mask = collate_pad([self.ids[i] for i in indices], self.pad_id, "right", width=width)  # (B, T) each
        return {"input_ids": x, "attention_mask": mask,
                "labels": torch.tensor([self.y[i] for i in indices], dtype=torch.long)}


def classification_loss(outputs: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of class logits (B, C) against ``batch["labels"]`` (B,), summed: a Trainer ``loss_fn``.

    The Trainer divides by the number of labels in the global batch, i.e. the batch size.
    """
    labels = batch["labels"]
    if outputs.dim() != 2 or labels.dim() != 1:
        raise DataError(f"classification_loss expects logits (B, C) and labels (B,); got {tuple(outputs.shape)} "
                        f"and {tuple(labels.shape)}. For language modelling use the Trainer's default loss.")
    return F.cross_entropy(outputs.float(), labels, reduction="sum")


classification_loss.reports_perplexity = False  # the Trainer's log shows accuracy, not exp(loss) over classes


def label_names(model: nn.Module) -> list[str]:
    """The class names of a classifier in id order: ``config.extra["label_names"]`` (``llmcore finetune --task
    classify`` saves them), else ``"0" .. "C-1"``."""
    names = getattr(model.config, "extra", {}).get("label_names")
    n = model.config.num_classes
    if names is None:
        return [str(i) for i in range(n)]
    if len(names) != n:
        raise DataError(f"config.extra['label_names'] has {len(names)} names for a {n}-class head; fix config.json.")
    return [str(x) for x in names]


@torch.no_grad()
def evaluate(model: nn.Module, data: Any, batch_size: int = 32, max_batches: int | None = None) -> dict[str, Any]:
    """``{"loss", "accuracy", "n", "confusion"}`` of a classifier over ``data.iter_eval`` (example-weighted).

    ``confusion[i][j]`` counts examples of true class ``i`` predicted as ``j`` (C x C integers).
    """
    device = next(model.parameters()).device
    C = model.config.num_classes
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, correct, examples
    confusion = torch.zeros(C, C, dtype=torch.long, device=device)
    with eval_mode(model):
        for batch in data.iter_eval(batch_size, max_batches):
            batch = {k: v.to(device) for k, v in batch.items()}
            labels = batch.pop("labels")
            logits = model(**batch)  # (B, C)
            pred = logits.argmax(-1)  # (B,)
            sums += torch.stack([F.cross_entropy(logits.float(), labels, reduction="sum").double(),
                                 (pred == labels).sum().double(),
                                 torch.tensor(float(len(labels)), dtype=torch.float64, device=device)])
            confusion += torch.bincount(labels * C + pred, minlength=C * C).view(C, C)
    loss, correct, n = sums.tolist()
    if n == 0:
        raise DataError("evaluate() got no examples.")
    return {"loss": loss / n, "accuracy": correct / n, "n": n, "confusion": confusion.tolist()}


@torch.no_grad()
def predict(model: nn.Module, tokenizer: Any, texts: Sequence[str], batch_size: int = 32,
            max_len: int | None = None) -> list[tuple[int, float]]:
    """(class id, its probability) for each text, encoded as :class:`ClassificationDataset` encodes training
    texts (``<bos>`` first, cut to ``max_len`` tokens, default the model's context)."""
    data = ClassificationDataset(list(texts), [0] * len(texts), tokenizer, max_len or model.config.max_seq_len,
                                 vocab_size=model.config.vocab_size)
    device = next(model.parameters()).device
    out: list[tuple[int, float]] = []
    with eval_mode(model):
        for batch in data.iter_eval(batch_size):
            probs = model(batch["input_ids"].to(device), batch["attention_mask"].to(device)).float().softmax(-1)
            best = probs.max(-1)  # (B,) each
            out += list(zip(best.indices.tolist(), best.values.tolist()))
    return out


__all__ = ["ClassificationDataset", "classification_loss", "evaluate", "predict", "label_names"]
