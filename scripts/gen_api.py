"""Regenerate docs/api.md from the public modules' ``__all__`` and docstrings.

    python scripts/gen_api.py

tests/test_docs.py fails when a public name is missing from docs/api.md, so run this after changing the API.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

MODULES = ["llmcore", "llmcore.tokenizer", "llmcore.modules", "llmcore.models", "llmcore.data",
           "llmcore.training", "llmcore.finetune", "llmcore.generation", "llmcore.convert",
           "llmcore.models.hf", "llmcore.io",
           "llmcore.translation", "llmcore.multimodal"]


def summary(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().split("\n\n")[0].replace("\n", " ")


def signature(obj: object) -> str:
    try:
        try:  # resolve postponed (string) annotations where the names are importable
            sig = inspect.signature(obj, eval_str=True)  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - fall back to the annotations as written
            sig = inspect.signature(obj)  # type: ignore[arg-type]
        return str(sig).replace("typing.", "").replace("collections.abc.", "")
    except (TypeError, ValueError):
        return ""


def main() -> None:
    lines = ["# API reference", "",
             "Generated from the docstrings by `python scripts/gen_api.py`; `tests/test_docs.py` checks that",
             "every public name is here. Tensor shapes and details are in each docstring (`help(name)`).", ""]
    for mod_name in MODULES:
        mod = importlib.import_module(mod_name)
        lines += [f"## `{mod_name}`", "", summary(mod), ""]
        for name in getattr(mod, "__all__", []):
            if name.startswith("__"):
                continue
            obj = getattr(mod, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                kind = "class" if inspect.isclass(obj) else "def"
                sig = signature(obj)
                if len(sig) > 110:
                    sig = "(...)"
                lines.append(f"- **`{name}`** — {kind} `{name}{sig}`: {summary(obj)}")
            else:
                lines.append(f"- **`{name}`** — {type(obj).__name__}")
        lines.append("")
    out = Path(__file__).resolve().parent.parent / "docs" / "api.md"
    out.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
