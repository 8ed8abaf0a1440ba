"""The rules of the house, read from the source (ast, nothing imported or run).

- ``core`` imports nothing from ``registry``, ``plugins``, ``tasks``, ``compare``, ``train`` or
  ``interop``;
- nothing under ``plugins`` imports ``compare``, ``train``, ``cli`` or ``io``; ``registry``
  imports no part, ``tasks`` no consumer of tasks, ``train`` not ``compare``;
- no module imports a name starting with ``_`` from another plugformer module;
- no two plugformer modules import each other (directly or through a longer cycle);
- no file is longer than 400 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "plugformer"

FORBIDDEN = {
    "plugformer.core": ("registry", "plugins", "tasks", "compare", "train", "interop", "io", "cli"),
    "plugformer.plugins": ("compare", "train", "cli", "io"),
    "plugformer.registry": ("plugins", "tasks", "compare", "train", "interop", "io", "cli"),
    "plugformer.tasks": ("compare", "train", "interop", "cli"),
    "plugformer.train": ("compare", "interop", "cli"),
}
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve_relative(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:`` (type-only imports never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
            else:
                stack.append(child)


def imports_of(path: Path) -> list[tuple[str, str, int]]:
    """(imported module, imported name or '', line) for every plugformer import in ``path``."""
    module = module_name(path)
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, "", node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = resolve_relative(module, path.name == "__init__.py", node)
            found += [(source, alias.name, node.lineno) for alias in node.names]
    return [item for item in found if item[0].split(".")[0] == "plugformer"]


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _target(source: str, name: str) -> str:
    """The module an import refers to: ``from plugformer.a import b`` is module a.b when that exists."""
    candidate = f"{source}.{name}" if name else source
    return candidate if candidate in MODULES else source


def _rel(path: Path) -> str:
    return str(path.relative_to(PACKAGE.parent))


def test_the_package_is_found():
    assert "plugformer.core.attention" in MODULES and "plugformer.cli" in MODULES


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_only_what_they_may(layer):
    banned = tuple(f"plugformer.{name}" for name in FORBIDDEN[layer])
    offences = sorted({
        f"{_rel(path)}:{line} imports {_target(source, name)}"
        for module, path in MODULES.items()
        if module == layer or module.startswith(layer + ".")
        for source, name, line in imports_of(path)
        if any(_target(source, name) == b or _target(source, name).startswith(b + ".") for b in banned)
    })
    assert not offences, "\n".join(offences)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def reach_ins(path: Path) -> list[tuple[str, int]]:
    """``module._name`` for each private attribute read off another plugformer module that
    ``path`` imported as a module (``from plugformer.core import masks; masks._x``)."""
    aliases = {}
    for source, name, _ in imports_of(path):
        target = _target(source, name)
        if name and target != source:
            aliases[name.split(".")[-1]] = target
        elif not name:
            aliases[source] = source
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        (f"{aliases[ast.unparse(node.value)]}.{node.attr}", node.lineno)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and _private(node.attr)
        and ast.unparse(node.value) in aliases and aliases[ast.unparse(node.value)] != module_name(path)
    ]


def test_no_private_name_crosses_modules():
    offences = [
        f"{_rel(path)}:{line} imports {name} from {source}"
        for module, path in MODULES.items()
        for source, name, line in imports_of(path)
        if _private(name) and source != module
    ] + [f"{_rel(path)}:{line} reads {what}" for path in MODULES.values() for what, line in reach_ins(path)]
    assert not offences, "\n".join(offences)


def test_no_import_cycles():
    graph = {
        module: {
            _target(source, name)
            for source, name, _ in imports_of(path)
            if _target(source, name) in MODULES and _target(source, name) != module
        }
        for module, path in MODULES.items()
    }
    # A package's __init__ re-exporting its submodules is not a cycle of concepts.
    for module in graph:
        graph[module] = {t for t in graph[module] if not module.startswith(t + ".")}
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(trail[trail.index(nxt):] + [nxt]) if nxt in trail else nxt)
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_file_over_the_limit():
    long = [f"{_rel(p)}: {n} lines" for p in MODULES.values() if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, "\n".join(long)


def test_the_checker_sees_what_it_forbids(tmp_path):
    """The reader itself: relative imports resolve, private names and cycles are spotted."""
    pkg = tmp_path / "plugformer" / "core"
    pkg.mkdir(parents=True)
    (pkg / "a.py").write_text(
        "from ..plugins import dense\nfrom .b import _hidden\nif TYPE_CHECKING:\n    import plugformer.train\n"
        "dense._secret\n"
    )
    (tmp_path / "plugformer" / "plugins").mkdir()
    (tmp_path / "plugformer" / "plugins" / "dense.py").write_text("")
    global PACKAGE
    saved = PACKAGE
    PACKAGE = tmp_path / "plugformer"
    MODULES["plugformer.plugins.dense"] = PACKAGE / "plugins" / "dense.py"
    try:
        found = imports_of(pkg / "a.py")
        reads = reach_ins(pkg / "a.py")
    finally:
        del MODULES["plugformer.plugins.dense"]
        PACKAGE = saved
    assert ("plugformer.plugins", "dense", 1) in found
    assert ("plugformer.core.b", "_hidden", 2) in found
    assert len(found) == 2, "a type-only import is not a runtime import"
    assert reads == [("plugformer.plugins.dense._secret", 5)]
