"""Hugging Face checkpoints <-> llmcore: pure state-dict mappings plus directory load/save.

The two pure functions do all the work and never import ``transformers``:

* :func:`hf_to_llmcore` (HF config dict, HF state dict) -> (ModelConfig, llmcore state dict)
* :func:`llmcore_to_hf` (ModelConfig, llmcore state dict) -> (HF config dict, HF state dict)

Everything else wraps them: :func:`from_hf` builds a model from an in-memory HF model, :func:`load_hf` /
:func:`save_hf` read and write HF directories (``config.json`` + ``model.safetensors``, or shards listed in
``model.safetensors.index.json``). The parity tests use these same functions, so they test what users run.
Supported families: GPT-2 (:mod:`.gpt2`) and Llama / Mistral / Qwen2 (:mod:`.llama`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import CheckpointError
from ..models.pretrained import (
    CONFIG_NAME,
    INDEX_NAME,
    WEIGHTS_NAME,
    atomic_write_json,
    load_state_dict_checked,
    read_json,
    read_state_dict,
    save_safetensors,
)
from ..models.transformer import TransformerLM
from . import gpt2, llama

FAMILIES: tuple[ModuleType, ...] = (gpt2, llama)  # tried in this order when exporting
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(t for f in FAMILIES for t in f.MODEL_TYPES)
SHARD_PATTERN = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")


def _family(model_type: Any) -> ModuleType:
    for family in FAMILIES:
        if model_type in family.MODEL_TYPES:
            return family
    raise CheckpointError(
        f"Unsupported Hugging Face model_type {model_type!r}; llmcore converts {', '.join(SUPPORTED_MODEL_TYPES)}. "
        "Other architectures need a converter in llmcore.convert (see gpt2.py / llama.py)."
    )


def _as_dict(hf_config: Any) -> dict[str, Any]:
    """Accept a plain dict or anything with ``to_dict()`` (a transformers ``PretrainedConfig``)."""
    return dict(hf_config.to_dict() if hasattr(hf_config, "to_dict") else hf_config)


def hf_to_llmcore(hf_config: Mapping[str, Any], hf_state: Mapping[str, torch.Tensor]
                  ) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Map a HF causal-LM checkpoint to (ModelConfig, TransformerLM state dict).

    Args:
        hf_config: the HF ``config.json`` as a dict (or a ``PretrainedConfig``); ``model_type`` picks the family.
        hf_state: the HF state dict (tensor names as in ``model.safetensors``).

    Raises:
        CheckpointError: unsupported ``model_type`` or feature, or tensors that do not match the config.
    """
    cfg = _as_dict(hf_config)
    return _family(cfg.get("model_type")).from_hf(cfg, hf_state)


def llmcore_to_hf(config: ModelConfig, state: Mapping[str, torch.Tensor]
                  ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Map a TransformerLM (config, state dict) to (HF config dict, HF state dict).

    GPT-2 layout when the config is GPT-2-shaped (learned positions, LayerNorm, GELU/ReLU, no GQA), the Llama
    layout (or the Mistral / Qwen2 one it was imported from) when it is Llama-shaped (RoPE, RMSNorm, SwiGLU).
    Tied embeddings are stored once; transformers re-ties them on load.

    Raises:
        CheckpointError: the config fits neither layout (the message lists the offending fields), or the
            state dict does not match the config.
    """
    reasons = []
    for family in FAMILIES:
        problems = family.export_problems(config)
        if not problems:
            return family.to_hf(config, state)
        reasons.append(f"{family.MODEL_TYPES[0]}: {', '.join(problems)}")
    raise CheckpointError(
        f"This model cannot be exported to a Hugging Face format; it fits no supported layout ({'; '.join(reasons)}). "
        "Save it with format='llmcore' instead."
    )


def from_hf(hf_config: Mapping[str, Any], hf_state: Mapping[str, torch.Tensor],
            cls: type[nn.Module] = TransformerLM) -> nn.Module:
    """A model (``cls``, in eval mode) from a HF config and state dict held in memory, e.g.
    ``from_hf(hf_model.config.to_dict(), hf_model.state_dict())``."""
    config, state = hf_to_llmcore(hf_config, hf_state)
    model = cls(config)
    load_state_dict_checked(model, state, source=f"converted {config.extra.get('hf_model_type')} checkpoint")
    return model.eval()  # like transformers' from_pretrained


def load_hf(directory: str | Path, cls: type[nn.Module] = TransformerLM) -> nn.Module:
    """Load a HF directory (``config.json`` + ``model.safetensors`` or a sharded index) as ``cls``."""
    d = Path(directory)
    return from_hf(read_json(d / CONFIG_NAME), read_state_dict(d), cls)


def parse_size(size: int | str) -> int:
    """Bytes in ``size``: an int, or a string like "500MB", "2GB", "10KiB" (KB = 1000, KiB = 1024)."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", size, flags=re.IGNORECASE)
    if m is None:
        raise CheckpointError(f"max_shard_size={size!r} is not a size; use bytes or e.g. '500MB', '2GB'.")
    power = " KMGT".index(m.group(2).upper() or " ")
    return int(float(m.group(1)) * (1024 if m.group(3) else 1000) ** power)


def _shards(state: Mapping[str, torch.Tensor], limit: int) -> list[dict[str, torch.Tensor]]:
    """Split tensors, in order, into groups of at most ``limit`` bytes (a bigger tensor gets its own)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > limit:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += n
    return shards


def save_hf(model: nn.Module, directory: str | Path, max_shard_size: int | str | None = None) -> Path:
    """Write ``model`` as a HF directory that ``transformers.AutoModelForCausalLM.from_pretrained`` loads.

    Args:
        model: a TransformerLM (anything with ``config`` and a matching state dict).
        directory: created if needed; weight files from an earlier save there are replaced.
        max_shard_size: bytes or "2GB"-style; when the weights exceed it they are split into
            ``model-0000i-of-0000n.safetensors`` files plus ``model.safetensors.index.json``.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    hf_config, state = llmcore_to_hf(model.config, model.state_dict())
    shards = _shards(state, parse_size(max_shard_size)) if max_shard_size is not None else [state]
    for old in d.iterdir():  # stale weights would shadow (or mix with) the new ones on load
        if old.name in (WEIGHTS_NAME, INDEX_NAME) or SHARD_PATTERN.match(old.name):
            old.unlink()
    if len(shards) == 1:
        save_safetensors(state, d / WEIGHTS_NAME, metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_safetensors(shard, d / name, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, name))
        total = sum(t.numel() * t.element_size() for t in state.values())
        atomic_write_json(d / INDEX_NAME, {"metadata": {"total_size": total}, "weight_map": weight_map})
    atomic_write_json(d / CONFIG_NAME, hf_config)
    return d
