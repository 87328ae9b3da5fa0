"""The web app's modules import each other without a circle.

A circle is how a newcomer gets lost: no module of it can be read, tested or moved alone (it was the
app factory holding the services dataclass that every view imported back). Every import counts,
module-level, inside a function, or under `if TYPE_CHECKING:`: an import moved into a function to
dodge an ImportError is still the same circle. Only explicit imports count: that `import webapp.x`
first runs `webapp/__init__.py` is Python's doing, and import-linter does not count it either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted name -> file, for every module of the package under root."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _base(name: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names (relative imports resolved against `name`)."""
    if not node.level:
        return node.module or ""
    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    anchor = here[: len(here) - node.level + 1]
    return ".".join([*anchor, node.module] if node.module else anchor)


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports, at any depth of its source."""
    modules = module_names(root, package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = _base(name, path, node)
                # `from pkg import mod` imports the submodule; `from mod import thing` the module.
                targets.update(
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                )
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every group of modules that reach each other (Tarjan's strongly connected components), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_webapp_has_no_import_cycle() -> None:
    graph = import_graph(ROOT, "webapp")
    assert len(graph) > 50, "webapp/ has too few modules: the check would pass vacuously"
    assert sum(len(t) for t in graph.values()) > 100, "too few imports found: the parser is broken"
    assert cycles(graph) == []


# Each row plants a package `pkg` and names the circles the checker must find in it.
PLANTED = [
    ("none", {"a": "from pkg import b\n", "b": "import os\n"}, []),
    ("two modules", {"a": "from pkg.b import x\n", "b": "from pkg.a import y\n"}, [["pkg.a", "pkg.b"]]),
    (
        "three modules, plain import",
        {"a": "import pkg.b\n", "b": "import pkg.c\n", "c": "import pkg.a\n"},
        [["pkg.a", "pkg.b", "pkg.c"]],
    ),
    (
        "hidden in a function",
        {"a": "from pkg import b\n", "b": "def f():\n    from pkg.a import y\n    return y\n"},
        [["pkg.a", "pkg.b"]],
    ),
    (
        "hidden under TYPE_CHECKING",
        {
            "app": "from pkg.views import bp\nclass Services: ...\n",
            "views": "import typing\nif typing.TYPE_CHECKING:\n    from pkg.app import Services\n",
        },
        [["pkg.app", "pkg.views"]],
    ),
    (
        "relative imports",
        {
            "a": "from . import b\n",
            "b": "from .a import y\n",
            "sub/__init__": "",
            "sub/c": "from .. import a\n",
        },
        [["pkg.a", "pkg.b"]],
    ),
    (
        "through a package's __init__",
        {"__init__": "from pkg.a import f\n", "a": "import pkg\n"},
        [["pkg", "pkg.a"]],
    ),
    (
        "two separate circles",
        {"a": "import pkg.b\n", "b": "import pkg.a\n", "c": "import pkg.d\n", "d": "import pkg.c\n"},
        [["pkg.a", "pkg.b"], ["pkg.c", "pkg.d"]],
    ),
    ("outside the package does not count", {"a": "import os.path\nfrom json import loads\n"}, []),
]


@pytest.mark.parametrize(("files", "expected"), [r[1:] for r in PLANTED], ids=[r[0] for r in PLANTED])
def test_the_checker_finds_planted_cycles(
    tmp_path: Path, files: dict[str, str], expected: list[list[str]]
) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    for name, source in files.items():
        path = tmp_path / "pkg" / f"{name}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    assert cycles(import_graph(tmp_path, "pkg")) == expected
