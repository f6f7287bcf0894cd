"""Small file helpers shared by every layer: JSON read with one-line errors, atomic JSON writes.

Reading: a missing or corrupt file becomes the caller's :class:`LLMCoreError` subclass naming the path and
what the file should be, never a bare ``FileNotFoundError`` / ``JSONDecodeError``. Writing goes through a
temporary file and ``os.replace`` so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import LLMCoreError


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


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON through a temporary file and a rename."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, p)


__all__ = ["read_json", "atomic_write_json"]
