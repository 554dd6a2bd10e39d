"""Connections the listener has accepted whose A-ASSOCIATE-RQ has not yet arrived whole: one
absolute deadline each, and caps on how many wait at once, per source address and in all.

Before an association exists (PS3.8 9.2: from the transport connection, Sta2, to the
A-ASSOCIATE-RQ, Evt6) a peer is nobody: it has not said its AE title, so no peer policy applies,
and every byte it sends is read by a thread of its own. A socket timeout bounds each read, not
the sum of them: a peer that sends a PDU header and then one byte every few seconds, or a TLS
record header and then nothing, would hold its connection (and, counted by pynetdicom, a share of
``limits.max_associations``) for ever. Here:

- every accepted connection gets ``limits.establish_timeout`` seconds, from accept, for the TLS
  handshake and the A-ASSOCIATE-RQ together; when they pass, its socket is shut down, which ends
  any read that is blocked on it, and the association thread with it;
- at most ``limits.max_pending_per_address`` connections from one address and
  ``limits.max_pending`` in all wait at once (per receiver process); a new connection beyond
  either cap closes the longest-waiting one of that address (or of all), which has had the
  longest time to send its request, so that a peer's own fresh connection gets through while
  idle or trickling ones from the same address are cut;
- a connection whose A-ASSOCIATE-RQ has arrived (``settle``) leaves this table before it is
  counted against the association limits, so waiting connections never take an association's
  place.

Every connection closed here is logged on one line with its address and the reason; nothing
else of it (it has sent nothing that could name a patient).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from node.logs import fields

log = logging.getLogger(__name__)


@dataclass
class _Waiting:
    """An accepted connection without its A-ASSOCIATE-RQ yet."""

    sock: socket.socket
    address: str
    accepted: float
    owner: object | None = field(default=None)  # the association once pynetdicom made it


class PendingConnections:
    """The listener's waiting connections: ``deadline`` seconds each from accept,
    ``per_address`` at once from one address, ``total`` at once in all.

    The accept loop calls ``arrived``; the association's handlers call ``attach`` (the
    connection has an association object), ``settle`` (its A-ASSOCIATE-RQ arrived: it leaves the
    table) and ``forget`` (its connection closed first). A watcher thread (``start``/``stop``)
    cuts connections whose deadline has passed.
    """

    def __init__(self, deadline: float, per_address: int, total: int,
                 clock: Callable[[], float] = time.monotonic):
        self._deadline = deadline
        self._per_address = per_address
        self._total = total
        self._clock = clock
        self._waiting: dict[socket.socket, _Waiting] = {}  # in order of arrival: oldest first
        self._owners: dict[int, socket.socket] = {}  # id(association) -> its socket
        self._changed = threading.Condition()
        self._stopped = False
        self._watcher: threading.Thread | None = None

    def __len__(self) -> int:
        with self._changed:
            return len(self._waiting)

    def from_address(self, address: str) -> int:
        """How many connections from ``address`` wait now."""
        with self._changed:
            return sum(1 for waiting in self._waiting.values() if waiting.address == address)

    def arrived(self, sock: socket.socket, address: str) -> None:
        """Count the newly accepted ``sock`` from ``address``; at a cap, cut the longest-waiting
        connection of that address (``max_pending_per_address``) or of all
        (``max_pending``) to make room."""
        cut: list[tuple[_Waiting, str]] = []
        with self._changed:
            same = [waiting for waiting in self._waiting.values() if waiting.address == address]
            if len(same) >= self._per_address:
                cut.append((same[0], f"{len(same)} connections from this address wait for "
                            "their A-ASSOCIATE-RQ (limits.max_pending_per_address): the "
                            "longest-waiting is closed for a new one"))
            elif len(self._waiting) >= self._total:
                cut.append((next(iter(self._waiting.values())),
                            f"{len(self._waiting)} connections wait for their A-ASSOCIATE-RQ "
                            "(limits.max_pending): the longest-waiting is closed for a new one"))
            for waiting, _ in cut:
                self._remove(waiting.sock)
            self._waiting[sock] = _Waiting(sock, address, self._clock())
            self._changed.notify()
        for waiting, reason in cut:
            self._cut(waiting, reason)

    def attach(self, sock: socket.socket | None, owner: object) -> None:
        """``owner`` (the association pynetdicom made for ``sock``) is how ``settle`` and
        ``forget`` will name this connection."""
        with self._changed:
            waiting = self._waiting.get(sock) if sock is not None else None
            if waiting is not None:
                waiting.owner = owner
                self._owners[id(owner)] = waiting.sock

    def settle(self, owner: object) -> bool:
        """The A-ASSOCIATE-RQ of ``owner``'s connection arrived: it no longer waits. False when
        the connection was cut meanwhile (its deadline passed, or a cap made room)."""
        with self._changed:
            sock = self._owners.pop(id(owner), None)
            return sock is not None and self._waiting.pop(sock, None) is not None

    def forget(self, key: object) -> bool:
        """The connection of ``key`` (an owner, or the socket before it had one) closed before
        its A-ASSOCIATE-RQ arrived; True when it was still waiting."""
        with self._changed:
            sock = self._owners.pop(id(key), None)
            if sock is None and isinstance(key, socket.socket):
                sock = key
            return sock is not None and self._remove(sock)

    def remaining(self, sock: socket.socket) -> float:
        """Seconds left before ``sock``'s deadline (0 when it no longer waits)."""
        with self._changed:
            waiting = self._waiting.get(sock)
            if waiting is None:
                return 0.0
            return max(0.0, waiting.accepted + self._deadline - self._clock())

    def start(self) -> None:
        """Start the watcher thread that cuts connections at their deadline."""
        self._watcher = threading.Thread(target=self._watch, name="pending-connections",
                                         daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        """Stop the watcher (the connections still waiting are left to the listener's end)."""
        with self._changed:
            self._stopped = True
            self._changed.notify()
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None

    def _remove(self, sock: socket.socket) -> bool:
        """Take ``sock`` out of the table (the lock held); True when it was there."""
        waiting = self._waiting.pop(sock, None)
        if waiting is None:
            return False
        if waiting.owner is not None:
            self._owners.pop(id(waiting.owner), None)
        return True

    def _watch(self) -> None:
        while True:
            expired: list[_Waiting] = []
            with self._changed:
                if self._stopped:
                    return
                now = self._clock()
                for waiting in list(self._waiting.values()):  # oldest first
                    if waiting.accepted + self._deadline > now:
                        break
                    expired.append(waiting)
                    self._remove(waiting.sock)
                if not expired:
                    oldest = next(iter(self._waiting.values()), None)
                    self._changed.wait(None if oldest is None else
                                       oldest.accepted + self._deadline - now)
                    continue
            for waiting in expired:
                self._cut(waiting, f"no A-ASSOCIATE-RQ within limits.establish_timeout "
                          f"({self._deadline:g} s from accept, TLS handshake included)")

    def _cut(self, waiting: _Waiting, reason: str) -> None:
        """Shut ``waiting``'s socket down (a read blocked on it returns at once, so the thread
        reading ends the connection: PS3.8 9.2.3, Evt17 in Sta2) and log why."""
        log.warning("connection refused", extra=fields(
            address=waiting.address, reason=reason,
            waited_s=round(self._clock() - waiting.accepted, 3)))
        with contextlib.suppress(OSError):
            # the plain socket's shutdown, also for a TLS socket: SSLSocket.shutdown would drop
            # its SSL object under a thread that may be reading through it
            socket.socket.shutdown(waiting.sock, socket.SHUT_RDWR)
