"""Saving and loading model directories: ``config.json`` + ``model.safetensors``, no pickle anywhere.

:class:`PreTrainedMixin` gives any llmcore model ``save_pretrained(dir)`` and ``from_pretrained(dir)``.
Tied parameters (e.g. the LM head sharing the embedding matrix) are stored once and re-tied on load.
``from_pretrained`` also reads Hugging Face GPT-2 / Llama directories through :mod:`llmcore.convert`,
and ``save_pretrained(dir, format="hf")`` writes one that ``transformers`` loads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..config import ModelConfig
from ..errors import CheckpointError
from ..registry import ARCHITECTURES

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


def tied_duplicates(module: nn.Module) -> dict[str, str]:
    """{duplicate name: first name} for parameters registered under several names (tied weights)."""
    first: dict[int, str] = {}
    dups: dict[str, str] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        if id(p) in first:
            dups[name] = first[id(p)]
        else:
            first[id(p)] = name
    return dups


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise CheckpointError(f"{path} not found: a model directory needs {CONFIG_NAME} and {WEIGHTS_NAME}.") from e
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the file is corrupt, re-save the model.") from e


def read_state_dict(directory: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of ``model.safetensors`` or of the shards listed in ``model.safetensors.index.json``."""
    d = Path(directory)
    if (d / WEIGHTS_NAME).exists():
        files = [d / WEIGHTS_NAME]
    elif (d / INDEX_NAME).exists():
        index = read_json(d / INDEX_NAME)
        files = [d / f for f in sorted(set(index.get("weight_map", {}).values()))]
    else:
        raise CheckpointError(
            f"No {WEIGHTS_NAME} or {INDEX_NAME} in {d}; only safetensors weights are read "
            "(convert .bin/.pt checkpoints to safetensors first)."
        )
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            state.update(load_file(str(f)))
        except FileNotFoundError as e:
            raise CheckpointError(f"Weight shard {f} listed in {INDEX_NAME} is missing.") from e
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"Cannot read {f}: {e}. The file is truncated or corrupt; re-save or re-copy it.") from e
    return state


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Copy ``state`` into ``model`` after checking names and shapes; mismatches raise CheckpointError."""
    dups = tied_duplicates(model)
    expected = {k: v for k, v in model.state_dict().items() if k not in dups}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected) - set(dups))
    wrong = [f"{k}: {tuple(state[k].shape)} in {source} vs {tuple(v.shape)} in model"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[:3]})")
        if wrong:
            parts.append(f"shape mismatches: {wrong[:3]}")
        raise CheckpointError(
            f"The {source} does not match the model config: {'; '.join(parts)}. "
            "Check that config.json belongs to these weights."
        )
    model.load_state_dict({k: v for k, v in state.items() if k not in dups}, strict=False)


def atomic_write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def save_safetensors(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write tensors to ``path`` via a temporary file and rename, so a crash never leaves a half file."""
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp), metadata=metadata or {})
    os.replace(tmp, path)


def register_architecture(name: str | type | None = None) -> Any:
    """Register a model class in ``llmcore.registry.ARCHITECTURES``, so every loader can rebuild it.

    ``@register_architecture`` uses the class name, ``@register_architecture("MyLM")`` another name;
    ``save_pretrained`` writes that name into ``config.json`` and :func:`load_model` /
    ``Base.from_pretrained`` build the class back. A command loads it once the defining file is imported
    (``--import FILE_OR_MODULE``). A name already taken by a different class is refused (ConfigError).
    """
    if isinstance(name, type):  # bare @register_architecture
        return ARCHITECTURES.register(name.__name__, name)

    def add(cls: type) -> type:
        return ARCHITECTURES.register(name or cls.__name__, cls)

    return add


def architecture_name(cls: type) -> str:
    """The name ``cls`` is registered under in ``ARCHITECTURES`` (its class name if unregistered)."""
    return next((n for n in ARCHITECTURES.names() if ARCHITECTURES.get(n) is cls), cls.__name__)


class PreTrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` for models with a ``config`` attribute."""

    config_cls: type = ModelConfig
    config: Any

    def save_pretrained(self, directory: str | Path, format: str = "llmcore", tokenizer: Any = None) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (and ``tokenizer/`` if given) into ``directory``.

        ``config.json`` names the architecture as registered (see :func:`register_architecture`).
        ``format="hf"`` writes a Hugging Face directory (GPT-2 or Llama layout, whichever the config fits).
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        if format == "hf":
            from ..convert import save_hf  # local import: modules/models never depend on convert at import

            save_hf(self, d)
        elif format == "llmcore":
            assert isinstance(self, nn.Module)
            dups = tied_duplicates(self)
            state = {k: v for k, v in self.state_dict().items() if k not in dups}
            save_safetensors(state, d / WEIGHTS_NAME, metadata={"format": "pt"})
            atomic_write_json(d / CONFIG_NAME, {"format": "llmcore", "architecture": architecture_name(type(self)),
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

        The class built is the one registered under the directory's architecture name when that is ``cls``
        or a subclass of it (``TransformerLM.from_pretrained`` of a saved registered ``ParallelLM`` gives a
        ``ParallelLM``); a subclass may also load its parent's directory. Any other architecture is a
        :class:`CheckpointError`. The model is returned in eval mode (dropout off), as Hugging Face does;
        the Trainer switches it to train mode.
        """
        d = Path(directory)
        if not d.is_dir():
            raise CheckpointError(f"Model directory {d} does not exist; pass a directory written by save_pretrained.")
        meta = read_json(d / CONFIG_NAME)
        if meta.get("format") == "llmcore":
            target = _resolve_architecture(cls, meta.get("architecture"), d)
            config = target.config_cls.from_dict(meta["config"])
            model = target(config)
            load_state_dict_checked(model, read_state_dict(d), source=str(d / WEIGHTS_NAME))
        elif "model_type" in meta:
            from ..convert import load_hf

            model = load_hf(d, cls)
        else:
            raise CheckpointError(f"{d / CONFIG_NAME} is neither an llmcore config nor a Hugging Face config.")
        model.eval()  # like Hugging Face: a loaded model is for inference until a trainer calls .train()
        return model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)


def _resolve_architecture(cls: type, arch: Any, directory: Path) -> type:
    """The class to build for a directory saved as ``arch`` when ``cls.from_pretrained`` is called."""
    registered = ARCHITECTURES.get(arch) if arch in ARCHITECTURES else None
    if registered is not None and not isinstance(registered, type):
        raise CheckpointError(f"ARCHITECTURES[{arch!r}] is {registered!r}, not a model class; register the class.")
    if registered is not None and issubclass(registered, cls):
        return registered  # cls itself, or a registered subclass of it
    if registered is not None and issubclass(cls, registered):
        return cls  # a subclass asked for explicitly loads its parent's weights (they must match)
    if registered is None and arch == cls.__name__:
        return cls  # an unregistered class loading its own directory
    if registered is None:
        raise _unregistered(arch, directory)
    raise CheckpointError(f"{directory} holds a {arch}, not a {cls.__name__}; load it with {arch}.from_pretrained "
                          "or llmcore.models.load_model.")


def _unregistered(arch: Any, directory: Path) -> CheckpointError:
    return CheckpointError(f"{directory} holds architecture {arch!r}, which is not registered (registered: "
                           f"{', '.join(ARCHITECTURES.names())}); define and register it "
                           "(llmcore.models.register_architecture), then pass --import FILE_OR_MODULE to the command.")


def load_model(directory: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None) -> nn.Module:
    """Load any registered architecture from a model directory, in eval mode.

    ``config.json`` names the architecture; its class (from ``ARCHITECTURES``) rebuilds the model through
    its ``from_pretrained``. A Hugging Face GPT-2 / Llama directory loads as a TransformerLM. An unregistered
    name raises :class:`CheckpointError` saying how to make it known (import the file that registers it).
    """
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"Model directory {d} does not exist; pass a directory written by save_pretrained.")
    meta = read_json(d / CONFIG_NAME)
    if meta.get("format") == "llmcore":
        arch = meta.get("architecture")
        if arch not in ARCHITECTURES:
            raise _unregistered(arch, d)
        cls = ARCHITECTURES.get(arch)
    elif "model_type" in meta:
        cls = ARCHITECTURES.get("TransformerLM")
    else:
        raise CheckpointError(f"{d / CONFIG_NAME} is neither an llmcore config nor a Hugging Face config.")
    return cls.from_pretrained(d, device=device, dtype=dtype)
