"""What the node does for speed: TCP_NODELAY on both ends of every association and on the Orthanc
REST client's connections, several receiver processes on one port, and 50 concurrent
associations all stored; the node-wide and per-peer association limits hold across the receiver
processes."""

from __future__ import annotations

import contextlib
import copy
import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, Verification

from node.config import NodeConfig, RemotePeer
from node.dicom.orthanc import OrthancClient
from node.dicom.peers import SharedPeerCounts
from node.dicom.receiver import Receiver
from node.dicom.store_scu import associate
from node.state import Index
from tests.conftest import free_port


def _nodelay(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


@pytest.fixture
def ct(refdata: Path) -> pydicom.Dataset:
    return pydicom.dcmread(refdata / "pydicom" / "test_files" / "CT_small.dcm")


def test_accepted_and_outbound_sockets_have_nodelay(tmp_path: Path) -> None:
    config = NodeConfig(state_dir=tmp_path / "state", listener={"port": free_port()},
                        accept_unknown_peers=True)
    index = Index(config.index_path)
    receiver = Receiver(config, index)
    receiver.start()
    accepted: list[int] = []

    def on_echo(event: evt.Event) -> int:  # runs on the node's side of the association
        accepted.append(_nodelay(event.assoc.dul.socket.socket))
        return 0

    try:
        assert receiver._server is not None
        receiver._server.bind(evt.EVT_C_ECHO, on_echo)  # replaces the running server's handler
        peer = RemotePeer(name="node", ae_title=config.listener.ae_title, host="127.0.0.1",
                          port=config.listener.port)
        assoc = associate("NODELAYTEST", peer, [Verification], timeout=10)
        outbound = _nodelay(assoc.dul.socket.socket)
        assert assoc.send_c_echo().Status == 0
        assoc.release()
    finally:
        receiver.stop()
        index.close()
    assert outbound != 0
    assert accepted and accepted[0] != 0


def test_plain_pynetdicom_socket_lacks_nodelay_without_the_hook(tmp_path: Path) -> None:
    """The check above can fail: pynetdicom on its own leaves Nagle on."""
    config = NodeConfig(state_dir=tmp_path / "state", listener={"port": free_port()},
                        accept_unknown_peers=True)
    index = Index(config.index_path)
    receiver = Receiver(config, index)
    receiver.start()
    try:
        ae = AE(ae_title="PLAIN")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", config.listener.port, ae_title="RADIOMICS")
        assert assoc.is_established
        assert _nodelay(assoc.dul.socket.socket) == 0
        assoc.release()
    finally:
        receiver.stop()
        index.close()


def _store_one(port: int, dataset: pydicom.Dataset, statuses: list[int | None],
               barrier: threading.Barrier) -> None:
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(CTImageStorage)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    barrier.wait()
    assoc = ae.associate("127.0.0.1", port, ae_title="RADIOMICS")
    if not assoc.is_established:
        statuses.append(None)
        return
    answer = assoc.send_c_store(dataset)
    statuses.append(getattr(answer, "Status", None))
    assoc.release()


def test_fifty_concurrent_associations_over_two_receiver_processes(
        tmp_path: Path, ct: pydicom.Dataset) -> None:
    count = 50
    config = NodeConfig(state_dir=tmp_path / "state",
                        listener={"port": free_port(), "processes": 2},
                        # fifty senders behind one address connect at once: more waiting
                        # for their A-ASSOCIATE-RQ than the default cap per address lets wait
                        limits={"max_associations": count, "max_associations_per_peer": count,
                                "max_pending_per_address": count},
                        accept_unknown_peers=True)
    index = Index(config.index_path)
    receiver = Receiver(config, index)
    receiver.start()
    datasets = []
    for n in range(count):
        ds = copy.deepcopy(ct)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.10.{n}"
        datasets.append(ds)
    statuses: list[int | None] = []
    barrier = threading.Barrier(count)
    threads = [threading.Thread(target=_store_one,
                                args=(config.listener.port, ds, statuses, barrier))
               for ds in datasets]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        receiver.stop()
    assert statuses == [0] * count
    rows = [index.instances.get(ds.SOPInstanceUID) for ds in datasets]
    sources = {row.calling_ae for row in rows if row is not None}
    assert sources == {"SCANNER"} and all(row is not None for row in rows)
    series = index.instances.series(ct.SeriesInstanceUID)
    assert series is not None and series.n_instances == count
    index.close()


@contextlib.contextmanager
def _two_receiver_processes(tmp_path: Path, **limits: int) -> Iterator[NodeConfig]:
    """A receiver with two SO_REUSEPORT processes, unknown peers accepted, these ``limits``."""
    config = NodeConfig(state_dir=tmp_path / "state",
                        listener={"port": free_port(), "processes": 2},
                        limits=limits, accept_unknown_peers=True)
    index = Index(config.index_path)
    receiver = Receiver(config, index)
    receiver.start()
    try:
        yield config
    finally:
        receiver.stop()
        index.close()


def test_node_wide_limit_counts_every_receiver_process(tmp_path: Path, ct: pydicom.Dataset
                                                       ) -> None:
    """With two processes and max_associations 2, a third concurrent association is rejected
    (2/3/2) whichever process the kernel gave it to, and admitted again once one is released."""
    with _two_receiver_processes(tmp_path, max_associations=2,
                                 max_associations_per_peer=10) as config:
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(Verification)
        held = [ae.associate("127.0.0.1", config.listener.port, ae_title="RADIOMICS")
                for _ in range(2)]
        assert all(a.is_established for a in held)
        refused = [ae.associate("127.0.0.1", config.listener.port, ae_title="RADIOMICS")
                   for _ in range(4)]
        assert [a.is_rejected for a in refused] == [True] * 4
        held[0].release()
        again = ae.associate("127.0.0.1", config.listener.port, ae_title="RADIOMICS")
        for _ in range(50):  # the release reaches the other process's counter asynchronously
            if again.is_established:
                break
            again = ae.associate("127.0.0.1", config.listener.port, ae_title="RADIOMICS")
        assert again.is_established
        again.release()
        held[1].release()


def test_shared_peer_counts_limit_free_and_reuse_slots() -> None:
    counts = SharedPeerCounts(2)
    assert counts.admit("SCANNER", 2) and counts.admit("SCANNER", 2)
    assert not counts.admit("SCANNER", 2)
    assert counts.admit("SCANNER", 3)  # a peer's own, higher max_associations
    assert counts.held("SCANNER") == 3
    assert counts.admit("OTHER", 1) and not counts.admit("OTHER", 1)
    assert not counts.admit("THIRD", 5)  # both slots taken
    counts.release("OTHER")
    assert counts.held("OTHER") == 0 and counts.admit("THIRD", 5)  # the freed slot is reused
    for _ in range(3):
        counts.release("SCANNER")
    counts.release("SCANNER")  # one release too many changes nothing
    assert counts.held("SCANNER") == 0 and counts.admit("SCANNER", 1)


def test_per_peer_limit_counts_every_receiver_process(tmp_path: Path) -> None:
    """With two processes and max_associations_per_peer 2, a third association of the same peer is
    rejected (2/3/2) whichever process the kernel gave it to, another peer is not, and the peer
    is admitted again once one of its associations is released."""
    def associate(calling: str):
        ae = AE(ae_title=calling)
        ae.add_requested_context(Verification)
        return ae.associate("127.0.0.1", config.listener.port, ae_title="RADIOMICS")

    with _two_receiver_processes(tmp_path, max_associations=10,
                                 max_associations_per_peer=2) as config:
        held = [associate("SCANNER") for _ in range(2)]
        assert all(a.is_established for a in held)
        refused = [associate("SCANNER") for _ in range(6)]
        assert [a.is_rejected for a in refused] == [True] * 6
        primitive = refused[0].acceptor.primitive
        assert (primitive.result, primitive.result_source, primitive.diagnostic) == (2, 3, 2)
        other = associate("OTHER")
        assert other.is_established
        other.release()
        held[0].release()
        again = associate("SCANNER")
        for _ in range(50):  # the release reaches the shared table when the connection closes
            if again.is_established:
                break
            time.sleep(0.05)
            again = associate("SCANNER")
        assert again.is_established
        again.release()
        held[1].release()


def test_orthanc_rest_client_sockets_have_nodelay() -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"Version": "test"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with OrthancClient(f"http://127.0.0.1:{server.server_address[1]}") as client:
            assert client.system() == {"Version": "test"}
            with client._http.stream("GET", "/system") as response:  # socket still open
                sock = response.extensions["network_stream"].get_extra_info("socket")
                assert _nodelay(sock) != 0
    finally:
        server.shutdown()


def test_a_huge_declared_pdu_before_association_does_not_take_memory(tmp_path: Path) -> None:
    """An A-ASSOCIATE-RQ header declaring 4 GiB, a few bytes, then nothing: the node allocates
    only what arrives (pynetdicom reads a PDU 4 KiB at a time) and serves the next peer."""
    config = NodeConfig(state_dir=tmp_path / "state", listener={"port": free_port()},
                        accept_unknown_peers=True, limits={"acse_timeout": 2})
    index = Index(config.index_path)
    receiver = Receiver(config, index)
    receiver.start()
    tracemalloc.start()
    try:
        with socket.create_connection(("127.0.0.1", config.listener.port), timeout=10) as sock:
            sock.sendall(struct.pack(">BBI", 0x01, 0, 0xFFFF_FFF0) + b"\x00" * 64)
            time.sleep(0.5)
        _, peak = tracemalloc.get_traced_memory()
        assert peak < 128 * 2**20
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", config.listener.port, ae_title="RADIOMICS")
        assert assoc.is_established and assoc.send_c_echo().Status == 0
        assoc.release()
    finally:
        tracemalloc.stop()
        receiver.stop()
        index.close()
