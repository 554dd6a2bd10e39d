"""Shared fixtures. Reference data written by others lives beside the repo: ../shared/refdata."""

import os
from pathlib import Path

import pytest

from tests.fake_clock import FakeClock

REPO = Path(__file__).resolve().parents[1]
REFDATA = REPO.parent / "shared" / "refdata"


@pytest.fixture(scope="session")
def refdata() -> Path:
    """Path of ``../shared/refdata``. Without it, tests that need it are skipped on a developer's
    machine and fail in CI (``CI`` set), where it must be present."""
    if not REFDATA.is_dir():
        message = f"reference data not found at {REFDATA}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return REFDATA



@pytest.fixture
def clock() -> FakeClock:
    """A clock for the node's parts under test (``node.clock``): the test moves it on where the
    node would wait out a back-off or a retry interval."""
    return FakeClock()


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now and that this process has not
    handed out before.

    The kernel may give a port again as soon as the socket that found it is closed, before the
    server it was for has bound it: Orthanc given the same port for DICOM and HTTP exits with
    "The TCP port of the HTTP server is privileged or already in use"."""
    import socket

    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
