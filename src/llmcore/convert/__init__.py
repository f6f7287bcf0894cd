"""Weight conversion between llmcore and Hugging Face checkpoints (GPT-2, Llama, Mistral, Qwen2).

Pure mappings, (HF config dict, HF state dict) <-> (ModelConfig, llmcore state dict): :func:`hf_to_llmcore`
and :func:`llmcore_to_hf`. This package never imports ``transformers`` nor any llmcore model; building a model
and reading / writing directories is :mod:`llmcore.models.hf`:

    config, state = hf_to_llmcore(hf_model.config.to_dict(), hf_model.state_dict())
    model = TransformerLM.from_pretrained("path/to/hf_dir")             # an HF directory (models.hf.load_hf)
    model.save_pretrained("out", format="hf")                           # loadable by transformers
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:  # the public names, imported on first use (llmcore.lazy): importing the package loads no torch
    from .hf import SUPPORTED_MODEL_TYPES, hf_to_llmcore, llmcore_to_hf

__all__ = ["SUPPORTED_MODEL_TYPES", "hf_to_llmcore", "llmcore_to_hf"]

__getattr__, __dir__ = lazy_exports(__name__, __file__)
