"""The import graph of bitkit and widgets: no cycles, no private names borrowed across modules.

An edge A -> B means A imports B anywhere: at module level, inside a function (a lazy import
still ties the two together) or under ``if TYPE_CHECKING``. ``python tests/test_import_graph.py``
prints the graph's cycles, each edge with the lines that make it.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bitkit", "widgets")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}
PACKAGE_MODULES = {m for m, p in MODULES.items() if p.name == "__init__.py"}


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The modules of ours an import statement reaches (``from pkg import sub`` -> pkg.sub)."""
    if isinstance(node, ast.Import):
        out = []
        for alias in node.names:
            name = alias.name
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            out += [name] if name else []
        return out
    base = node.module or ""
    if node.level:  # relative import
        pkg = module if module in PACKAGE_MODULES else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            pkg = pkg.rpartition(".")[0]
        base = f"{pkg}.{base}" if base else pkg
    if base not in MODULES:
        return []
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def import_graph() -> dict[str, dict[str, list[str]]]:
    """module -> {imported module -> ["path:line", ...]}."""
    graph: dict[str, dict[str, list[str]]] = {m: {} for m in MODULES}
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(module, node):
                    if target != module:
                        where = f"{path.relative_to(ROOT)}:{node.lineno}"
                        graph[module].setdefault(target, []).append(where)
    return graph


def cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return sorted(out)


def describe(graph: dict[str, dict[str, list[str]]], comps: list[list[str]]) -> str:
    lines = []
    for comp in comps:
        lines.append("cycle among: " + ", ".join(comp))
        for a in comp:
            for b, where in sorted(graph[a].items()):
                if b in comp:
                    lines.append(f"  {a} -> {b}: {', '.join(sorted(set(where)))}")
    return "\n".join(lines) or "no import cycles"


def test_no_import_cycles():
    graph = import_graph()
    comps = cycles(graph)
    assert not comps, "\n" + describe(graph, comps) + (
        "\nMake the dependency one-way: move what both need into a module both can import, or "
        "the code that needs the other module up to a module above both.")


def _code_units() -> list[tuple[str, str]]:
    """(where, source) of library, widget and benchmark files and of the lessons' code cells.
    Tests are left out: a test may use the privates of the module it tests."""
    units = [(str(p.relative_to(ROOT)), p.read_text())
             for d in ("bitkit", "widgets", "bench") for p in sorted((ROOT / d).rglob("*.py"))]
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for i, cell in enumerate(json.loads(nb.read_text())["cells"]):
            if cell["cell_type"] == "code":
                src = "".join(cell["source"])
                src = "\n".join(line for line in src.splitlines()
                                if not line.lstrip().startswith(("%", "!")))
                units.append((f"{nb.relative_to(ROOT)} cell {i}", src))
    return units


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_uses() -> list[str]:
    """``from <ours> import _name`` and ``<our module>._name`` outside the module defining it."""
    found = []
    for where, src in _code_units():
        tree = ast.parse(src)
        modules: set[str] = set()  # local names bound to one of our modules
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0]
                                                     in PACKAGES):
                for a in node.names:
                    if _private(a.name):
                        found.append(f"{where}:{node.lineno}: from {node.module} import {a.name}")
                    elif f"{node.module}.{a.name}" in MODULES:
                        modules.add(a.asname or a.name)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] in PACKAGES:
                        modules.add(a.asname or a.name.split(".")[0])
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                base = node.value
                while isinstance(base, ast.Attribute) and not _private(base.attr):
                    base = base.value
                if isinstance(base, ast.Name) and base.id in modules:
                    found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_private_names_across_modules():
    uses = private_uses()
    assert not uses, ("private names used outside their module (give the helper a public, "
                      "documented name where a newcomer would look for it):\n" + "\n".join(uses))


if __name__ == "__main__":
    g = import_graph()
    print(describe(g, cycles(g)))
    print("\n".join(private_uses()) or "no private names used across modules")
    sys.exit(0)
