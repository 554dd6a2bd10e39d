"""Who may associate with the node: known peers by calling AE title and address, the SOP classes
each may store, and each one's share of the association limit.

The decision is made when the A-ASSOCIATE-RQ arrives, in a handler of pynetdicom's
``EVT_REQUESTED`` notification: pynetdicom triggers it before negotiating and skips negotiation
when the handler has sent an A-ASSOCIATE-RJ (``Association.run_reactor``). Rejections use the
result, source and reason/diagnostic of PS3.8 9.3.4 (Table 9-21):

- unknown calling AE title, or a known one connecting from another host:
  rejected-permanent (1), DICOM UL service-user (1), calling-AE-title-not-recognized (3);
- a peer already holding its ``max_associations``:
  rejected-transient (2), DICOM UL service-provider presentation related (3),
  local-limit-exceeded (2) - the same answer the node gives when ``limits.max_associations``
  is reached (``node.dicom.receiver``).

An accepted peer sees only the presentation contexts it may use: Verification always, storage
only when ``send`` is true and then only its ``sop_classes``; other contexts are rejected with
abstract-syntax-not-supported (PS3.8 9.3.3.2, result 3). Nothing logged here names a patient: only
AE titles, addresses and the reason.

With several receiver processes on the port (``listener.processes``), each peer's associations are
counted across all of them in shared memory (``SharedPeerCounts``), as ``limits.max_associations``
is: the kernel hands a peer's connections to any of the processes.
"""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import multiprocessing
import socket
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pynetdicom import evt, sop_class
from pynetdicom.association import Association
from pynetdicom.events import Event

from node.config import NodeConfig, Peer
from node.logs import fields

log = logging.getLogger(__name__)

REJECTED_PERMANENT = 0x01
REJECTED_TRANSIENT = 0x02
SOURCE_SERVICE_USER = 0x01
SOURCE_PROVIDER_PRESENTATION = 0x03
CALLING_AE_NOT_RECOGNIZED = 0x03
LOCAL_LIMIT_EXCEEDED = 0x02


@dataclass(frozen=True)
class Rejection:
    """An A-ASSOCIATE-RJ: result, source, reason/diagnostic (PS3.8 Table 9-21) and why."""

    result: int
    source: int
    diagnostic: int
    reason: str


def _addresses(host: str) -> set[str]:
    """The IP addresses ``host`` (a name or a literal) stands for; empty when it does not
    resolve."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return set()
    return {_normal(str(info[4][0])) for info in infos}


def _normal(address: str) -> str:
    """``address`` in canonical form; an IPv4-mapped IPv6 address as plain IPv4."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


AE_TITLE_BYTES = 16
"""An AE title is at most 16 characters (PS3.5 Table 6.2-1, AE)."""


class _Slot(ctypes.Structure):
    """One calling AE title and how many associations it holds, in shared memory."""

    _fields_ = [("ae_title", ctypes.c_char * AE_TITLE_BYTES), ("held", ctypes.c_int)]


class SharedPeerCounts:
    """Associations held per calling AE title, counted across receiver processes in shared memory.

    A table of ``slots`` (AE title, count) under one lock; a slot whose count falls to zero is
    free for another AE title. With ``slots`` = ``limits.max_associations``, which is counted
    before the peers are, a free slot is always there for an admitted association. Passed to the
    spawned receiver processes when they start (``multiprocessing`` shared ctypes)."""

    def __init__(self, slots: int, context: Any = None):
        context = context or multiprocessing.get_context("spawn")
        self._table = context.Array(_Slot, slots)

    @staticmethod
    def _key(calling_ae: str) -> bytes:
        return calling_ae.encode("ascii", "replace")[:AE_TITLE_BYTES]

    def admit(self, calling_ae: str, limit: int) -> bool:
        """Count one more association of ``calling_ae`` unless it holds ``limit`` already (or,
        which the node-wide limit rules out, every slot is taken by other AE titles)."""
        key = self._key(calling_ae)
        with self._table.get_lock():
            free = None
            for slot in self._table.get_obj():
                if slot.held > 0 and slot.ae_title == key:
                    if slot.held >= limit:
                        return False
                    slot.held += 1
                    return True
                if slot.held <= 0 and free is None:
                    free = slot
            if free is None:
                return False
            free.ae_title, free.held = key, 1
            return True

    def release(self, calling_ae: str) -> None:
        """One association of ``calling_ae`` counted by ``admit`` has ended."""
        key = self._key(calling_ae)
        with self._table.get_lock():
            for slot in self._table.get_obj():
                if slot.held > 0 and slot.ae_title == key:
                    slot.held -= 1
                    return

    def held(self, calling_ae: str) -> int:
        """How many associations ``calling_ae`` holds now, in all receiver processes."""
        key = self._key(calling_ae)
        with self._table.get_lock():
            return sum(slot.held for slot in self._table.get_obj()
                       if slot.held > 0 and slot.ae_title == key)


def reject(assoc: Association, result: int, source: int, diagnostic: int, reason: str) -> None:
    """From an ``EVT_REQUESTED`` handler: answer ``assoc``'s A-ASSOCIATE-RQ with an
    A-ASSOCIATE-RJ of ``result``, ``source`` and ``diagnostic`` (PS3.8 9.3.4, Table 9-21), as
    pynetdicom rejects one itself (it then skips negotiation), logged on one line with the
    calling AE title, the address and ``reason``."""
    log.warning("association rejected", extra=fields(
        calling_ae=str(assoc.requestor.primitive.calling_ae_title).strip(),
        address=assoc.requestor.address, reason=reason, result=result, source=source,
        diagnostic=diagnostic))
    assoc.acse.send_reject(result, source, diagnostic)
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()


class PeerPolicy:
    """Decides on association requests from the configured ``peers``; with ``shared``, each
    peer's associations are counted there, across the receiver processes (then
    ``on_conn_close`` must be bound to ``EVT_CONN_CLOSE``), otherwise in this process."""

    def __init__(self, config: NodeConfig, storage_classes: Sequence[str],
                 shared: SharedPeerCounts | None = None):
        self._peers = config.peers
        self._accept_unknown = config.accept_unknown_peers
        self._per_peer = config.limits.max_associations_per_peer
        self._storage_classes = frozenset(storage_classes)
        self._lock = threading.Lock()
        self._admitted: weakref.WeakKeyDictionary[Association, str] = weakref.WeakKeyDictionary()
        self._shared = shared
        self._counted: dict[int, str] = {}  # id(association) -> calling AE title, in _shared

    def identify(self, calling_ae: str, address: str) -> tuple[Peer | None, Rejection | None]:
        """The peer a request comes from, or the rejection an unknown requestor gets.

        ``(None, None)`` is an unknown AE title admitted because ``accept_unknown_peers`` is set.
        """
        named = [peer for peer in self._peers if peer.ae_title == calling_ae]
        if not named:
            if self._accept_unknown:
                return None, None
            return None, Rejection(REJECTED_PERMANENT, SOURCE_SERVICE_USER,
                                   CALLING_AE_NOT_RECOGNIZED, "calling AE title is not a peer")
        remote = _normal(address)
        for peer in named:
            if remote in _addresses(peer.host):
                return peer, None
        return None, Rejection(REJECTED_PERMANENT, SOURCE_SERVICE_USER, CALLING_AE_NOT_RECOGNIZED,
                               "known calling AE title from an address not configured for it")

    def allowed_classes(self, peer: Peer | None) -> frozenset[str]:
        """Storage SOP classes ``peer`` may send (an admitted unknown peer: all)."""
        if peer is None:
            return self._storage_classes
        if not peer.send:
            return frozenset()
        if peer.sop_classes is None:
            return self._storage_classes
        return self._storage_classes & set(peer.sop_classes)

    def _over_limit(self, assoc: Association, calling_ae: str, peer: Peer | None) -> bool:
        """Admit ``assoc`` unless the peer already holds its limit; atomic under the lock."""
        limit = peer.max_associations if peer and peer.max_associations else self._per_peer
        if self._shared is not None:
            if not self._shared.admit(calling_ae, limit):
                return True
            with self._lock:
                self._counted[id(assoc)] = calling_ae
            return False
        with self._lock:
            active = sum(1 for other, ae_title in self._admitted.items()
                         if ae_title == calling_ae and other.is_alive()
                         and not (other.is_released or other.is_aborted))
            if active >= limit:
                return True
            self._admitted[assoc] = calling_ae
            return False

    def on_conn_close(self, event: Event) -> None:
        """``EVT_CONN_CLOSE`` handler: an association counted in the shared table ended."""
        with self._lock:
            calling_ae = self._counted.pop(id(event.assoc), None)
        if calling_ae is not None and self._shared is not None:
            self._shared.release(calling_ae)

    def decide(self, assoc: Association) -> tuple[Peer | None, Rejection | None]:
        """Identify the requestor of ``assoc`` and count it against its limit."""
        calling_ae = str(assoc.requestor.primitive.calling_ae_title).strip()
        peer, rejection = self.identify(calling_ae, assoc.requestor.address)
        if rejection is None and self._over_limit(assoc, calling_ae, peer):
            rejection = Rejection(REJECTED_TRANSIENT, SOURCE_PROVIDER_PRESENTATION,
                                  LOCAL_LIMIT_EXCEEDED, "peer holds its maximum of associations")
        return peer, rejection

    def on_requested(self, event: Event) -> None:
        """``EVT_REQUESTED`` handler: reject (PS3.8 9.3.4) or narrow the contexts offered."""
        assoc = event.assoc
        peer, rejection = self.decide(assoc)
        calling_ae = str(assoc.requestor.primitive.calling_ae_title).strip()
        if rejection is not None:
            reject(assoc, rejection.result, rejection.source, rejection.diagnostic,
                   rejection.reason)
            return
        allowed = self.allowed_classes(peer) | {sop_class.Verification}
        assoc.acceptor.supported_contexts = [
            cx for cx in assoc.acceptor.supported_contexts if cx.abstract_syntax in allowed]
        log.info("association admitted", extra=fields(
            calling_ae=calling_ae, address=assoc.requestor.address,
            peer=peer.name if peer else "(unknown, accept_unknown_peers)"))
