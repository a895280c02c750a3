"""No import cycle among captum_mm's modules: the graph of their module-level imports is acyclic. Imports under
``if TYPE_CHECKING:`` count (a cycle only type checkers run still tangles the modules); imports inside functions
are not module-level."""

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

import captum_mm

PACKAGE = Path(captum_mm.__file__).parent


def module_names() -> Dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("captum_mm",) + path.relative_to(PACKAGE).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _module_level_imports(tree: ast.Module) -> List[ast.stmt]:
    """Import statements at top level or in a top-level ``try``/``if`` (``if TYPE_CHECKING:`` included)."""
    found, pending = [], list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If):
            pending += node.body + node.orelse
        elif isinstance(node, ast.Try):
            pending += node.body + node.orelse + node.finalbody + [stmt for handler in node.handlers for stmt in handler.body]
    return found


def imports_of(name: str, path: Path, modules: Set[str]) -> Set[str]:
    """The captum_mm modules that ``name`` imports at module level (``from P import m`` counts as ``P.m`` when that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges = set()
    for node in _module_level_imports(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        edges.update(target for target in targets if target in modules and target != name)
    return edges


def cycles(graph: Dict[str, Set[str]]) -> Set[Tuple[str, ...]]:
    """Each strongly connected component of more than one module (Tarjan), as its sorted module names."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    found: Set[Tuple[str, ...]] = set()

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.add(tuple(sorted(component)))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_module_level_import_graph_has_no_new_cycle():
    modules = module_names()
    graph = {name: imports_of(name, path, set(modules)) for name, path in modules.items()}
    assert graph["captum_mm.study.job"] >= {"captum_mm.study.steps", "captum_mm.zoo.recipes"}  # the scan sees imports
    assert cycles(graph) == set()


def test_a_cycle_is_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == {("a", "b", "c")}
