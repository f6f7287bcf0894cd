"""Every ```python block in README.md and docs/ runs, and docs/api.md names every public symbol."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from llmcore.registry import ARCHITECTURES, ATTENTIONS, MLPS, NORMS, POS_ENCODINGS

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
PUBLIC_MODULES = ["llmcore", "llmcore.tokenizer", "llmcore.modules", "llmcore.models", "llmcore.data",
                  "llmcore.training", "llmcore.finetune", "llmcore.generation", "llmcore.convert",
                  "llmcore.models.hf", "llmcore.io",
                  "llmcore.translation", "llmcore.multimodal"]


CONTINUES = "# continues the walk-through"  # a snippet that needs the page's earlier steps: its own test runs it


def _snippets():
    for page in PAGES:
        for i, m in enumerate(FENCE.finditer(page.read_text(encoding="utf-8"))):
            if not m.group(1).startswith(CONTINUES):
                yield pytest.param(m.group(1), id=f"{page.relative_to(ROOT)}#{i}")


def test_there_are_snippets():
    assert len(list(_snippets())) >= 8


@pytest.mark.parametrize("code", list(_snippets()))
def test_snippet_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # snippets that write files write them here
    # Snippets register architectures and names ("alibi") as a user would; later tests must not see them.
    # The built-ins load lazily, so load them first: a copy taken before would be restored empty, while the
    # registry already counts them as loaded.
    for registry in (ARCHITECTURES, NORMS, MLPS, POS_ENCODINGS, ATTENTIONS):
        registry.load_builtins()  # first: a snapshot taken before the lazy built-ins load would lose them
        monkeypatch.setattr(registry, "_table", dict(registry._table))
    exec(compile(code, "<doc snippet>", "exec"), {"__name__": "__doc_snippet__"})


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_api_reference_lists_every_public_name(module):
    api = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    names = getattr(importlib.import_module(module), "__all__", [])
    missing = [n for n in names if f"`{n}" not in api and not n.startswith("__")]
    assert not missing, f"docs/api.md does not document {module}: {missing}"
