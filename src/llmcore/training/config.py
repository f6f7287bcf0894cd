"""TrainConfig: every training hyper-parameter in one flat, validated dataclass.

Defaults are nanoGPT's shakespeare-char settings scaled for a CPU. The commands generate their flags from
these fields (:mod:`llmcore.cli.common`), so each default exists here only. Validation happens in
``__post_init__`` in the style every llmcore config shares (:func:`llmcore.config.check_field`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..config import check_field, check_keys, is_int, is_number


@dataclass
class TrainConfig:
    """Training hyper-parameters. Defaults are nanoGPT's shakespeare-char settings scaled for a CPU."""

    max_steps: int = 2000
    batch_size: int = 12  # sequences per micro-batch per rank
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3
    min_lr: float = 1e-4  # the schedule ends at min_lr / lr
    warmup_steps: int = 100
    schedule: Any = "cosine"  # a name in optim.SCHEDULES or a callable step -> multiplier
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.99)  # β2 = 0.99 because small batches make for noisy gradients
    eps: float = 1e-8
    grad_clip: float | None = 1.0  # max global gradient norm; None or 0 = off
    eval_interval: int = 250  # evaluate (and checkpoint) every N steps and at the end
    eval_batches: int = 20
    log_interval: int = 10
    patience: int | None = None  # early stopping after N evaluations without improvement; None = off
    keep_last: int = 1  # newest checkpoints kept (the best one is kept besides, if keep_best)
    keep_best: bool = True
    seed: int = 1337  # data order (same on every rank) and, as seed + rank, torch's global RNG (dropout)
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "float32"  # float32 | bfloat16 (autocast; weights and optimizer stay float32)
    compile: bool = False  # torch.compile the model; falls back to eager with a warning if it fails
    distributed: str = "ddp"  # under torchrun: ddp (replicas) | fsdp (FSDP2 shards) | none (refused there)
    activation_checkpointing: bool = False  # recompute each block's activations in backward (less memory)
    out_dir: str | None = None  # run directory; None = write nothing
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    num_samples: int = 2  # text samples at the end (needs a tokenizer)
    sample_tokens: int = 200
    sample_prompt: str = "\n"
    sample_interval: int | None = None
    sample_temperature: float = 0.8
    sample_top_k: int | None = 200
    max_epochs: float | None = None  # stop after this many passes over the training tokens
    peak_flops: float | None = None  # one device's peak FLOP/s, for MFU; known GPUs are looked up
    progress: bool = True  # show a tqdm bar

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        for name in ("max_steps", "batch_size", "grad_accum", "eval_interval", "eval_batches", "log_interval"):
            check_field(self, name, lambda v: is_int(v, 1), "a positive integer")
        check_field(self, "warmup_steps", lambda v: is_int(v, 0), "an integer >= 0")
        check_field(self, "keep_last", lambda v: is_int(v, 1), "an integer >= 1")
        check_field(self, "lr", lambda v: is_number(v) and v > 0, "> 0")
        check_field(self, "min_lr", lambda v: is_number(v) and 0 <= v <= self.lr, f"in [0, lr={self.lr}]")
        check_field(self, "weight_decay", lambda v: v >= 0, ">= 0")
        check_field(self, "betas", lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two numbers in [0, 1)")
        check_field(self, "grad_clip", lambda v: v is None or v >= 0, "None or >= 0")
        check_field(self, "patience", lambda v: v is None or is_int(v, 1), "None or an integer >= 1")
        check_field(self, "device", lambda v: v in ("auto", "cpu", "cuda"), "one of auto, cpu, cuda")
        check_field(self, "dtype", lambda v: v in ("float32", "bfloat16"), "float32 or bfloat16")
        check_field(self, "distributed", lambda v: v in ("ddp", "fsdp", "none"), "one of ddp, fsdp, none")
        from .optim import SCHEDULES  # torch: the parsers read this class's defaults without it

        check_field(self, "schedule", lambda v: callable(v) or v in SCHEDULES, f"callable or one of {list(SCHEDULES)}")
        check_field(self, "label_smoothing", lambda v: 0 <= v < 1, "in [0, 1)")
        check_field(self, "z_loss", lambda v: v >= 0, ">= 0")
        check_field(self, "num_samples", lambda v: is_int(v, 0), "an integer >= 0")
        check_field(self, "max_epochs", lambda v: v is None or v > 0, "None or > 0")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if callable(self.schedule):
            d["schedule"] = getattr(self.schedule, "__name__", "custom")
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a dict; unknown keys raise :class:`ConfigError` listing the valid ones."""
        check_keys(cls, d)
        return cls(**d)


__all__ = ["TrainConfig"]
