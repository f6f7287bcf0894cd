"""Model-agnostic helpers every layer uses: a scoped eval mode and one parameter counter."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run the block with ``model`` in eval mode (dropout off), then restore the mode it had.

    Evaluation, sampling and plotting happen in the middle of training; restoring (rather than calling
    ``.train()``) keeps a model that was already in eval mode there.
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def num_parameters(model: nn.Module, trainable_only: bool = False, exclude: tuple[nn.Module, ...] = ()) -> int:
    """Number of parameters of ``model``; tied (shared) tensors count once.

    ``trainable_only`` counts only ``requires_grad`` parameters; ``exclude`` leaves out the parameters of the
    given sub-modules (e.g. the embeddings, for the "non-embedding" count of scaling laws).
    """
    skip = {id(p) for m in exclude for p in m.parameters()}
    return sum(p.numel() for p in model.parameters()  # parameters() yields a shared tensor once
               if id(p) not in skip and (p.requires_grad or not trainable_only))


__all__ = ["eval_mode", "num_parameters"]
