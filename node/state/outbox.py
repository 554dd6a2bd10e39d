"""Deliveries (``outbox``, ``delivery_checks``): one row per result object and destination,
sent in outbox order, retried, verified or dead-lettered, and sent again on request."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from node.clock import Clock
from node.state.audit import NODE, record_delivery, record_job
from node.state.db import Database


@dataclass(frozen=True)
class DeliveryRow:
    id: int
    job_id: int
    destination: str
    path: str
    sop_instance_uid: str
    attempts: int


def queue_deliveries(db: sqlite3.Connection, job_id: int,
                     deliveries: list[tuple[str, str, str]], now: float) -> int:
    """Pending outbox rows, due ``now``, for (destination, path, SOP Instance UID) deliveries of
    job ``job_id``, inside the caller's transaction; one already there for a destination and
    object is kept as it is. How many rows were added."""
    return db.executemany(
        """INSERT OR IGNORE INTO outbox
           (job_id, destination, path, sop_instance_uid, state, next_attempt_at)
           VALUES (?,?,?,?,'pending',?)""",
        [(job_id, dest, path, uid, now) for dest, path, uid in deliveries],
    ).rowcount


def _delivery_row(r: sqlite3.Row) -> DeliveryRow:
    return DeliveryRow(r["id"], r["job_id"], r["destination"], r["path"], r["sop_instance_uid"],
                       r["attempts"])


class OutboxStore:
    """Deliveries of one index (``Index.outbox``)."""

    def __init__(self, db: Database, clock: Clock):
        self._db = db
        self._clock = clock

    def queue_early(self, job_id: int, deliveries: list[tuple[str, str, str]]) -> None:
        """Queue (destination, path, SOP Instance UID) deliveries of a job that is still running:
        the objects its pipeline wrote before its parametric maps, as the job runner is told of
        them (``node.flow.jobs``; the announced writes of ``pipelines.process.job_plan``).
        ``JobStore.finish`` queues them again with the rest, which changes nothing (one row per
        destination and object)."""
        with self._db.transaction() as db:
            now = self._clock.time()
            if queue_deliveries(db, job_id, deliveries, now):
                record_job(db, now, job_id, "results queued before the job finished", detail={
                    "deliveries": [[dest, uid] for dest, _, uid in deliveries]})

    def due_in_order(self) -> list[DeliveryRow]:
        """Due pending deliveries, by destination then id, stopping for each destination at its
        first pending delivery that is not due yet: a destination receives in outbox order."""
        now = self._clock.time()
        rows = self._db.query(
            """SELECT * FROM outbox o WHERE state='pending' AND next_attempt_at<=?
               AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.destination=o.destination
                               AND p.state='pending' AND p.id<o.id AND p.next_attempt_at>?)
               ORDER BY destination, id""",
            (now, now),
        )
        return [_delivery_row(r) for r in rows]

    def mark_sent(self, delivery_ids: list[int], now: float | None = None) -> None:
        """Record that the destination answered the send of these deliveries with a success
        status (they are delivered once verified, ``mark_verified``)."""
        now = self._clock.time() if now is None else now
        with self._db.transaction() as db:
            db.executemany("UPDATE outbox SET sent_at=? WHERE id=?",
                           [(now, delivery_id) for delivery_id in delivery_ids])

    def mark_attempt_failed(self, delivery_id: int, error: str, retry_at: float | None) -> None:
        """Record a failed attempt; ``retry_at`` None dead-letters the delivery."""
        with self._db.transaction() as db:
            if retry_at is None:
                db.execute(
                    "UPDATE outbox SET state='dead', attempts=attempts+1, last_error=? WHERE id=?",
                    (error, delivery_id),
                )
            else:
                db.execute(
                    """UPDATE outbox SET attempts=attempts+1, last_error=?, next_attempt_at=?
                       WHERE id=?""",
                    (error, retry_at, delivery_id),
                )
            record_delivery(db, self._clock.time(), delivery_id,
                            "delivery dead-lettered" if retry_at is None else "delivery failed",
                            detail={"error": error, "retry_at": retry_at})

    def mark_verified(self, delivery_id: int, method: str) -> None:
        """Mark a delivery delivered and record how its presence at the destination was
        established (``c-find``, ``orthanc-lookup``, or ``status only`` when not checked)."""
        now = self._clock.time()
        with self._db.transaction() as db:
            db.execute(
                """UPDATE outbox SET state='delivered', attempts=attempts+1, last_error=NULL,
                   delivered_at=? WHERE id=?""",
                (now, delivery_id),
            )
            db.execute("INSERT OR REPLACE INTO delivery_checks VALUES (?,?,?)",
                       (delivery_id, method, now))
            record_delivery(db, now, delivery_id, "delivered", detail={"verified_by": method})

    def undelivered_elsewhere(self, job_id: int, destination: str) -> int:
        """How many deliveries of job ``job_id`` to destinations other than ``destination`` are
        not delivered (pending or dead)."""
        [row] = self._db.query(
            """SELECT count(*) AS n FROM outbox
               WHERE job_id=? AND destination<>? AND state<>'delivered'""",
            (job_id, destination))
        return int(row["n"])

    def all(self, job_id: int | None = None) -> list[sqlite3.Row]:
        if job_id is None:
            return self._db.query("SELECT * FROM outbox ORDER BY id")
        return self._db.query("SELECT * FROM outbox WHERE job_id=? ORDER BY id", (job_id,))

    def with_checks(self, state: str | None = None) -> list[sqlite3.Row]:
        """Outbox rows with their verification method (NULL when not delivered), by id."""
        sql = """SELECT o.*, c.method AS verified_by FROM outbox o
                 LEFT JOIN delivery_checks c ON c.delivery_id=o.id"""
        if state is None:
            return self._db.query(sql + " ORDER BY o.id")
        return self._db.query(sql + " WHERE o.state=? ORDER BY o.id", (state,))

    def last_id(self) -> int:
        """The highest delivery id so far (0 when none): the outbox's deliveries queued later
        are new to it (``node.flow.outbox``)."""
        [row] = self._db.query("SELECT COALESCE(MAX(id), 0) AS last FROM outbox")
        return int(row["last"])

    def retry(self, ids: list[int] | None = None, actor: str = NODE) -> list[int]:
        """Send again: the deliveries ``ids`` (or, when None, every dead one) that are not
        delivered go back to pending with attempts 0, due now; the audit trail records that
        ``actor`` (e.g. ``cli:alice``) asked. Returns the ids reset."""
        with self._db.transaction() as db:
            if ids is None:
                rows = db.execute("SELECT id FROM outbox WHERE state='dead' ORDER BY id")
            else:
                marks = ",".join("?" * len(ids))
                rows = db.execute(f"SELECT id FROM outbox WHERE state!='delivered' AND id IN "
                                  f"({marks}) ORDER BY id", tuple(ids))
            reset = [r["id"] for r in rows.fetchall()]
            now = self._clock.time()
            db.executemany(
                "UPDATE outbox SET state='pending', attempts=0, next_attempt_at=? WHERE id=?",
                [(now, i) for i in reset],
            )
            for delivery_id in reset:
                record_delivery(db, now, delivery_id, "delivery retry requested", actor=actor)
        return reset
