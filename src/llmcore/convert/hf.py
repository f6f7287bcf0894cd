"""Hugging Face checkpoints <-> llmcore: pure config and state-dict mappings.

The two pure functions do all the work and never import ``transformers`` (nor any llmcore model):

* :func:`hf_to_llmcore` (HF config dict, HF state dict) -> (ModelConfig, llmcore state dict)
* :func:`llmcore_to_hf` (ModelConfig, llmcore state dict) -> (HF config dict, HF state dict)

Building a model from them and reading / writing HF directories is :mod:`llmcore.models.hf`
(``from_hf``, ``load_hf``, ``save_hf``); the parity tests use those, so they test what users run.
Supported families: GPT-2 (:mod:`.gpt2`) and Llama / Mistral / Qwen2 (:mod:`.llama`).
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from types import ModuleType
from typing import Any

import torch

from ..config import ModelConfig
from ..errors import CheckpointError
from . import gpt2, llama

FAMILIES: tuple[ModuleType, ...] = (gpt2, llama)  # tried in this order when exporting
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(t for f in FAMILIES for t in f.MODEL_TYPES)


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


def hf_to_llmcore(hf_config: Mapping[str, Any], hf_state: Mapping[str, torch.Tensor],
                  into: MutableMapping[str, torch.Tensor] | None = None
                  ) -> tuple[ModelConfig, MutableMapping[str, torch.Tensor]]:
    """Map a HF causal-LM checkpoint to (ModelConfig, TransformerLM state dict).

    Args:
        hf_config: the HF ``config.json`` as a dict (or a ``PretrainedConfig``); ``model_type`` picks the family.
        hf_state: the HF state dict (tensor names as in ``model.safetensors``); any mapping, e.g.
            :class:`llmcore.io.StoredTensors`, which reads each tensor from disk when it is looked up.
        into: where the converted tensors go, in the order they are made (default: a new dict, returned).
            :class:`llmcore.io.IntoModel` copies each into a built model at once, so converting a checkpoint
            from disk holds one converted tensor at a time rather than a whole second copy.

    Raises:
        CheckpointError: unsupported ``model_type`` or feature, or tensors that do not match the config.
    """
    cfg = _as_dict(hf_config)
    return _family(cfg.get("model_type")).from_hf(cfg, hf_state, into)


def hf_config_to_llmcore(hf_config: Mapping[str, Any]) -> ModelConfig:
    """The ModelConfig of a HF config dict alone (no tensors): the config's own checks, before any weight."""
    cfg = _as_dict(hf_config)
    return _family(cfg.get("model_type")).config_from_hf(cfg)


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
