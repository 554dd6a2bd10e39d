"""The one place where the node relies on pynetdicom beyond its documented API
(docs/dependencies.md): the C-STORE round trip of pynetdicom's acceptor reactor, on the
pynetdicom minor version it was tested with. What is relied on is how pynetdicom 3.0 calls its
own public methods, and, for the DUL thread's loop only (``_read_when_ready``), six private
names; no class of pynetdicom or of its objects is changed, only attributes of each listener
association's own objects.

pynetdicom 3.0 runs two threads per association, and both poll: the association thread sleeps
1 ms on every pass before it asks ``DIMSEServiceProvider.get_msg(block=False)`` for a complete
request, and the DUL thread (PS3.8 9.2, the Upper Layer state machine) sleeps 1 ms whenever a
pass finds nothing, also when the response it must send has just been queued for it. On one
association a C-STORE therefore waited for two of those naps after its last PDU arrived, and an
idle association cost 4.8 % of a CPU (docs/history/performance.md, "Ingest", fifth
round). pynetdicom
also answers a C-STORE (PS3.4 B.2.3) by building a pydicom ``Dataset`` for the response's
command set, validating it and encoding it twice (0.41 ms per response measured alone). For
each of the listener's associations, before it starts (``install``):

- the DUL thread runs pynetdicom's loop, step for step, but waits in ``select`` on its socket
  and on a pipe written when a primitive is queued for it or it is stopped, instead of
  sleeping; an idle association costs 0.5 % of a CPU instead of 4.8 to 5.7 %;
- the queues the association thread waits on, ``DIMSEServiceProvider.msg_queue`` (complete
  messages) and ``DULServiceProvider.to_user_queue`` (A-ASSOCIATE, A-RELEASE, A-ABORT
  indications), are replaced by queues that wake it, and its ``get_msg(block=False)`` waits
  for them, at most ``WAIT`` seconds, instead of returning at once: a request is served as soon
  as it is complete, and an idle association wakes ten times a second instead of a thousand;
- a plain C-STORE response (no Error Comment, Offending Element or other optional attribute:
  every success, and a failure whose status says it all) is encoded directly, in Implicit VR
  Little Endian as PS3.7 6.3.1 requires, with the elements of PS3.7 Table 9.3-2 in tag order,
  as one PDV, the last fragment of a command (PS3.8 E.2), and, on a plain TCP connection in
  state Sta6 with nothing queued for the DUL, written to the socket as the one P-DATA-TF PDU
  (PS3.8 9.3.5) that the DUL's action DT-1 would write, without a state change, as DT-1 makes
  none; otherwise it is handed to the DUL as pynetdicom hands its own. The bytes equal
  pynetdicom's (tests/unit/test_pynetdicom_adapter.py);
- the association socket's ``recv(nr_bytes)``, by which the DUL reads each PDU, fills one
  buffer with ``recv_into`` as the bytes arrive instead of joining 4 KiB reads: a 512 x 512
  slice in 128 KiB PDUs took 128 reads and copies, now a few (the bytes returned are the same).

Only on ``TESTED_MINOR``; on any other version ``install`` does nothing and pynetdicom's own
reactor and encoding serve every association. Anything but a plain C-STORE response, a TLS
connection (one SSL object is not written from two threads), a peer whose PDUs are too small,
or a handler bound to the notifications these paths would skip (``EVT_DIMSE_SENT``,
``EVT_PDU_SENT``, ``EVT_DATA_SENT``) goes through pynetdicom as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import ssl
import struct
import threading
from collections.abc import Callable
from typing import Any

import pynetdicom
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA

TESTED_MINOR = "3.0"
"""The pynetdicom minor version this module was written and tested against (pyproject.toml pins
``pynetdicom>=3.0,<3.1``)."""

ACTIVE = ".".join(pynetdicom.__version__.split(".")[:2]) == TESTED_MINOR
"""Whether the installed pynetdicom is that minor version."""

C_STORE_RSP = 0x8001
"""Command Field of a C-STORE response (PS3.7 Table E.1-1)."""

NO_DATA_SET = 0x0101
"""Command Data Set Type: no data set follows (PS3.7 Table E.1-1)."""

LAST_COMMAND_FRAGMENT = b"\x03"
"""PDV message control header: command information, last fragment (PS3.8 E.2)."""

P_DATA_TF = 0x04
"""PDU type of a P-DATA-TF PDU (PS3.8 Table 9-22)."""

DATA_TRANSFER = "Sta6"
"""The DUL state in which a P-DATA request is sent as a P-DATA-TF PDU by DT-1 (PS3.8 9.2)."""

WAIT = 0.1
"""Longest wait (s) of the association thread for a message or an indication before it looks
at the network idle timer and its stop flag again."""

SKIPPED_NOTIFICATIONS = (evt.EVT_DIMSE_SENT, evt.EVT_PDU_SENT, evt.EVT_DATA_SENT)
"""Notifications that pynetdicom's sending path triggers and the direct one does not: while a
handler is bound to any, responses take pynetdicom's path."""

OPTIONAL = ("ErrorComment", "OffendingElement")
"""Optional attributes of a C-STORE response (PS3.7 Table 9.3-2) that ``encode_store_response``
does not write."""

LOG = logging.getLogger("pynetdicom.dul")
"""pynetdicom's DUL logger: an error in the DUL thread is logged there in pynetdicom's words."""

FIRST_BLOCK = 2**20
"""Bytes of a PDU's buffer allocated before any arrive: a PDU's declared length is the peer's
word (up to 4 GiB, PS3.8 9.3.1), so larger buffers grow, doubling, only as its bytes come."""


def _uid(element: int, value: str) -> bytes:
    """A UI element of group 0000 (implicit VR: tag, 32-bit length, value padded with NUL)."""
    raw = value.encode("ascii")
    if len(raw) % 2:
        raw += b"\0"
    return struct.pack("<HHI", 0x0000, element, len(raw)) + raw


def _us(element: int, value: int) -> bytes:
    """A US element of group 0000."""
    return struct.pack("<HHIH", 0x0000, element, 2, value)


def encode_store_response(message_id: int, status: int, sop_class_uid: str,
                          sop_instance_uid: str) -> bytes:
    """The command set of a C-STORE response (PS3.7 9.3.1.2) with Affected SOP Class and
    Instance UIDs, Message ID Being Responded To and Status, Implicit VR Little Endian."""
    elements = b"".join((
        _uid(0x0002, sop_class_uid),
        _us(0x0100, C_STORE_RSP),
        _us(0x0120, message_id),
        _us(0x0800, NO_DATA_SET),
        _us(0x0900, status),
        _uid(0x1000, sop_instance_uid),
    ))
    return struct.pack("<HHII", 0x0000, 0x0000, 4, len(elements)) + elements


def p_data_tf(context_id: int, command: bytes) -> bytes:
    """A P-DATA-TF PDU (PS3.8 9.3.5) holding ``command`` as one presentation data value item:
    the last fragment of a command set (message control header 0x03, PS3.8 E.2)."""
    item = struct.pack(">IB", 2 + len(command), context_id) + LAST_COMMAND_FRAGMENT + command
    return struct.pack(">BBI", P_DATA_TF, 0, len(item)) + item


def plain_store_response(primitive: object) -> bool:
    """Whether ``primitive`` is a C-STORE response with exactly the attributes
    ``encode_store_response`` writes."""
    if not isinstance(primitive, C_STORE) or primitive.MessageIDBeingRespondedTo is None:
        return False
    if primitive.AffectedSOPClassUID is None or primitive.AffectedSOPInstanceUID is None:
        return False
    return all(getattr(primitive, name, None) in (None, "", []) for name in OPTIONAL)


class _WakingQueue(queue.Queue):
    """A queue that calls ``wake`` after every ``put``."""

    def __init__(self, wake: Callable[[], object]):
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


def install(assoc: Association) -> bool:
    """From an ``EVT_CONN_OPEN`` handler, before ``assoc`` starts: its association thread waits
    for work instead of polling, and its plain C-STORE responses are encoded (and, on plain
    TCP, sent) directly (module docstring). False, and nothing changed, unless pynetdicom is
    ``TESTED_MINOR``."""
    if not ACTIVE:
        return False
    _wait_for_work(assoc)
    _read_when_ready(assoc)
    _answer_directly(assoc)
    _read_into_one_buffer(assoc)
    return True


def _wait_for_work(assoc: Association) -> None:
    """``assoc.dimse.get_msg(block=False)``, which pynetdicom's acceptor reactor calls once per
    pass, waits up to ``WAIT`` s for a complete message or a user indication (release, abort,
    a closed connection) when none is there yet."""
    wake = threading.Event()
    dimse, dul = assoc.dimse, assoc.dul
    dimse.msg_queue = _WakingQueue(wake.set)
    dul.to_user_queue = _WakingQueue(wake.set)
    pynetdicom_get = dimse.get_msg

    def get_msg(block: bool = False) -> Any:
        if not block and dimse.msg_queue.empty() and dul.to_user_queue.empty():
            wake.wait(WAIT)
        wake.clear()
        return pynetdicom_get(block)

    dimse.get_msg = get_msg  # type: ignore[method-assign]


def _read_when_ready(assoc: Association) -> None:
    """The DUL thread's loop (``DULServiceProvider.run_reactor``: each pass checks the ARTIM
    timer, sends one queued primitive or reads one PDU, then runs the state machine on one
    event), as ``assoc.dul.run``, waiting in ``select`` on its socket and on a pipe written when
    a primitive is queued for it or it is stopped, instead of sleeping 1 ms whenever a pass finds
    nothing. The private names of pynetdicom this adapter uses are all here: ``_idle_timer``,
    ``_kill_thread``, ``_process_recv_primitive``, ``_is_transport_event`` of the DUL and
    ``_dul_ready``, ``_kill`` of the association."""
    dul = assoc.dul
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    lock = threading.Lock()
    closed = threading.Event()

    def poke() -> None:
        with lock, contextlib.suppress(BlockingIOError):  # full: a wake-up is pending already
            if not closed.is_set():
                os.write(wake_write, b"\0")

    def wait() -> None:
        """Until the socket is readable (or holds decrypted bytes), a primitive is queued, the
        thread is told to stop, or ``WAIT`` s pass (the timers are looked at then)."""
        sock = dul.socket.socket if dul.socket is not None else None
        readers: list[Any] = [wake_read]
        if sock is not None and sock.fileno() >= 0:
            if isinstance(sock, ssl.SSLSocket) and sock.pending():
                return
            readers.append(sock)
        try:
            ready, _, _ = select.select(readers, [], [], WAIT)
        except (OSError, ValueError):  # the socket closed under us: the next pass sees it
            return
        if wake_read in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(wake_read, 4096):
                    pass

    def run() -> None:
        try:
            react()
        finally:
            with lock:
                closed.set()
                os.close(wake_read)
                os.close(wake_write)

    def react() -> None:
        dul._idle_timer.start()
        assoc._dul_ready.set()
        idle = False
        while True:
            if idle:
                wait()
            if dul._kill_thread:
                return
            if dul.artim_timer.expired:
                dul.event_queue.put("Evt18")  # ARTIM timer expired (PS3.8 9.2.1)
            try:
                if dul._process_recv_primitive():
                    pass
                elif dul._is_transport_event():
                    dul._idle_timer.restart()
            except Exception:
                abort_outside_the_state_machine()
                return
            try:
                event = dul.event_queue.get(block=False)
            except queue.Empty:
                idle = True
                continue
            dul.state_machine.do_action(event)
            idle = False

    def abort_outside_the_state_machine() -> None:
        """As pynetdicom's reactor on an error: an A-ABORT sent past the state machine, whose
        state is no longer known, and both threads told to end."""
        LOG.exception("Exception in DUL.run(), aborting association")
        abort = A_ABORT_RQ()
        abort.source = 0x02
        abort.reason_diagnostic = 0x00
        if dul.socket is not None:
            dul.socket.send(abort.encode())
        assoc.is_aborted = True
        assoc.is_established = False
        assoc._kill = True
        dul._kill_thread = True

    pynetdicom_kill = dul.kill_dul

    def kill_dul() -> None:
        pynetdicom_kill()
        poke()

    def stop_dul() -> bool:
        """``DULServiceProvider.stop_dul``: in Sta1 stop the thread and wait for it to end."""
        if dul.state_machine.current_state != "Sta1":
            return False
        kill_dul()
        if threading.current_thread() is not dul:
            while dul.is_alive():
                dul.join(WAIT)
        return True

    dul.to_provider_queue = _WakingQueue(poke)
    dul.kill_dul = kill_dul  # type: ignore[method-assign]
    dul.stop_dul = stop_dul  # type: ignore[method-assign]
    dul.run = run  # type: ignore[method-assign]


def _answer_directly(assoc: Association) -> None:
    """``assoc.dimse.send_msg``, by which pynetdicom's Storage Service Class answers, encodes a
    plain C-STORE response directly and, where it can, writes it to the socket."""
    dimse, dul = assoc.dimse, assoc.dul
    pynetdicom_send = dimse.send_msg

    def send_msg(primitive: Any, context_id: int) -> None:
        if not plain_store_response(primitive) or any(
                assoc.get_handlers(notification) for notification in SKIPPED_NOTIFICATIONS):
            pynetdicom_send(primitive, context_id)
            return
        command = encode_store_response(
            primitive.MessageIDBeingRespondedTo, primitive.Status,
            str(primitive.AffectedSOPClassUID), str(primitive.AffectedSOPInstanceUID))
        limit = dimse.maximum_pdu_size
        if limit and len(command) + 6 > limit:  # the peer's PDUs are smaller than the command
            pynetdicom_send(primitive, context_id)
            return
        sock = dul.socket
        if (sock is not None and sock.socket is not None
                and not isinstance(sock.socket, ssl.SSLSocket)
                and dul.state_machine.current_state == DATA_TRANSFER
                and dul.to_provider_queue.empty()):
            sock.send(p_data_tf(context_id, command))  # as DT-1 would; Evt17 if it fails
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, LAST_COMMAND_FRAGMENT + command))
        dul.send_pdu(pdata)

    dimse.send_msg = send_msg  # type: ignore[method-assign]


def read_exactly(sock: Any, nr_bytes: int) -> bytearray:
    """``nr_bytes`` from ``sock`` (a socket or an SSL socket, with its timeout), read with
    ``recv_into`` into one buffer; fewer when the peer closes the connection first (as
    ``AssociationSocket.recv`` returns them). A buffer over ``FIRST_BLOCK`` grows as bytes
    arrive. Socket errors and timeouts propagate, as from pynetdicom's read."""
    buffer = bytearray(min(nr_bytes, FIRST_BLOCK))
    read = 0
    while read < nr_bytes:
        if read == len(buffer):
            buffer.extend(bytes(min(len(buffer), nr_bytes - read)))
        got = sock.recv_into(memoryview(buffer)[read:])  # (the views end with the statement)
        if not got:
            del buffer[read:]
            break
        read += got
    return buffer


def _read_into_one_buffer(assoc: Association) -> None:
    """``assoc.dul.socket.recv(nr_bytes)`` reads with :func:`read_exactly`."""
    transport = assoc.dul.socket

    def recv(nr_bytes: int) -> bytearray:
        return read_exactly(transport.socket, nr_bytes)

    transport.recv = recv  # type: ignore[method-assign]
