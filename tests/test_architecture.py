"""The layout docs/architecture.md describes: no import cycle inside ri_jax."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ri_jax"


def package_modules() -> dict[str, Path]:
    """Dotted module name → its file, for every module of ri_jax."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _module_level(tree: ast.Module):
    """The nodes a module runs when imported: everything outside function bodies."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(node))


def import_graph(module_level_only: bool = False) -> dict[str, set[str]]:
    """Module → the ri_jax modules it imports (module level, and inside functions unless
    ``module_level_only``)."""
    modules = package_modules()
    graph = {}
    for name, path in modules.items():
        deps = set()
        tree = ast.parse(path.read_text())
        for node in (_module_level(tree) if module_level_only else ast.walk(tree)):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            deps |= {t for t in targets if t in modules and t != name and t != "ri_jax"}
        graph[name] = deps
    return graph


def test_no_module_imports_another_in_a_cycle():
    graph = import_graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
    assert "ri_jax.html_report" in graph["ri_jax.api"]  # the graph sees real imports


def imported_on_import(module: str) -> set[str]:
    """Every ri_jax module that importing ``module`` loads (module-level imports, closed)."""
    graph = import_graph(module_level_only=True)
    seen, todo = set(), [module]
    while todo:
        for dep in graph[todo.pop()] - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


def test_the_one_process_path_imports_nothing_multi_process():
    for module in ("ri_jax.interpreter", "ri_jax.api", "ri_jax.protocols.methods"):
        assert "ri_jax.distributed" not in imported_on_import(module), module
    # The check sees real imports: the streamed store is built on the multi-process helpers.
    assert "ri_jax.distributed" in imported_on_import("ri_jax.streaming")


def test_no_class_derives_from_the_interpreter():
    """Reference stores compose with ``RepresentativeInterpreter``; nothing overrides it."""
    derived = []
    for name, path in package_modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {getattr(b, "id", getattr(b, "attr", None)) for b in node.bases}
                if "RepresentativeInterpreter" in bases:
                    derived.append(f"{name}.{node.name}")
    assert not derived, derived
