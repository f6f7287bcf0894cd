"""The package imports downward only, with no cycles (issue 13, "Layering").

Every module of ``src/llmcore`` is parsed (not imported) and every ``import`` / ``from ... import`` at any
nesting level counts: lazy imports inside functions and ``TYPE_CHECKING`` blocks are dependencies too, they
only move the failure to run time. Relative imports are resolved against the importing module. Two rules:

1. no import cycle between modules (the cycle is reported, module by module);
2. a module imports only modules of its own layer or of a layer below it (``LAYERS``, bottom first).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Bottom first. A module's layer is that of its first dotted component below ``llmcore`` (the package
# root ``llmcore`` itself is the public-API facade, just below the command line).
LAYERS: list[set[str]] = [
    {"errors", "lazy"},
    {"config", "registry", "io", "inputs", "rundir", "bundled"},
    {"tokenizer"},
    {"modules", "multimodal"},  # multimodal: encoders built from modules (DESIGN: "modules ... vision encoder")
    {"generation"},
    {"convert"},
    {"models"},
    {"data"},
    {"training"},
    {"finetune"},
    {"translation"},
    {"plot", "sweep"},
    {"serve"},  # the HTTP server: generation + translation behind an OpenAI-compatible API
    {"<root>"},
    {"cli", "__main__"},  # also every ``*/cli.py``: see ``layer_of``
]
CLI_LAYER = len(LAYERS) - 1

# Known exceptions to the layer order, each a (importer, imported) pair with the reason beside it. Keep it
# empty: an entry is debt, and test_allow_list_holds_only_live_entries fails once one no longer occurs.
ALLOWED: set[tuple[str, str]] = set()  # (importer, imported) exceptions to the layer order: none


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def collect_modules(root: Path, package: str = "llmcore") -> dict[str, Path]:
    """{dotted module name: file} for every ``.py`` file of ``package`` under ``root``."""
    return {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``name`` (in ``path``) imports, at any nesting level, relative ones resolved.

    ``from pkg import x`` points at ``pkg.x`` when that is a module, else at ``pkg`` (x is a name in it).
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]  # the package relative imports start from
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                mod = ".".join(anchor + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
        else:
            continue
        for t in targets:
            # ``import llmcore.a.b`` names a module; keep the longest prefix that is one of ours
            parts = t.split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()
            if parts and ".".join(parts) != name:
                found.add(".".join(parts))
    return found


def import_graph(root: Path, package: str = "llmcore") -> dict[str, set[str]]:
    modules = collect_modules(root, package)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan; the package is small enough for recursion
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return [_cycle_in(comp, graph) for comp in components]


def _cycle_in(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A concrete cycle through the first module of a strongly connected component (breadth-first)."""
    members, start = set(component), component[0]
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [start] + path[::-1][1:] + [start] if len(path) > 1 else [start, start]
                if w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    return component  # unreachable for a real component


def layer_of(name: str) -> int:
    """Index into LAYERS; ``*/cli.py`` modules and ``llmcore.cli*`` are the command-line layer."""
    parts = name.split(".")
    if parts[-1] == "cli" or (len(parts) > 1 and parts[1] in ("cli", "__main__")):
        return CLI_LAYER
    key = parts[1] if len(parts) > 1 else "<root>"
    for i, layer in enumerate(LAYERS):
        if key in layer:
            return i
    raise KeyError(name)


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for a in sorted(graph):
        for b in sorted(graph[a]):
            if layer_of(b) > layer_of(a) and (a, b) not in ALLOWED:
                out.append(f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})")
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(SRC)


def test_every_module_has_a_layer(graph):
    unknown = []
    for name in graph:
        try:
            layer_of(name)
        except KeyError:
            unknown.append(name)
    assert not unknown, f"modules outside every layer (add their package to LAYERS): {unknown}"


def test_no_import_cycles(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_imports_go_down_the_layers(graph):
    bad = layer_violations(graph)
    assert not bad, "imports against the layer order (errors -> ... -> cli):\n" + "\n".join(bad)


def test_allow_list_holds_only_live_entries(graph):
    stale = sorted((a, b) for a, b in ALLOWED if b not in graph.get(a, set()))
    assert not stale, f"ALLOWED entries that no longer occur (remove them): {stale}"


def test_checker_sees_lazy_relative_imports_and_reports_the_cycle(tmp_path):
    """The checker itself: a lazy relative import inside a function closes a cycle, and it is reported."""
    pkg = tmp_path / "llmcore"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "convert.py").write_text("def f():\n    from .models.pretrained import g\n    return g\n")
    (pkg / "models" / "__init__.py").write_text("")
    (pkg / "models" / "pretrained.py").write_text(
        "from __future__ import annotations\n\ndef g():\n    if True:\n        from .. import convert\n")
    (pkg / "models" / "cli.py").write_text("import llmcore.convert\n")
    g = import_graph(tmp_path)
    assert g["llmcore.convert"] == {"llmcore.models.pretrained"}
    assert g["llmcore.models.pretrained"] == {"llmcore.convert"}
    assert g["llmcore.models.cli"] == {"llmcore.convert"}
    assert find_cycles(g) == [["llmcore.convert", "llmcore.models.pretrained", "llmcore.convert"]]
    # convert (layer 5) importing models (layer 6) is against the order; cli importing convert is not
    assert layer_violations(g) == ["llmcore.convert (layer 5) imports llmcore.models.pretrained (layer 6)"]
