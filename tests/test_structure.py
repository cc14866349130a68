"""The shape of the tree (docs/design.md §2, §3), read from the source with ``ast``:

- the import graph inside ``mmx_fast`` (function-level imports included, ``if TYPE_CHECKING:`` excluded) has no
  cycle, and nothing in the package imports the test fixtures (``mmx_fast.testing``);
- no function is over 100 lines without a ``Long:`` reason in its docstring;
- every file docs/design.md names exists, and every ``design.md §N`` cited in the code exists.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "mmx_fast"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` (annotations only, never run)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph``: its strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the ``mmx_fast`` modules it imports anywhere in its file (top level or inside a function).
    ``from pkg import name`` counts as importing ``pkg.name`` when that is a module, else ``pkg``."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
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
    assert "mmx_fast.pipeline" not in graph["mmx_fast.ops.tam"]  # only under `if TYPE_CHECKING:`


def test_no_import_cycle_inside_the_package():
    """No module of ``mmx_fast`` reaches itself through imports, lazy ones included (a cycle is a cycle even
    when a function-level import makes it run)."""
    found = cycles(import_graph())
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_nothing_in_the_package_imports_the_test_fixtures():
    """``mmx_fast.testing`` is for tests, examples and benchmarks; the loader's ``tiny:<family>`` route builds
    from the declarations (``mmx_fast.tiny``)."""
    importers = sorted(m for m, targets in import_graph().items() if "mmx_fast.testing" in targets)
    assert importers == []


# Functions allowed over MAX_FUNCTION_LINES without a reason in their docstring: "path::qualified name"
# (none today: serve/app.py's 240-line create_app became routers, issue 24).
LONG_FUNCTIONS_ALLOWED: set[str] = set()
MAX_FUNCTION_LINES = 100
LONG_REASON = "Long:"  # a docstring line starting with this gives the one-line reason


def long_functions() -> list[tuple[str, int, bool]]:
    """(``path::qualified name``, lines, has a reason) of every function in ``mmx_fast`` over the limit."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        todo: list[tuple[ast.AST, str]] = [(tree, "")]
        while todo:
            node, prefix = todo.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    name = f"{prefix}{child.name}"
                    todo.append((child, name + "."))
                    if isinstance(child, ast.ClassDef):
                        continue
                    lines = child.end_lineno - child.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        doc = ast.get_docstring(child) or ""
                        reason = any(
                            line.strip().startswith(LONG_REASON) and len(line.strip()) > len(LONG_REASON) + 5
                            for line in doc.splitlines()
                        )
                        out.append((f"{path.relative_to(REPO).as_posix()}::{name}", lines, reason))
                else:
                    todo.append((child, prefix))
    return out


def test_no_long_function_without_a_reason():
    """No function in ``mmx_fast`` is over 100 lines unless its docstring says why on a line starting with
    ``Long:`` (or it is in ``LONG_FUNCTIONS_ALLOWED``)."""
    bad = [
        f"{name} ({lines} lines)"
        for name, lines, reason in long_functions()
        if not reason and name not in LONG_FUNCTIONS_ALLOWED
    ]
    assert bad == [], (
        f"over {MAX_FUNCTION_LINES} lines without a '{LONG_REASON}' line in the docstring: {bad}"
    )


DESIGN = REPO / "docs" / "design.md"
# where a name in design.md may live: the repository root, the package, and the folders its tables abbreviate
NAME_ROOTS = (REPO, PACKAGE)
_FILE_NAME = re.compile(r"[\w./-]*\w\.(?:py|cpp|md|toml|lock|html|css|js)\b")
_CITATION = re.compile(r"design\.md\s+((?:§\d+(?:\.\d+)*(?:\s*(?:,|and|-)\s*)?)+)")


def design_sections() -> set[str]:
    """The section numbers of docs/design.md (``## 2.`` -> "2", ``### 5.1`` -> "5.1")."""
    found = set()
    for line in DESIGN.read_text(encoding="utf-8").splitlines():
        m = re.match(r"#{2,4}\s+(\d+(?:\.\d+)*)\.?\s", line)
        if m:
            found.add(m.group(1))
    return found


def design_file_names() -> set[str]:
    """Every file name design.md cites: in backticks, and in its fenced layout tree."""
    text = DESIGN.read_text(encoding="utf-8")
    names = set()
    for span in re.findall(r"`([^`\n]+)`", text):
        names.update(_FILE_NAME.findall(span))
    for block in re.findall(r"```\n(.*?)```", text, flags=re.S):
        names.update(_FILE_NAME.findall(block))
    return {n for n in names if not n.startswith(("http", "."))}


def _exists(name: str) -> bool:
    """``name`` exists at the root, in the package, or in one of their folders (the tree lists names by
    folder: ``csrc/ ... (mmx_fast_ops.cpp)``, ``benches/ ... RESULTS.md``)."""
    folders = [p for root in NAME_ROOTS for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return any((base / name).exists() for base in (*NAME_ROOTS, *folders))


def test_every_file_design_md_names_exists():
    names = design_file_names()
    assert {"reference/msea.py", "ops/table.py", "tests/test_structure.py"} <= names  # the finder sees them
    missing = sorted(n for n in names if not _exists(n))
    assert missing == [], f"docs/design.md names files that do not exist: {missing}"


def cited_sections() -> list[tuple[str, str]]:
    """(file, "§N") for every ``design.md §N`` citation in the code, tests, kernels, benches and README."""
    out = []
    files = [REPO / "README.md", *REPO.glob("csrc/*.cpp")]
    for folder in ("mmx_fast", "kernels", "tests", "benches"):
        files += sorted((REPO / folder).rglob("*.py"))
    for path in files:
        if path.relative_to(REPO).as_posix().startswith("mmx_fast/kernels/"):  # the link to kernels/
            continue
        text = path.read_text(encoding="utf-8")
        for group in _CITATION.findall(text):
            for number in re.findall(r"§(\d+(?:\.\d+)*)", group):
                out.append((path.relative_to(REPO).as_posix(), number))
    return out


def test_every_cited_design_section_exists():
    sections = design_sections()
    assert {"1.1", "2", "5.1"} <= sections
    cited = cited_sections()
    assert ("mmx_fast/ops/__init__.py", "2") in cited  # the finder sees citations
    missing = sorted({f"{f}: §{n}" for f, n in cited if n not in sections})
    assert missing == [], f"citations of docs/design.md sections that do not exist: {missing}"
