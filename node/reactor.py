"""Event-driven reactors for the receiver's associations, in place of pynetdicom's polling loops.

pynetdicom (3.0) runs two threads per association: the DUL reactor (PS3.8 9.2, the Upper Layer
state machine: it reads PDUs from the socket and sends the primitives queued for it) and the
association reactor (it takes decoded DIMSE messages and runs the service, here C-STORE). Both
poll: the DUL thread sleeps 1 ms whenever a pass finds nothing to do and the association thread
sleeps 1 ms on every pass. On one association a C-STORE therefore waits up to three such naps
(the last PDU arrives while the DUL sleeps, the message waits for the association thread, the
response waits for the DUL thread), several milliseconds per instance when the rest of the work
takes a few (docs/performance.md, "Ingest").

Here both threads block until there is work instead:

- the DUL thread waits in ``select`` on its socket and on a wake-up pipe that is written when a
  primitive is queued for it to send (``to_provider_queue``) or when it is told to stop;
- the association thread waits on an event that is set when a DIMSE message is complete
  (``DIMSEServiceProvider.msg_queue``), when the DUL hands the user a primitive (A-RELEASE,
  A-ABORT: ``to_user_queue``) and when the DUL thread ends.

The DUL thread also reads a P-DATA-TF PDU (PS3.8 9.3.5) into one buffer and hands its
presentation data values on as views of it (``read_pdu``): pynetdicom copies the PDU into a
``bytes`` object and each PDV into another before the DIMSE layer copies them again. Every other
PDU, and a P-DATA-TF PDU while a handler watches the PDUs as pynetdicom decodes them
(``EVT_DATA_RECV``, ``EVT_PDU_RECV``), goes through pynetdicom's decoding. Either way the PDU
enters the state machine as event 10, so the transitions are pynetdicom's.

A C-STORE request (PS3.7 9.1.1) whose command set the DIMSE layer read directly
(``node.dimse.PlainStoreRequest``) is then served by the DUL thread itself, once the message is
complete (``EventAssociation.serve_inline``): the ``EVT_C_STORE`` handler runs there and the
response is queued for the next pass of the same reactor, instead of waking the association
thread, waiting for it, and waking the DUL thread again through the pipe (two thread hand-offs
per instance under the interpreter lock; docs/performance.md, "Ingest", third round). Every
other message, and a C-STORE while the association thread is busy with an earlier one or still
accepting the association, is served by the association thread as before, in arrival order.

Timers (ARTIM, the network idle timeout) are still checked on every pass; the waits are bounded by
``TIMER_GRANULARITY`` so that they expire on time. Each pass does what pynetdicom's does, through
the same methods, so the state machine, events and timeouts behave as they do there
(tests/unit/test_receiver.py and test_receiver_speed.py run the receiver through them).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import struct
import threading
from typing import Any, cast

from pydicom.uid import UID
from pynetdicom import _config, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.service_class import StorageServiceClass, attempt
from pynetdicom.sop_class import uid_to_service_class
from pynetdicom.utils import make_target

from node.dimse import set_uids
from node.logs import fields

log = logging.getLogger(__name__)

PYNETDICOM_LOG = logging.getLogger("pynetdicom.dul")
"""pynetdicom's DUL logger: the PDU read errors are logged there in pynetdicom's words."""

PYNETDICOM_ASSOC_LOG = logging.getLogger("pynetdicom.association")
"""pynetdicom's association logger, for its warnings about requests it does not serve."""

P_DATA_TF = 0x04
"""PDU type of a P-DATA-TF PDU (PS3.8 Table 9-22)."""

PDU_TYPES = frozenset(range(0x01, 0x08))
"""The PDU types of PS3.8 9.3.1; any other is an unrecognised PDU (event 19)."""

PDV_WATCHERS = (evt.EVT_DATA_RECV, evt.EVT_PDU_RECV)
"""Notifications that hand a handler the received PDU as pynetdicom decodes it: while one is bound,
P-DATA-TF PDUs take pynetdicom's path so that it gets the same objects."""

TIMER_GRANULARITY = 0.1
"""Longest wait (s) of either thread before it looks at its timers and stop flags again."""


class _WakingQueue(queue.Queue):
    """A queue that calls ``wake`` after every ``put``."""

    def __init__(self, wake: Any):
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


class PDataTF:
    """A received P-DATA-TF PDU whose presentation data values are views of its buffer.

    Decoded as ``pynetdicom.pdu.P_DATA_TF.decode`` does (PS3.8 9.3.5.1: items of a 4-byte length,
    the presentation context ID and the value, whose first byte is the message control header)
    and refused where it fails: an item header cut short or an item running past the PDU (its
    length counts the context ID, so less than 1 is one that cannot hold it)."""

    def __init__(self, body: bytearray):
        view = memoryview(body)
        items: list[tuple[int, memoryview]] = []
        offset, end = 0, len(body)
        while offset < end:
            (length,) = struct.unpack(">I", view[offset:offset + 4])  # error when cut short
            (context_id,) = struct.unpack(">B", view[offset + 4:offset + 5])
            data = view[offset + 5:offset + 4 + length]
            if len(data) != length - 1:
                raise ValueError(f"PDV item of {length} bytes at offset {offset} runs past the "
                                 f"{end}-byte PDU")
            items.append((context_id, data))
            offset += 4 + length
        self.items = items

    def to_primitive(self) -> P_DATA:
        """The P-DATA indication (``P_DATA_TF.to_primitive``), the views as its values."""
        primitive = P_DATA()
        primitive.presentation_data_value_list.extend(self.items)
        return primitive


class EventDUL(DULServiceProvider):
    """pynetdicom's DUL service provider whose reactor blocks on the socket and a wake-up pipe."""

    _wake_read: int
    _wake_write: int
    _wake_lock: threading.Lock
    _assoc_wake: threading.Event

    def _setup_wakeups(self, assoc_wake: threading.Event) -> None:
        """Replace the queues between the threads by waking ones (before the thread starts)."""
        self._wake_lock = threading.Lock()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._assoc_wake = assoc_wake
        self.to_provider_queue = _WakingQueue(self._poke)
        self.to_user_queue = _WakingQueue(assoc_wake.set)
        # the thread's target was bound to the base class's reactor when it was created
        self._target = make_target(self.run_reactor)

    def _poke(self) -> None:
        if threading.current_thread() is self:  # queued by a pass of the reactor itself, whose
            return  # next pass does not wait: a request served inline queues its response
        with self._wake_lock, contextlib.suppress(BlockingIOError):  # full: a wake-up is pending
            if self._wake_write >= 0:  # closed when the reactor ended
                os.write(self._wake_write, b"\0")

    def kill_dul(self) -> None:
        """Stop the reactor, waking it to see the flag."""
        super().kill_dul()
        self._poke()

    def _wait(self) -> None:
        """Block until the socket is readable, a primitive is queued or a timer may expire."""
        sock = self.socket.socket if self.socket is not None else None
        readers = [self._wake_read]
        if sock is not None and sock.fileno() >= 0:
            pending = getattr(sock, "pending", None)  # TLS: bytes decrypted but not yet read
            if pending is not None and pending():
                return
            readers.append(sock.fileno())
        try:
            ready, _, _ = select.select(readers, [], [], TIMER_GRANULARITY)
        except (OSError, ValueError):  # socket closed under us: the next pass sees it
            return
        if self._wake_read in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_read, 4096):
                    pass

    def _read_pdu_data(self) -> None:
        """Read one PDU from the socket and queue its event (``DULServiceProvider._read_pdu_data``,
        the same steps, events and log messages), P-DATA-TF as ``PDataTF`` unless a handler
        watches received PDUs."""
        assert self.socket is not None
        try:
            header = self.socket.recv(6)
        except (OSError, TimeoutError) as exc:
            PYNETDICOM_LOG.error("Connection closed before the entire PDU was received")
            PYNETDICOM_LOG.exception(exc)
            self.event_queue.put("Evt17")
            return
        try:
            pdu_type, _, pdu_length = struct.unpack(">BBL", header)
        except struct.error:
            self.event_queue.put("Evt17")
            return
        if pdu_type not in PDU_TYPES:
            PYNETDICOM_LOG.error(f"Unknown PDU type received '0x{pdu_type:02X}'")
            self.event_queue.put("Evt19")
            return
        try:
            body = self.socket.recv(pdu_length)
        except (OSError, TimeoutError) as exc:
            PYNETDICOM_LOG.error("Connection closed before the entire PDU was received")
            PYNETDICOM_LOG.exception(exc)
            self.event_queue.put("Evt17")
            return
        if len(body) != pdu_length:
            PYNETDICOM_LOG.error(
                f"The received PDU is shorter than expected ({6 + len(body)} of "
                f"{6 + pdu_length} bytes received)")
            self.event_queue.put("Evt17")
            return
        try:
            if pdu_type == P_DATA_TF and not any(self.assoc.get_handlers(event)
                                                 for event in PDV_WATCHERS):
                pdu: Any = PDataTF(body)
                event = "Evt10"
            else:
                pdu, event = self._decode_pdu(bytearray(header) + body)
            self.event_queue.put(event)
        except Exception as exc:
            PYNETDICOM_LOG.error("Unable to decode the received PDU data")
            PYNETDICOM_LOG.exception(exc)
            self.event_queue.put("Evt19")
            return
        self._recv_pdu.put(pdu)

    def run_reactor(self) -> None:
        """The DUL reactor (see ``DULServiceProvider.run_reactor``), waiting instead of sleeping
        when a pass found nothing to do."""
        try:
            self._react()
        finally:
            self._assoc_wake.set()
            with self._wake_lock:
                os.close(self._wake_read)
                os.close(self._wake_write)
                self._wake_read = self._wake_write = -1

    def _react(self) -> None:
        self._idle_timer.start()
        self.assoc._dul_ready.set()
        idle = False
        while True:
            if idle:
                self._wait()
            if self._kill_thread:
                return
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")  # ARTIM timer expired (PS3.8 9.2.1)
            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception:
                self._abort_on_error()
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                idle = True
                continue
            self.state_machine.do_action(event)
            idle = False

    def _abort_on_error(self) -> None:
        """An error in the reactor: send an A-ABORT outside the state machine, whose state is no
        longer known, and end the association (as pynetdicom does)."""
        log.exception("error in the DUL reactor: association aborted")
        abort = A_ABORT_RQ()
        abort.source = 0x02
        abort.reason_diagnostic = 0x00
        if self.socket is not None:
            self.socket.send(abort.encode())
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        self.assoc._kill = True
        self._kill_thread = True


def _service_class(assoc: Association, request: C_STORE) -> type:
    """The service class ``Association._serve_request`` picks for ``request``, in its steps."""
    class_uid = request.AffectedSOPClassUID
    with contextlib.suppress(KeyError):
        class_uid = assoc.acceptor.accepted_common_extended[class_uid][0]
    if _config.UNRESTRICTED_STORAGE_SERVICE:
        return StorageServiceClass
    return uid_to_service_class(class_uid)  # type: ignore[arg-type]


class EventAssociation(Association):
    """pynetdicom's acceptor association whose reactor waits for a message, a user primitive or
    the end of the DUL thread instead of sleeping 1 ms per pass.

    A C-STORE request (PS3.7 9.1.1) may also be served by the DUL thread that completed it
    (``serve_inline``), so that an instance costs no hand-off between the two threads."""

    _wake: threading.Event
    _serve_lock: threading.Lock

    def adopt(self) -> None:
        """Switch a freshly created acceptor association (not yet started) to the event-driven
        reactors."""
        self._wake = threading.Event()
        self._serve_lock = threading.Lock()
        self.dul.__class__ = EventDUL
        dul = self.dul
        assert isinstance(dul, EventDUL)
        dul._setup_wakeups(self._wake)
        self.dimse.msg_queue = _WakingQueue(self._wake.set)

    def kill(self) -> None:
        """Kill the association thread (waking it). Called from the DUL thread itself (a
        handler of a request served inline), only the flags are set: pynetdicom's ``kill``
        would wait for that thread to end, which it cannot while it waits."""
        if threading.current_thread() is self.dul:
            self._reactor_checkpoint.set()
            self._kill = True
            self.is_established = False
            self._is_paused = True
            self._wake.set()
            return
        super().kill()
        self._wake.set()

    def serve_inline(self, request: C_STORE, context_id: int) -> bool:
        """Serve the C-STORE request ``request`` in the calling thread, the DUL thread that has
        just assembled it, as pynetdicom's ``_serve_request`` serves it (``_serve_store``: the
        Storage Service Class SCP of PS3.4 B.2, the ``EVT_C_STORE`` handler, then the response
        primitive queued for the DUL). True when served; False, and nothing done, where the
        association thread must serve it instead, as pynetdicom would:

        - it is busy with an earlier message or one is waiting for it (messages are served in
          the order they arrive);
        - it has not yet finished accepting the association (a peer may send its first request
          as soon as the A-ASSOCIATE-AC is out, before ``is_established`` is set: pynetdicom
          serves it once it is);
        - ``_serve_request`` would abort the association from this thread (a presentation
          context not accepted, a SOP class that is not the Storage Service Class's), which
          waits for the DUL thread to end.

        Meanwhile the association thread leaves the network idle timeout alone, as it does
        while it serves a request itself. The DUL reads no further PDU while the handler runs;
        with one operation outstanding at a time (the node negotiates no asynchronous
        operations window, PS3.7 D.3.3.3) the peer sends nothing before the response but an
        A-ABORT or an A-RELEASE-RQ, read next.
        """
        if not self._serve_lock.acquire(blocking=False):
            return False
        try:
            if not self.is_established or self._kill or not self.dimse.msg_queue.empty():
                return False  # established: the association thread has finished accepting
            if context_id not in self._accepted_cx:
                return False
            if _service_class(self, request) is not StorageServiceClass:
                return False
            try:
                self._serve_store(request, context_id)
            except Exception:  # as an error in the DUL reactor: abort outside the FSM
                assert isinstance(self.dul, EventDUL)
                self.dul._abort_on_error()
            return True
        finally:
            self._serve_lock.release()

    def _serve_store(self, request: C_STORE, context_id: int) -> None:
        """What ``Association._serve_request`` does for a C-STORE request on an accepted context
        whose class is the Storage Service Class's, and ``StorageServiceClass.SCP`` then (PS3.4
        B.2.3): the ``EVT_C_STORE`` handler's status (0xC211 if it raises) answered in a
        C-STORE response (PS3.7 9.3.1.2) with the request's Message ID and Affected SOP Class
        and Instance UIDs, unless the association ended meanwhile. The same steps, log messages
        and outcomes; the response's UIDs are set through ``node.dimse.set_uids``, which checks
        a value once where pynetdicom's setters check it again for the response."""
        if self._sent_release:
            PYNETDICOM_ASSOC_LOG.warning(
                f"{request.msg_type} message received during association release, ignoring")
            return
        if not request.is_valid_request:
            PYNETDICOM_ASSOC_LOG.warning(f"Received unexpected {request.msg_type} service message")
            return
        context = self._accepted_cx[context_id]
        self.dimse.cancel_req = {}
        self._is_paused = True
        response = C_STORE()
        response.MessageID = request.MessageID
        response.MessageIDBeingRespondedTo = request.MessageID
        set_uids(response, cast(UID, request.AffectedSOPClassUID),
                 cast(UID, request.AffectedSOPInstanceUID))
        with attempt(response, self.dimse, context_id, self) as outcome:
            outcome.error_msg = "Exception in handler bound to 'evt.EVT_C_STORE'"
            outcome.error_status = 0xC211
            status = evt.trigger(self, evt.EVT_C_STORE,
                                 {"request": request, "context": context.as_tuple})
        if outcome.success and self.is_established:
            service = StorageServiceClass(self)
            self.dimse.send_msg(service.validate_status(status, response), context_id)
        self._is_paused = False
        self.dimse.cancel_req = {}

    def _run_reactor(self) -> None:
        """The acceptor's reactor (see ``Association._run_reactor``): serve each complete DIMSE
        message, then answer a release request, an abort, a lost DUL or the idle timeout."""
        self._is_paused = False
        while not self._kill:
            if self.dimse.msg_queue.empty():
                self._wake.wait(TIMER_GRANULARITY)
            self._wake.clear()
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            with self._serve_lock:  # not while the DUL thread serves a request inline
                context_id, msg = self.dimse.get_msg(block=False)
                if msg:
                    self._serve_request(msg, context_id)  # type: ignore[arg-type]
            if self._serve_lock.locked():  # the DUL thread serves a request: as while this
                continue  # thread serves one, the end of the association is looked at after it
            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return
            if self.acse.is_aborted():
                self.dul.receive_pdu(wait=False)  # so that EVT_ACSE_RECV fires
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return
            if not self.dul.is_alive():
                self.kill()
                return
            if self.dul.idle_timer_expired():
                log.warning("network timeout: association ended", extra=fields(
                    calling_ae=str(self.requestor.ae_title).strip()))
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True  # release() waits for this reactor to pause
                    self.release()
                else:
                    self.abort()
                self.kill()
                return
