"""Every command line in README.md and docs/ uses flags that exist, spelled as the parsers spell them.

Commands are the lines of ```bash blocks and inline `llmcore ...` / `python examples/...` spans. An
``llmcore`` command is checked against its sub-command's parser (``llmcore.cli.build_parser``, which imports
no torch); a ``python examples/X.py`` or ``benchmarks/X.py`` command against the option strings of the
script's ``add_argument`` calls, read from its source. Flags renamed in the CLI then fail here, not for a user.
"""

from __future__ import annotations

import argparse
import ast
import re
import shlex
from pathlib import Path

import pytest

from llmcore.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
INLINE = re.compile(r"`((?:llmcore|python|torchrun) [^`\n]+)`")


def commands(text: str) -> list[str]:
    """Shell commands of a Markdown page: ```bash lines (continuations joined) and inline command spans."""
    out, block, prose = [], None, []
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            if block is None:
                block, lang = [], line[3:].strip()
            else:
                if lang in ("bash", "sh", "shell", ""):
                    for cmd in "".join(block).replace("\\\n", " ").splitlines():
                        out += [c.strip() for c in re.split(r"&&|\|", cmd.split(" #")[0]) if c.strip()]
                block = None
            continue
        (block if block is not None else prose).append(line)
    out += [c.strip() for m in INLINE.finditer("".join(prose)) for c in m.group(1).split("&&")]
    return out


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings}


def script_options(path: Path) -> set[str]:
    """Option strings of every ``*.add_argument("--x", ...)`` call in a script."""
    opts = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            opts |= {a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("-")}
    return opts | {"--help"}


def unknown_flags(cmd: str, parser: argparse.ArgumentParser) -> list[str] | None:
    """Flags of ``cmd`` its parser does not know; None when ``cmd`` is not an llmcore or script command."""
    try:
        toks = shlex.split(cmd)
    except ValueError:
        toks = cmd.split()
    if toks[:1] == ["torchrun"]:
        toks = toks[toks.index("llmcore"):] if "llmcore" in toks else []
    if toks[:3] == ["python", "-m", "llmcore"]:
        toks = ["llmcore", *toks[3:]]
    flags = lambda rest: [t.split("=")[0] for t in rest if t.startswith("--")]  # noqa: E731
    if toks[:1] == ["llmcore"]:
        p, rest = parser, toks[1:]
        while rest and rest[0] in _subparsers(p):
            p, rest = _subparsers(p)[rest[0]], rest[1:]
        known = _options(p) | _options(parser)
        bad = [f for f in flags(rest) if f not in known]
        if p is parser and rest and not rest[0].startswith("-"):
            bad.append(f"(no command {rest[0]!r})")
        return bad
    if len(toks) > 1 and toks[0] == "python" and toks[1].endswith(".py"):
        script = ROOT / toks[1]
        if not script.is_file():
            return [f"(no script {toks[1]})"]
        return [f for f in flags(toks[2:]) if f not in script_options(script)]
    return None


def test_pages_have_commands():
    assert sum(len(commands(p.read_text(encoding="utf-8"))) for p in PAGES) >= 40


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_documented_flag_exists(page):
    parser = build_parser()
    bad = {cmd: u for cmd in commands(page.read_text(encoding="utf-8"))
           if (u := unknown_flags(cmd, parser))}
    assert not bad, f"{page.relative_to(ROOT)}: flags no parser knows: {bad}"
