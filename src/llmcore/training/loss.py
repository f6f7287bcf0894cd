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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError


def lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy of ``logits`` (B, T, V) against ``labels`` (B, T); returns a scalar.

    Args:
        logits: (B, T, V) un-normalised next-token scores, any float dtype (upcast to float32).
        labels: (B, T) target ids; positions equal to ``ignore_index`` (padding, prompt tokens) add nothing.
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


def count_targets(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Number of positions that contribute to the loss (labels != ignore_index), as a 0-d int64 tensor."""
    return (labels != ignore_index).sum()


@torch.no_grad()
def token_accuracy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> tuple[int, int]:
    """(number of counted positions where argmax(logits) == label, number of counted positions)."""
    keep = labels != ignore_index
    correct = (logits.argmax(-1) == labels) & keep
    return int(correct.sum()), int(keep.sum())


@torch.no_grad()
def eval_sums(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
              device: torch.device | str = "cpu", autocast: Callable[[], Any] = nullcontext) -> torch.Tensor:
    """float64 tensor [summed loss, target tokens, correct argmax predictions] of ``model`` over ``batches``.

    Sums rather than means, so results from several ranks (or several calls) add up before dividing. The model
    is put in eval mode for the call and restored afterwards.
    """
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            with autocast():
                logits = model(x)  # (B, T, V)
            correct, n = token_accuracy(logits, y)
            sums += torch.tensor([float(lm_loss(logits, y, reduction="sum")), n, correct], dtype=torch.float64,
                                 device=device)
    finally:
        model.train(was_training)
    return sums


def eval_metrics(sums: torch.Tensor) -> dict[str, float]:
    """``{"val_loss", "val_ppl", "val_acc"}`` from :func:`eval_sums`; perplexity = exp(mean loss)."""
    loss_sum, n, correct = sums.tolist()
    if n == 0:
        raise DataError("The evaluation data yielded no target tokens; is the validation split empty?")
    loss = loss_sum / n
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 700.0)), "val_acc": correct / n}


__all__ = ["lm_loss", "count_targets", "token_accuracy", "eval_sums", "eval_metrics"]
