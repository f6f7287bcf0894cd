"""The ready-trained models shipped inside the package, found by name wherever a model directory is accepted.

Each bundled model is an ordinary model directory (``config.json``, ``model.safetensors`` in float16,
``tokenizer/``) under this package, listed in ``models.json`` with its task, size, metrics and the command
that trained it. :func:`resolve_model_dir` is what every loader calls first:

    resolve_model_dir("runs/mine")   # an existing path is used as it is
    resolve_model_dir("en-zh")       # not a path here, but a bundled name: the packaged directory

A local directory of the same name as a bundled model wins, so ``--model shakespeare`` means ``./shakespeare``
when it exists. ``llmcore models`` lists what is here. This module imports no torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

BUNDLED_DIR = Path(__file__).parent
INDEX_FILE = "models.json"


def bundled_models() -> dict[str, dict[str, Any]]:
    """``{name: entry}`` from ``models.json`` (task, description, parameters, bytes, metrics, command)."""
    path = BUNDLED_DIR / INDEX_FILE
    if not path.is_file():
        return {}
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is unreadable ({e}); reinstall llmcore.") from e
    return {name: entry for name, entry in index.get("models", {}).items() if (BUNDLED_DIR / name).is_dir()}


def bundled_path(name: str) -> Path | None:
    """The packaged directory of bundled model ``name``, or None when there is none of that name."""
    return BUNDLED_DIR / name if name in bundled_models() else None


def resolve_model_dir(name_or_dir: str | os.PathLike) -> Path:
    """An existing path as it is; else, a bundled model's name as its packaged directory; else the path
    unchanged, so the caller's own "does not exist" error names what was asked for."""
    path = Path(name_or_dir)
    if path.exists():
        return path
    text = os.fspath(name_or_dir)
    bare = len(path.parts) == 1 and "/" not in text and os.sep not in text and not text.startswith(".")
    found = bundled_path(str(path)) if bare else None  # "shakespeare", never "./shakespeare" or "runs/x"
    return found if found is not None else path


def missing_hint() -> str:
    """The sentence that tells a user which bundled names exist (for "no such model directory" errors)."""
    names = sorted(bundled_models())
    return f" Bundled models: {', '.join(names)} (llmcore models)." if names else ""
