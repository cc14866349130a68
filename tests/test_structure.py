"""The shape of the tree: the import graph inside ``mmx_fast`` (read from the source with ``ast``, function-level
imports included) and what it must not contain."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "mmx_fast"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def import_graph() -> dict[str, set[str]]:
    """module -> the ``mmx_fast`` modules it imports anywhere in its file (top level or inside a function).
    ``from pkg import name`` counts as importing ``pkg.name`` when that is a module, else ``pkg``."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    root = ".".join(base + ([node.module] if node.module else []))
                else:
                    root = node.module or ""
                targets = [f"{root}.{a.name}" if f"{root}.{a.name}" in modules else root for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:  # import a.b.c -> the deepest module that exists
                    target = target.rpartition(".")[0]
                if target and target != name:
                    found.add(target)
        graph[name] = found
    return graph


def test_the_import_graph_sees_relative_and_function_level_imports():
    graph = import_graph()
    assert "mmx_fast.tiny" in graph["mmx_fast.loading"]  # `from .tiny import tiny_model` inside load()
    assert "mmx_fast.adapters.registry" in graph["mmx_fast.adapters"]  # `from .registry import (...)`
    assert "mmx_fast.tiny.families" in graph["mmx_fast.adapters.registry"]  # `from ..tiny.families import`


def test_nothing_in_the_package_imports_the_test_fixtures():
    """``mmx_fast.testing`` is for tests, examples and benchmarks; the loader's ``tiny:<family>`` route builds
    from the declarations (``mmx_fast.tiny``)."""
    importers = sorted(m for m, targets in import_graph().items() if "mmx_fast.testing" in targets)
    assert importers == []
