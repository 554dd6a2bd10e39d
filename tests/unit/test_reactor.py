"""The receiver's event-driven association reactors (node.reactor): they run on every accepted
association, release and abort end them, the network idle timeout still fires, and every
association's wake-up pipe is closed when it ends."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from node.config import NodeConfig
from node.index import Index
from node.reactor import EventAssociation, EventDUL
from node.receiver import Receiver
from tests.conftest import free_port


@pytest.fixture
def receiver(tmp_path: Path):
    config = NodeConfig(state_dir=tmp_path / "state", listener={"port": free_port()},
                        accept_unknown_peers=True, limits={"network_timeout": 1.0})
    index = Index(config.index_path)
    node = Receiver(config, index)
    node.start()
    yield config, node
    node.stop()
    index.close()


def _scu(config: NodeConfig):
    ae = AE("REACTORTEST")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", config.listener.port, ae_title=config.listener.ae_title)
    assert assoc.is_established
    return assoc


def _active(node: Receiver) -> list:
    assert node._server is not None
    return node._server.active_associations


def _wait_until(condition, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_accepted_associations_run_the_event_driven_reactors(receiver, refdata: Path) -> None:
    config, node = receiver
    assoc = _scu(config)
    [ours] = _active(node)
    assert isinstance(ours, EventAssociation) and isinstance(ours.dul, EventDUL)
    ct = pydicom.dcmread(refdata / "pydicom" / "test_files" / "CT_small.dcm")
    for number in range(5):  # several messages back to back on one association
        ct.SOPInstanceUID = f"1.2.826.0.1.3680043.10.1.{number}"
        assert assoc.send_c_store(ct).Status == 0
    assert assoc.send_c_echo().Status == 0
    assoc.release()
    assert assoc.is_released
    assert _wait_until(lambda: not _active(node))


def test_peer_abort_ends_the_association(receiver) -> None:
    config, node = receiver
    assoc = _scu(config)
    assert _wait_until(lambda: len(_active(node)) == 1)
    assoc.abort()
    assert _wait_until(lambda: not _active(node))


def test_network_idle_timeout_still_ends_a_silent_association(receiver) -> None:
    config, node = receiver
    assoc = _scu(config)
    assert _wait_until(lambda: len(_active(node)) == 1)
    # the SCU sends nothing; the node's network_timeout (1 s) ends the association
    assert _wait_until(lambda: not _active(node), timeout=15)
    assert _wait_until(lambda: not assoc.is_established, timeout=5)


def test_wake_up_pipes_are_closed_when_associations_end(receiver) -> None:
    config, node = receiver
    _scu(config).release()
    assert _wait_until(lambda: not _active(node))
    before = _open_fds()
    for _ in range(10):
        _scu(config).release()
    assert _wait_until(lambda: not _active(node))
    assert _wait_until(lambda: _open_fds() <= before, timeout=5), \
        f"{_open_fds() - before} descriptors left open after 10 associations"
