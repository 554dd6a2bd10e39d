"""The storage SCP: C-ECHO and C-STORE of CT, MR, their enhanced forms, PET, SEG, RTSTRUCT and SR.

Written against pynetdicom's public API (docs/dependencies.md): an ``AE`` with its limits and
timeouts, a server made by ``AE.make_server`` from a subclass of its public
``ThreadedAssociationServer`` (overriding the ``socketserver`` hooks ``server_bind`` and
``get_request``) and of its public ``RequestHandler`` (``handle``), and event handlers; the one
reliance beyond it, C-STORE responses encoded directly, is fenced in
``node.dicom.pynetdicom_adapter`` with a version check. Each
C-STORE's data set, as the sender encoded it, goes behind a File Meta Information header
(``node.dicom.part10``) to ``node.dicom.ingest``, which writes it durably to the spool and indexes
the instance before the handler answers success (PS3.4 B.2.3 status 0x0000).

Before an association is established (PS3.8 9.2, states Sta2 to Sta3) a connection is nobody's:
every accepted socket gets TCP_NODELAY and a timeout on each read and write
(``limits.network_timeout``); a TLS listener's handshake is made in the connection's own thread,
never in the accept loop; and ``node.dicom.pending`` gives the TLS handshake and the A-ASSOCIATE-RQ
together one absolute deadline (``limits.establish_timeout``) and caps the connections waiting
for it, per address and in all. Only a connection whose A-ASSOCIATE-RQ has arrived is counted
against ``limits.max_associations`` (here, not by pynetdicom, whose own count includes waiting
connections) and then judged by the peer policy (``node.dicom.peers``). Every refusal is logged on
one line with its reason.

Speed (docs/performance.md, "Ingest"): TCP_NODELAY; pynetdicom's trace handlers, which describe
every PDU and DIMSE message to a logger the node keeps at WARNING, unbound from each
association; the data set handed on as received, never encoded again; the association's threads
made to wait for work and plain C-STORE responses encoded directly
(``node.dicom.pynetdicom_adapter``); one log line per association. With
``listener.processes`` N > 1 the node runs N listeners on the same port with SO_REUSEPORT (the
kernel spreads connections among them): this process and N - 1 spawned receiver processes, each
with its own pynetdicom AE, its own SQLite connection to the index (WAL: concurrent writers wait
on the busy timeout) and its own threads, so parallel associations are not serialised by one
interpreter lock. ``limits.max_associations`` and each peer's limit (``max_associations_per_peer``,
a peer's own ``max_associations``) are counted over all of them in shared memory.
"""

from __future__ import annotations

import logging
import multiprocessing
import socket
import socketserver
import ssl
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
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from node import logs
from node.config import LimitsConfig, NodeConfig
from node.dicom import pynetdicom_adapter
from node.dicom.ingest import SUCCESS, Ingest
from node.dicom.part10 import Part10, file_meta_header
from node.dicom.peers import (
    LOCAL_LIMIT_EXCEEDED,
    REJECTED_TRANSIENT,
    SOURCE_PROVIDER_PRESENTATION,
    PeerPolicy,
    SharedPeerCounts,
    reject,
)
from node.dicom.pending import PendingConnections
from node.dicom.store_scu import set_nodelay
from node.dicom.tls import server_context
from node.dicom.validation import STORAGE_CLASSES, TRANSFER_SYNTAXES
from node.logs import fields
from node.state import Index

log = logging.getLogger(__name__)

CHILD_START_TIMEOUT = 60.0
"""Seconds a spawned receiver process may take to import the node and listen."""


TRACE_EVENTS = (evt.EVT_PDU_RECV, evt.EVT_PDU_SENT, evt.EVT_DIMSE_RECV, evt.EVT_DIMSE_SENT)
"""Events pynetdicom binds its standard logging handlers to: they describe every PDU and DIMSE
message to the ``pynetdicom`` logger, which the node keeps at WARNING, so the text built for each
(5 % of the interpreter time per CT slice, measured with py-spy) is never written."""


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

    glibc adapts its thresholds to the blocks freed so far; with each CT slice's half-megabyte
    buffers allocated and freed in turn it ended up trimming its heap after each slice: about
    100 minor page faults per 512 x 512 slice (0.1 ms of CPU) instead of 1. Fixed thresholds
    keep what one instance used. False where the C library is not glibc (nothing changed)."""
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


def pynetdicom_limit(limits: LimitsConfig) -> int:
    """``AE.maximum_associations`` for the listener: pynetdicom counts every association thread
    of the AE, connections still waiting for their A-ASSOCIATE-RQ and ones winding down
    included, so it is set where it never decides: twice what the node itself admits and lets
    wait. The node's own limit (``limits.max_associations``) is counted in ``Receiver``."""
    return 2 * (limits.max_associations + limits.max_pending)


class _Handler(RequestHandler):
    """pynetdicom's request handler, run in a thread of its own per accepted connection: a TLS
    listener's handshake is made here, within the connection's deadline (``node.dicom.pending``),
    before pynetdicom makes the association."""

    server: _Server

    def handle(self) -> None:
        sock = self.request
        if isinstance(sock, ssl.SSLSocket) and not self.server.handshake(sock, self.client_address):
            return
        super().handle()


class _Server(ThreadedAssociationServer):
    """pynetdicom's threaded server: every accepted socket gets TCP_NODELAY and a timeout, is
    wrapped for TLS without a handshake (``_Handler`` makes it) and is counted as waiting
    (``node.dicom.pending``); SO_REUSEPORT when other receiver processes share the port."""

    def __init__(self, *args: Any, pending: PendingConnections, limits: LimitsConfig,
                 reuse_port: bool, **kwargs: Any):
        self.pending = pending
        self._limits = limits
        self._reuse_port = reuse_port
        # the kernel's queue of connections not yet accepted (socketserver's default is 5: a
        # burst beyond it waits for SYN retransmissions, 1, 3, 7, 15 s...)
        self.request_queue_size = limits.max_pending
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        if self._reuse_port:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, Any]:
        client, address = self.socket.accept()
        set_nodelay(client)
        client.settimeout(self._limits.network_timeout)
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True,
                                                  do_handshake_on_connect=False)
        self.pending.arrived(client, str(address[0]))
        return client, address

    def handshake(self, sock: ssl.SSLSocket, address: Any) -> bool:
        """Make the TLS handshake (PS3.15 B.12) on ``sock`` within its deadline; on failure log
        why, close it and return False."""
        try:
            sock.settimeout(max(self.pending.remaining(sock), 0.001))
            sock.do_handshake()
            sock.settimeout(self._limits.network_timeout)
            return True
        except (OSError, ValueError) as exc:  # ssl.SSLError, timeouts, a socket cut meanwhile
            if self.pending.forget(sock):  # else the deadline or a cap cut it, and said so
                reason = (f"TLS handshake not done within limits.establish_timeout "
                          f"({self._limits.establish_timeout:g} s from accept)")\
                    if isinstance(exc, TimeoutError) else f"TLS handshake failed: {exc}"[:200]
                log.warning("connection refused", extra=fields(address=str(address[0]),
                                                               reason=reason))
            self.shutdown_request(sock)
            return False

    def shutdown(self) -> None:
        """Stop serving and close the listening socket (``AssociationServer.shutdown`` would
        also take the server off a list of the AE's, which ``AE.make_server`` never put it
        on)."""
        socketserver.BaseServer.shutdown(self)
        self.server_close()


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

    def release(self, assoc: Association) -> None:
        """An admitted association ended (its connection closed)."""
        with self._lock:
            if id(assoc) not in self._mine:
                return
            self._mine.discard(id(assoc))
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
        limits = config.limits
        self._limit = _SharedLimit(
            shared.associations if shared is not None else
            multiprocessing.get_context("spawn").Value("i", 0), limits.max_associations)
        self._pending = PendingConnections(limits.establish_timeout,
                                           limits.max_pending_per_address, limits.max_pending)
        self._server: _Server | None = None
        self._tallies: weakref.WeakKeyDictionary[Association, _Tally] = \
            weakref.WeakKeyDictionary()
        self._tallies_lock = threading.Lock()
        self._children: list[multiprocessing.process.BaseProcess] = []
        self._stop_children: Any = None

    def on_conn_open(self, event: Event) -> None:
        """``EVT_CONN_OPEN``: pynetdicom made the association of a waiting connection (and has
        not started it): it is named by the association from now on (``node.dicom.pending``),
        pynetdicom's trace handlers, which it binds to every association, are unbound, and its
        plain C-STORE responses are encoded directly (``node.dicom.pynetdicom_adapter``)."""
        assoc = event.assoc
        self._pending.attach(assoc.dul.socket.socket, assoc)
        pynetdicom_adapter.install(assoc)
        for traced in TRACE_EVENTS:
            for handler, _ in assoc.get_handlers(traced):
                assoc.unbind(traced, handler)

    def on_requested(self, event: Event) -> None:
        """``EVT_REQUESTED``, the A-ASSOCIATE-RQ has arrived (PS3.8 9.3.2): the connection no
        longer waits (``node.dicom.pending``); then the node-wide association limit, then the peer
        policy (``node.dicom.peers``)."""
        assoc = event.assoc
        if not self._pending.settle(assoc):
            reject(assoc, REJECTED_TRANSIENT, SOURCE_PROVIDER_PRESENTATION, LOCAL_LIMIT_EXCEEDED,
                   "connection closed at its establish_timeout as the request arrived")
            return
        if not self._limit.admit(assoc):
            reject(assoc, REJECTED_TRANSIENT, SOURCE_PROVIDER_PRESENTATION, LOCAL_LIMIT_EXCEEDED,
                   "node holds limits.max_associations")
            return
        self._policy.on_requested(event)

    def on_conn_close(self, event: Event) -> None:
        """``EVT_CONN_CLOSE``: the association's counts are released; a connection that closed
        before its A-ASSOCIATE-RQ wakes its association thread, which would otherwise wait for
        the request until ``acse_timeout``; one log line for an association that stored or was
        refused instances (each instance is logged at DEBUG by ``node.dicom.ingest``)."""
        assoc = event.assoc
        self._limit.release(assoc)
        self._policy.on_conn_close(event)
        if self._pending.forget(assoc):
            log.info("connection closed before its A-ASSOCIATE-RQ", extra=fields(
                address=str(event.address[0])))
        if assoc.requestor.primitive is None:  # still waiting in receive_pdu: None ends it
            assoc.dul.to_user_queue.put(None)  # as a timeout would
        with self._tallies_lock:
            tally = self._tallies.pop(assoc, None)
        if tally is None:
            return
        seconds = time.monotonic() - tally.started
        log.info("association ended", extra=fields(
            calling_ae=str(assoc.requestor.ae_title).strip(),
            host=assoc.requestor.address, stored=tally.stored, refused=tally.refused,
            bytes=tally.bytes, seconds=round(seconds, 3),
            mb_per_s=round(tally.bytes / seconds / 1e6, 1) if seconds > 0 else None))

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

    def start(self) -> tuple[str, int]:
        """Listen in background threads; returns the bound (host, port). With
        ``listener.processes`` > 1, the other receiver processes listen too before it returns.

        Only known peers are admitted (``node.dicom.peers``); ``limits`` sets the association limits
        and timeouts; with ``tls.listener`` the port speaks DICOM TLS only (``node.dicom.tls``).
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
        ae.maximum_associations = pynetdicom_limit(limits)
        ae.acse_timeout = min(limits.acse_timeout, limits.establish_timeout)
        ae.dimse_timeout = limits.dimse_timeout
        ae.network_timeout = limits.network_timeout
        ae.add_supported_context(sop_class.Verification)
        for uid in STORAGE_CLASSES:
            ae.add_supported_context(uid, list(TRANSFER_SYNTAXES))
        Path(self._config.spool_dir).mkdir(parents=True, exist_ok=True)
        handlers = [(evt.EVT_CONN_OPEN, self.on_conn_open),
                    (evt.EVT_REQUESTED, self.on_requested), (evt.EVT_C_ECHO, self.handle_echo),
                    (evt.EVT_C_STORE, self.handle_store), (evt.EVT_CONN_CLOSE, self.on_conn_close)]
        server = ae.make_server(
            (listener.host, listener.port), evt_handlers=handlers, server_class=_Server,
            ssl_context=server_context(self._config.tls) if self._config.tls.listener else None,
            request_handler=_Handler, pending=self._pending, limits=limits,
            reuse_port=reuse_port)
        self._pending.start()
        threading.Thread(target=server.serve_forever, name="receiver", daemon=True).start()
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
            self._pending.stop()


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
