"""LoRA: low-rank adapters on frozen linear layers (Hu et al. 2021, "LoRA: Low-Rank Adaptation of LLMs").

A target ``nn.Linear`` with frozen weight ``W`` (out, in) becomes ``y = x Wᵀ + b + (α/r) · dropout(x) Aᵀ Bᵀ``
with trainable ``A`` (r, in) and ``B`` (out, r). ``B`` starts at zero, so a freshly wrapped model computes
exactly what it did before; only ``A`` and ``B`` (and any ``modules_to_save``) train.

:class:`LoRALinear` *is* an ``nn.Linear`` that keeps the original ``weight`` and ``bias`` under their
original names and adds ``lora_A`` / ``lora_B`` beside them. The base model's state-dict keys therefore
do not change, adapters save on their own (:func:`save_adapter`: only the adapter tensors, in safetensors,
plus ``adapter_config.json``), and :func:`load_adapter` puts them back onto any copy of the base model.
:func:`merge_lora` folds ``BA`` into ``W`` for inference with no extra cost; :func:`merge_and_unload`
turns the wrappers back into plain ``nn.Linear`` so ``save_pretrained`` writes an ordinary model.

An adapter directory written by ``llmcore finetune --strategy lora`` names its base model; every command
loads it through :func:`load_adapter_model` (base + adapter, with the classifier head and the task settings the
fine-tune recorded), and :func:`merge_adapter` writes it out as a normal model directory (``llmcore merge``).

This file is not a general PEFT library: only linear layers are adapted.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..models.pretrained import atomic_write_json, read_json, save_safetensors, writing
from ..modules.linear import Linear
from .strategies import Strategy, _check_any_trainable, name_matches, set_trainable

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class LoRALinear(nn.Linear):
    """An ``nn.Linear`` whose frozen weight is adapted by a trainable low-rank update ``(α/r)·B A``.

    Built from an existing linear layer; shares its ``weight`` and ``bias`` tensors (no copy).
    """

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> None:
        nn.Module.__init__(self)  # not nn.Linear.__init__: reuse base's tensors instead of allocating new ones
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=w.device, dtype=w.dtype))
        # A as nn.Linear initialises its weight (Kaiming-uniform, a=√5); B = 0 keeps the output unchanged.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """The low-rank update (out, in) = (α/r) · B A."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        y = F.linear(x, self.weight, self.bias)
        if self.merged:
            return y
        return y + (self.lora_dropout(x) @ self.lora_A.t() @ self.lora_B.t()) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into ``weight`` (W += (α/r)·BA); the forward pass then skips the adapter."""
        if not self.merged:
            self.weight += self.delta_weight().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge` (W -= (α/r)·BA), e.g. to keep training the adapter."""
        if self.merged:
            self.weight -= self.delta_weight().to(self.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}, merged={self.merged}"


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """{module name: LoRALinear} for every adapted layer of ``model``."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


class LoRA(Strategy):
    """Wrap matching linear layers in :class:`LoRALinear` and train only the adapters.

    Use as a strategy (``Trainer(..., strategies=[LoRA(rank=8)])``: ``setup`` applies it) or directly
    (``LoRA(rank=8).apply(model)``).

    Args:
        rank: r, the rank of the update.
        alpha: α; the update is scaled by α/r so changing r does not change the effective step size.
        dropout: dropout on the adapter's input.
        targets: module-name patterns: fnmatch globs matched against the full module name or its last
            component (``"qkv_proj"``, ``"blocks.1.*_proj"``), or ``"re:<regex>"``. Every matched module must
            be an ``nn.Linear`` and every pattern must match something, else :class:`ConfigError`.
        modules_to_save: module-name prefixes trained in full alongside the adapters (e.g. ``("head",)`` for
            a new classifier head); their tensors are saved with the adapter.
    """

    def __init__(self, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
                 targets: Sequence[str] | str = ("qkv_proj", "out_proj"),
                 modules_to_save: Sequence[str] | str = ()) -> None:
        if not isinstance(rank, int) or rank < 1:
            raise ConfigError(f"LoRA(rank={rank!r}) must be a positive integer (typical: 4-64).")
        if alpha <= 0:
            raise ConfigError(f"LoRA(alpha={alpha}) must be > 0 (typical: 2 * rank).")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"LoRA(dropout={dropout}) must be in [0, 1).")
        self.rank, self.alpha, self.dropout = rank, float(alpha), float(dropout)
        self.targets = [targets] if isinstance(targets, str) else list(targets)
        self.modules_to_save = [modules_to_save] if isinstance(modules_to_save, str) else list(modules_to_save)
        if not self.targets:
            raise ConfigError("LoRA(targets=()) adapts nothing; name at least one linear layer, e.g. 'qkv_proj'.")

    def config(self) -> dict[str, Any]:
        return {"rank": self.rank, "alpha": self.alpha, "dropout": self.dropout, "targets": self.targets,
                "modules_to_save": self.modules_to_save}

    def find_targets(self, model: nn.Module) -> list[str]:
        """Names of the modules the targets select (validated: all linear, no pattern unmatched)."""
        named = [(n, m) for n, m in model.named_modules() if n]
        chosen: list[str] = []
        for pat in self.targets:
            hits = [(n, m) for n, m in named if module_matches(n, pat)]
            if not hits:
                linears = [n for n, m in named if isinstance(m, nn.Linear)]
                raise ConfigError(f"LoRA target {pat!r} matches no module of {type(model).__name__}; linear layers "
                                  f"include {linears[:6]}.")
            bad = [(n, type(m).__name__) for n, m in hits if not isinstance(m, nn.Linear)]
            if bad:
                raise ConfigError(f"LoRA target {pat!r} matches {bad[0][0]!r}, a {bad[0][1]}, not an nn.Linear; "
                                  "LoRA adapts linear layers only: target e.g. 'qkv_proj', 'out_proj', 'up_proj'.")
            chosen += [n for n, _ in hits if n not in chosen]
        return chosen

    def apply(self, model: nn.Module) -> nn.Module:
        """Wrap the targets (in place; already-wrapped layers are kept) and freeze all but the adapters."""
        for name in self.find_targets(model):
            m = model.get_submodule(name)
            if not isinstance(m, LoRALinear):
                _replace(model, name, LoRALinear(m, self.rank, self.alpha, self.dropout))
        keep = self.modules_to_save
        for pre in keep:
            if not any(name_matches(n, pre) for n, _ in model.named_parameters()):
                raise ConfigError(f"LoRA modules_to_save entry {pre!r} matches no parameter of {type(model).__name__}.")
        set_trainable(model, lambda n, p: n.endswith((".lora_A", ".lora_B")) or any(name_matches(n, k) for k in keep))
        _check_any_trainable(model, repr(self))
        return model

    def setup(self, model: nn.Module, trainer: Any = None) -> None:
        self.apply(model)


def module_matches(name: str, pattern: str) -> bool:
    """``"re:<regex>"`` searched in the module name, else a glob matched against the full dotted name or its
    last component (``"qkv_proj"`` matches ``"blocks.0.attn.qkv_proj"``)."""
    if pattern.startswith("re:"):
        return re.search(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name.rsplit(".", 1)[-1], pattern)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (outputs unchanged up to rounding)."""
    for m in lora_modules(model).values():
        m.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo :func:`merge_lora`."""
    for m in lora_modules(model).values():
        m.unmerge()
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge the adapters and put plain ``nn.Linear`` layers back, e.g. before ``save_pretrained``."""
    for name, m in lora_modules(model).items():
        m.merge()
        plain = Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
        plain.weight, plain.bias = m.weight, m.bias
        _replace(model, name, plain)
    return model


def adapter_state_dict(model: nn.Module, modules_to_save: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """The adapter tensors (every ``lora_A`` / ``lora_B``) plus the parameters under ``modules_to_save``.

    A model sharded by FSDP gives whole tensors, gathered from every rank: then every rank must call it."""
    from ..training.fsdp import full

    state = {}
    for n, p in model.named_parameters():
        if n.endswith((".lora_A", ".lora_B")) or any(name_matches(n, k) for k in modules_to_save):
            state[n] = full(p.detach())
    return state


def save_adapter(model: nn.Module, directory: str | Path, lora: LoRA | None = None,
                 extra: dict[str, Any] | None = None, write: bool = True) -> Path:
    """Write ``adapter_model.safetensors`` (adapter tensors only) and ``adapter_config.json``.

    Args:
        lora: the :class:`LoRA` that was applied; its settings are recorded. When omitted they are read off
            the wrapped layers (targets become their exact module names; nothing in ``modules_to_save``).
        extra: more JSON-serialisable fields for the config (e.g. ``{"base_model": "runs/base"}``).
        write: False on the ranks that must not write. A model sharded by FSDP is gathered (a collective), so
            every rank calls this, rank 0 with ``write=True``, the others with ``write=False``.
    """
    mods = lora_modules(model)
    if not mods:
        raise ConfigError("The model has no LoRA layers; apply LoRA(...) before save_adapter().")
    if lora is None:
        first = next(iter(mods.values()))
        lora = LoRA(first.rank, first.alpha, targets=[f"re:^{n.replace('.', '[.]')}$" for n in mods])
    cfg = {**lora.config(), "format": "llmcore-lora", "lora_modules": sorted(mods), **(extra or {})}
    d = Path(directory)
    state = adapter_state_dict(model, lora.modules_to_save)
    if not write:
        return d
    d.mkdir(parents=True, exist_ok=True)
    if any(m.merged for m in mods.values()):  # A and B are stored as trained; merging never changes them
        cfg["saved_while_merged"] = True
    with writing(d, "adapter directory"):  # read-only: one CheckpointError line, nothing written
        d.mkdir(parents=True, exist_ok=True)
        save_safetensors(state, d / ADAPTER_WEIGHTS, metadata={"format": "pt"})
        atomic_write_json(d / ADAPTER_CONFIG, cfg)
    return d


def load_adapter(model: nn.Module, directory: str | Path) -> nn.Module:
    """Apply the LoRA described in ``directory`` to ``model`` (a base model) and load its tensors.

    All or nothing: when the adapter does not fit the model (missing or mis-shaped tensors, a wrong config)
    :class:`CheckpointError` (or :class:`ConfigError`) is raised and ``model`` is left as it was: the layers
    wrapped are unwrapped again, and parameter values and ``requires_grad`` flags restored.
    """
    from safetensors.torch import load_file

    d = Path(directory)
    cfg = read_json(d / ADAPTER_CONFIG)
    if not isinstance(cfg, dict) or cfg.get("format") != "llmcore-lora":
        raise CheckpointError(f"{d / ADAPTER_CONFIG} is not an llmcore LoRA adapter config.")
    try:
        lora = LoRA(cfg["rank"], cfg["alpha"], cfg.get("dropout", 0.0), cfg["targets"], cfg.get("modules_to_save", ()))
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{d / ADAPTER_CONFIG} has no valid {e} field; an adapter config needs rank, alpha and "
                              "targets (save the adapter with save_adapter()).") from e
    try:
        state = load_file(str(d / ADAPTER_WEIGHTS))
    except FileNotFoundError as e:
        raise CheckpointError(f"{d / ADAPTER_WEIGHTS} is missing; save the adapter with save_adapter().") from e
    modules = dict(model.named_modules())
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    saved: dict[str, torch.Tensor] = {}
    try:
        lora.apply(model)
        if sorted(lora_modules(model)) != sorted(cfg.get("lora_modules", lora_modules(model))):
            raise CheckpointError(f"The adapter in {d} was trained on layers {cfg['lora_modules'][:4]}..., but its "
                                  f"targets select {sorted(lora_modules(model))[:4]}... here; wrong base model?")
        params = dict(model.named_parameters())
        expected = set(adapter_state_dict(model, lora.modules_to_save))
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        wrong = [k for k in state if k in params and state[k].shape != params[k].shape]
        if missing or unexpected or wrong:
            raise CheckpointError(f"The adapter in {d} does not fit this model: missing {missing[:3]}, unexpected "
                                  f"{unexpected[:3]}, shape mismatches {wrong[:3]}. Is it the same base architecture?")
        with torch.no_grad():
            for k, v in state.items():
                if k in grads:  # a base parameter (modules_to_save): keep its value until every copy succeeded
                    saved[k] = params[k].detach().clone()
                params[k].copy_(v)
    except BaseException:
        _restore(model, modules, grads, saved)
        raise
    return model


def _restore(model: nn.Module, modules: dict[str, nn.Module], grads: dict[str, bool],
             saved: dict[str, torch.Tensor]) -> None:
    """Undo a partial :func:`load_adapter`: unwrap new LoRA layers, restore copied values and requires_grad."""
    for name in sorted(lora_modules(model), key=len, reverse=True):
        original = modules.get(name)
        if original is not None and not isinstance(original, LoRALinear):
            _replace(model, name, original)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in saved.items():
            params[k].copy_(v)
    for n, p in model.named_parameters():
        if n in grads:
            p.requires_grad_(grads[n])


# ---------------------------------------------------------------------------------------------- adapter directories
def is_adapter_dir(directory: str | Path) -> bool:
    """Whether ``directory`` holds an llmcore LoRA adapter (``adapter_config.json``) rather than a whole model."""
    return (Path(directory) / ADAPTER_CONFIG).is_file()


def resolve_base(directory: str | Path, base: str | Path | None = None) -> Path:
    """The base model directory of the adapter in ``directory``: ``base`` if given, else its ``base_model``
    (absolute, or relative to the working directory or to the adapter's parent directory)."""
    from ..bundled import resolve_model_dir

    d = Path(directory)
    if base is not None:
        return resolve_model_dir(base)
    saved = read_json(d / ADAPTER_CONFIG).get("base_model")
    if not saved:
        raise CheckpointError(f"{d / ADAPTER_CONFIG} names no base_model; pass the base model directory explicitly.")
    candidates = [Path(saved)] if Path(saved).is_absolute() else [Path(saved), d.parent / saved, d / saved,
                                                                   resolve_model_dir(saved)]  # a bundled name
    for c in candidates:
        if (c / "config.json").is_file():
            return c
    raise CheckpointError(f"The base model {saved!r} of the adapter in {d} is not there (no config.json); move it "
                          "back, or merge with llmcore merge --adapter DIR --base BASE_DIR.")


def load_adapter_model(directory: str | Path, device: str | torch.device = "cpu", base: str | Path | None = None,
                       merge: bool = False) -> nn.Module:
    """The base model of the adapter in ``directory`` with the adapter applied, in eval mode.

    A classification adapter (saved with a ``classifier`` section) is put on a new
    :class:`~llmcore.models.SequenceClassifier` around the base first, so its head loads too; the ``config_extra``
    the fine-tune recorded (translation tags, class names) is merged into ``model.config.extra``. With
    ``merge`` the adapters are folded in and the wrappers removed (:func:`merge_and_unload`).
    """
    from ..models import load_model
    from ..models.classifier import SequenceClassifier

    d = Path(directory)
    cfg = read_json(d / ADAPTER_CONFIG)
    model = load_model(resolve_base(d, base), device="cpu")
    if (head := cfg.get("classifier")) is not None:
        model = SequenceClassifier(model, head["num_classes"], head.get("pooling", "last"),
                                   head.get("classifier_dropout", 0.0))
    load_adapter(model, d)
    model.config.extra = {**model.config.extra, **cfg.get("config_extra", {})}
    if merge:
        merge_and_unload(model)
    return model.to(device).eval()


def merge_adapter(directory: str | Path, out: str | Path, base: str | Path | None = None) -> Path:
    """Fold the adapter in ``directory`` into its base and save a normal model directory at ``out``
    (``config.json`` + ``model.safetensors`` + ``tokenizer/``, the adapter's tokenizer or else the base's)."""
    from ..tokenizer import load_tokenizer

    d, out = Path(directory), Path(out)
    if out.resolve() == d.resolve():
        raise ConfigError(f"--out {out} is the adapter directory; write the merged model to another directory.")
    model = load_adapter_model(d, base=base, merge=True)
    tok_dir = d if (d / "tokenizer").is_dir() else resolve_base(d, base)
    model.save_pretrained(out, tokenizer=load_tokenizer(tok_dir))
    return out
