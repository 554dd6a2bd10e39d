"""node.dicom.pynetdicom_adapter, the one place the node relies on pynetdicom beyond its documented
API (docs/dependencies.md): the C-STORE responses it encodes are byte for byte what pynetdicom
encodes, it is used on the wire only on the tested minor version, responses with optional
attributes still go through pynetdicom, a PDU read into one buffer is the bytes sent (and no
more memory than arrives), and with it off the receiver answers the same."""

from __future__ import annotations

import socket
import threading
import time
import tracemalloc
from pathlib import Path

import pydicom
import pynetdicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import CTImageStorage

from node.config import NodeConfig
from node.dicom import pynetdicom_adapter
from node.dicom.pynetdicom_adapter import (
    LAST_COMMAND_FRAGMENT,
    TESTED_MINOR,
    encode_store_response,
    p_data_tf,
    plain_store_response,
)
from node.dicom.receiver import Receiver
from node.state import Index
from tests.conftest import REPO, free_port

CT = "1.2.840.10008.5.1.4.1.1.2"


def _response(message_id: int, status: int, instance: str) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = CT
    rsp.AffectedSOPInstanceUID = instance
    rsp.Status = status
    return rsp


def _pynetdicom_pdv(rsp: C_STORE) -> bytes:
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    [pdata] = list(message.encode_msg(1, 16384))
    [(context_id, pdv)] = pdata.presentation_data_value_list
    assert context_id == 1
    return pdv


@pytest.mark.parametrize("instance", ["1.2.3.4", "1.2.3.45", "1.2.826.0.1." + "7" * 50])
@pytest.mark.parametrize(("message_id", "status"), [(1, 0x0000), (65535, 0xA700),
                                                    (300, 0xC000)])
def test_plain_response_is_what_pynetdicom_encodes(instance: str, message_id: int,
                                                   status: int) -> None:
    rsp = _response(message_id, status, instance)
    assert plain_store_response(rsp)
    assert _pynetdicom_pdv(rsp) == \
        LAST_COMMAND_FRAGMENT + encode_store_response(message_id, status, CT, instance)


@pytest.mark.parametrize("context_id", [1, 3, 255])
def test_the_pdu_written_directly_is_the_one_pynetdicom_writes(context_id: int) -> None:
    """What DT-1 would send for the same P-DATA request (PS3.8 9.3.5)."""
    command = encode_store_response(7, 0x0000, CT, "1.2.3.4")
    pdata = P_DATA()
    pdata.presentation_data_value_list.append((context_id, LAST_COMMAND_FRAGMENT + command))
    assert p_data_tf(context_id, command) == P_DATA_TF(pdata).encode()


def test_responses_with_an_error_comment_or_of_other_services_are_not_plain() -> None:
    commented = _response(7, 0xA900, "1.2.3")
    commented.ErrorComment = "(7FE0,0010) PixelData: missing"
    assert not plain_store_response(commented)
    request = C_STORE()
    request.MessageID = 7
    request.AffectedSOPClassUID = CT
    request.AffectedSOPInstanceUID = "1.2.3"
    assert not plain_store_response(request)
    assert not plain_store_response(object())


def test_installed_pynetdicom_is_the_tested_minor_and_pinned() -> None:
    """The guard of docs/dependencies.md: pyproject pins the minor the adapter was tested with;
    on another one ``ACTIVE`` is False and pynetdicom encodes every response."""
    assert pynetdicom.__version__.startswith(TESTED_MINOR + ".")
    assert pynetdicom_adapter.ACTIVE
    assert f'"pynetdicom>={TESTED_MINOR},<3.1"' in (REPO / "pyproject.toml").read_text()


def test_the_private_names_it_uses_are_there() -> None:
    """The guard of docs/dependencies.md for the DUL loop: the private names it uses exist on
    the installed pynetdicom (``ACTIVE`` alone would not notice a renamed one)."""
    from pynetdicom.association import Association as PynetdicomAssociation
    from pynetdicom.dul import DULServiceProvider

    ae = AE()
    assoc = PynetdicomAssociation(ae, "acceptor")
    dul = assoc.dul
    assert isinstance(dul, DULServiceProvider)
    assert callable(dul._process_recv_primitive) and callable(dul._is_transport_event)
    assert hasattr(dul._idle_timer, "restart") and dul._kill_thread is False
    assert not assoc._dul_ready.is_set() and assoc._kill is False


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_an_idle_association_is_served_released_and_its_threads_end(
        tmp_path: Path, tls: bool) -> None:
    """With the adapter: after a second of silence the association answers C-ECHO, is
    released, and both of its threads end (the DUL thread waits in select, not in 1 ms naps,
    and is woken to stop); over TLS too (pending decrypted bytes are read)."""
    import ssl
    import threading
    import time

    import trustme

    from node.config import TLSConfig

    tls_config, client = TLSConfig(), None
    if tls:
        ca = trustme.CA()
        node_pem, ca_pem = tmp_path / "node.pem", tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_pem))
        ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(node_pem))
        tls_config = TLSConfig(certificate=node_pem, private_key=node_pem, ca_certificates=ca_pem,
                               listener=True, client_certificates="none")
        client = ssl.create_default_context(cafile=str(ca_pem))
    config = NodeConfig(state_dir=tmp_path / "state", listener={"port": free_port()},
                        accept_unknown_peers=True, tls=tls_config)
    index = Index(config.index_path)
    receiver = Receiver(config, index)
    receiver.start()
    try:
        before = {t.ident for t in threading.enumerate()}
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", config.listener.port, ae_title="RADIOMICS",
                             tls_args=(client, "127.0.0.1") if client else None)
        assert assoc.is_established
        time.sleep(1.0)
        assert assoc.send_c_echo().Status == 0x0000
        node_threads = [t for t in threading.enumerate()
                        if t.ident not in before and t is not assoc and t is not assoc.dul]
        assoc.release()
        assert assoc.is_released
        for thread in node_threads:
            thread.join(10)
        assert [t for t in node_threads if t.is_alive()] == []
    finally:
        receiver.stop()
        index.close()


@pytest.mark.parametrize("active", [True, False], ids=["adapter", "pynetdicom"])
def test_receiver_answers_the_same_with_and_without_it(
        tmp_path: Path, refdata: Path, monkeypatch: pytest.MonkeyPatch, active: bool) -> None:
    """Over a real association (plain TCP): success and a refusal with its Error Comment reach
    the SCU either way, and the association is released; with the adapter on, the success
    response was encoded and written to the socket by it (counted), the refusal (an Error
    Comment) by pynetdicom."""
    monkeypatch.setattr(pynetdicom_adapter, "ACTIVE", active)
    encoded: list[int] = []
    written: list[int] = []
    encode, write = pynetdicom_adapter.encode_store_response, pynetdicom_adapter.p_data_tf

    def counting_encode(*args: object) -> bytes:
        encoded.append(1)
        return encode(*args)  # type: ignore[arg-type]

    def counting_write(*args: object) -> bytes:
        written.append(1)
        return write(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(pynetdicom_adapter, "encode_store_response", counting_encode)
    monkeypatch.setattr(pynetdicom_adapter, "p_data_tf", counting_write)
    config = NodeConfig(state_dir=tmp_path / "state", listener={"port": free_port()},
                        accept_unknown_peers=True)
    index = Index(config.index_path)
    receiver = Receiver(config, index)
    receiver.start()
    try:
        ct = pydicom.dcmread(refdata / "pydicom" / "test_files" / "CT_small.dcm")
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(CTImageStorage)
        received: list[bytes] = []
        assoc = ae.associate("127.0.0.1", config.listener.port, ae_title="RADIOMICS",
                             evt_handlers=[(evt.EVT_DATA_RECV,
                                            lambda event: received.append(event.data))])
        assert assoc.send_c_store(ct).Status == 0x0000
        del ct.SeriesInstanceUID
        ct.SOPInstanceUID = "1.2.826.0.1.3680043.10.19.1"
        refused = assoc.send_c_store(ct)
        assoc.release()
        assert assoc.is_released
        assert refused.Status == 0xC000
        assert str(refused.ErrorComment).startswith("(0020,000E) SeriesInstanceUID")
    finally:
        receiver.stop()
        index.close()
    assert encoded == written == ([1] if active else [])
    expected = _pynetdicom_pdv(_response(1, 0x0000, pydicom.dcmread(
        refdata / "pydicom" / "test_files" / "CT_small.dcm").SOPInstanceUID))
    assert any(expected[1:] in pdu for pdu in received)  # the same bytes on the wire


def _feed(sock: socket.socket, pieces: list[bytes], close: bool) -> threading.Thread:
    def send() -> None:
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(0.01)  # separate arrivals: the reader must wait for each
        if close:
            sock.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=send)
    thread.start()
    return thread


def test_a_pdu_read_into_one_buffer_is_the_bytes_sent_in_order() -> None:
    ours, theirs = socket.socketpair()
    pieces = [bytes([n]) * size for n, size in enumerate([6, 4096, 1, 70_000, 3, 2**20 + 5])]
    with ours, theirs:
        sender = _feed(theirs, pieces, close=False)
        got = pynetdicom_adapter.read_exactly(ours, sum(map(len, pieces)))
        sender.join()
    assert bytes(got) == b"".join(pieces)  # FIRST_BLOCK exceeded: the buffer grew on the way


def test_a_pdu_cut_short_by_the_peer_returns_what_came_without_reserving_its_length() -> None:
    ours, theirs = socket.socketpair()
    tracemalloc.start()
    try:
        with ours, theirs:
            sender = _feed(theirs, [b"abc", b"defg"], close=True)
            got = pynetdicom_adapter.read_exactly(ours, 2**32 - 1)  # the largest PDU length
            sender.join()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert bytes(got) == b"abcdefg"  # as AssociationSocket.recv returns a short read
    assert peak < 4 * pynetdicom_adapter.FIRST_BLOCK


def test_a_pdu_read_times_out_as_the_socket_says() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.settimeout(0.2)
        theirs.sendall(b"12")
        with pytest.raises(TimeoutError):
            pynetdicom_adapter.read_exactly(ours, 10)
