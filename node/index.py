"""The durable index: every instance, series, job and delivery is a row in one SQLite database.

WAL journal with ``synchronous=FULL``: a committed row survives a power cut, so the receiver may
answer C-STORE success once its row is committed. Every state change is a row update, so a
restarted node resumes where it stopped.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    sop_class_uid    TEXT NOT NULL,
    study_uid        TEXT NOT NULL,
    series_uid       TEXT NOT NULL,
    path             TEXT NOT NULL,
    size             INTEGER NOT NULL,
    calling_ae       TEXT NOT NULL,
    received_at      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid);
CREATE TABLE IF NOT EXISTS series (
    series_uid     TEXT PRIMARY KEY,
    study_uid      TEXT NOT NULL,
    modality       TEXT NOT NULL,
    first_received REAL NOT NULL,
    last_received  REAL NOT NULL,
    n_instances    INTEGER NOT NULL,
    stable_at      REAL
);
CREATE TABLE IF NOT EXISTS seg_refs (
    seg_sop_uid       TEXT NOT NULL,
    seg_series_uid    TEXT NOT NULL,
    source_series_uid TEXT NOT NULL,
    PRIMARY KEY (seg_sop_uid, source_series_uid)
);
CREATE TABLE IF NOT EXISTS jobs (
    id                INTEGER PRIMARY KEY,
    source_series_uid TEXT NOT NULL,
    seg_sop_uid       TEXT NOT NULL,
    rule              TEXT NOT NULL,
    preset            TEXT NOT NULL,
    inputs_digest     TEXT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
    attempts          INTEGER NOT NULL DEFAULT 0,
    reason            TEXT,
    created_at        REAL NOT NULL,
    started_at        REAL,
    finished_at       REAL,
    UNIQUE (source_series_uid, seg_sop_uid, preset, inputs_digest)
);
CREATE TABLE IF NOT EXISTS outbox (
    id               INTEGER PRIMARY KEY,
    job_id           INTEGER NOT NULL REFERENCES jobs(id),
    destination      TEXT NOT NULL,
    path             TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL NOT NULL,
    last_error       TEXT,
    delivered_at     REAL,
    UNIQUE (destination, sop_instance_uid)
);
CREATE TABLE IF NOT EXISTS delivery_checks (
    delivery_id INTEGER PRIMARY KEY REFERENCES outbox(id),
    method      TEXT NOT NULL,
    checked_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS feed_state (
    feed       TEXT PRIMARY KEY,
    last_seq   INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS retrievals (
    series_uid      TEXT PRIMARY KEY,
    study_uid       TEXT NOT NULL,
    seg_sop_uid     TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('waiting', 'fetched', 'received', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    requested_at    REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    reason          TEXT,
    finished_at     REAL
);
"""


@dataclass(frozen=True)
class InstanceRow:
    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    path: str
    size: int
    calling_ae: str


@dataclass(frozen=True)
class SeriesRow:
    series_uid: str
    study_uid: str
    modality: str
    n_instances: int
    stable_at: float | None


@dataclass(frozen=True)
class JobRow:
    id: int
    source_series_uid: str
    seg_sop_uid: str
    rule: str
    preset: str
    inputs_digest: str
    state: str
    attempts: int
    reason: str | None


@dataclass(frozen=True)
class RetrievalRow:
    """A source series the node asked for because a segmentation references it."""

    series_uid: str
    study_uid: str
    seg_sop_uid: str
    state: str
    attempts: int
    requested_at: float
    reason: str | None


@dataclass(frozen=True)
class DeliveryRow:
    id: int
    job_id: int
    destination: str
    path: str
    sop_instance_uid: str
    attempts: int


class Index:
    """Thread-safe access to the node's SQLite database (one connection, one lock)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # -- instances and series -------------------------------------------------------------------

    def has_instance(self, sop_instance_uid: str) -> bool:
        return bool(
            self._query("SELECT 1 FROM instances WHERE sop_instance_uid=?", (sop_instance_uid,))
        )

    def add_instance(self, row: InstanceRow, modality: str, now: float | None = None) -> bool:
        """Record a stored instance and touch its series; False when it was already indexed."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO instances VALUES (?,?,?,?,?,?,?,?)",
                (row.sop_instance_uid, row.sop_class_uid, row.study_uid, row.series_uid, row.path,
                 row.size, row.calling_ae, now),
            )
            if cursor.rowcount == 0:
                return False
            db.execute(
                """INSERT INTO series VALUES (?,?,?,?,?,1,NULL)
                   ON CONFLICT(series_uid) DO UPDATE SET
                       last_received=excluded.last_received,
                       n_instances=n_instances+1,
                       stable_at=NULL""",
                (row.series_uid, row.study_uid, modality, now, now),
            )
            return True

    def instances_of(self, series_uid: str) -> list[InstanceRow]:
        rows = self._query(
            "SELECT * FROM instances WHERE series_uid=? ORDER BY received_at", (series_uid,)
        )
        return [
            InstanceRow(r["sop_instance_uid"], r["sop_class_uid"], r["study_uid"],
                        r["series_uid"], r["path"], r["size"], r["calling_ae"])
            for r in rows
        ]

    def instance(self, sop_instance_uid: str) -> InstanceRow | None:
        rows = self._query("SELECT * FROM instances WHERE sop_instance_uid=?", (sop_instance_uid,))
        if not rows:
            return None
        r = rows[0]
        return InstanceRow(r["sop_instance_uid"], r["sop_class_uid"], r["study_uid"],
                           r["series_uid"], r["path"], r["size"], r["calling_ae"])

    def series(self, series_uid: str) -> SeriesRow | None:
        rows = self._query("SELECT * FROM series WHERE series_uid=?", (series_uid,))
        return _series_row(rows[0]) if rows else None

    def mark_stable(self, quiet_since: float, now: float | None = None) -> list[SeriesRow]:
        """Mark series whose last instance came before ``quiet_since`` as stable; return them."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            rows = db.execute(
                "SELECT * FROM series WHERE stable_at IS NULL AND last_received < ?",
                (quiet_since,),
            ).fetchall()
            db.executemany(
                "UPDATE series SET stable_at=? WHERE series_uid=?",
                [(now, r["series_uid"]) for r in rows],
            )
        return [_series_row(r) for r in rows]

    # -- segmentation references ----------------------------------------------------------------

    def add_seg_refs(self, seg_sop_uid: str, seg_series_uid: str, sources: set[str]) -> None:
        with self._transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO seg_refs VALUES (?,?,?)",
                [(seg_sop_uid, seg_series_uid, s) for s in sorted(sources)],
            )

    def segs_referencing(self, source_series_uid: str) -> list[str]:
        rows = self._query(
            "SELECT seg_sop_uid FROM seg_refs WHERE source_series_uid=? ORDER BY seg_sop_uid",
            (source_series_uid,),
        )
        return [r["seg_sop_uid"] for r in rows]

    # -- jobs -----------------------------------------------------------------------------------

    def add_job(
        self, source_series_uid: str, seg_sop_uid: str, rule: str, preset: str,
        inputs_digest: str,
    ) -> int | None:
        """Queue a job; None when a job of the same inputs and preset already exists."""
        with self._transaction() as db:
            cursor = db.execute(
                """INSERT OR IGNORE INTO jobs
                   (source_series_uid, seg_sop_uid, rule, preset, inputs_digest, state,
                    created_at)
                   VALUES (?,?,?,?,?,'queued',?)""",
                (source_series_uid, seg_sop_uid, rule, preset, inputs_digest, time.time()),
            )
            return cursor.lastrowid if cursor.rowcount else None

    def jobs_for(self, source_series_uid: str, seg_sop_uid: str, preset: str) -> list[JobRow]:
        """Every job, of any inputs, for this source series, SEG instance and preset."""
        rows = self._query(
            """SELECT * FROM jobs WHERE source_series_uid=? AND seg_sop_uid=? AND preset=?
               ORDER BY id""",
            (source_series_uid, seg_sop_uid, preset),
        )
        return [_job_row(r) for r in rows]

    def claim_job(self) -> JobRow | None:
        """Move the oldest queued job to running (attempts + 1) and return it."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE state='queued' ORDER BY id LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state='running', attempts=attempts+1, started_at=? WHERE id=?",
                (time.time(), row["id"]),
            )
        return self.job(row["id"])

    def finish_job(self, job_id: int, deliveries: list[tuple[str, str, str]]) -> None:
        """Mark a job done and queue its (destination, path, SOP Instance UID) deliveries in the
        same transaction, so a result is never done without its deliveries."""
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state='done', reason=NULL, finished_at=? WHERE id=?", (now, job_id)
            )
            db.executemany(
                """INSERT OR IGNORE INTO outbox
                   (job_id, destination, path, sop_instance_uid, state, next_attempt_at)
                   VALUES (?,?,?,?,'pending',?)""",
                [(job_id, dest, path, uid, now) for dest, path, uid in deliveries],
            )

    def fail_job(self, job_id: int, reason: str) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state='failed', reason=?, finished_at=? WHERE id=?",
                (reason, time.time(), job_id),
            )

    def requeue_job(self, job_id: int, reason: str) -> None:
        """Put a running job back in the queue, keeping why its last attempt ended."""
        with self._transaction() as db:
            db.execute("UPDATE jobs SET state='queued', reason=? WHERE id=?", (reason, job_id))

    def requeue_interrupted_jobs(self) -> int:
        """Jobs left 'running' by a stopped node go back to the queue; returns how many."""
        with self._transaction() as db:
            return db.execute("UPDATE jobs SET state='queued' WHERE state='running'").rowcount

    def job(self, job_id: int) -> JobRow:
        return _job_row(self._query("SELECT * FROM jobs WHERE id=?", (job_id,))[0])

    def jobs(self, state: str | None = None) -> list[JobRow]:
        if state is None:
            rows = self._query("SELECT * FROM jobs ORDER BY id")
        else:
            rows = self._query("SELECT * FROM jobs WHERE state=? ORDER BY id", (state,))
        return [_job_row(r) for r in rows]

    # -- outbox ---------------------------------------------------------------------------------

    def due_deliveries(self, now: float | None = None) -> list[DeliveryRow]:
        now = time.time() if now is None else now
        rows = self._query(
            "SELECT * FROM outbox WHERE state='pending' AND next_attempt_at<=? ORDER BY id", (now,)
        )
        return [
            DeliveryRow(r["id"], r["job_id"], r["destination"], r["path"], r["sop_instance_uid"],
                        r["attempts"])
            for r in rows
        ]

    def mark_delivered(self, delivery_id: int) -> None:
        with self._transaction() as db:
            db.execute(
                """UPDATE outbox SET state='delivered', attempts=attempts+1, last_error=NULL,
                   delivered_at=? WHERE id=?""",
                (time.time(), delivery_id),
            )

    def mark_attempt_failed(self, delivery_id: int, error: str, retry_at: float | None) -> None:
        """Record a failed attempt; ``retry_at`` None dead-letters the delivery."""
        with self._transaction() as db:
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

    def deliveries(self, job_id: int | None = None) -> list[sqlite3.Row]:
        if job_id is None:
            return self._query("SELECT * FROM outbox ORDER BY id")
        return self._query("SELECT * FROM outbox WHERE job_id=? ORDER BY id", (job_id,))


    # -- delivery order, verification and manual retry (outbox) ---------------------------------

    def due_in_order(self, now: float | None = None) -> list[DeliveryRow]:
        """Due pending deliveries, by destination then id, stopping for each destination at its
        first pending delivery that is not due yet: a destination receives in outbox order."""
        now = time.time() if now is None else now
        rows = self._query(
            """SELECT * FROM outbox o WHERE state='pending' AND next_attempt_at<=?
               AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.destination=o.destination
                               AND p.state='pending' AND p.id<o.id AND p.next_attempt_at>?)
               ORDER BY destination, id""",
            (now, now),
        )
        return [
            DeliveryRow(r["id"], r["job_id"], r["destination"], r["path"], r["sop_instance_uid"],
                        r["attempts"])
            for r in rows
        ]

    def mark_verified(self, delivery_id: int, method: str) -> None:
        """Mark a delivery delivered and record how its presence at the destination was
        established (``c-find``, ``orthanc-lookup``, or ``status only`` when not checked)."""
        now = time.time()
        with self._transaction() as db:
            db.execute(
                """UPDATE outbox SET state='delivered', attempts=attempts+1, last_error=NULL,
                   delivered_at=? WHERE id=?""",
                (now, delivery_id),
            )
            db.execute("INSERT OR REPLACE INTO delivery_checks VALUES (?,?,?)",
                       (delivery_id, method, now))

    def delivery_rows(self, state: str | None = None) -> list[sqlite3.Row]:
        """Outbox rows with their verification method (NULL when not delivered), by id."""
        sql = """SELECT o.*, c.method AS verified_by FROM outbox o
                 LEFT JOIN delivery_checks c ON c.delivery_id=o.id"""
        if state is None:
            return self._query(sql + " ORDER BY o.id")
        return self._query(sql + " WHERE o.state=? ORDER BY o.id", (state,))

    def retry_deliveries(self, ids: list[int] | None = None) -> list[int]:
        """Send again: the deliveries ``ids`` (or, when None, every dead one) that are not
        delivered go back to pending with attempts 0, due now. Returns the ids reset."""
        with self._transaction() as db:
            if ids is None:
                rows = db.execute("SELECT id FROM outbox WHERE state='dead' ORDER BY id")
            else:
                marks = ",".join("?" * len(ids))
                rows = db.execute(f"SELECT id FROM outbox WHERE state!='delivered' AND id IN "
                                  f"({marks}) ORDER BY id", tuple(ids))
            reset = [r["id"] for r in rows.fetchall()]
            db.executemany(
                "UPDATE outbox SET state='pending', attempts=0, next_attempt_at=? WHERE id=?",
                [(time.time(), i) for i in reset],
            )
        return reset

    # -- pull mode: position in each Orthanc change feed ----------------------------------------

    def feed_seq(self, feed: str) -> int | None:
        """The last change of ``feed`` whose instances are all stored; None before the first."""
        rows = self._query("SELECT last_seq FROM feed_state WHERE feed=?", (feed,))
        return rows[0]["last_seq"] if rows else None

    def set_feed_seq(self, feed: str, seq: int) -> None:
        with self._transaction() as db:
            db.execute(
                """INSERT INTO feed_state VALUES (?,?,?) ON CONFLICT(feed) DO UPDATE SET
                   last_seq=excluded.last_seq, updated_at=excluded.updated_at""",
                (feed, seq, time.time()),
            )

    # -- retrieval of missing source series -----------------------------------------------------

    def request_retrieval(self, series_uid: str, study_uid: str, seg_sop_uid: str) -> bool:
        """Ask for a source series a segmentation references; False when already asked."""
        now = time.time()
        with self._transaction() as db:
            cursor = db.execute(
                """INSERT OR IGNORE INTO retrievals
                   (series_uid, study_uid, seg_sop_uid, state, requested_at, next_attempt_at)
                   VALUES (?,?,?,'waiting',?,?)""",
                (series_uid, study_uid, seg_sop_uid, now, now),
            )
            return cursor.rowcount > 0

    def due_retrievals(self, now: float | None = None) -> list[RetrievalRow]:
        now = time.time() if now is None else now
        rows = self._query(
            """SELECT * FROM retrievals WHERE state='waiting' AND next_attempt_at<=?
               ORDER BY requested_at""", (now,))
        return [_retrieval_row(r) for r in rows]

    def retrieval_tried(self, series_uid: str, reason: str, retry_at: float) -> None:
        """Record a fetch that brought nothing; try again at ``retry_at``."""
        with self._transaction() as db:
            db.execute(
                """UPDATE retrievals SET attempts=attempts+1, reason=?, next_attempt_at=?
                   WHERE series_uid=?""",
                (reason, retry_at, series_uid),
            )

    def finish_retrieval(self, series_uid: str, state: str, reason: str | None = None) -> None:
        """End a retrieval: ``fetched`` (the node got it), ``received`` (it came by itself) or
        ``failed`` (``reason`` says why)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE retrievals SET state=?, reason=?, finished_at=? WHERE series_uid=?",
                (state, reason, time.time(), series_uid),
            )

    def retrievals(self, state: str | None = None) -> list[RetrievalRow]:
        if state is None:
            rows = self._query("SELECT * FROM retrievals ORDER BY requested_at")
        else:
            rows = self._query(
                "SELECT * FROM retrievals WHERE state=? ORDER BY requested_at", (state,))
        return [_retrieval_row(r) for r in rows]


def _retrieval_row(r: sqlite3.Row) -> RetrievalRow:
    return RetrievalRow(r["series_uid"], r["study_uid"], r["seg_sop_uid"], r["state"],
                        r["attempts"], r["requested_at"], r["reason"])


def _series_row(r: sqlite3.Row) -> SeriesRow:
    return SeriesRow(
        r["series_uid"], r["study_uid"], r["modality"], r["n_instances"], r["stable_at"]
    )


def _job_row(r: sqlite3.Row) -> JobRow:
    return JobRow(r["id"], r["source_series_uid"], r["seg_sop_uid"], r["rule"], r["preset"],
                  r["inputs_digest"], r["state"], r["attempts"], r["reason"])
