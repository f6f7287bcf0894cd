"""Hugging Face directories <-> llmcore models: the model-building glue around :mod:`llmcore.convert`.

:mod:`llmcore.convert` maps configs and state dicts and knows no model class; this file builds models from
those mappings and reads / writes HF directories (``config.json`` + ``model.safetensors``, or shards listed in
``model.safetensors.index.json``):

    model = from_hf(hf_model.config.to_dict(), hf_model.state_dict())   # an HF model already in memory
    model = load_hf("path/to/hf_dir")                                   # = TransformerLM.from_pretrained(...)
    save_hf(model, "out", max_shard_size="2GB")                         # = model.save_pretrained(..., "hf")
    save_hf(model, "out", tokenizer=tok)    # + the tokenizer files transformers.AutoTokenizer reads

The default class is the architecture registered as ``"TransformerLM"``, looked up by name: importing
``models.transformer`` here would close the cycle transformer -> pretrained -> hf.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..convert.hf import hf_config_to_llmcore, hf_to_llmcore, llmcore_to_hf
from ..errors import CheckpointError, ConfigError
from ..io import (
    CONFIG_NAME,
    INDEX_NAME,
    WEIGHTS_NAME,
    IntoModel,
    StoredTensors,
    atomic_write_json,
    build_checked,
    check_against,
    check_finite,
    direct_targets,
    load_state_dict_checked,
    read_header,
    read_json,
    read_state_dict,
    save_safetensors,
    writing,
)
from ..registry import ARCHITECTURES

# Tokenizer files of a HF directory; an earlier export's would shadow a new tokenizer (tokenizer.json beats .model)
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "tokenizer_config.json",
                      "special_tokens_map.json", "added_tokens.json")
SHARD_PATTERN = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
DEFAULT_ARCHITECTURE = "TransformerLM"


def _model_class(cls: type[nn.Module] | None) -> type[nn.Module]:
    return ARCHITECTURES.get(DEFAULT_ARCHITECTURE) if cls is None else cls


def from_hf(hf_config: Mapping[str, Any], hf_state: Mapping[str, torch.Tensor],
            cls: type[nn.Module] | None = None) -> nn.Module:
    """A model (``cls``, default TransformerLM, in eval mode) from a HF config and state dict held in memory,
    e.g. ``from_hf(hf_model.config.to_dict(), hf_model.state_dict())``."""
    config, state = hf_to_llmcore(hf_config, hf_state)
    model = _model_class(cls)(config)
    load_state_dict_checked(model, state, source=f"converted {config.extra.get('hf_model_type')} checkpoint")
    return model.eval()  # like transformers' from_pretrained


def load_hf(directory: str | Path, cls: type[nn.Module] | None = None) -> nn.Module:
    """Load a HF directory (``config.json`` + ``model.safetensors`` or a sharded index) as ``cls``."""
    d = Path(directory)
    hf_config = read_json(d / CONFIG_NAME, "Hugging Face model config", CheckpointError)
    try:  # a field of the wrong type or value: say which file it is in
        hf_config_to_llmcore(hf_config)
    except (CheckpointError, ConfigError) as e:
        raise CheckpointError(f"{d / CONFIG_NAME}: {e}") from e
    # Convert the safetensors header (meta tensors: shapes and dtypes, no data) first: a config that does not
    # fit the weights fails here, before the model or any tensor is allocated.
    header, size = read_header(d)
    config, meta_state = hf_to_llmcore(hf_config, header)
    source = f"converted {config.extra.get('hf_model_type')} checkpoint"
    build_checked(lambda: _model_class(cls)(config), meta_state, source, size)
    model = _model_class(cls)(config)
    check_against(model, meta_state, source, size)  # again, for a class that could not be built on meta
    if direct_targets(model) is None:  # a module that loads its state its own way: through load_state_dict
        state = read_state_dict(d)
        check_finite(state, str(d))
        load_state_dict_checked(model, hf_to_llmcore(hf_config, state)[1], source=source)
        return model.eval()
    # Each HF tensor is read from disk when the converter asks for it and its converted form is copied into
    # the model at once: the peak is the model plus a tensor or two, not the model plus a converted state dict
    # (plus the HF one) as when the whole state is read and converted first.
    into = IntoModel(model, source)
    hf_to_llmcore(hf_config, StoredTensors(d), into)
    check_finite(into.finish(), str(d))
    return model.eval()  # like transformers' from_pretrained


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


def save_hf(model: nn.Module, directory: str | Path, max_shard_size: int | str | None = None,
            tokenizer: Any = None) -> Path:
    """Write ``model`` as a HF directory that ``transformers.AutoModelForCausalLM.from_pretrained`` loads.

    Args:
        model: a TransformerLM (anything with ``config`` and a matching state dict).
        directory: created if needed; weight files from an earlier save there are replaced.
        max_shard_size: bytes or "2GB"-style; when the weights exceed it they are split into
            ``model-0000i-of-0000n.safetensors`` files plus ``model.safetensors.index.json``.
        tokenizer: an llmcore tokenizer; its :meth:`~llmcore.tokenizer.Tokenizer.save_hf` files go beside the
            weights so ``transformers.AutoTokenizer.from_pretrained(directory)`` encodes the same ids. A kind
            transformers cannot represent (byte, char) raises TokenizerError before anything is written.
    """
    if type(model) is not ARCHITECTURES.get("TransformerLM"):  # a subclass may compute something else
        raise CheckpointError(f"Only a TransformerLM exports to the Hugging Face GPT-2 / Llama layouts; this "
                              f"model is a {type(model).__name__}, whose modules transformers would not reproduce "
                              "from the same tensor names. Save it with "
                              "save_pretrained(dir) (llmcore format) instead.")
    d = Path(directory)
    with writing(d, "model directory"):  # read-only: one CheckpointError line before anything is written
        return _save_hf(model, d, max_shard_size, tokenizer)


def _save_hf(model: nn.Module, d: Path, max_shard_size: int | str | None, tokenizer: Any) -> Path:
    if tokenizer is not None:
        _save_tokenizer(tokenizer, d)  # first: a tokenizer that cannot be exported fails before the weights
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


def _save_tokenizer(tokenizer: Any, d: Path) -> None:
    """Replace an earlier export's tokenizer files with ``tokenizer``'s HF files."""
    from ..tokenizer import Tokenizer

    if type(tokenizer).save_hf is Tokenizer.save_hf:
        tokenizer.save_hf(d)  # raises the one-line TokenizerError, before anything is removed or written
    if d.is_dir():
        for name in HF_TOKENIZER_FILES:
            (d / name).unlink(missing_ok=True)
    tokenizer.save_hf(d)


__all__ = ["from_hf", "load_hf", "save_hf", "parse_size"]
