"""Known peers, per-peer SOP classes, association limits and timeouts, over loopback."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification

from node.config import ConfigError, NodeConfig, load_config
from node.dicom.receiver import Receiver
from node.state import Index
from tests.conftest import free_port

PEERS = [
    {"name": "scanner", "ae_title": "SCANNER", "host": "127.0.0.1"},
    {"name": "mr-only", "ae_title": "MRONLY", "host": "localhost",
     "sop_classes": ["MRImageStorage"]},
    {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104, "send": False,
     "receive_results": True},
    {"name": "far", "ae_title": "FAR", "host": "192.0.2.7"},  # TEST-NET-1: never loopback
    {"name": "pair", "ae_title": "PAIR", "host": "127.0.0.1", "max_associations": 2},
]


def _start(tmp_path: Path, **settings) -> tuple[NodeConfig, Index, Receiver]:
    config = NodeConfig(state_dir=tmp_path / "state", listener={"port": free_port()}, **settings)
    index = Index(config.index_path)
    receiver = Receiver(config, index)
    receiver.start()
    return config, index, receiver


@pytest.fixture
def node(tmp_path: Path):
    config, index, receiver = _start(tmp_path, peers=PEERS,
                                     limits={"max_associations": 5, "network_timeout": 30})
    yield config
    receiver.stop()
    index.close()


def _associate(config: NodeConfig, calling: str, *contexts: str):
    ae = AE(ae_title=calling)
    for uid in contexts or (Verification,):
        ae.add_requested_context(uid)
    return ae.associate("127.0.0.1", config.listener.port, ae_title=config.listener.ae_title)


def _rejection(assoc) -> tuple[int, int, int]:
    """(result, source, reason/diagnostic) of the A-ASSOCIATE-RJ the requestor received."""
    assert assoc.is_rejected
    primitive = assoc.acceptor.primitive
    return primitive.result, primitive.result_source, primitive.diagnostic


def test_unknown_calling_ae_title_is_rejected(node) -> None:
    assert _rejection(_associate(node, "STRANGER")) == (1, 1, 3)  # calling AE not recognized


def test_known_ae_title_from_another_host_is_rejected(node, caplog) -> None:
    assert _rejection(_associate(node, "FAR")) == (1, 1, 3)
    [record] = [r for r in caplog.records if r.getMessage() == "association rejected"]
    logged = record.fields  # node.logs.fields: AE title, address and reason, no patient data
    assert logged["calling_ae"] == "FAR" and "address not configured" in logged["reason"]
    assert set(logged) == {"calling_ae", "address", "reason", "result", "source", "diagnostic"}


def test_known_peer_by_address_and_by_host_name(node) -> None:
    for calling in ("SCANNER", "MRONLY"):  # 127.0.0.1 literally, and "localhost"
        assoc = _associate(node, calling)
        assert assoc.is_established and assoc.send_c_echo().Status == 0
        assoc.release()


def test_peer_gets_only_its_sop_classes(node, refdata: Path) -> None:
    ct = pydicom.dcmread(refdata / "pydicom" / "test_files" / "CT_small.dcm")
    assoc = _associate(node, "MRONLY", CTImageStorage, MRImageStorage)
    assert assoc.is_established
    assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == [MRImageStorage]
    assert [cx.abstract_syntax for cx in assoc.rejected_contexts] == [CTImageStorage]
    with pytest.raises(ValueError, match="No presentation context"):
        assoc.send_c_store(ct)
    assoc.release()


def test_peer_that_may_not_send_gets_verification_only(node) -> None:
    assoc = _associate(node, "PACS", Verification, CTImageStorage)
    assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == [Verification]
    assoc.release()


def test_per_peer_limit_then_free_again(node) -> None:
    held = [_associate(node, "PAIR") for _ in range(2)]
    assert all(a.is_established for a in held)
    assert _rejection(_associate(node, "PAIR")) == (2, 3, 2)  # transient, local limit exceeded
    other = _associate(node, "SCANNER")  # another peer is not affected
    assert other.is_established
    other.release()
    held.pop().release()
    deadline = time.monotonic() + 5
    while not (again := _associate(node, "PAIR")).is_established:
        assert time.monotonic() < deadline, "the released association was never freed"
        time.sleep(0.05)
    again.release()
    held[0].release()


def test_total_limit(tmp_path: Path) -> None:
    config, index, receiver = _start(tmp_path, peers=PEERS, limits={"max_associations": 1})
    try:
        first = _associate(config, "SCANNER")
        assert first.is_established
        assert _rejection(_associate(config, "PAIR")) == (2, 3, 2)
        first.release()
    finally:
        receiver.stop()
        index.close()


def test_unknown_peers_only_when_configured(tmp_path: Path) -> None:
    config, index, receiver = _start(tmp_path, accept_unknown_peers=True, peers=PEERS)
    try:
        stranger = _associate(config, "STRANGER", CTImageStorage)
        assert stranger.is_established and len(stranger.accepted_contexts) == 1
        stranger.release()
        assert _rejection(_associate(config, "FAR")) == (1, 1, 3)  # a known AE still must match
    finally:
        receiver.stop()
        index.close()


def test_timeouts_close_silent_connections(tmp_path: Path) -> None:
    config, index, receiver = _start(
        tmp_path, peers=PEERS,
        limits={"acse_timeout": 0.5, "network_timeout": 0.5, "dimse_timeout": 0.5})
    try:
        # ACSE: a TCP connection that never sends an A-ASSOCIATE-RQ is closed
        with socket.create_connection(("127.0.0.1", config.listener.port), timeout=10) as sock:
            started = time.monotonic()
            assert sock.recv(1) == b""
            assert time.monotonic() - started < 5
        # network: an established association that stays idle is aborted by the node
        assoc = _associate(config, "SCANNER")
        assert assoc.is_established
        deadline = time.monotonic() + 5
        while not assoc.is_aborted:
            assert time.monotonic() < deadline, "idle association was not aborted"
            time.sleep(0.05)
    finally:
        receiver.stop()
        index.close()


def test_peer_config_errors(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(
        "peers:\n"
        "  - {name: pacs, ae_title: PACS, host: 10.0.0.5, receive_results: true}\n"
        "  - {name: ct, ae_title: CT1, host: 10.0.0.6, sop_classes: [NoSuchStorage]}\n"
        "destinations:\n"
        "  - {name: other, ae_title: OTHER, host: 10.0.0.9, port: 104}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    problems = "\n".join(caught.value.problems)
    assert "peer 'pacs' receives results or is queried: it needs a port" in problems
    assert "'NoSuchStorage' is neither a UID nor a SOP class keyword" in problems
    path.write_text(
        "peers:\n  - {name: ct, ae_title: CT1, host: 10.0.0.6}\n"
        "destinations:\n  - {name: other, ae_title: OTHER, host: 10.0.0.9, port: 104}\n")
    with pytest.raises(ConfigError, match=re.escape(
            "destination OTHER@10.0.0.9:104 is not a peer with receive_results: true")):
        load_config(path)
