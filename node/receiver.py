"""The storage SCP: C-ECHO and C-STORE of CT, MR, their enhanced forms, PET, SEG, RTSTRUCT and SR.

The fast path keeps the bytes as the sender encoded them, behind a File Meta Information header
(``node.part10``), and hands them to ``node.ingest``, which writes them durably to the spool and
indexes the instance before the handler answers success (PS3.4 B.2.3 status 0x0000).

Speed (docs/performance.md): every accepted socket gets TCP_NODELAY (``store_scu.set_nodelay``);
a PDU is read with one ``recv_into`` loop into a buffer of its length instead of pynetdicom's
4 KiB reads, and a P-DATA-TF PDU's values are passed on as views of that buffer; the
association's threads wait for work instead of polling (``node.reactor``); DIMSE messages are
assembled without a growing buffer and C-STORE responses encoded directly (``node.dimse``).
With ``listener.processes`` N > 1 the node runs N listeners on the same port with SO_REUSEPORT (the
kernel spreads connections among them): this process and N - 1 spawned receiver processes, each with
its own pynetdicom AE, its own SQLite connection to the index (WAL: concurrent writers wait on the
busy timeout) and its own threads, so parallel associations are not serialised by one interpreter
lock. ``limits.max_associations`` and each peer's limit (``max_associations_per_peer``, a peer's
own ``max_associations``) are counted over all of them in shared memory.
"""

from __future__ import annotations

import logging
import multiprocessing
import socket
import threading
import time
import weakref
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt, sop_class
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from node import logs
from node.config import NodeConfig
from node.dimse import AcceptorDIMSE
from node.index import Index
from node.ingest import SUCCESS, Ingest
from node.logs import fields
from node.part10 import Part10, file_meta_header
from node.peers import (
    LOCAL_LIMIT_EXCEEDED,
    REJECTED_TRANSIENT,
    SOURCE_PROVIDER_PRESENTATION,
    PeerPolicy,
    SharedPeerCounts,
)
from node.reactor import EventAssociation
from node.store_scu import set_nodelay
from node.tls import server_context
from node.validation import STORAGE_CLASSES, TRANSFER_SYNTAXES

log = logging.getLogger(__name__)

CHILD_START_TIMEOUT = 60.0
"""Seconds a spawned receiver process may take to import the node and listen."""


TRACE_EVENTS = (evt.EVT_PDU_RECV, evt.EVT_PDU_SENT, evt.EVT_DIMSE_RECV, evt.EVT_DIMSE_SENT)
"""Events pynetdicom binds its standard logging handlers to: they describe every PDU and DIMSE
message to the ``pynetdicom`` logger, which the node keeps at WARNING, so the text built for each
(5 % of the interpreter time per CT slice, measured with py-spy) is never written."""


PDU_READ_CHUNK = 16 * 2**20
"""Most bytes of a PDU allocated before they have arrived: a PDU's length is what the peer
declares (up to 4 GiB, before any association is accepted), so a longer one is read in pieces of
this size and memory grows only with what really comes."""


M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
"""``mallopt`` parameters (glibc's malloc.h)."""

HEAP_MMAP_THRESHOLD = 4 * 2**20
HEAP_TRIM_THRESHOLD = 8 * 2**20
"""Allocations below ``HEAP_MMAP_THRESHOLD`` come from the heap, and up to
``HEAP_TRIM_THRESHOLD`` of freed memory at the top of a heap is kept for the next ones."""


def keep_freed_memory() -> bool:
    """Tune glibc's malloc (process-wide) so that the buffers of one instance are reused by the
    next instead of being handed back to the system and faulted in again.

    glibc adapts its thresholds to the blocks freed so far, and with an association's PDUs
    assembled, decoded and stored by one thread (``node.reactor``: requests served inline) it
    ended up trimming its heap after each CT slice: about 100 minor page faults per 512 x 512
    slice (0.1 ms of CPU) instead of 1. Fixed thresholds keep what one instance used. False
    where the C library is not glibc (nothing changed)."""
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD)
                    and libc.mallopt(M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False


class _PduSocket(AssociationSocket):
    """pynetdicom's socket wrapper reading ``nr_bytes`` with ``recv_into`` one buffer.

    ``AssociationSocket.recv`` reads 4 KiB at a time and extends a bytearray: for a 512 KiB
    C-STORE that is over a hundred system calls and copies per PDU when the sender uses large
    PDUs. Same contract: returns fewer bytes only when the peer closed the connection. At most
    ``PDU_READ_CHUNK`` bytes are allocated ahead of the data.
    """

    def recv(self, nr_bytes: int) -> bytearray:
        assert self.socket is not None
        if nr_bytes <= PDU_READ_CHUNK:
            return self._recv_into(nr_bytes)
        buffer = bytearray()
        while len(buffer) < nr_bytes:
            wanted = min(PDU_READ_CHUNK, nr_bytes - len(buffer))
            part = self._recv_into(wanted)
            buffer += part
            if len(part) < wanted:  # the peer closed the connection
                break
        return buffer

    def _recv_into(self, nr_bytes: int) -> bytearray:
        """``nr_bytes`` read into one new buffer, or fewer when the peer closes."""
        assert self.socket is not None
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        read = 0
        while read < nr_bytes:
            got = self.socket.recv_into(view[read:], nr_bytes - read)
            if not got:
                del view
                return buffer[:read]
            read += got
        return buffer


class _RequestHandler(RequestHandler):
    """pynetdicom's request handler with ``_PduSocket`` as the association's socket."""

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        # same objects, same state (the connection indication is already queued): only the
        # classes change, to read PDUs faster and to wait for work instead of polling
        assoc.dul.socket.__class__ = _PduSocket
        assoc.__class__ = EventAssociation
        assert isinstance(assoc, EventAssociation)
        assoc.adopt()
        assoc.dimse.__class__ = AcceptorDIMSE  # messages assembled, responses encoded directly
        for event in TRACE_EVENTS:  # pynetdicom's own trace logging, bound by default
            for handler, _ in assoc.get_handlers(event):
                assoc.unbind(event, handler)
        return assoc


class _Server(ThreadedAssociationServer):
    """pynetdicom's threaded server with TCP_NODELAY on every accepted socket."""

    def get_request(self) -> tuple[socket.socket, Any]:
        client, address = self.socket.accept()
        set_nodelay(client)
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True)
        return client, address


class _SharedPortServer(_Server):
    """``_Server`` whose port other receiver processes listen on too (SO_REUSEPORT)."""

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class _SharedLimit:
    """``limits.max_associations`` counted across receiver processes in shared memory."""

    def __init__(self, counter: Synchronized, maximum: int):
        self._counter = counter
        self._maximum = maximum
        self._mine: set[int] = set()
        self._lock = threading.Lock()

    def admit(self, assoc: Association) -> bool:
        """Count ``assoc`` unless the node already holds its maximum."""
        with self._counter.get_lock():
            if self._counter.value >= self._maximum:
                return False
            self._counter.value += 1
        with self._lock:
            self._mine.add(id(assoc))
        return True

    def release(self, event: Event) -> None:
        """``EVT_CONN_CLOSE`` handler: an admitted association ended."""
        with self._lock:
            if id(event.assoc) not in self._mine:
                return
            self._mine.discard(id(event.assoc))
        with self._counter.get_lock():
            self._counter.value -= 1


@dataclass(frozen=True)
class Shared:
    """What the receiver processes count together: associations in all, and per peer."""

    associations: Synchronized
    peers: SharedPeerCounts

    @classmethod
    def create(cls, config: NodeConfig) -> Shared:
        context = multiprocessing.get_context("spawn")
        return cls(context.Value("i", 0),
                   SharedPeerCounts(config.limits.max_associations, context))


@dataclass
class _Tally:
    """What one association brought: instances stored (duplicates included) and refused, bytes
    received, and since when (monotonic seconds)."""

    started: float = field(default_factory=time.monotonic)
    stored: int = 0
    refused: int = 0
    bytes: int = 0

    def count(self, status: int, size: int) -> None:
        if status == SUCCESS:
            self.stored += 1
        else:
            self.refused += 1
        self.bytes += size


class Receiver:
    """Stores what peers send; one instance serves all associations of the listener in this
    process, and starts the other receiver processes when ``listener.processes`` > 1."""

    def __init__(self, config: NodeConfig, index: Index, *, shared: Shared | None = None):
        self._config = config
        self._ingest = Ingest(config, index)
        processes = config.listener.processes
        if shared is None and processes > 1:
            shared = Shared.create(config)
        self._shared = shared
        self._policy = PeerPolicy(config, STORAGE_CLASSES,
                                  shared.peers if shared is not None else None)
        self._server: ThreadedAssociationServer | None = None
        self._tallies: weakref.WeakKeyDictionary[Association, _Tally] = \
            weakref.WeakKeyDictionary()
        self._tallies_lock = threading.Lock()
        self._children: list[multiprocessing.process.BaseProcess] = []
        self._stop_children: Any = None
        self._limit = _SharedLimit(shared.associations, config.limits.max_associations) \
            if shared is not None else None

    def on_requested(self, event: Event) -> None:
        """``EVT_REQUESTED``: the node-wide association limit (several receiver processes),
        then the peer policy (``node.peers``)."""
        if self._limit is not None and not self._limit.admit(event.assoc):
            log.warning("association rejected", extra=fields(
                calling_ae=str(event.assoc.requestor.primitive.calling_ae_title).strip(),
                address=event.assoc.requestor.address, reason="node holds max_associations"))
            event.assoc.acse.send_reject(REJECTED_TRANSIENT, SOURCE_PROVIDER_PRESENTATION,
                                         LOCAL_LIMIT_EXCEEDED)
            evt.trigger(event.assoc, evt.EVT_REJECTED, {})
            event.assoc.kill()
            return
        self._policy.on_requested(event)

    def handle_echo(self, event: Event) -> int:
        """C-ECHO (PS3.7 9.1.5): the node is alive."""
        return SUCCESS

    def handle_store(self, event: Event) -> Dataset | int:
        """C-STORE (PS3.4 B.2): durable spool file, index row, then success."""
        with self._tallies_lock:
            tally = self._tallies.setdefault(event.assoc, _Tally())
        request = event.request
        syntax = str(event.context.transfer_syntax)
        data = Part10(file_meta_header(request.AffectedSOPClassUID,
                                       request.AffectedSOPInstanceUID, syntax),
                      request.DataSet.getvalue(), syntax)
        outcome = self._ingest.accept(
            data, lambda: event.dataset, event.assoc.requestor.ae_title,
            request.AffectedSOPClassUID, request.AffectedSOPInstanceUID,
            host=event.assoc.requestor.address)
        tally.count(outcome.status, len(data))
        return outcome.as_dataset() if outcome.status else SUCCESS

    def on_conn_close(self, event: Event) -> None:
        """``EVT_CONN_CLOSE``: one log line for an association that stored or was refused
        instances (each instance is logged at DEBUG by ``node.ingest``)."""
        with self._tallies_lock:
            tally = self._tallies.pop(event.assoc, None)
        if tally is None:
            return
        seconds = time.monotonic() - tally.started
        log.info("association ended", extra=fields(
            calling_ae=str(event.assoc.requestor.ae_title).strip(),
            host=event.assoc.requestor.address, stored=tally.stored, refused=tally.refused,
            bytes=tally.bytes, seconds=round(seconds, 3),
            mb_per_s=round(tally.bytes / seconds / 1e6, 1) if seconds > 0 else None))

    def start(self) -> tuple[str, int]:
        """Listen in background threads; returns the bound (host, port). With
        ``listener.processes`` > 1, the other receiver processes listen too before it returns.

        Only known peers are admitted (``node.peers``); ``limits`` sets the association limits
        and timeouts; with ``tls.listener`` the port speaks DICOM TLS only (``node.tls``).
        """
        host, port = self._listen(reuse_port=self._shared is not None)
        if self._config.listener.processes > 1:
            self._start_children(port)
        log.info("listening", extra=fields(
            ae_title=self._config.listener.ae_title, host=host, port=port,
            tls=self._config.tls.listener, peers=len(self._config.peers),
            processes=self._config.listener.processes))
        return host, port

    def _start_children(self, port: int) -> None:
        """Spawn ``listener.processes`` - 1 receiver processes on ``port``; each reports ready
        (or its error) on a pipe."""
        context = multiprocessing.get_context("spawn")
        self._stop_children = context.Event()
        config = self._config.model_copy(
            update={"listener": self._config.listener.model_copy(update={"port": port})})
        for number in range(1, self._config.listener.processes):
            ours, theirs = context.Pipe(duplex=False)
            child = context.Process(target=_serve_child, name=f"receiver-{number}", daemon=True,
                                    args=(config, self._shared, self._stop_children, theirs))
            child.start()
            theirs.close()
            self._children.append(child)
            if not ours.poll(CHILD_START_TIMEOUT):
                self.stop()
                raise RuntimeError(f"receiver process {number} did not listen within "
                                   f"{CHILD_START_TIMEOUT:.0f} s")
            error = ours.recv()
            if error:
                self.stop()
                raise RuntimeError(f"receiver process {number}: {error}")

    def _listen(self, reuse_port: bool) -> tuple[str, int]:
        listener, limits = self._config.listener, self._config.limits
        keep_freed_memory()
        ae = AE(ae_title=listener.ae_title)
        ae.maximum_pdu_size = listener.max_pdu
        ae.maximum_associations = limits.max_associations
        ae.acse_timeout = limits.acse_timeout
        ae.dimse_timeout = limits.dimse_timeout
        ae.network_timeout = limits.network_timeout
        ae.add_supported_context(sop_class.Verification)
        for uid in STORAGE_CLASSES:
            ae.add_supported_context(uid, list(TRANSFER_SYNTAXES))
        Path(self._config.spool_dir).mkdir(parents=True, exist_ok=True)
        handlers = [(evt.EVT_REQUESTED, self.on_requested), (evt.EVT_C_ECHO, self.handle_echo),
                    (evt.EVT_C_STORE, self.handle_store), (evt.EVT_CONN_CLOSE, self.on_conn_close)]
        if self._limit is not None:
            handlers.append((evt.EVT_CONN_CLOSE, self._limit.release))
        if self._shared is not None:
            handlers.append((evt.EVT_CONN_CLOSE, self._policy.on_conn_close))
        server = (_SharedPortServer if reuse_port else _Server)(
            ae, (listener.host, listener.port), listener.ae_title, ae.supported_contexts,
            ssl_context=server_context(self._config.tls) if self._config.tls.listener else None,
            evt_handlers=handlers, request_handler=_RequestHandler)
        threading.Thread(target=server.serve_forever, name="receiver", daemon=True).start()
        ae._servers.append(server)
        self._server = server
        return server.server_address[:2]

    @property
    def listening(self) -> bool:
        """True while the listener's socket is open (for ``/healthz``)."""
        return self._server is not None and self._server.socket.fileno() >= 0

    def stop(self) -> None:
        if self._stop_children is not None:
            self._stop_children.set()
        for child in self._children:
            child.join(10)
            if child.is_alive():
                child.terminate()
                child.join()
        self._children = []
        if self._server is not None:
            self._server.shutdown()
            self._server = None


def _serve_child(config: NodeConfig, shared: Shared, stop: Any, ready: Any) -> None:
    """A spawned receiver process: its own index connection and listener on the shared port,
    until ``stop`` is set (or the node process is gone)."""
    logs.configure(config.log_level, config.log_file)
    index = Index(config.index_path, synchronous="NORMAL")  # as the node's own receiver's
    receiver = Receiver(config, index, shared=shared)
    try:
        receiver._listen(reuse_port=True)
    except Exception as exc:
        ready.send(f"{type(exc).__name__}: {exc}")
        return
    ready.send("")
    parent = multiprocessing.parent_process()
    while not stop.wait(1.0):
        if parent is not None and not parent.is_alive():
            break
    receiver.stop()
    index.close()
