"""docs/architecture.md stays true to the code: it names every module of the three packages (a
package's ``__init__.py`` where it defines a class or function), and every module path it names
exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "architecture.md"
PACKAGES = ("node", "pipelines", "models", "demo")
NAMED = re.compile(r"`((?:node|pipelines|models|demo)/[A-Za-z0-9_/]+\.py)`")


DEFINES = re.compile(r"^(class|def) ", re.MULTILINE)


def _modules() -> set[str]:
    return {path.relative_to(REPO).as_posix()
            for package in PACKAGES for path in (REPO / package).rglob("*.py")
            if path.name != "__init__.py" or DEFINES.search(path.read_text(encoding="utf-8"))}


def test_every_module_is_named() -> None:
    named = set(NAMED.findall(DOC.read_text(encoding="utf-8")))
    assert sorted(_modules() - named) == []


def test_every_module_named_exists() -> None:
    named = set(NAMED.findall(DOC.read_text(encoding="utf-8")))
    assert sorted(named - _modules()) == []
