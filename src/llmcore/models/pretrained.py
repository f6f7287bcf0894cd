"""Saving and loading model directories: ``config.json`` + ``model.safetensors``, no pickle anywhere.

:class:`PreTrainedMixin` gives any llmcore model ``save_pretrained(dir)`` and ``from_pretrained(dir)``.
Tied parameters (e.g. the LM head sharing the embedding matrix) are stored once and re-tied on load.
``from_pretrained`` also reads Hugging Face GPT-2 / Llama directories through :mod:`.hf` (which builds on the
pure mappings of :mod:`llmcore.convert`), and ``save_pretrained(dir, format="hf")`` writes one that
``transformers`` loads. The file helpers (safetensors, JSON, tied weights) are :mod:`llmcore.io`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import io
from ..config import ModelConfig
from ..errors import CheckpointError

# Re-exported: classifier.py, training/checkpoint.py, finetune/lora.py and the commands import them from here.
from ..io import (  # noqa: F401
    CONFIG_NAME,
    INDEX_NAME,
    WEIGHTS_NAME,
    atomic_write_json,
    load_state_dict_checked,
    read_state_dict,
    save_safetensors,
    tied_duplicates,
)


def read_json(path: Path) -> dict[str, Any]:
    """A model directory's ``config.json`` (or another JSON file in it); CheckpointError when missing/corrupt."""
    return io.read_json(path, f"model config (a model directory holds {CONFIG_NAME} and {WEIGHTS_NAME})",
                        CheckpointError)


class PreTrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` for models with a ``config`` attribute."""

    config_cls: type = ModelConfig
    config: Any

    def save_pretrained(self, directory: str | Path, format: str = "llmcore", tokenizer: Any = None) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (and ``tokenizer/`` if given) into ``directory``.

        ``format="hf"`` writes a Hugging Face directory (GPT-2 or Llama layout, whichever the config fits).
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        if format == "hf":
            from .hf import save_hf

            save_hf(self, d)
        elif format == "llmcore":
            assert isinstance(self, nn.Module)
            dups = tied_duplicates(self)
            state = {k: v for k, v in self.state_dict().items() if k not in dups}
            save_safetensors(state, d / WEIGHTS_NAME, metadata={"format": "pt"})
            atomic_write_json(d / CONFIG_NAME, {"format": "llmcore", "architecture": type(self).__name__,
                                                "config": self.config.to_dict()})
        else:
            raise CheckpointError(f"Unknown save format {format!r}; use 'llmcore' or 'hf'.")
        if tokenizer is not None:
            tokenizer.save(d / "tokenizer")
        return d

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None) -> Any:
        """Load an llmcore directory, or a Hugging Face GPT-2 / Llama directory (converted on the fly).

        The model is returned in eval mode (dropout off), as Hugging Face does.
        """
        d = Path(directory)
        if not d.is_dir():
            raise CheckpointError(f"Model directory {d} does not exist; pass a directory written by save_pretrained.")
        meta = read_json(d / CONFIG_NAME)
        if meta.get("format") == "llmcore":
            arch = meta.get("architecture")
            if arch != cls.__name__ and cls.__name__ in _BASE_NAMES:
                raise CheckpointError(f"{d} holds a {arch}, not a {cls.__name__}; load it with {arch}.from_pretrained.")
            config = cls.config_cls.from_dict(meta["config"])
            model = cls(config)
            load_state_dict_checked(model, read_state_dict(d), source=str(d / WEIGHTS_NAME))
        elif "model_type" in meta:
            from .hf import load_hf

            model = load_hf(d, cls)
        else:
            raise CheckpointError(f"{d / CONFIG_NAME} is neither an llmcore config nor a Hugging Face config.")
        model.eval()  # like Hugging Face: a loaded model is for inference until a trainer calls .train()
        return model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)


# Built-in architectures: a directory saved by one must not silently load into another.
_BASE_NAMES = {"TransformerLM", "Seq2SeqTransformer", "LSTMLM", "SequenceClassifier"}
