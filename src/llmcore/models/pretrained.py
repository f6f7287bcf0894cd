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
from ..bundled import missing_hint, resolve_model_dir
from ..config import ModelConfig
from ..errors import CheckpointError, ConfigError

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
    writing,
)
from ..modules.quantized import SCHEMES, check_scheme, has_quantized, int8_structure, quantize_linears
from ..registry import ARCHITECTURES, same_definition


def read_json(path: Path) -> dict[str, Any]:
    """A model directory's ``config.json`` (or another JSON file in it); CheckpointError when missing/corrupt."""
    return io.read_json(path, f"model config (a model directory holds {CONFIG_NAME} and {WEIGHTS_NAME})",
                        CheckpointError)


def read_model_dir(directory: str | Path) -> tuple[Path, dict[str, Any], str]:
    """``(path, parsed config.json, kind)`` of a model directory; kind is ``"llmcore"`` or ``"hf"``.

    Raises CheckpointError for a missing directory, a missing or corrupt config.json, or one of neither kind.
    """
    d = resolve_model_dir(directory)
    if not d.is_dir():
        raise CheckpointError(f"Model directory {d} does not exist; pass a directory written by save_pretrained."
                              + missing_hint())
    meta = read_json(d / CONFIG_NAME)
    if meta.get("format") == "llmcore":
        if not isinstance(meta.get("config"), dict):
            raise CheckpointError(f"{d / CONFIG_NAME}: field 'config' is {type(meta.get('config')).__name__}, "
                                  "expected an object of the model config's fields; re-save the model.")
        return d, meta, "llmcore"
    if "model_type" in meta:
        return d, meta, "hf"
    raise CheckpointError(f"{d / CONFIG_NAME} is neither an llmcore config nor a Hugging Face config.")


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


def pretrained_meta(cls: type, config: Any) -> dict[str, Any]:
    """The ``config.json`` of a saved llmcore model of class ``cls``: format, registered architecture, config."""
    return {"format": "llmcore", "architecture": architecture_name(cls), "config": config.to_dict()}


class PreTrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` for models with a ``config`` attribute."""

    config_cls: type = ModelConfig
    config: Any

    def save_pretrained(self, directory: str | Path, format: str = "llmcore", tokenizer: Any = None) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (and ``tokenizer/`` if given) into ``directory``.

        ``config.json`` names the architecture as registered (see :func:`register_architecture`).
        ``format="hf"`` writes a Hugging Face directory (GPT-2 or Llama layout, whichever the config fits);
        with a tokenizer, also the files ``transformers.AutoTokenizer`` reads (see ``models.hf.save_hf``).
        """
        d = Path(directory)
        if format == "hf" and has_quantized(self):
            raise CheckpointError("A quantized model cannot be saved in the Hugging Face layout (it has no int8 "
                                  "weights); save the float model, or use format='llmcore'.")
        if format not in ("hf", "llmcore"):
            raise CheckpointError(f"Unknown save format {format!r}; use 'llmcore' or 'hf'.")
        with writing(d, "model directory"):  # a read-only or file path: one CheckpointError line, nothing written
            if format == "hf":
                from .hf import save_hf

                save_hf(self, d, tokenizer=tokenizer)
            else:
                if not isinstance(self, nn.Module):
                    raise TypeError(f"PreTrainedMixin goes on an nn.Module; {type(self).__name__} is not one.")
                d.mkdir(parents=True, exist_ok=True)
                dups = tied_duplicates(self)
                state = {k: v for k, v in self.state_dict().items() if k not in dups}
                save_safetensors(state, d / WEIGHTS_NAME, metadata={"format": "pt"})
                meta = pretrained_meta(type(self), self.config)
                if getattr(self, "quantization", None):
                    meta["quantization"] = self.quantization  # rebuilt on load; the weights are not re-quantized
                atomic_write_json(d / CONFIG_NAME, meta)
            if tokenizer is not None:
                tokenizer.save(d / "tokenizer")
        return d

    def quantize(self, scheme: str = "int8", skip: tuple[str, ...] = ()) -> Any:
        """Quantize every ``nn.Linear`` (the LM head included) for inference, in place; returns the model.

        ``"int8"``: per-output-channel int8 weights, activations quantized per row at run time
        (:class:`llmcore.modules.quantized.Int8Linear`). ``skip`` names modules to keep in float.
        ``save_pretrained`` then writes the int8 weights and their scales, and ``from_pretrained`` loads them
        without quantizing again. Embeddings and norms stay in float (an embedding tied to the head keeps
        its float copy for the lookup).

        Raises:
            ConfigError: an unknown scheme; a model in training mode (quantize after ``model.eval()``: int8
                layers have no gradient); a model already quantized.
        """
        check_scheme(scheme)
        if not isinstance(self, nn.Module):
            raise TypeError(f"PreTrainedMixin goes on an nn.Module; {type(self).__name__} is not one.")
        if self.training:
            raise ConfigError(f"{type(self).__name__} is in training mode; quantization is for inference (int8 "
                              "layers have no gradient). Call model.eval() first, after training.")
        if has_quantized(self):
            raise ConfigError(f"{type(self).__name__} is already quantized "
                              f"({getattr(self, 'quantization', {}).get('scheme', 'int8')}); load the float model "
                              "to quantize it another way.")
        names = quantize_linears(self, scheme, skip)
        self.quantization = {"scheme": scheme, "modules": names}
        return self

    @classmethod
    def config_from_meta(cls, meta: dict[str, Any]) -> Any:
        """The config of a saved llmcore ``config.json`` (parsed: ``{"format", "architecture", "config"}``).

        Override to read a layout an earlier version of the class wrote (see ``SequenceClassifier``).
        """
        return cls.config_cls.from_dict(meta["config"])

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
        d, meta, kind = read_model_dir(directory)
        if kind == "llmcore":
            target = _resolve_architecture(cls, meta.get("architecture"), d)
            try:
                config = target.config_from_meta(meta)
            except ConfigError as e:  # a field of the wrong type or value: say which file it is in
                raise CheckpointError(f"{d / CONFIG_NAME}: {e}") from e
            quant = _saved_quantization(meta, d)

            def build() -> nn.Module:
                model = target(config)
                if quant is not None:  # int8 layers in place of the saved ones, filled by the int8 weights on disk
                    int8_structure(model, quant["modules"])
                    model.quantization = quant
                return model

            # headers first, then a meta-device build: an untrusted config costs what the weights on disk cost
            model = io.load_checked(build, d, str(d / WEIGHTS_NAME), config)
        else:
            from .hf import load_hf

            model = load_hf(d, cls)
        model.eval()  # like Hugging Face: a loaded model is for inference until a trainer calls .train()
        return model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)


def _saved_quantization(meta: dict[str, Any], directory: Path) -> dict[str, Any] | None:
    """The ``quantization`` entry of a saved ``config.json`` (``{"scheme", "modules"}``), checked, or None."""
    q = meta.get("quantization")
    if q is None:
        return None
    where = directory / CONFIG_NAME
    if not isinstance(q, dict) or q.get("scheme") not in SCHEMES or not isinstance(q.get("modules"), list) \
            or not all(isinstance(n, str) and len(n) < 512 for n in q["modules"]) or len(q["modules"]) > 100_000:
        raise CheckpointError(f"{where}: 'quantization' must be {{'scheme': one of {list(SCHEMES)}, 'modules': "
                              "[module names]}; the file is damaged or from another program. Re-save the model.")
    return {"scheme": q["scheme"], "modules": list(q["modules"])}


def _resolve_architecture(cls: type, arch: Any, directory: Path) -> type:
    """The class to build for a directory saved as ``arch`` when ``cls.from_pretrained`` is called."""
    registered = ARCHITECTURES.get(arch) if arch in ARCHITECTURES else None
    if registered is not None and not isinstance(registered, type):
        raise CheckpointError(f"ARCHITECTURES[{arch!r}] is {registered!r}, not a model class; register the class.")
    if registered is not None and issubclass(registered, cls):
        return registered  # cls itself, or a registered subclass of it
    if registered is not None and same_definition(registered, cls):
        return cls  # the same class from the same file imported under another module name
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
    d, meta, kind = read_model_dir(directory)
    arch = meta.get("architecture") if kind == "llmcore" else "TransformerLM"
    if arch not in ARCHITECTURES:
        raise _unregistered(arch, d)
    return ARCHITECTURES.get(arch).from_pretrained(d, device=device, dtype=dtype)
