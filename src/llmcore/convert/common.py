"""Helpers shared by the per-family converters: a strict tensor reader, HF provenance in ``config.extra`` and
the check of which layout a config can be exported to.

Nothing here knows a model family. :class:`StateReader` is the "check shapes before copying" rule of
nanoGPT's ``from_pretrained``, extended to report every missing, misshapen and unexpected tensor at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from ..config import ModelConfig
from ..errors import CheckpointError
from ..io import raise_mismatch

# Special token ids kept in ModelConfig.extra so an exported config.json carries them back to HF.
TOKEN_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


class StateReader:
    """Hands out the tensors of a state dict by name, checking each shape against the config.

    Converters call :meth:`take` for every tensor they expect and :meth:`finish` once at the end, which raises
    :class:`CheckpointError` listing missing tensors, shape mismatches and leftover (unexpected) tensors.
    A missing or misshapen tensor is replaced by a placeholder that holds no memory (on the ``meta`` device
    when the state is a safetensors header, else one zero broadcast to the shape) so the mapping runs to the
    end and the error names all problems, not only the first, without allocating what an untrusted config asks.

    Args:
        state: name -> tensor.
        source: what the tensors are, for messages (e.g. "Hugging Face gpt2 checkpoint").
        ignore: regular expressions of names to skip silently (buffers such as GPT-2's ``attn.bias`` mask).
    """

    def __init__(self, state: Mapping[str, torch.Tensor], source: str, ignore: Iterable[str] = ()) -> None:
        self.state = state
        self.source = source
        self.ignore = [re.compile(p) for p in ignore]
        self.used: set[str] = set()
        self.missing: list[str] = []
        self.wrong: list[str] = []
        self.dtypes: list[str] = []
        # placeholders on meta when the state is a header (meta tensors) or read lazily (not a dict: looking a
        # tensor up would read it; the lazy loader checked the header first, so none should be needed)
        first = next(iter(state), None) if isinstance(state, dict) else None
        self.meta = not isinstance(state, dict) or (first is not None and state[first].is_meta)

    def has(self, name: str) -> bool:
        return name in self.state

    def take(self, name: str, *shape: int) -> torch.Tensor:
        """The tensor called ``name``, which must have ``shape``; a zero placeholder when it does not."""
        t = self.state.get(name)
        if t is None:
            self.missing.append(name)
            return self._placeholder(shape, torch.float32)
        self.used.add(name)
        if tuple(t.shape) != shape:
            self.wrong.append(f"{name} is {tuple(t.shape)}, expected {shape}")
            return self._placeholder(shape, t.dtype)
        if not t.is_floating_point():
            self.dtypes.append(f"{name}: {t.dtype}")
        return t.detach()

    def _placeholder(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        if self.meta:
            return torch.empty(shape, dtype=dtype, device="meta")
        return torch.zeros((), dtype=dtype).expand(shape)  # one element, whatever the shape

    def finish(self, hint: str) -> None:
        """Raise CheckpointError if anything was missing, misshapen or left over; ``hint`` says what to do."""
        unexpected = sorted(k for k in self.state if k not in self.used
                            and not any(p.search(k) for p in self.ignore))
        raise_mismatch(f"{self.source} does not match its config", self.missing, self.wrong, unexpected, hint,
                       self.dtypes)


def zeros_like_rows(weight: torch.Tensor) -> torch.Tensor:
    """A zero bias for a Linear ``weight`` (out, in): used where one side of a conversion has no bias."""
    return torch.zeros(weight.shape[0], dtype=weight.dtype)


def is_zero(t: torch.Tensor | None) -> bool:
    return t is None or not bool(t.detach().any())


def require(cfg: Mapping[str, Any], key: str, model_type: str) -> Any:
    """``cfg[key]``, or a CheckpointError naming the missing field."""
    value = cfg.get(key)
    if value is None:
        raise CheckpointError(f"Hugging Face {model_type} config has no {key!r}; the config.json is incomplete.")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:  # every required field is a size
        raise CheckpointError(f"Hugging Face {model_type} config has {key}={value!r}; expected a positive integer.")
    return value


def number(cfg: Mapping[str, Any], key: str, default: float, model_type: str) -> float:
    """``cfg[key]`` (``default`` when absent or null) as a float, or a CheckpointError naming the field."""
    value = cfg.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CheckpointError(f"Hugging Face {model_type} config has {key}={value!r}; expected a number.")
    return float(value)


def provenance(cfg: Mapping[str, Any], model_type: str, **more: Any) -> dict[str, Any]:
    """``ModelConfig.extra`` for a model converted from HF: where it came from and what exporting back needs.

    Converted models get ``dropout=0``: llmcore's ``from_pretrained`` does not switch to eval mode the way
    transformers' does, so GPT-2's 0.1 would make plain inference random (nanoGPT's ``from_pretrained`` also
    zeroes it). HF's value is kept as ``extra["hf_dropout"]``; set ``config.dropout`` to fine-tune with it.

    Fields a previous llmcore export stored under ``llmcore_extra`` are restored first, so extra survives
    a round trip through the HF format.
    """
    extra = dict(cfg.get("llmcore_extra") or {})
    extra["hf_model_type"] = model_type
    extra.update({k: cfg[k] for k in TOKEN_KEYS if cfg.get(k) is not None})
    extra.update({k: v for k, v in more.items() if v is not None})
    return extra


def export_dropout(config: ModelConfig) -> float:
    """Dropout for an exported config: ours, or the one the HF model came with (imports set ours to 0)."""
    return config.dropout or config.extra.get("hf_dropout", 0.0)


def export_common(config: ModelConfig, state: Mapping[str, torch.Tensor], model_type: str,
                  architecture: str) -> dict[str, Any]:
    """The config.json fields every exported family shares: identity, dtype, token ids, llmcore extra."""
    dtype = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
    name = str(dtype).removeprefix("torch.")
    out: dict[str, Any] = {
        "model_type": model_type,
        "architectures": [architecture],
        "dtype": name,  # transformers >= 4.56
        "torch_dtype": name,  # older transformers
        "vocab_size": config.vocab_size,
        "initializer_range": config.init_std,
        "tie_word_embeddings": config.tie_embeddings,
        "use_cache": True,
    }
    out.update({k: config.extra.get(k) for k in TOKEN_KEYS})
    kept = {k: v for k, v in config.extra.items() if not k.startswith("hf_") and k not in TOKEN_KEYS}
    if kept:
        out["llmcore_extra"] = kept
    return out


def llmcore_reader(config: ModelConfig, state: Mapping[str, torch.Tensor]) -> StateReader:
    """A reader over an llmcore TransformerLM state dict (the tied head copy, if present, is skipped)."""
    ignore = [r"^lm_head\.weight$"] if config.tie_embeddings else []
    return StateReader(state, "llmcore state dict", ignore=ignore)


def layout_problems(config: ModelConfig, family: str, needs: Mapping[str, Any]) -> list[str]:
    """``"norm='layernorm' (Llama needs 'rmsnorm')"`` for every field of ``config`` that ``family``'s layout
    cannot hold; ``needs`` maps a field to the value it must have, or to a list of the values allowed."""
    problems = []
    for name, want in needs.items():
        value = getattr(config, name)
        allowed = want if isinstance(want, (list, tuple)) else [want]
        if value not in allowed:
            shown = f"one of {list(want)}" if isinstance(want, (list, tuple)) else repr(want)
            problems.append(f"{name}={value!r} ({family} needs {shown})")
    return problems
