"""The packages keep to the layers docs/architecture.md draws: ``models`` imports none of the
others, ``pipelines`` no ``node``, nothing of the product imports ``demo`` at module level (only
the two commands that run it, when they run), and ``pipelines`` starts no pool, process, thread
or socket and opens no database."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PURE = {"multiprocessing", "concurrent", "threading", "socket", "sqlite3", "subprocess",
        "dask", "distributed"}
"""Modules whose import in ``pipelines`` would mean execution or state, the node's business."""


def _imports(path: Path) -> list[tuple[str, bool]]:
    """Every module ``path`` imports, with whether the import is at module level."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.module, id(node) in top))
    return found


def _offences(package: str, forbidden: set[str], *, anywhere: bool = True) -> dict[str, list[str]]:
    offences: dict[str, list[str]] = {}
    for path in sorted((REPO / package).rglob("*.py")):
        for module, at_top in _imports(path):
            if module.split(".")[0] in forbidden and (anywhere or at_top):
                offences.setdefault(path.relative_to(REPO).as_posix(), []).append(module)
    return offences


@pytest.mark.parametrize(("package", "forbidden"), [
    ("models", {"node", "pipelines", "demo"}),
    ("pipelines", {"node", "demo"} | PURE),
])
def test_a_lower_layer_imports_no_higher_one(package: str, forbidden: set[str]) -> None:
    assert _offences(package, forbidden) == {}


def test_the_product_imports_demo_only_where_a_command_runs_it() -> None:
    assert _offences("node", {"demo"}, anywhere=False) == {}
    lazily = {path for path, _ in _offences("node", {"demo"}).items()}
    assert lazily == {"node/cli.py", "node/ops/model_commands.py"}


def test_the_check_can_fail(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import sqlite3\nfrom node.flow.jobs import JobRunner\n\n"
                      "def run():\n    from demo.run import run_demo\n")
    assert [module for module, _ in _imports(sample)] == ["sqlite3", "node.flow.jobs", "demo.run"]
    assert [at_top for _, at_top in _imports(sample)] == [True, True, False]
