"""Lazy package exports (PEP 562): ``from llmcore import Trainer`` works, ``import llmcore`` imports no torch.

A package lists its public names as ordinary imports inside ``if TYPE_CHECKING:`` (so type checkers, IDEs and
``tests/test_layering.py`` see the real dependencies) and ends with::

    __getattr__, __dir__ = lazy_exports(__name__, __file__)

:func:`lazy_exports` reads that block once, on the first attribute look-up (the approach of
``lazy_loader.attach_stub``, which reads a ``.pyi`` stub), and imports a submodule only when one of its names is
asked for. The block is the single list of what the package re-exports; ``__all__`` stays the public list.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def export_table(package: str, file: str) -> dict[str, tuple[str, str]]:
    """{exported name: (absolute module, attribute)} from the ``if TYPE_CHECKING:`` imports of ``file``."""
    tree = ast.parse(Path(file).read_text(encoding="utf-8"), filename=file)
    table: dict[str, tuple[str, str]] = {}
    for node in tree.body:
        if not (isinstance(node, ast.If) and _is_type_checking(node.test)):
            continue
        for stmt in node.body:
            if isinstance(stmt, ast.ImportFrom):
                module = importlib.util.resolve_name("." * stmt.level + (stmt.module or ""), package)
                for alias in stmt.names:
                    table[alias.asname or alias.name] = (module, alias.name)
    return table


def lazy_exports(package: str, file: str) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of ``package`` (whose ``__init__.py`` is ``file``)."""
    table: dict[str, tuple[str, str]] = {}

    def __getattr__(name: str) -> Any:
        if not table:
            table.update(export_table(package, file))
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, attr = table[name]
        if module == package:  # ``from . import sub``: a submodule of the package itself
            value = importlib.import_module(f"{package}.{attr}")
        else:
            mod = importlib.import_module(module)
            try:
                value = getattr(mod, attr)
            except AttributeError:  # ``from .pkg import submodule`` not yet imported
                value = importlib.import_module(f"{module}.{attr}")
        setattr(importlib.import_module(package), name, value)  # later look-ups skip __getattr__
        return value

    def __dir__() -> list[str]:
        if not table:
            table.update(export_table(package, file))
        pkg = importlib.import_module(package)
        return sorted({*vars(pkg), *table, *getattr(pkg, "__all__", [])})

    return __getattr__, __dir__


__all__ = ["lazy_exports", "export_table"]
