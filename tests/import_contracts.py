"""import-linter contract types of the project's own (pyproject.toml, [tool.importlinter]).

``private_names``: a name that starts with one underscore is private to the package that
defines it.  A module may import ``_name`` only from a module of its own package (the first
level below the root: ``facestream.llm`` modules from ``facestream.llm.*``); from anywhere
else it is a broken contract.  Private *modules* are import-linter's own ``private_modules``
type; names are not in its import graph, so this reads each module's source.
"""

from __future__ import annotations

import ast
import importlib.util

import grimp
from importlinter.application import output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _package(module: str, depth: int) -> str:
    return ".".join(module.split(".")[:depth])


def _absolute(importer: str, node: ast.ImportFrom, is_package: bool) -> str | None:
    if node.level == 0:
        return node.module
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def private_imports(graph: grimp.ImportGraph, root: str, depth: int) -> list[dict[str, object]]:
    """Every ``from M import _x`` in ``root``'s modules where M lies outside the importer's
    package at ``depth`` (2: ``root.<package>``)."""
    found = []
    for module in sorted(graph.modules):
        if not (module == root or module.startswith(root + ".")):
            continue
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            continue
        with open(spec.origin, encoding="utf-8") as source:
            tree = ast.parse(source.read(), spec.origin)
        is_package = spec.origin.endswith("__init__.py")
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            target = _absolute(module, node, is_package)
            if not target or not target.startswith(root):
                continue
            names = [a.name for a in node.names if _private(a.name)]
            if names and _package(target, depth) != _package(module, depth):
                found.append({"importer": module, "imported": target, "names": names,
                              "line": node.lineno})
    return found


class PrivateNamesContract(Contract):
    type_name = "private_names"

    root = fields.StringField()
    depth = fields.IntegerField(minimum=1, default=2)

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        illegal = private_imports(graph, self.root, self.depth)   # type: ignore[arg-type]
        return ContractCheck(kept=not illegal, warnings=[], metadata={"illegal": illegal})

    def render_broken_contract(self, check: ContractCheck) -> None:
        output.print_error("Private names imported from another package:", bold=False)
        output.new_line()
        for item in check.metadata["illegal"]:
            output.print_error(f"- {item['importer']} (l.{item['line']}) takes "
                               f"{', '.join(item['names'])} from {item['imported']}",
                               bold=False)
            output.new_line()
