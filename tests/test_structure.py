"""The library's shape, checked from its source: short functions, no import cycles (counting the
imports inside functions), the sharded path below the runner, no private JAX modules, and no book
tooling inside the numerical package."""

from __future__ import annotations

import ast
from pathlib import Path

LIB = Path(__file__).resolve().parents[1] / "lib"
MAX_LINES = 100


def _modules(package: str) -> dict[str, Path]:
    """``{dotted module name: path}`` for every module of ``package`` under ``lib/``."""
    root = LIB / package
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(LIB).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _long_functions(package: str) -> list[str]:
    long = []
    for name, path in _modules(package).items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_LINES:
                    long.append(f"{name}.{node.name}: {n} lines")
    return long


def test_no_function_in_localsgd_is_longer_than_100_lines():
    assert _long_functions("localsgd") == []


def test_no_function_in_localsgd_book_is_longer_than_100_lines():
    assert _long_functions("localsgd_book") == []


def _is_type_checking(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``): a block that never runs."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _executed(tree: ast.Module, top_level_only: bool) -> list[ast.AST]:
    """The nodes of ``tree`` that can run: every node but those under ``if TYPE_CHECKING:``
    (which only type checkers read); with ``top_level_only``, only the module's own statements
    (not the bodies of functions, classes or blocks)."""
    if top_level_only:
        return [n for n in tree.body if not _is_type_checking(n)]
    nodes, todo = [], [tree]
    while todo:
        node = todo.pop()
        nodes.append(node)
        if _is_type_checking(node):
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))
    return nodes


def _imports(path: Path, name: str, top_level_only: bool) -> set[str]:
    """Modules of ``lib/`` that ``path`` (module ``name``) imports; with ``top_level_only``, only
    the imports executed when the module is imported, else also those inside functions (an import
    under ``if TYPE_CHECKING:`` never runs and is not counted)."""
    tree = ast.parse(path.read_text())
    nodes = _executed(tree, top_level_only)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")
                up = up[: len(up) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def _graph(top_level_only: bool) -> dict[str, set[str]]:
    mods = {**_modules("localsgd"), **_modules("localsgd_book")}
    return {name: {m for m in _imports(path, name, top_level_only) if m in mods and m != name}
            for name, path in mods.items()}


def _cycle(graph):
    """One import cycle as a list of modules, or None."""
    state = {}

    def visit(n, stack):
        state[n] = "open"
        for m in sorted(graph[n]):
            if state.get(m) == "open":
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m, stack + [m])
                if found:
                    return found
        state[n] = "done"
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n, [n])
            if found:
                return found
    return None


def test_no_import_cycle_among_lib_modules():
    """Imports form no cycle, counting those inside functions: a module that imports another
    only when a function runs still depends on it."""
    assert _cycle(_graph(top_level_only=False)) is None


def test_the_cycle_search_counts_imports_inside_functions_and_skips_type_checking(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.b\n"
                    "def f():\n    from pkg import c\n")
    assert _imports(path, "pkg.a", top_level_only=False) == {"typing", "typing.TYPE_CHECKING",
                                                             "pkg", "pkg.c"}
    assert _imports(path, "pkg.a", top_level_only=True) == {"typing", "typing.TYPE_CHECKING"}


def _reachable(graph, start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for m in graph[todo.pop()] - seen:
            seen.add(m)
            todo.append(m)
    return seen


def test_the_sharded_path_imports_nothing_above_the_engine():
    """``localsgd.distributed`` runs the engine's program: it may import the engine and what the
    engine itself imports (config, data, ...), counting imports inside functions, but nothing
    that uses it (the runner, the store, the command line)."""
    graph = _graph(top_level_only=False)
    below = {"localsgd", "localsgd.engine"} | _reachable(graph, "localsgd.engine")
    assert graph["localsgd.distributed"] - below == set()
    assert "localsgd.distributed" in _reachable(graph, "localsgd.experiments")


def test_the_cycle_detector_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_private_jax_import():
    bad = [name for name, path in {**_modules("localsgd"), **_modules("localsgd_book")}.items()
           if any(m.startswith("jax._src") for m in _imports(path, name, top_level_only=False))]
    assert bad == []


def test_localsgd_imports_no_book_tooling():
    tooling = ("papermill", "sphinx", "nbformat", "myst_nb", "jupyter_book", "localsgd_book")
    bad = {name: sorted(m for m in _imports(path, name, top_level_only=False)
                        if m.split(".")[0] in tooling)
           for name, path in _modules("localsgd").items()}
    assert {k: v for k, v in bad.items() if v} == {}
