"""Shared fixtures. Reference data written by others lives beside the repo: ../shared/refdata."""

import os
from pathlib import Path

import pytest

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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
