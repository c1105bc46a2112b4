"""The import graph: no cycles, and every arrow points down the layers.

app/ is layered (see CONTRIBUTING.md): core at the bottom, then database, models, schemas and
auth, services, then the edges (api, middleware, cli) and main on top. A module may import its
own layer or a lower one, never a higher one, and no chain of imports comes back to where it
started. Imports under `if TYPE_CHECKING:` are left out (they never run); imports inside
functions count (they run, later). The benchmarks and the tests share `testkit/`, which
imports neither, and the product imports none of the three.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

BACKEND = Path(__file__).resolve().parents[2]

# Lower numbers are lower layers; a module imports only its own rank or lower ones.
LAYERS: dict[str, int] = {
    "app.core": 0,
    "app.database": 1,
    "app.content": 1,  # object storage, per-tenant keys, envelope encryption: infrastructure
    "app.ingest": 1,  # text extraction, chunking, embedding models: infrastructure (issue 19)
    "app.models": 2,
    "app.schemas": 3,
    "app.auth": 3,
    "app.services": 4,
    "app.api": 5,
    "app.middleware": 5,
    "app.cli": 6,
    "app.main": 6,
    "app.__main__": 7,
}
# Whole packages that must not import another: (importer prefix, forbidden prefix).
FORBIDDEN = [
    ("app", "tests"),
    ("app", "bench"),
    ("app", "testkit"),
    ("testkit", "tests"),
    ("testkit", "bench"),
    ("bench", "tests"),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(BACKEND).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(tree: ast.AST, package: str, known: set[str]) -> set[str]:
    """Modules `tree` imports at run time (TYPE_CHECKING blocks skipped), resolved to files."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph(
    roots: Iterable[str] = ("app", "bench", "testkit", "tests"),
) -> dict[str, set[str]]:
    """Module -> the first-party modules it imports."""
    files = {_module_name(path): path for root in roots for path in (BACKEND / root).rglob("*.py")}
    known = set(files)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imports = _imported(ast.parse(path.read_text()), package, known)
        graph[name] = {module for module in imports if module in known and module != name}
    return graph


def _layer(module: str) -> int | None:
    for prefix, rank in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            return rank
    return None


def upward_arrows(graph: Mapping[str, set[str]]) -> list[str]:
    """Imports of a higher layer, or across a forbidden package boundary."""
    found = []
    for importer, imports in sorted(graph.items()):
        for imported in sorted(imports):
            low, high = _layer(importer), _layer(imported)
            if low is not None and high is not None and high > low:
                found.append(f"{importer} -> {imported}")
            for source, target in FORBIDDEN:
                if _within(importer, source) and _within(imported, target):
                    found.append(f"{importer} -> {imported}")
    return found


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return groups


def test_the_product_has_no_import_cycle() -> None:
    graph = import_graph(("app",))
    assert len(graph) > 50  # the walk found the package
    assert cycles(graph) == []


def test_every_import_points_down_the_layers() -> None:
    graph = import_graph()
    assert all(_layer(module) is not None for module in graph if module.startswith("app."))
    assert upward_arrows(graph) == []


def test_benchmarks_and_tests_share_helpers_through_testkit_only() -> None:
    graph = import_graph()
    assert any(_within(target, "testkit") for target in graph["bench.http_cost"])
    assert not [
        f"{importer} -> {target}"
        for importer, targets in graph.items()
        if _within(importer, "bench")
        for target in targets
        if _within(target, "tests")
    ]


@pytest.mark.parametrize(
    ("graph", "cycle", "upward"),
    [
        ({"app.models.a": {"app.database.b"}, "app.database.b": set()}, [], []),
        (
            {"app.models.a": {"app.services.b"}, "app.services.b": {"app.models.a"}},
            [["app.models.a", "app.services.b"]],
            ["app.models.a -> app.services.b"],
        ),
        (
            {"app.auth.a": {"app.auth.b"}, "app.auth.b": {"app.auth.a"}},
            [["app.auth.a", "app.auth.b"]],
            [],
        ),
        (
            {"app.core.errors": {"app.api.deps"}, "app.api.deps": set()},
            [],
            ["app.core.errors -> app.api.deps"],
        ),
        (
            {"bench.x": {"tests.conftest"}, "tests.conftest": set()},
            [],
            ["bench.x -> tests.conftest"],
        ),
    ],
)
def test_the_checks_catch_what_they_name(
    graph: dict[str, set[str]], cycle: list[list[str]], upward: list[str]
) -> None:
    """The walker itself: a cycle and an upward arrow are reported (so the tests above can fail)."""
    assert cycles(graph) == cycle
    assert upward_arrows(graph) == upward


def test_type_checking_imports_are_left_out_and_lazy_ones_count() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from app.services import x\n"
        "def f():\n    from app.api import y\n"
    )
    known = {"app.services.x", "app.api.y"}
    assert _imported(ast.parse(source), "app.models", known) == {"typing", "app.api.y"}
