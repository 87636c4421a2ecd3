"""The import graph of star/: no import circles, and no module importing another module's private
(underscore) name. Imports inside functions count too: a circle hidden in a function body is still
one module needing the other to be finished first."""

from __future__ import annotations

import ast
from pathlib import Path

STAR = Path(__file__).resolve().parent.parent / "star"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(module: str | None, level: int, importer: str, is_package: bool) -> str:
    """The absolute module a (possibly relative) `from ... import` names."""
    if not level:
        return module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def import_graph(root: Path) -> tuple[dict[str, set[str]], list[str]]:
    """(module -> the package modules it imports, cross-module imports of private names) for the package at root."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    package = root.name
    graph: dict[str, set[str]] = {name: set() for name in files}
    private: list[str] = []
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [(alias.name, None) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = resolve(node.module, node.level, name, path.name == "__init__.py")
                targets = []
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    targets.append((submodule, None) if submodule in files else (source, alias.name))
            else:
                continue
            for target, imported in targets:
                if target.split(".")[0] != package or target == name:
                    continue
                graph[name].add(target if target in files else target.rsplit(".", 1)[0])
                if imported and imported.startswith("_") and not imported.startswith("__"):
                    private.append(f"{name} imports {target}.{imported}")
    return graph, private


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle found by a depth-first walk (each reported once, from its first module)."""
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


# Which parts of star/ each part may import (a part: a top-level module or package). The README's
# "Architecture" section states the same table; a new edge is a design decision: change both.
ALLOWED = {
    "cli": {"config", "preflight", "loop", "report", "tracking", "artifacts", "run_info", "models", "training"},
    "loop": {"stages", "artifacts", "faults", "tracking", "training"},
    "stages": {"model_cache", "metrics", "evaluation", "sharding", "training", "generation", "tasks", "models",
               "tracking", "artifacts", "faults"},
    "preflight": {"config", "memory", "models", "sharding", "tasks", "generation"},
    "config": {"tasks", "models", "generation", "slurm"},
    "memory": {"config", "models"},
    "sharding": {"slurm", "generation", "models", "artifacts"},
    "training": {"config", "models", "slurm", "artifacts", "faults", "progress"},
    "report": {"artifacts", "loop", "stats"},
    "model_cache": {"models", "artifacts"},
    "metrics": {"artifacts"},
    "evaluation": {"tasks"},
    "generation": {"faults", "slurm", "progress"},
    "tracking": {"artifacts"},
    "run_info": {"artifacts"},
}


def part(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def test_parts_import_only_what_the_architecture_allows():
    graph, _ = import_graph(STAR)
    extra = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                   if part(a) != part(b) and part(b) not in ALLOWED.get(part(a), set()))
    assert extra == []


def test_no_import_circles_in_star():
    graph, _ = import_graph(STAR)
    assert "star.loop" in graph and graph["star.loop"], "the walker found the package"
    assert cycles(graph) == []


def test_no_module_imports_another_modules_private_name():
    _, private = import_graph(STAR)
    assert private == []


def test_the_checker_finds_circles_and_private_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import helper\n")
    (pkg / "b.py").write_text("def helper():\n    from pkg import c\n")
    (pkg / "c.py").write_text("from .a import x\nfrom pkg.sub.d import _secret\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "d.py").write_text("_secret = 1\nfrom ..sub import e\n")
    (pkg / "sub" / "e.py").write_text("")
    graph, private = import_graph(pkg)
    assert graph["pkg.sub.d"] == {"pkg.sub.e"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
    assert private == ["pkg.c imports pkg.sub.d._secret"]
