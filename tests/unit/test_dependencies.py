"""The rule of docs/dependencies.md: the node's code uses no private pynetdicom name (an
underscore name that pynetdicom defines: a module, function, class or attribute) and swaps no
object's class, outside the one adapter module, ``node/dicom/pynetdicom_adapter.py``; the documented
``_config`` switches are allowed. Before issue 19 the receiver used 26 such names. Likewise no
private name of pydicom, pyradiomics or highdicom outside their adapter modules
(``pipelines/io/pydicom_adapter.py``, ``pipelines/science/radiomics_adapter.py``; highdicom has
none)."""

from __future__ import annotations

import ast
from pathlib import Path
from types import ModuleType

import highdicom
import pydicom
import pynetdicom
import pytest
import radiomics

from tests.conftest import REPO

ADAPTER = REPO / "node" / "dicom" / "pynetdicom_adapter.py"
ALLOWED = {"_config"}
"""pynetdicom's documented configuration module (its switches, e.g. STORE_SEND_CHUNKED_DATASET)."""


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_names(package: ModuleType = pynetdicom) -> set[str]:
    """Underscore names ``package`` defines: its private modules, and the functions, classes and
    attributes (``self._x = ...``, class and module level) of all its modules."""
    root = Path(package.__file__ or "").parent
    names = {path.stem for path in root.rglob("*.py") if _private(path.stem)}
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and _private(node.name):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) \
                    and _private(node.attr):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) \
                    and _private(node.id):
                names.add(node.id)
    return names - ALLOWED if package is pynetdicom else names


def _pynetdicom_private_names() -> set[str]:
    return _private_names(pynetdicom)


def _uses(path: Path, private: set[str], library: str = "pynetdicom") -> list[str]:
    """The private names of ``library`` (``private``) that ``path`` uses (``line: name``),
    leaving out the module's own attributes and definitions of the same name (a
    ``self._lock`` of its own)."""
    tree = ast.parse(path.read_text())
    own = {node.attr for node in ast.walk(tree)
           if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)}
    own |= {node.name for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.ClassDef)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == library:
            parts = (node.module or "").split(".")[1:] + [alias.name for alias in node.names]
            found += [f"{node.lineno}: {part}" for part in parts
                      if _private(part) and part not in ALLOWED]
        elif isinstance(node, ast.Import):
            found += [f"{node.lineno}: {part}" for alias in node.names
                      if alias.name.split(".")[0] == library
                      for part in alias.name.split(".")[1:] if _private(part)]
        elif isinstance(node, ast.Attribute) and node.attr in private and node.attr not in own:
            found.append(f"{node.lineno}: {node.attr}")
        elif isinstance(node, ast.Attribute) and node.attr == "__class__" \
                and isinstance(node.ctx, ast.Store):
            found.append(f"{node.lineno}: __class__ assigned")
    return sorted(found, key=lambda line: int(line.split(":")[0]))


def test_no_private_pynetdicom_name_outside_the_adapter() -> None:
    private = _pynetdicom_private_names()
    assert {"_accepted_cx", "_reactor_checkpoint", "_validators"} <= private  # it can find them
    found = {str(path.relative_to(REPO)): uses
             for path in sorted((REPO / "node").rglob("*.py")) if path != ADAPTER
             if (uses := _uses(path, private))}
    assert found == {}


def test_the_check_finds_what_the_old_receiver_used(tmp_path: Path) -> None:
    """The check can fail: lines of the deleted node.reactor and node.dimse are found."""
    sample = tmp_path / "sample.py"
    sample.write_text("from pynetdicom._validators import validate_ui\n"
                      "def f(assoc, dul):\n"
                      "    assoc._reactor_checkpoint.set()\n"
                      "    dul.__class__ = object\n")
    assert _uses(sample, _pynetdicom_private_names()) == [
        "1: _validators", "3: _reactor_checkpoint", "4: __class__ assigned"]


def test_every_adapter_module_is_listed_with_its_guard() -> None:
    page = (REPO / "docs" / "dependencies.md").read_text()
    for listed in ("node/dicom/pynetdicom_adapter.py", "tests/unit/test_pynetdicom_adapter.py",
                   "pipelines/science/radiomics_adapter.py", "pipelines/io/pydicom_adapter.py",
                   "pipelines/outputs/sr_encoding.py"):
        assert listed in page, listed


ADAPTERS = {"pydicom": REPO / "pipelines" / "io" / "pydicom_adapter.py",
            "radiomics": REPO / "pipelines" / "science" / "radiomics_adapter.py"}


@pytest.mark.parametrize(("library", "package"), [
    ("pydicom", pydicom), ("radiomics", radiomics), ("highdicom", highdicom)])
def test_no_private_pipeline_library_name_outside_its_adapter(library: str,
                                                               package: ModuleType) -> None:
    private = _private_names(package)
    code = [*(REPO / "node").rglob("*.py"), *(REPO / "pipelines").rglob("*.py")]
    found = {str(path.relative_to(REPO)): uses for path in sorted(code)
             if path != ADAPTERS.get(library)
             if (uses := _uses(path, private, library))}
    assert found == {}


def test_the_check_finds_pipeline_library_names(tmp_path: Path) -> None:
    """The check can fail: what the removed pipelines/iod_lookup.py and
    pipelines/science/features.py used before issue 21."""
    sample = tmp_path / "sample.py"
    sample.write_text("import highdicom._standard_utils\n"
                      "from radiomics.featureextractor import RadiomicsFeatureExtractor\n"
                      "settings = RadiomicsFeatureExtractor._getDefaultSettings()\n")
    assert _uses(sample, _private_names(highdicom), "highdicom") == ["1: _standard_utils"]
    assert _uses(sample, _private_names(radiomics), "radiomics") == ["3: _getDefaultSettings"]
