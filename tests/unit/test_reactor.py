"""The receiver's event-driven association reactors (node.reactor): they run on every accepted
association, release and abort end them, the network idle timeout still fires, and every
association's wake-up pipe is closed when it ends. P-DATA-TF PDUs read as views decode as
pynetdicom decodes them, fail where it fails, and a broken one aborts only its association. A
C-STORE request is served by the DUL thread that read it, unless the association thread is busy;
handler errors and aborts there end as they do in pynetdicom."""

from __future__ import annotations

import os
import struct
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import CTImageStorage, Verification

from node.config import NodeConfig
from node.index import Index
from node.ingest import Outcome
from node.reactor import TIMER_GRANULARITY, EventAssociation, EventDUL, PDataTF
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


def _pdu_body(values: list[tuple[int, bytes]]) -> bytes:
    primitive = P_DATA()
    primitive.presentation_data_value_list.extend(values)
    return P_DATA_TF(primitive).encode()[6:]


@pytest.mark.parametrize("values", [
    [(1, b"\x03" + b"c" * 80)],
    [(1, b"\x02" + bytes(range(256)) * 500)],
    [(3, b"\x01abc"), (3, b"\x03de"), (5, b"\x00" + b"x" * 1001), (5, b"\x02")],
    [],
])
def test_p_data_views_are_what_pynetdicom_decodes(values: list[tuple[int, bytes]]) -> None:
    body = _pdu_body(values)
    theirs = P_DATA_TF()
    theirs.decode(bytes([0x04, 0]) + struct.pack(">I", len(body)) + body)
    ours = PDataTF(bytearray(body)).to_primitive()
    expected = theirs.to_primitive().presentation_data_value_list
    got = ours.presentation_data_value_list
    assert [(c, bytes(v)) for c, v in got] == expected == values
    assert all(isinstance(v, memoryview) for _, v in got)


@pytest.mark.parametrize("body", [
    b"\x00\x00\x00\x05\x01\x02ab",  # item length 5, 4 bytes follow
    b"\x00\x00\x00\x00\x01",  # item length 0 cannot hold the context ID
    _pdu_body([(1, b"\x03abc")]) + b"\x00\x00",  # a second item cut short in its length
    _pdu_body([(1, b"\x03abc")]) + b"\x00\x00\x00\x03",  # ... before its context ID
])
def test_broken_p_data_fails_where_pynetdicom_fails(body: bytes) -> None:
    with pytest.raises(Exception):  # noqa: B017 - pynetdicom's decoder raises several types
        P_DATA_TF().decode(bytes([0x04, 0]) + struct.pack(">I", len(body)) + body)
    with pytest.raises((ValueError, struct.error)):
        PDataTF(bytearray(body))


def test_a_broken_p_data_pdu_aborts_its_association_only(receiver) -> None:
    config, node = receiver
    assoc = _scu(config)
    aborted: list[bool] = []
    assoc.bind(evt.EVT_ABORTED, lambda event: aborted.append(True))
    body = b"\x00\x00\x00\x40\x01\x03ab"  # an item that says 64 bytes, holds 3
    assoc.dul.socket.send(bytes([0x04, 0]) + struct.pack(">I", len(body)) + body)
    assert _wait_until(lambda: not _active(node))
    assert _wait_until(lambda: bool(aborted) and assoc.is_aborted)
    again = _scu(config)
    assert again.send_c_echo().Status == 0
    again.release()


def test_p_data_goes_through_pynetdicom_while_a_handler_watches_pdus(receiver,
                                                                     refdata: Path) -> None:
    config, node = receiver
    seen: list[int] = []  # PDU types handed to EVT_DATA_RECV, raised by pynetdicom's decoding
    assert node._server is not None
    node._server.bind(evt.EVT_DATA_RECV, lambda event: seen.append(event.data[0]))
    assoc = _scu(config)
    ct = pydicom.dcmread(refdata / "pydicom" / "test_files" / "CT_small.dcm")
    assert assoc.send_c_store(ct).Status == 0
    assoc.release()
    assert seen.count(0x04) >= 2  # the command and the data set at least
    assert (config.spool_dir / ct.StudyInstanceUID / ct.SeriesInstanceUID /
            f"{ct.SOPInstanceUID}.dcm").stat().st_size > len(ct.PixelData)


def _ct(refdata: Path, number: int) -> pydicom.Dataset:
    ct = pydicom.dcmread(refdata / "pydicom" / "test_files" / "CT_small.dcm")
    ct.SOPInstanceUID = f"1.2.826.0.1.3680043.10.2.{number}"
    return ct


def _parked(assoc) -> bool:
    """Whether the association thread waits at its reactor checkpoint: paused, and still
    paused three timer periods later (running, it is paused only between two statements)."""
    if not assoc._is_paused:
        return False
    time.sleep(3 * TIMER_GRANULARITY)
    return assoc._is_paused


def _record_threads(node: Receiver, monkeypatch) -> list[threading.Thread]:
    """The threads that run the node's store handler, one per instance."""
    threads: list[threading.Thread] = []
    accept = node._ingest.accept

    def recording(*args, **kwargs):
        threads.append(threading.current_thread())
        return accept(*args, **kwargs)

    monkeypatch.setattr(node._ingest, "accept", recording)
    return threads


def test_c_store_is_served_by_the_dul_thread_c_echo_by_the_association_thread(
        receiver, refdata: Path, monkeypatch) -> None:
    config, node = receiver
    threads = _record_threads(node, monkeypatch)
    echoes: list[threading.Thread] = []
    node._server.bind(evt.EVT_C_ECHO, lambda event: echoes.append(
        threading.current_thread()) or 0)  # replaces the node's handler (intervention event)
    assoc = _scu(config)
    [ours] = _active(node)
    for number in range(3):
        assert assoc.send_c_store(_ct(refdata, number)).Status == 0
    assert assoc.send_c_echo().Status == 0
    assoc.release()
    assert threads == [ours.dul] * 3  # the DUL thread that read the request
    assert echoes and echoes[0] is not ours.dul and isinstance(echoes[0], EventAssociation)
    assert node._ingest._index.has_instance("1.2.826.0.1.3680043.10.2.2")


def test_a_c_store_waits_for_the_association_thread_while_it_serves(
        receiver, refdata: Path, monkeypatch) -> None:
    config, node = receiver
    threads = _record_threads(node, monkeypatch)
    assoc = _scu(config)
    [ours] = _active(node)
    answers: list[int] = []
    with ours._serve_lock:  # as while the association thread serves an earlier message
        sender = threading.Thread(target=lambda: answers.append(
            assoc.send_c_store(_ct(refdata, 10)).Status))
        sender.start()
        assert _wait_until(lambda: not ours.dimse.msg_queue.empty())  # queued, not served
        assert not threads and not answers
    sender.join(10)
    assert answers == [0]
    assert threads == [ours]  # served by the association thread, in order
    assert assoc.send_c_store(_ct(refdata, 11)).Status == 0  # and the next inline again
    assert threads == [ours, ours.dul]
    assoc.release()


def test_a_handler_error_in_the_dul_thread_answers_0xc211_and_keeps_the_association(
        receiver, refdata: Path, monkeypatch) -> None:
    config, node = receiver
    accept = node._ingest.accept
    calls = []

    def failing_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("handler bug")
        return accept(*args, **kwargs)

    monkeypatch.setattr(node._ingest, "accept", failing_once)
    assoc = _scu(config)
    assert assoc.send_c_store(_ct(refdata, 20)).Status == 0xC211  # as pynetdicom answers
    assert assoc.send_c_store(_ct(refdata, 21)).Status == 0
    assoc.release()
    assert assoc.is_released


def test_a_handler_may_abort_or_kill_from_the_dul_thread(receiver, refdata: Path,
                                                         monkeypatch) -> None:
    config, node = receiver
    for ending in ("abort", "kill"):
        monkeypatch.setattr(node._ingest, "accept", lambda *args, ending=ending, **kwargs: (
            getattr(threading.current_thread().assoc, ending)(), Outcome(0))[1])
        assoc = _scu(config)
        [ours] = _active(node)
        assoc.send_c_store(_ct(refdata, 30))
        if ending == "abort":  # the peer hears the A-ABORT
            assert _wait_until(lambda assoc=assoc: assoc.is_aborted)
        else:  # (pynetdicom's kill would wait forever for the DUL thread it is called in)
            assoc.abort()
        assert _wait_until(lambda ours=ours: not ours.dul.is_alive() and not _active(node))


def test_a_c_store_before_the_association_is_established_waits_for_it(
        receiver, refdata: Path, monkeypatch) -> None:
    """A peer may send its first request as soon as the A-ASSOCIATE-AC is out, before the
    association thread has marked the association established: it is served then, and
    answered."""
    config, node = receiver
    threads = _record_threads(node, monkeypatch)
    assoc = _scu(config)
    [ours] = _active(node)
    ours._reactor_checkpoint.clear()  # the association thread not yet in its reactor ...
    ours.is_established = False  # ... between the A-ASSOCIATE-AC and the end of acceptance
    # it may have passed the checkpoint just before it was cleared, and would then take the
    # request itself: wait until it is parked there (paused for longer than its timer period)
    assert _wait_until(lambda: _parked(ours))
    answers: list[int] = []
    sender = threading.Thread(target=lambda: answers.append(
        assoc.send_c_store(_ct(refdata, 40)).Status))
    sender.start()
    assert _wait_until(lambda: not ours.dimse.msg_queue.empty())  # waits, not served inline
    assert not threads
    ours.is_established = True
    ours._reactor_checkpoint.set()
    sender.join(10)
    assert answers == [0] and threads == [ours]
    assoc.release()


def test_the_idle_timeout_does_not_end_an_association_while_its_request_is_served(
        receiver, refdata: Path, monkeypatch) -> None:
    config, node = receiver  # network_timeout 1 s
    accept = node._ingest.accept

    def slow(*args, **kwargs):
        time.sleep(2.5)
        return accept(*args, **kwargs)

    monkeypatch.setattr(node._ingest, "accept", slow)
    assoc = _scu(config)
    received: list[str] = []
    assoc.bind(evt.EVT_PDU_RECV, lambda event: received.append(type(event.pdu).__name__))
    assert assoc.send_c_store(_ct(refdata, 50)).Status == 0
    assert node._ingest._index.has_instance("1.2.826.0.1.3680043.10.2.50")
    # the timeout is seen after the request is answered, as pynetdicom's association thread
    # sees it after serving: the response comes before the A-RELEASE-RQ or A-ABORT
    ends = {"A_RELEASE_RQ", "A_ABORT_RQ"}
    assert _wait_until(lambda: ends & set(received))
    assert received[0] == "P_DATA_TF" and received[1] in ends
