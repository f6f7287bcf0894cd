"""Training: the loss, optimizer groups and schedules, the Trainer, callbacks, checkpoints, DDP.

``lm_loss`` and ``param_groups`` are usable on their own in a hand-written loop; ``Trainer`` wires them
together with gradient accumulation, clipping, bf16 autocast, DDP, evaluation, early stopping and pickle-free
checkpoints. See ``trainer.py`` for the exact step and the fine-tuning strategy hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:  # the public names, imported on first use (llmcore.lazy): importing the package loads no torch
    from .callbacks import Checkpointer, EarlyStopping, MetricsLogger, ProgressBar, SampleGenerator
    from .checkpoint import latest_checkpoint, list_checkpoints
    from .config import TrainConfig
    from .loss import count_targets, lm_loss, token_accuracy
    from .optim import (
        SCHEDULES,
        build_optimizer,
        build_schedule,
        param_groups,
        warmup_constant,
        warmup_cosine,
        warmup_linear,
        warmup_stable_decay,
    )
    from .trainer import Trainer

__all__ = [
    "lm_loss",
    "count_targets",
    "token_accuracy",
    "param_groups",
    "build_optimizer",
    "build_schedule",
    "SCHEDULES",
    "warmup_cosine",
    "warmup_linear",
    "warmup_constant",
    "warmup_stable_decay",
    "Trainer",
    "TrainConfig",
    "ProgressBar",
    "MetricsLogger",
    "EarlyStopping",
    "Checkpointer",
    "SampleGenerator",
    "latest_checkpoint",
    "list_checkpoints",
]

__getattr__, __dir__ = lazy_exports(__name__, __file__)
