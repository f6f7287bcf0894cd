"""The language-modelling loss: cross-entropy over next-token targets, kept outside the model.

``lm_loss(logits, labels)`` is the token-weighted mean of ``-log p(label)`` over every position whose label is
not ``ignore_index``. The labels are already the targets (``y`` from :class:`llmcore.data.TokenDataset` is ``x``
shifted by one), so nothing is shifted here. Two optional terms:

* label smoothing (Szegedy et al. 2016): the target distribution puts ``1 - ε`` on the label and spreads ``ε``
  uniformly over the vocabulary, which discourages over-confident logits;
* z-loss (PaLM, Chowdhery et al. 2022, §5): ``z_loss · logsumexp(logits)²`` pulls the softmax normaliser
  towards 1 (log Z towards 0), which keeps bf16 logits from drifting and improves stability.

``reduction="sum"`` returns the un-normalised sum; the Trainer divides it by the number of target tokens in
the *whole* global batch (all micro-batches, all ranks), so gradient accumulation and DDP give exactly the
gradient of one big batch. Everything is computed in float32 whatever the logits' dtype.

The Trainer's loss contract is ``loss_fn(outputs, batch) -> 0-d tensor summed over targets``, where ``batch``
is the dict a dataset returned (``batch["labels"]`` holds the targets). :func:`default_loss` is that contract
around :func:`lm_loss`; it serves language models (logits (B, T, V), labels (B, T)) and classifiers
(logits (B, C), labels (B,)) alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from ..inputs import IGNORE_INDEX
from ..modules import eval_mode

Batch = dict[str, torch.Tensor]
LossFn = Callable[[Any, Batch], torch.Tensor]


def lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy of ``logits`` (B, T, V) against ``labels`` (B, T) (or (B, C) against (B,)); a scalar.

    Args:
        logits: (B, T, V) un-normalised next-token scores (or (B, C) class scores), any float dtype (upcast
            to float32).
        labels: (B, T) target ids (or (B,) class ids); positions equal to ``ignore_index`` (padding, prompt tokens) add nothing.
        label_smoothing: ε in [0, 1).
        z_loss: weight of the PaLM z-loss, ``z_loss · mean(logsumexp(logits)²)`` over counted positions.
        reduction: ``"mean"`` (over counted tokens; 0 when there are none) or ``"sum"``.
    """
    if reduction not in ("mean", "sum"):
        raise ConfigError(f"lm_loss reduction={reduction!r} is unknown; use 'mean' or 'sum'.")
    if not 0.0 <= label_smoothing < 1.0:
        raise ConfigError(f"label_smoothing={label_smoothing} must be in [0, 1).")
    if logits.shape[:-1] != labels.shape:
        raise ConfigError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree: logits must be "
                          "(B, T, V) for labels (B, T); labels are the already-shifted next tokens.")
    flat = logits.reshape(-1, logits.shape[-1]).float()  # (N, V)
    target = labels.reshape(-1)  # (N,)
    loss = F.cross_entropy(flat, target, ignore_index=ignore_index, label_smoothing=label_smoothing,
                           reduction="sum")
    if z_loss:
        keep = target != ignore_index
        lse = torch.logsumexp(flat[keep], dim=-1)  # (n_kept,) log of the softmax normaliser
        loss = loss + z_loss * lse.pow(2).sum()
    if reduction == "sum":
        return loss
    return loss / count_targets(labels, ignore_index).clamp(min=1)


def count_targets(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Number of positions that contribute to the loss (labels != ignore_index), as a 0-d int64 tensor."""
    return (labels != ignore_index).sum()


@torch.no_grad()
def token_accuracy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> tuple[int, int]:
    """(number of counted positions where argmax(logits) == label, number of counted positions)."""
    keep = labels != ignore_index
    correct = (logits.argmax(-1) == labels) & keep
    return int(correct.sum()), int(keep.sum())


def default_loss(outputs: torch.Tensor, batch: Batch, label_smoothing: float = 0.0,
                 z_loss: float = 0.0) -> torch.Tensor:
    """The Trainer's default ``loss_fn``: :func:`lm_loss` of ``outputs`` against ``batch["labels"]``, summed."""
    return lm_loss(outputs, batch["labels"], label_smoothing=label_smoothing, z_loss=z_loss, reduction="sum")


def model_inputs(batch: Batch) -> Batch:
    """Every entry of ``batch`` but ``"labels"``: the keyword arguments of the model call."""
    return {k: v for k, v in batch.items() if k != "labels"}


def _accuracy_sums(outputs: Any, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(correct, counted) argmax predictions, or None when ``outputs`` are not scores over ``labels``' classes."""
    if not isinstance(outputs, torch.Tensor) or outputs.dim() != labels.dim() + 1 or \
            outputs.shape[:-1] != labels.shape or labels.dtype.is_floating_point:
        return None
    keep = labels != IGNORE_INDEX
    return ((outputs.argmax(-1) == labels) & keep).sum(), keep.sum()


@torch.no_grad()
def eval_sums(model: torch.nn.Module, batches: Iterable[Batch], device: torch.device | str = "cpu",
              autocast: Callable[[], Any] = nullcontext, loss_fn: LossFn | None = None) -> torch.Tensor:
    """float64 tensor [summed loss, targets, correct argmax predictions, targets scored for accuracy].

    Each batch is a dict (see :mod:`llmcore.training.trainer`): ``model(**inputs)`` gives the outputs and
    ``loss_fn(outputs, batch)`` (default: :func:`default_loss`, plain cross-entropy) their summed loss; the
    targets are ``batch["labels"] != IGNORE_INDEX``. Accuracy is counted only where the outputs are scores over
    the labels' classes (the last entry stays 0 otherwise). Sums rather than means, so results from several
    ranks (or several calls) add up before dividing; they stay on ``device`` (no host sync per batch). The
    model is put in eval mode for the call and its mode restored afterwards.
    """
    loss_fn = loss_fn or default_loss
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    with eval_mode(model):
        for batch in batches:
            if not isinstance(batch, dict) or "labels" not in batch:
                raise DataError(f"Evaluation batches must be dicts with a 'labels' entry, got {type(batch).__name__}"
                                "; iter_eval should yield {'input_ids': ..., 'labels': ...}.")
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast():
                outputs = model(**model_inputs(batch))
            labels = batch["labels"]
            acc = _accuracy_sums(outputs, labels)
            n = count_targets(labels)
            correct, scored = acc if acc is not None else (torch.zeros((), device=device),) * 2
            sums += torch.stack([loss_fn(outputs, batch).detach().double(), n.double(), correct.double(),
                                 scored.double()])
    return sums


def eval_metrics(sums: torch.Tensor) -> dict[str, float]:
    """``{"val_loss", "val_ppl"[, "val_acc"]}`` from :func:`eval_sums`; perplexity = exp(mean loss).

    ``val_acc`` (token or class accuracy) is present only when the outputs allowed it.
    """
    loss_sum, n, correct, scored = sums.tolist()
    if n == 0:
        raise DataError("The evaluation data yielded no target tokens; is the validation split empty?")
    loss = loss_sum / n
    out = {"val_loss": loss, "val_ppl": math.exp(min(loss, 700.0))}
    if scored:
        out["val_acc"] = correct / scored
    return out


__all__ = ["lm_loss", "default_loss", "model_inputs", "count_targets", "token_accuracy", "eval_sums",
           "eval_metrics"]
