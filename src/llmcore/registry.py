"""Open name → object tables: architectures, norms, MLPs, positional encodings, attention variants.

A config stores names (``norm="rmsnorm"``, ``"architecture": "TransformerLM"`` in ``config.json``); a
:class:`Registry` turns a name back into the class or factory that builds it. Built-in parts register
themselves where they are defined; a user registers their own the same way, from their own file::

    from llmcore.registry import NORMS

    @NORMS.register("scalenorm")
    class ScaleNorm(nn.Module): ...

after which ``ModelConfig(norm="scalenorm")`` builds it, and every command that imports the file (``--import
my_file.py``) can load a directory saved with it. An unknown name raises :class:`ConfigError` listing the
registered ones; registering a taken name twice with a different object is refused, so two plugins never
silently shadow each other.

This module sits at the bottom of the package: it imports nothing but the errors.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
from collections.abc import Iterator
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry:
    """A named table of classes or factories, e.g. ``NORMS.get("rmsnorm") -> RMSNorm``."""

    def __init__(self, kind: str, var: str, builtins: str | None = None) -> None:
        self.kind = kind  # used in error messages: "Unknown norm 'x'; registered: ..."
        self.var = var  # the module-level name, so the message can say how to register one
        self.builtins = builtins  # the module whose import registers the built-in entries
        self._table: dict[str, Any] = {}
        self._loaded = builtins is None

    def load_builtins(self) -> None:
        """Import :attr:`builtins` once, before the first look-up, so the built-in names are registered.

        ``import llmcore`` imports no torch (``llmcore --help`` stays fast), so the modules that define the
        built-ins are not imported yet when, say, ``ModelConfig(norm="rmsnorm")`` is validated. The module is
        named by a string, like a plugin's entry point: this module still imports nothing above the errors.
        """
        if not self._loaded:
            self._loaded = True  # first: the import registers entries (and may look some up) re-entrantly
            try:
                importlib.import_module(self.builtins)
            except BaseException:
                self._loaded = False
                raise

    def register(self, name: str, obj: Any = None) -> Any:
        """``REG.register("name", obj)``, or ``@REG.register("name")`` as a decorator; returns ``obj``."""
        if not isinstance(name, str) or not name:
            raise ConfigError(f"A {self.kind} name must be a non-empty string, got {name!r}.")

        def add(o: T) -> T:
            self.load_builtins()  # a user's entry meets the built-ins now, not when they load later
            old = self._table.get(name, _MISSING)
            if old is not _MISSING and old is not o and not same_definition(old, o):
                raise ConfigError(f"{self.kind} {name!r} is already registered to {_qualname(old)}; "
                                  f"pick another name for {_qualname(o)}.")
            self._table[name] = o  # the same definition again (a re-imported module) is fine; newest wins
            return o

        return add if obj is None else add(obj)

    def get(self, name: str) -> Any:
        """The object registered as ``name``; :class:`ConfigError` listing the registered names if none."""
        self.load_builtins()
        try:
            return self._table[name]
        except (KeyError, TypeError):
            raise ConfigError(self.unknown_message(name)) from None

    def unknown_message(self, name: Any) -> str:
        self.load_builtins()
        return (f"Unknown {self.kind} {name!r}; registered: {', '.join(sorted(self._table)) or '(none)'}. "
                f"Register a new one with llmcore.registry.{self.var}.register(name, ...).")

    def names(self) -> list[str]:
        self.load_builtins()
        return sorted(self._table)

    def __contains__(self, name: object) -> bool:
        self.load_builtins()
        return name in self._table

    def __iter__(self) -> Iterator[str]:
        self.load_builtins()
        return iter(sorted(self._table))

    def __len__(self) -> int:
        self.load_builtins()
        return len(self._table)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


_MISSING = object()


def _qualname(obj: Any) -> str:
    if obj is None:
        return "None"
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


def same_definition(a: Any, b: Any) -> bool:
    """One definition seen twice: the same qualified name defined at the same place of the same source file
    (a re-executed module, or one file imported under two module names, e.g. ``--import path.py`` and
    ``import name``); without a source file (``<stdin>``, exec'd code), the same module and qualified name.
    In ``__main__`` (a script or notebook cell run again) the same qualified name is enough.

    Two different objects that merely share a name are not one definition: classes of the same name in two
    files (two plugins both called ``models.py``), two lambdas or ``functools.partial`` objects of one module,
    or classes a function builds (``<locals>``: each call may build a different one).
    """
    if a is b:
        return True
    if isinstance(a, functools.partial) or isinstance(b, functools.partial):
        return (isinstance(a, functools.partial) and isinstance(b, functools.partial)
                and same_definition(a.func, b.func) and a.args == b.args and a.keywords == b.keywords)
    qa, qb = getattr(a, "__qualname__", None), getattr(b, "__qualname__", None)
    if not isinstance(qa, str) or qa != qb or (isinstance(a, type) and "<locals>" in qa):
        return False  # instances have no qualified name; a class built in a function may differ per call
    if _qualname(a) == _qualname(b) and getattr(a, "__module__", None) == "__main__":
        return True  # a script or notebook cell run again, maybe edited: the newest definition wins
    sa, sb = _definition_site(a), _definition_site(b)
    if sa is not None and sb is not None:
        return sa == sb
    return sa is None and sb is None and _qualname(a) == _qualname(b)


def _definition_site(obj: Any) -> tuple[str, int | None] | None:
    """(resolved source file, first line for functions) of ``obj``; None without a file (built-ins, exec'd code).

    A class's file comes from its own methods' code when it has any: ``inspect.getfile`` goes through
    ``sys.modules[cls.__module__]``, which a second module of the same name has replaced by then.
    """
    code = getattr(obj, "__code__", None)
    if code is None and isinstance(obj, type):
        methods = (getattr(v, "__func__", v) for v in vars(obj).values())  # classmethod / staticmethod unwrapped
        code = next((c for c in (getattr(m, "__code__", None) for m in methods) if c is not None), None)
        line = None  # a class's first method's line says little; the file and the qualified name suffice
    else:
        line = code.co_firstlineno if code is not None else None  # two lambdas of one file differ by line
    if code is not None:
        path = code.co_filename
    else:
        try:
            path = inspect.getfile(obj)
        except (TypeError, OSError):
            return None
    return None if path.startswith("<") else (os.path.realpath(path), line)  # "<stdin>", "<string>": no file


# The tables. Each is filled by the package that defines the built-ins, imported on the table's first look-up.
ARCHITECTURES = Registry("architecture", "ARCHITECTURES", "llmcore.models")  # config.json "architecture" -> model class (nn.Module with config_cls)
NORMS = Registry("norm", "NORMS", "llmcore.modules")  # ModelConfig.norm -> factory(config) -> nn.Module
MLPS = Registry("activation", "MLPS", "llmcore.modules")  # ModelConfig.activation -> factory(config, layer_idx) -> nn.Module
POS_ENCODINGS = Registry("pos_encoding", "POS_ENCODINGS", "llmcore.modules")  # ModelConfig.pos_encoding -> factory(config) -> nn.Module | None
ATTENTIONS = Registry("attention", "ATTENTIONS", "llmcore.modules")  # ModelConfig.attention -> class(config, layer_idx, cross=False)

__all__ = ["Registry", "ARCHITECTURES", "NORMS", "MLPS", "POS_ENCODINGS", "ATTENTIONS", "same_definition"]
