"""Fine-tuning strategies: which parameters train, at what learning rate, on what schedule.

A strategy is a tiny object the :class:`~llmcore.training.Trainer` calls at fixed points; it never owns a
training loop (one loop, many strategies: STYLE.md anti-pattern 3). The hooks, all optional:

* ``setup(model, trainer)``: once, at the start of ``fit()`` and before the optimizer is built; freezing
  happens here through :func:`set_trainable`.
* ``on_step(step)`` before the forward pass of step ``step`` (0-based); ``on_epoch(epoch)`` after the step
  that completes epoch ``epoch`` (1, 2, ...), i.e. when 0-based epoch ``epoch`` starts. A strategy that
  changes which parameters train calls ``trainer.rebuild_optimizer()``.
* ``param_groups(model, base_lr, weight_decay) -> list[dict]``: optimizer groups, each with ``params`` and
  ``lr_mult`` (the Trainer multiplies the scheduled learning rate by it).
* ``schedule(step, max_steps) -> float``: a learning-rate multiplier replacing the Trainer's schedule.

Frozen parameters have ``requires_grad=False`` and ``grad=None``: they get no gradient, no weight decay and
no optimizer state. Parameters unfrozen later start with fresh optimizer state.

Depth is measured with :func:`layer_groups`: bottom → top, ``[embeddings], [block 0], ..., [block L-1],
[final norm + LM head / classifier head]``.

References: Howard & Ruder 2018, "Universal Language Model Fine-tuning for Text Classification" (ULMFiT:
gradual unfreezing, discriminative learning rates, slanted triangular learning rates); Yosinski et al. 2014
on freezing lower layers.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from torch import nn

from ..errors import CheckpointError, ConfigError
from ..modules import num_parameters

Predicate = Callable[[str, nn.Parameter], bool]
# A layer-group spec: {label: [name prefixes]} or [[name prefixes], ...], bottom -> top.
GroupSpec = Mapping[str, Sequence[str]] | Sequence[Sequence[str]]


# ---------------------------------------------------------------------------------------------- helpers
def set_trainable(model: nn.Module, predicate: Predicate) -> int:
    """Train exactly the parameters for which ``predicate(name, param)`` is true; returns their count.

    Frozen parameters also lose any stale ``.grad`` so optimizers skip them. Tied parameters appear once,
    under their first name (e.g. ``tok_embeddings.weight`` for a head tied to the embedding).
    """
    for name, p in model.named_parameters():
        train = bool(predicate(name, p))
        p.requires_grad_(train)
        if not train:
            p.grad = None
    return num_parameters(model, trainable_only=True)


# The name fine-tuning code has used for :func:`llmcore.modules.num_parameters`: the same function, one counter.
count_parameters = num_parameters


def name_matches(name: str, pattern: str) -> bool:
    """Whether a parameter/module ``name`` matches ``pattern``.

    ``"re:<regex>"`` is a regular expression searched in the name; anything else is an fnmatch glob matched
    against the whole name or as a module prefix (``"blocks.0"`` matches ``"blocks.0.attn.qkv_proj.weight"``).
    """
    if pattern.startswith("re:"):
        return re.search(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern + ".*")


def _few_names(model: nn.Module, k: int = 6) -> str:
    names = [n for n, _ in model.named_parameters()]
    shown = names[:k // 2] + ["..."] + names[-(k // 2):] if len(names) > k else names
    return ", ".join(shown)


def _find_blocks(model: nn.Module) -> tuple[str, int]:
    """The dotted name of the model's stack of blocks (a ModuleList called ``blocks``) and its length."""
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and name.rsplit(".", 1)[-1] == "blocks":
            return name, len(m)
    raise ConfigError(
        f"{type(model).__name__} has no ModuleList named 'blocks', so its layers cannot be found; "
        "pass explicit groups, e.g. layer_groups(model, [['embed'], ['layers.0'], ..., ['head']])."
    )


def layer_groups(model: nn.Module, groups: GroupSpec | None = None) -> dict[str, dict[str, nn.Parameter]]:
    """Parameters split into layer groups, bottom → top: ``{label: {param name: param}}``.

    By default: ``"embeddings"`` (everything registered before the blocks: token and position embeddings),
    ``"blocks.0"`` ... ``"blocks.{L-1}"``, and ``"head"`` (everything after: the final norm, the LM head,
    a classifier head). A head tied to the token embedding is one tensor, reported once under its first
    name, so it belongs to ``"embeddings"``; freezing the embeddings therefore freezes a tied head too.

    Args:
        groups: explicit groups as ``{label: [prefixes]}`` or ``[[prefixes], ...]`` (labels ``group0`` ...),
            bottom → top. A parameter belongs to the first group with a prefix that equals its name or
            its module path; every parameter must land in a group.
    """
    params = list(model.named_parameters())
    if groups is not None:
        spec = dict(groups) if isinstance(groups, Mapping) else {f"group{i}": g for i, g in enumerate(groups)}
        out: dict[str, dict[str, nn.Parameter]] = {label: {} for label in spec}
        for prefixes in spec.values():
            if isinstance(prefixes, str):
                raise ConfigError(f"Layer group {prefixes!r} must be a list of name prefixes, not a string.")
        for name, p in params:
            label = next((lb for lb, pre in spec.items() if any(name == x or name.startswith(x + ".")
                                                                   for x in pre)), None)
            if label is None:
                raise ConfigError(f"Parameter {name!r} is in no layer group; add its prefix to one of {list(spec)}.")
            out[label][name] = p
        empty = [lb for lb, g in out.items() if not g]
        if empty:
            raise ConfigError(f"Layer groups {empty} match no parameter; valid names include {_few_names(model)}.")
        return out
    prefix, n_blocks = _find_blocks(model)
    out = {"embeddings": {}, **{f"blocks.{i}": {} for i in range(n_blocks)}, "head": {}}
    seen_blocks = False
    for name, p in params:
        if name.startswith(prefix + "."):
            idx = name[len(prefix) + 1:].split(".", 1)[0]
            out[f"blocks.{idx}"][name] = p
            seen_blocks = True
        else:
            out["head" if seen_blocks else "embeddings"][name] = p
    return {label: g for label, g in out.items() if g}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_any_trainable(model: nn.Module, who: str) -> None:
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"{who} leaves no parameter trainable; nothing would be fine-tuned. "
                          f"Freeze fewer parameters (parameters: {_few_names(model)}).")


# ---------------------------------------------------------------------------------------------- strategies
class Strategy:
    """Base class: every hook is a no-op. Subclasses override the hooks they need (see module docstring)."""

    def setup(self, model: nn.Module, trainer: Any = None) -> None:
        """Called once at the start of ``fit()``, before the optimizer is built."""

    def on_step(self, step: int) -> None:
        """Called before the forward pass of optimizer step ``step`` (0-based)."""

    def on_epoch(self, epoch: int) -> None:
        """Called once ``epoch`` epochs (1, 2, ...) are complete, i.e. when 0-based epoch ``epoch`` starts."""

    def apply(self, model: nn.Module) -> nn.Module:
        """Run :meth:`setup` without a trainer (for your own loop); returns the model."""
        self.setup(model, None)
        return model

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class Full(Strategy):
    """Full fine-tuning: every parameter trains (undoes any earlier freezing)."""

    def setup(self, model: nn.Module, trainer: Any = None) -> None:
        set_trainable(model, lambda name, p: True)


class Freeze(Strategy):
    """Freeze part of the model; everything not selected stays trainable.

    Args:
        patterns: parameter-name patterns to freeze (fnmatch globs or module prefixes, or ``"re:<regex>"``;
            see :func:`name_matches`). A pattern that matches nothing raises :class:`ConfigError`.
        first_n_blocks: freeze blocks ``0 .. n-1`` (embeddings only if ``embeddings=True``).
        embeddings: freeze the embedding group (token + position embeddings, and a tied head).
        all_but_head: freeze every layer group except the top one (final norm + heads): "linear probing".
        groups: explicit layer groups, as for :func:`layer_groups`.
    """

    def __init__(self, patterns: Sequence[str] | str | None = None, first_n_blocks: int | None = None,
                 embeddings: bool = False, all_but_head: bool = False, groups: GroupSpec | None = None) -> None:
        self.patterns = [patterns] if isinstance(patterns, str) else list(patterns or [])
        self.first_n_blocks = first_n_blocks
        self.embeddings = embeddings
        self.all_but_head = all_but_head
        self.groups = groups
        if not (self.patterns or first_n_blocks or embeddings or all_but_head):
            raise ConfigError("Freeze() was given nothing to freeze; pass patterns=, first_n_blocks=, "
                              "embeddings=True or all_but_head=True (or use Full()).")
        if first_n_blocks is not None and (not isinstance(first_n_blocks, int) or first_n_blocks < 0):
            raise ConfigError(f"Freeze(first_n_blocks={first_n_blocks!r}) must be a non-negative integer.")

    def frozen_names(self, model: nn.Module) -> set[str]:
        """Names of the parameters this strategy freezes on ``model`` (validating every option)."""
        names = [n for n, _ in model.named_parameters()]
        frozen: set[str] = set()
        for pat in self.patterns:
            hits = {n for n in names if name_matches(n, pat)}
            if not hits:
                raise ConfigError(f"Freeze pattern {pat!r} matches no parameter of {type(model).__name__}; "
                                  f"valid names include {_few_names(model)}.")
            frozen |= hits
        if self.first_n_blocks or self.embeddings or self.all_but_head:
            groups = layer_groups(model, self.groups)
            labels = list(groups)
            if self.all_but_head:
                for label in labels[:-1]:
                    frozen |= set(groups[label])
            if self.embeddings:
                frozen |= set(groups[labels[0]])
            if self.first_n_blocks:
                blocks = [lb for lb in labels if lb.startswith("blocks.")] if self.groups is None else labels[1:-1]
                if self.first_n_blocks > len(blocks):
                    raise ConfigError(f"Freeze(first_n_blocks={self.first_n_blocks}) but the model has only "
                                      f"{len(blocks)} blocks; use at most {len(blocks)}.")
                for label in blocks[:self.first_n_blocks]:
                    frozen |= set(groups[label])
        return frozen

    def setup(self, model: nn.Module, trainer: Any = None) -> None:
        frozen = self.frozen_names(model)
        set_trainable(model, lambda name, p: name not in frozen)
        _check_any_trainable(model, repr(self))


class GradualUnfreeze(Strategy):
    """ULMFiT gradual unfreezing: start with the top layer group trainable, unfreeze one more (top-down)
    at every boundary, until all groups train.

    The number of trainable groups is a pure function of progress (``1 + step // every_n_steps``, or
    ``1 + epoch``), so resuming a run reproduces the same state.

    Args:
        every_n_steps: unfreeze at steps n, 2n, ...; takes precedence over ``every_epoch``.
        every_epoch: unfreeze at the start of each epoch after the first.
        groups: explicit layer groups, as for :func:`layer_groups`.
    """

    def __init__(self, every_n_steps: int | None = None, every_epoch: bool = True,
                 groups: GroupSpec | None = None) -> None:
        if every_n_steps is not None and (not isinstance(every_n_steps, int) or every_n_steps < 1):
            raise ConfigError(f"GradualUnfreeze(every_n_steps={every_n_steps!r}) must be a positive integer.")
        if every_n_steps is None and not every_epoch:
            raise ConfigError("GradualUnfreeze needs a boundary: pass every_n_steps=N or every_epoch=True.")
        self.every_n_steps = every_n_steps
        self.every_epoch = every_epoch
        self.groups = groups
        self._model: nn.Module | None = None
        self._trainer: Any = None
        self._labels: list[str] = []
        self._names: dict[str, set[str]] = {}
        self.n_unfrozen = 0

    def setup(self, model: nn.Module, trainer: Any = None) -> None:
        groups = layer_groups(model, self.groups)
        self._model, self._trainer = model, trainer
        self._labels = list(groups)
        self._names = {label: set(g) for label, g in groups.items()}
        self.n_unfrozen = 0
        self._set(1, rebuild=False)

    def trainable_groups(self) -> list[str]:
        """Labels of the layer groups that currently train, bottom → top."""
        return self._labels[len(self._labels) - self.n_unfrozen:]

    def _set(self, n: int, rebuild: bool = True) -> None:
        n = min(max(n, 1), len(self._labels))
        if n == self.n_unfrozen or self._model is None:
            return
        self.n_unfrozen = n
        train = set().union(*(self._names[label] for label in self.trainable_groups()))
        set_trainable(self._model, lambda name, p: name in train)
        if rebuild and self._trainer is not None and hasattr(self._trainer, "rebuild_optimizer"):
            self._trainer.rebuild_optimizer()  # newly trainable parameters start with fresh optimizer state

    def state_dict(self) -> dict[str, Any]:
        """Saved in Trainer checkpoints so a resumed run knows how many groups are unfrozen."""
        return {"n_unfrozen": self.n_unfrozen}

    def check_state(self, state: Any) -> None:
        """Raise :class:`CheckpointError` unless ``state`` (read from a checkpoint: untrusted) is one
        :meth:`state_dict` could have written for the model set up now: exactly ``{"n_unfrozen": N}`` with N an
        integer in [1, number of layer groups]. A tampered or foreign value is refused instead of clamped."""
        n = len(self._labels)
        if not isinstance(state, dict) or set(state) != {"n_unfrozen"}:
            raise CheckpointError(f"the GradualUnfreeze state is {_short(state)}, expected {{'n_unfrozen': N}}")
        value = state["n_unfrozen"]
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= n:
            raise CheckpointError(f"the GradualUnfreeze 'n_unfrozen' is {_short(value)}, expected an integer in "
                                  f"[1, {n}] (this model has {n} layer groups)")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._model is not None:  # before setup there are no groups to count (and _set does nothing)
            self.check_state(state)
        self._set(state["n_unfrozen"])

    def on_step(self, step: int) -> None:
        if self.every_n_steps is not None:
            self._set(1 + step // self.every_n_steps)

    def on_epoch(self, epoch: int) -> None:
        if self.every_n_steps is None and self.every_epoch:
            self._set(1 + epoch)


class DiscriminativeLR(Strategy):
    """Discriminative (layer-wise) learning rates: group ``l`` gets ``lr_top / factor ** (depth from top)``.

    The top group trains at the base learning rate, the one below at ``1/factor`` of it, and so on
    (ULMFiT uses factor 2.6). Groups come from :func:`llmcore.training.param_groups` with ``layer_lr``, so
    weight decay follows the library policy (matrices only; never biases, norms or embeddings) and frozen
    parameters are left out of the optimizer.
    """

    def __init__(self, factor: float = 2.6, groups: GroupSpec | None = None) -> None:
        if not factor >= 1.0:
            raise ConfigError(f"DiscriminativeLR(factor={factor}) must be >= 1 (lower layers learn slower).")
        self.factor = factor
        self.groups = groups

    def lr_mults(self, model: nn.Module) -> dict[str, float]:
        """{layer-group label: learning-rate multiplier}, bottom → top."""
        labels = list(layer_groups(model, self.groups))
        top = len(labels) - 1
        return {label: self.factor ** -(top - i) for i, label in enumerate(labels)}

    def param_groups(self, model: nn.Module, base_lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer groups split by (decay, layer group), each carrying its ``lr_mult``."""
        from ..training.optim import param_groups  # the one place that decides decay; imported lazily

        mults = self.lr_mults(model)
        group_of = {name: label for label, named in layer_groups(model, self.groups).items() for name in named}
        groups = param_groups(model, weight_decay, base_lr, layer_lr=lambda name: mults[group_of[name]])
        if not groups:
            raise ConfigError("DiscriminativeLR found no trainable parameter to optimise.")
        return groups


def slanted_triangular(step: int, max_steps: int, cut_frac: float = 0.1, ratio: float = 32.0) -> float:
    """Howard & Ruder (2018) eq. 3 as a multiplier of the peak learning rate.

    ``cut = floor(T * cut_frac)``; ``p = t / cut`` while ``t < cut``, else
    ``1 - (t - cut) / (cut * (1 / cut_frac - 1))``; the multiplier is ``(1 + p * (ratio - 1)) / ratio``:
    a short linear warm-up from ``1/ratio`` to 1, then a long linear decay back to ``1/ratio``. ``cut`` is
    at least 1, and ``p`` is clamped at 0 (floor can make the decay overshoot by a step).
    """
    cut = max(1, math.floor(max_steps * cut_frac))
    t = step
    p = t / cut if t < cut else 1.0 - (t - cut) / (cut * (1.0 / cut_frac - 1.0))
    p = max(0.0, p)
    return (1.0 + p * (ratio - 1.0)) / ratio


class SlantedTriangular(Strategy):
    """Slanted triangular learning rates (ULMFiT): overrides the Trainer's schedule with
    :func:`slanted_triangular`."""

    def __init__(self, cut_frac: float = 0.1, ratio: float = 32.0) -> None:
        if not 0.0 < cut_frac < 1.0:
            raise ConfigError(f"SlantedTriangular(cut_frac={cut_frac}) must be in (0, 1).")
        if not ratio >= 1.0:
            raise ConfigError(f"SlantedTriangular(ratio={ratio}) must be >= 1 (peak lr / lowest lr).")
        self.cut_frac = cut_frac
        self.ratio = ratio

    def schedule(self, step: int, max_steps: int) -> float:
        return slanted_triangular(step, max_steps, self.cut_frac, self.ratio)


def ulmfit(factor: float = 2.6, cut_frac: float = 0.1, ratio: float = 32.0, every_n_steps: int | None = None,
           every_epoch: bool = True, groups: GroupSpec | None = None) -> list[Strategy]:
    """The three ULMFiT techniques together: gradual unfreezing, discriminative LRs, slanted triangular LRs."""
    return [GradualUnfreeze(every_n_steps, every_epoch, groups), DiscriminativeLR(factor, groups),
            SlantedTriangular(cut_frac, ratio)]


def as_strategies(strategies: Strategy | Iterable[Strategy] | None) -> list[Strategy]:
    """Flatten ``None`` / one strategy / nested lists (e.g. ``[ulmfit(), LoRA()]``) into a flat list."""
    if strategies is None:
        return []
    if isinstance(strategies, Strategy) or not isinstance(strategies, Iterable):
        return [strategies]  # type: ignore[list-item]
    out: list[Strategy] = []
    for s in strategies:
        out.extend(as_strategies(s))
    return out
