"""Every log line a node writes during an integration test is scanned for the identity of the
test patients (DESIGN.md: logs carry UIDs, never patient name, ID or birth date)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from demo.synthetic import PATIENT_BIRTH_DATE, PATIENT_ID, PATIENT_NAME
from tests.integration import peers

PHI = [PATIENT_NAME, PATIENT_NAME.replace("^", " "), PATIENT_ID, PATIENT_BIRTH_DATE]
"""The synthetic study's Patient Module values (PS3.3 C.7.1.1), as encoded and as displayed."""


@pytest.fixture(autouse=True)
def no_patient_identity_in_node_logs() -> Iterator[None]:
    """After each integration test: no line of any node log (JSON log or stderr) made during it
    holds the test patient's name, ID or birth date."""
    first = len(peers.NODE_LOGS)
    yield
    leaks = peers.phi_leaks(peers.NODE_LOGS[first:], PHI)
    assert not leaks, "patient identity in node logs:\n" + "\n".join(leaks[:20])
