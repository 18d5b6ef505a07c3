"""The package's shape: no import cycles between its modules, modules and functions a reader takes in whole, and
arrows that point down (models → weights → data → train). Read from the source, nothing imported."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "xception"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60
# Modules allowed over the limit for now, each with the most lines it may have meanwhile: it may shrink, not grow,
# and its entry goes once it is within the limit.
OVER_THE_LIMIT: dict[str, int] = {}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(name: str, *, type_checking: bool = True) -> set[str]:
    """The package's modules ``name`` imports anywhere in it (inside functions too; under ``if TYPE_CHECKING``
    unless told not to). ``from . import x`` imports module ``x``; ``from .m import f`` imports ``m``."""
    path = MODULES[name]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking_only(child) and not type_checking:
                for other in child.orelse:
                    visit(other)
            elif isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names if alias.name in MODULES)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join([*package[: len(package) - child.level + 1], *([child.module] if child.module
                                                                                     else [])])
                for alias in child.names:
                    target = f"{base}.{alias.name}"
                    found.add(target if target in MODULES else base)
            else:
                visit(child)

    visit(ast.parse(path.read_text()))
    return (found & MODULES.keys()) - {name}


def cycles(graph: dict[str, set[str]]) -> Iterator[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def connect(v: str) -> Iterator[list[str]]:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                yield from connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                yield sorted(component)

    for v in sorted(graph):
        if v not in index:
            yield from connect(v)


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert list(cycles(graph)) == [["a", "b", "c"]]


def test_no_module_imports_itself_back_through_others():
    graph = {name: imports(name) for name in MODULES}
    found = [
        " ↔ ".join(component) + ": " + "; ".join(f"{a} imports {', '.join(sorted(graph[a] & set(component)))}"
                                                 for a in component)
        for component in cycles(graph)
    ]
    assert not found, "import cycles (imports inside functions and for type checking count):\n" + "\n".join(found)


def test_modules_are_short_enough_to_read_whole():
    sizes = {str(path.relative_to(PACKAGE)): len(path.read_text().splitlines()) for path in MODULES.values()}
    over = {module: n for module, n in sizes.items() if n > OVER_THE_LIMIT.get(module, MAX_MODULE_LINES)}
    assert not over, f"modules over {MAX_MODULE_LINES} lines: {over}"
    stale = [module for module in OVER_THE_LIMIT if sizes.get(module, 0) <= MAX_MODULE_LINES]
    assert not stale, f"within the limit now: remove {stale} from OVER_THE_LIMIT"


def test_functions_are_short_enough_to_read_whole():
    long = [
        f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in MODULES.values()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


def test_the_arrows_point_down():
    # The variant records are plain data under both the models and the weights: they import neither.
    assert imports("xception.catalog") <= {"xception.errors", "xception.preprocessing"}
    # The model knows nothing of weights files, data or training (a type it is annotated with aside).
    below = ("xception.weights", "xception.data", "xception.train")
    for name in MODULES:
        if name == "xception.models" or name.startswith("xception.models."):
            reached = imports(name, type_checking=False)
            assert not [m for m in reached if m.startswith(below)], f"{name} imports {sorted(reached)}"
