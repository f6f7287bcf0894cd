"""Small file helpers shared by every layer: JSON and safetensors reads with one-line errors, atomic writes.

Reading: a missing or corrupt file (:func:`read_json`) becomes the caller's :class:`LLMCoreError` subclass naming the path and
what the file should be, never a bare ``FileNotFoundError`` / ``JSONDecodeError``. Writing goes through a
temporary file and ``os.replace`` so a crash never leaves half a file.

The model-directory helpers (:func:`read_state_dict`, :func:`save_safetensors`, :func:`load_state_dict_checked`,
:func:`tied_duplicates`) live here, below ``models`` and ``convert``, so that saving, loading, converting and
checkpointing all share one reader and one writer without importing each other.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CheckpointError, LLMCoreError

if TYPE_CHECKING:  # torch and safetensors load when a tensor is read or written: configs read JSON without them
    import torch
    from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


def read_json(path: str | os.PathLike, what: str = "JSON file", error: type[LLMCoreError] = LLMCoreError,
              expect: type = dict) -> Any:
    """Parse ``path`` as JSON; raise ``error`` naming the path and ``what`` it should hold if it can't.

    ``expect`` is the type the top-level value must have (an object, by default).
    """
    p = Path(path)
    try:
        value = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise error(f"{p} not found; expected the {what} there.") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{p} is not valid UTF-8 JSON ({e}); the {what} is corrupt — re-create it.") from e
    if not isinstance(value, expect):
        raise error(f"{p} holds a JSON {type(value).__name__}, but the {what} must be a JSON "
                    f"{'object' if expect is dict else expect.__name__}.")
    return value


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines log (``metrics.jsonl``), in order; ``[]`` when the file is missing.

    A line that is not a JSON object is skipped: logs are read while they are written, and a run killed
    mid-write leaves its last line cut short. (User data files are read strictly instead, with the line.)
    """
    p = Path(path)
    records = []
    for line in p.read_text(encoding="utf-8").splitlines() if p.is_file() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON through a temporary file and a rename."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, p)


def save_safetensors(state: dict[str, torch.Tensor], path: str | os.PathLike,
                     metadata: dict[str, str] | None = None) -> None:
    """Write tensors to ``path`` via a temporary file and rename, so a crash never leaves a half file."""
    from safetensors.torch import save_file

    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp), metadata=metadata or {})
    os.replace(tmp, p)


def read_state_dict(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of ``model.safetensors`` or of the shards listed in ``model.safetensors.index.json``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = Path(directory)
    if (d / WEIGHTS_NAME).exists():
        files = [d / WEIGHTS_NAME]
    elif (d / INDEX_NAME).exists():
        index = read_json(d / INDEX_NAME, "safetensors shard index", CheckpointError)
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


def raise_mismatch(what: str, missing: list[str], wrong: list[str], unexpected: list[str], hint: str) -> None:
    """CheckpointError ``"The <what>: N missing tensors (e.g. ...); ... <hint>"``, unless all three are empty.

    One report for every tensor check (model loading here, the converters' ``StateReader``), listing all
    three kinds of problem at once rather than the first.
    """
    parts = [f"{len(names)} {kind} (e.g. {names[:3]})" for kind, names in
             (("missing tensors", missing), ("shape mismatches", wrong), ("unexpected tensors", unexpected)) if names]
    if parts:
        raise CheckpointError(f"The {what}: {'; '.join(parts)}. {hint}")


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Copy ``state`` into ``model`` after checking names and shapes; mismatches raise CheckpointError."""
    dups = tied_duplicates(model)
    expected = {k: v for k, v in model.state_dict().items() if k not in dups}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected) - set(dups))
    wrong = [f"{k}: {tuple(state[k].shape)} in {source} vs {tuple(v.shape)} in model"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    raise_mismatch(f"{source} does not match the model config", missing, wrong, unexpected,
                   "Check that config.json belongs to these weights.")
    model.load_state_dict({k: v for k, v in state.items() if k not in dups}, strict=False)


__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "INDEX_NAME", "read_json", "read_jsonl", "atomic_write_json",
           "save_safetensors", "read_state_dict", "tied_duplicates", "raise_mismatch", "load_state_dict_checked"]
