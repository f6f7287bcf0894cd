"""The step's global batch, cut for one rank: which rows it builds, the draw, the checks and the counts.

The Trainer's data contract (see :mod:`llmcore.training.trainer`): a step draws the *global* batch of
``batch_size · grad_accum · world_size`` rows with one generator, identical on every rank, and micro-batch i
of rank r is rows ``[(i·world + r)·batch_size, ... + batch_size)``. Each rank builds only its own rows
(``sample_batch(..., rows=...)``) while the generator is consumed as for the whole batch, so the data stream
does not depend on how the batch is split: k accumulated micro-batches equal one k-times larger batch, and
N ranks equal one process. The loss is normalised by the targets of the whole global batch (one all-reduce).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from ..errors import DataError
from ..inputs import IGNORE_INDEX
from . import distributed as dist
from .loss import Batch, count_targets

# Model inputs whose width is the sequence length (tokens per row, for throughput, MFU and epochs).
TOKEN_KEYS = ("input_ids", "tgt_ids")


def rank_rows(batch_size: int, grad_accum: int, env: dist.DistEnv) -> torch.Tensor | None:
    """Rows of the global batch rank ``env.rank`` trains on, micro-batch by micro-batch: (k·B,) row indices.

    None in one process (all rows): a dataset used by one process only needs no ``rows=`` argument.
    """
    if not env.enabled:
        return None
    starts = (torch.arange(grad_accum) * env.world_size + env.rank) * batch_size  # (k,) first row of each
    return (starts[:, None] + torch.arange(batch_size)).reshape(-1)  # (k·B,)


def draw_batch(data: Any, generator: torch.Generator, batch_size: int, grad_accum: int,
               env: dist.DistEnv) -> Batch:
    """This rank's ``grad_accum · batch_size`` rows of the step's global batch, checked."""
    n = batch_size * grad_accum * env.world_size
    rows = rank_rows(batch_size, grad_accum, env)
    batch = data.sample_batch(n, generator) if rows is None else data.sample_batch(n, generator, rows=rows)
    check_batch(batch, batch_size * grad_accum, "sample_batch")
    return batch


def check_batch(batch: Any, rows: int, where: str) -> None:
    """DataError unless ``batch`` is a dict of tensors with a ``labels`` entry and ``rows`` rows in each."""
    if not isinstance(batch, dict) or "labels" not in batch:
        raise DataError(f"{where} returned a {type(batch).__name__}; the Trainer needs a dict of tensors with a "
                        "'labels' entry, e.g. {'input_ids': x, 'labels': y} (other keys go to the model).")
    bad = {key: tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__ for key, v in batch.items()
           if not isinstance(v, torch.Tensor) or v.shape[0] != rows}
    if bad:
        raise DataError(f"{where} must give {rows} rows in every entry; got shapes {bad}.")


def row_tokens(batch: Batch) -> int:
    """Tokens per row: the width of ``input_ids`` (or ``tgt_ids``), else of the labels (1 for class labels)."""
    for key in TOKEN_KEYS:
        if key in batch and batch[key].dim() >= 2:
            return batch[key].shape[1]
    labels = batch["labels"]
    return labels.shape[1] if labels.dim() >= 2 else 1


def global_targets(batch: Batch, device: torch.device, env: dist.DistEnv, step: int) -> int:
    """Targets (labels != IGNORE_INDEX) of the whole global batch: every rank counts its rows, one all-reduce.

    The ``int()`` is the one host sync a step has anyway; DataError when there is none (step is 0-based).
    """
    count = int(dist.all_reduce_sum(count_targets(batch["labels"]).to(device), env))
    if count == 0:
        raise DataError(f"The batch of step {step + 1} has no target tokens (every label is {IGNORE_INDEX}).")
    return count


def micro_batches(batch: Batch, batch_size: int, device: torch.device) -> Iterator[Batch]:
    """Consecutive ``batch_size``-row slices of ``batch``, moved to ``device``."""
    n = next(iter(batch.values())).shape[0]
    for start in range(0, n, batch_size):
        yield {key: v[start:start + batch_size].to(device) for key, v in batch.items()}


def rank_share(batches: Iterable[Batch], env: dist.DistEnv, even: bool = False) -> Iterator[Batch]:
    """Every ``world_size``-th batch starting at ``rank``: evaluation batches shared out between ranks.

    ``even=True`` (FSDP, where every forward pass is collective) gives every rank the same number of batches:
    a rank left without one in the last round gets a copy of that round's first batch with every label set to
    ``IGNORE_INDEX``, which runs the forward pass and adds nothing to the sums.
    """
    group: list[Batch] = []
    for b in batches:
        group.append(b)
        if len(group) == env.world_size:
            yield group[env.rank]
            group = []
    if group:
        if env.rank < len(group):
            yield group[env.rank]
        elif even:
            yield {**group[0], "labels": torch.full_like(group[0]["labels"], IGNORE_INDEX)}


__all__ = ["TOKEN_KEYS", "rank_rows", "draw_batch", "check_batch", "row_tokens", "global_targets", "micro_batches",
           "rank_share"]
