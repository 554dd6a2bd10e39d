"""The DICOM Conformance Statement lists exactly the SOP classes the listener stores and the
transfer syntaxes it accepts (node.dicom.validation), so the document follows the code."""

from __future__ import annotations

import re

from node.dicom.validation import STORAGE_CLASSES, TRANSFER_SYNTAXES
from tests.conftest import REPO

TEXT = (REPO / "docs" / "conformance-statement.md").read_text()


def _table_after(heading: str) -> list[str]:
    """The UIDs in the first table after the line containing ``heading``."""
    rest = TEXT[TEXT.index(heading):]
    table = re.search(r"\n(\|.*\|\n)+", rest).group(0)
    return re.findall(r"\| ([0-9]+(?:\.[0-9]+)+) \|", table)


def test_storage_classes_are_those_of_the_listener() -> None:
    listed = _table_after("## 1 Overview")
    scp_storage = [uid for uid in listed if uid.startswith("1.2.840.10008.5.1.4.1.1.")]
    assert sorted(scp_storage) == sorted(STORAGE_CLASSES)


def test_transfer_syntaxes_are_those_accepted() -> None:
    assert _table_after("Presentation contexts accepted") == list(TRANSFER_SYNTAXES)
