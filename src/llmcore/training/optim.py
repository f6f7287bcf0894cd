"""Optimizer parameter groups, learning-rate schedules and the AdamW builder.

Weight-decay policy (one function, :func:`param_groups`, builds every group):

* decay: parameters with ≥ 2 dimensions, i.e. the weight matrices of linear layers (and of any custom
  projection, e.g. LoRA factors or LSTM gates);
* no decay: biases and other 1-D parameters, normalisation weights, and every parameter owned by an
  ``nn.Embedding`` (token and learned-position tables). Embeddings are found by module type, not by shape,
  so a language-model head tied to the token embedding (the same ``Parameter``) is not decayed either.

Decoupled weight decay (Loshchilov & Hutter 2019) shrinks weights towards zero; on embeddings that would
pull rare tokens' vectors to the origin, and on norm gains towards a zero scale, neither of which is wanted.
Layer-wise ("discriminative", ULMFiT) learning rates come from ``layer_lr(name) -> multiplier``; groups are
split by ``(decay, multiplier)``. Every group carries ``lr_mult`` and ``initial_lr = lr · lr_mult``, and the
Trainer sets ``group["lr"] = initial_lr · schedule(step)`` each step, so one schedule scales all groups.

Schedules are plain functions ``step -> multiplier`` (no ``LambdaLR``): build one by name with
:func:`build_schedule`, add your own to :data:`SCHEDULES`, or pass any callable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

Schedule = Callable[[int], float]


# ---------------------------------------------------------------------------------------------- groups
def _embedding_param_ids(model: nn.Module) -> set[int]:
    """ids of parameters owned by an nn.Embedding (under any of their names, so tied heads count too)."""
    return {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)}


def _norm_param_ids(model: nn.Module) -> set[int]:
    """ids of parameters of normalisation layers (LayerNorm, RMSNorm, GroupNorm, ... by class name)."""
    norm_types = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)
    return {id(p) for m in model.modules()
            if isinstance(m, norm_types) or type(m).__name__.endswith("Norm") for p in m.parameters(recurse=False)}


def param_groups(
    model: nn.Module,
    weight_decay: float,
    lr: float,
    layer_lr: Callable[[str], float] | None = None,
    no_decay: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """AdamW parameter groups over the model's trainable parameters.

    Args:
        model: any module; frozen parameters (``requires_grad=False``) are left out.
        weight_decay: applied to weight matrices only (see the module docstring).
        lr: base learning rate; each group's ``lr`` is ``lr · lr_mult``.
        layer_lr: ``name -> multiplier`` for layer-wise learning rates (``None`` = 1 everywhere).
        no_decay: extra name substrings whose parameters never decay (e.g. ``("gate",)``).

    Returns:
        A list of dicts with ``params``, ``names``, ``weight_decay``, ``lr``, ``initial_lr`` and ``lr_mult``.
    """
    skip = _embedding_param_ids(model) | _norm_param_ids(model)
    patterns = tuple(no_decay)
    groups: dict[tuple[bool, float], dict[str, Any]] = {}
    for name, p in model.named_parameters():  # tied parameters appear once, under their first name
        if not p.requires_grad:
            continue
        decay = p.ndim >= 2 and id(p) not in skip and not any(s in name for s in patterns)
        mult = float(layer_lr(name)) if layer_lr is not None else 1.0
        if not (mult >= 0.0 and math.isfinite(mult)):
            raise ConfigError(f"layer_lr({name!r}) returned {mult}; multipliers must be finite and >= 0.")
        group = groups.setdefault((decay, mult), {
            "params": [], "names": [], "weight_decay": weight_decay if decay else 0.0,
            "lr": lr * mult, "initial_lr": lr * mult, "lr_mult": mult})
        group["params"].append(p)
        group["names"].append(name)
    result = list(groups.values())
    check_groups(model, result, lr)
    return result


def check_groups(model: nn.Module, groups: list[dict[str, Any]], lr: float) -> list[dict[str, Any]]:
    """Check that every trainable parameter is in exactly one group; fill ``lr``/``initial_lr``/``names``.

    Groups from a fine-tuning strategy must carry ``lr_mult``; they may also list frozen parameters (which
    AdamW skips while their grad is None). Raises :class:`ConfigError` otherwise.
    """
    names = {id(p): n for n, p in model.named_parameters()}
    seen: dict[int, int] = {}
    for i, g in enumerate(groups):
        if "params" not in g or "lr_mult" not in g:
            raise ConfigError(f"Optimizer group {i} needs 'params' and 'lr_mult' keys; got {sorted(g)}.")
        g["params"] = list(g["params"])
        for p in g["params"]:
            if id(p) not in names:
                raise ConfigError(f"Optimizer group {i} holds a tensor of shape {tuple(p.shape)} that is not "
                                  "a parameter of the model.")
            if id(p) in seen:
                raise ConfigError(f"Parameter {names[id(p)]} is in optimizer groups {seen[id(p)]} and {i}; "
                                  "each parameter must be in exactly one group.")
            seen[id(p)] = i
        g["names"] = [names[id(p)] for p in g["params"]]
        g.setdefault("initial_lr", lr * g["lr_mult"])
        g.setdefault("lr", g["initial_lr"])
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if missing:
        raise ConfigError(f"Trainable parameters {missing[:5]} (and {max(0, len(missing) - 5)} more) are in "
                          "no optimizer group; every trainable parameter must be in exactly one group.")
    return groups


def build_optimizer(groups: list[dict[str, Any]], lr: float, betas: tuple[float, float] = (0.9, 0.95),
                    eps: float = 1e-8, device_type: str = "cpu") -> torch.optim.AdamW:
    """AdamW over ``groups``, through the fused kernel on CPU and GPU (one pass over each parameter's state
    instead of a dozen: on CPU a 118M-parameter step took 0.07 s against 0.20 s for the foreach path)."""
    fused = True if device_type in ("cuda", "cpu") else None
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused)


def set_lr(optimizer: torch.optim.Optimizer, multiplier: float) -> None:
    """``group["lr"] = group["initial_lr"] · multiplier`` for every group."""
    for g in optimizer.param_groups:
        g["lr"] = g["initial_lr"] * multiplier


# ---------------------------------------------------------------------------------------------- schedules
def _warmup(step: int, warmup_steps: int) -> float:
    # nanoGPT's (step + 1) / (warmup + 1): the first step already moves, the last warm-up step is just below 1.
    return (step + 1) / (warmup_steps + 1)


def warmup_cosine(warmup_steps: int, max_steps: int, min_ratio: float = 0.1) -> Schedule:
    """Linear warm-up, then a half cosine from 1 down to ``min_ratio`` at ``max_steps`` (GPT-3, nanoGPT)."""
    def schedule(step: int) -> float:
        if step < warmup_steps:
            return _warmup(step, warmup_steps)
        if step >= max_steps:
            return min_ratio
        progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
        return min_ratio + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - min_ratio)
    return schedule


def warmup_linear(warmup_steps: int, max_steps: int, min_ratio: float = 0.0) -> Schedule:
    """Linear warm-up, then a linear decay from 1 to ``min_ratio`` at ``max_steps`` (BERT, ULMFiT-like)."""
    def schedule(step: int) -> float:
        if step < warmup_steps:
            return _warmup(step, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
        return 1.0 - progress * (1.0 - min_ratio)
    return schedule


def warmup_constant(warmup_steps: int, max_steps: int = 0, min_ratio: float = 1.0) -> Schedule:
    """Linear warm-up, then a constant learning rate (``max_steps`` and ``min_ratio`` are unused)."""
    def schedule(step: int) -> float:
        return _warmup(step, warmup_steps) if step < warmup_steps else 1.0
    return schedule


def warmup_stable_decay(warmup_steps: int, max_steps: int, min_ratio: float = 0.0,
                        decay_fraction: float = 0.2) -> Schedule:
    """Warm-up, a long constant phase, then a linear decay over the last ``decay_fraction`` of the steps.

    Warmup-stable-decay (MiniCPM, Hu et al. 2024; Hägele et al. 2024): the stable phase can be continued or
    branched from at any point, and the short final decay recovers the quality of a cosine schedule.
    """
    decay_start = max(warmup_steps, int(max_steps * (1.0 - decay_fraction)))

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return _warmup(step, warmup_steps)
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start) / max(1, max_steps - decay_start))
        return 1.0 - progress * (1.0 - min_ratio)
    return schedule


# name -> factory(warmup_steps, max_steps, min_ratio) -> schedule. Extend by adding an entry.
SCHEDULES: dict[str, Callable[[int, int, float], Schedule]] = {
    "cosine": warmup_cosine,
    "linear": warmup_linear,
    "constant": warmup_constant,
    "wsd": warmup_stable_decay,
}


def build_schedule(spec: str | Schedule, warmup_steps: int, max_steps: int, min_ratio: float) -> Schedule:
    """A ``step -> multiplier`` function from a name in :data:`SCHEDULES` or a callable (used as is)."""
    if callable(spec):
        return spec
    if spec not in SCHEDULES:
        raise ConfigError(f"Unknown schedule {spec!r}; available: {', '.join(SCHEDULES)} (or pass a callable).")
    return SCHEDULES[spec](warmup_steps, max_steps, min_ratio)


__all__ = ["param_groups", "check_groups", "build_optimizer", "set_lr", "build_schedule", "SCHEDULES",
           "warmup_cosine", "warmup_linear", "warmup_constant", "warmup_stable_decay"]
