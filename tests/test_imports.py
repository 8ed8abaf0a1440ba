"""Read the package's imports (ast, nothing runs): no module takes a ``_private`` name from
another plugformer module, and the spec data model does not import its parser."""

from __future__ import annotations

import ast
from pathlib import Path

import plugformer

ROOT = Path(plugformer.__file__).parent


def modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__")
        found[name] = ast.parse(path.read_text(), str(path))
    return found


def private_imports(name: str, tree: ast.Module, known: set[str]) -> list[str]:
    """``module.name`` for each private name ``name``'s module takes from another module:
    ``from m import _x`` and ``m._x`` where ``m`` was imported as a module."""
    found, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("plugformer"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full in known:
                    aliases[alias.asname or alias.name] = full
                elif alias.name.startswith("_") and not alias.name.startswith("__") and node.module != name:
                    found.append(full)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known and alias.asname:
                    aliases[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append(f"{aliases[node.value.id]}.{node.attr}")
    return found


def imported(tree: ast.Module) -> set[str]:
    return {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}


def test_no_module_imports_a_private_name_of_another():
    trees = modules()
    offences = {name: private_imports(name, tree, set(trees)) for name, tree in trees.items()}
    assert {name: found for name, found in offences.items() if found} == {}


def test_the_detector_sees_both_forms_of_reach_in():
    tree = ast.parse("from plugformer.registry.builder import _bind\nfrom plugformer.core import masks\nmasks._as_blocked")
    known = {"plugformer.registry.builder", "plugformer.core.masks"}
    assert private_imports("plugformer.io", tree, known) == [
        "plugformer.registry.builder._bind", "plugformer.core.masks._as_blocked"
    ]


def test_spec_model_and_parser_do_not_import_each_other():
    trees = modules()
    assert "plugformer.registry.spec" not in imported(trees["plugformer.registry.spec_parser"])
    assert "plugformer.registry.spec_parser" not in imported(trees["plugformer.registry.spec_model"])
    assert "plugformer.registry.spec" not in imported(trees["plugformer.registry.spec_model"])
