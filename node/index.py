"""The durable index: every instance, series, job and delivery is a row in one SQLite database.

WAL journal. Connections are ``synchronous=FULL`` (a committed row survives a power cut), except
the receivers' own (``synchronous=NORMAL``: a committed row survives the node's crash, and a
power cut may take back the last rows; the spool file of each acknowledged instance is durable
before its row is written, and start-up recovery indexes spool files without a row again,
``node.recovery``). Every state change is a row update, so a restarted node resumes where it
stopped.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    sop_class_uid    TEXT NOT NULL,
    study_uid        TEXT NOT NULL,
    series_uid       TEXT NOT NULL,
    path             TEXT NOT NULL,
    size             INTEGER NOT NULL,
    calling_ae       TEXT NOT NULL,
    received_at      REAL NOT NULL,
    peer_host        TEXT,
    sha256           TEXT
);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid);
CREATE TABLE IF NOT EXISTS series (
    series_uid     TEXT PRIMARY KEY,
    study_uid      TEXT NOT NULL,
    modality       TEXT NOT NULL,
    first_received REAL NOT NULL,
    last_received  REAL NOT NULL,
    n_instances    INTEGER NOT NULL,
    stable_at      REAL,
    repaired_at    REAL
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
    preset_hash       TEXT,
    models            TEXT,
    results_removed_at REAL,
    rerun_of          INTEGER,
    timings           TEXT,
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
    sent_at          REAL,
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
CREATE TABLE IF NOT EXISTS totals (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id          INTEGER PRIMARY KEY,
    at          REAL NOT NULL,
    event       TEXT NOT NULL,
    actor       TEXT NOT NULL,
    study_uid   TEXT,
    series_uid  TEXT,
    job_id      INTEGER,
    delivery_id INTEGER,
    detail      TEXT
);
CREATE INDEX IF NOT EXISTS audit_study ON audit(study_uid);
CREATE INDEX IF NOT EXISTS audit_job ON audit(job_id);
"""

ADDED_COLUMNS = (
    ("instances", "peer_host", "TEXT"),
    ("jobs", "preset_hash", "TEXT"),
    ("jobs", "models", "TEXT"),
    ("jobs", "results_removed_at", "REAL"),
    ("jobs", "rerun_of", "INTEGER"),
    ("jobs", "timings", "TEXT"),
    ("outbox", "sent_at", "REAL"),
    ("jobs", "not_before", "REAL"),
    ("instances", "sha256", "TEXT"),
    ("series", "repaired_at", "REAL"),
)
"""Columns added after the first release: an index made before them gets them at open."""

NODE = "node"
"""The audit actor for what the node does by itself; people are ``cli:<user>`` or
``status-page:<user>``."""

SEGMENTATION_NOT_PROCESSED = "segmentation not processed"
"""The audit event of a segmentation that the router can pair with no series (``node.router``);
its detail holds ``seg_sop_uid``, ``modality`` and the one-line ``reason``."""


@dataclass(frozen=True)
class InstanceRow:
    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    path: str
    size: int
    calling_ae: str
    peer_host: str | None = None
    sha256: str | None = None
    """Hex sha256 of the spool file as written; None for rows indexed before it was kept."""


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
class DeliveryTimes:
    """When the send that carried one result object ended with a success status for it
    (``sent_at``: once that association was released, or that HTTP upload answered) and when
    the node found it at the destination (``delivered_at``); epoch seconds or None."""

    destination: str
    sop_instance_uid: str
    sent_at: float | None
    delivered_at: float | None


@dataclass(frozen=True)
class JobTimeline:
    """Where one job's time went: when it was queued, claimed by the runner and finished (epoch
    seconds), the seconds of each pipeline stage (``pipelines.process.StageTimes``; empty before
    it is done) and the times of each of its deliveries."""

    job_id: int
    queued_at: float
    started_at: float | None
    finished_at: float | None
    stages: dict[str, float]
    deliveries: tuple[DeliveryTimes, ...]


@dataclass(frozen=True)
class DeliveryRow:
    id: int
    job_id: int
    destination: str
    path: str
    sop_instance_uid: str
    attempts: int


class IndexDamaged(RuntimeError):
    """The index database cannot be used: SQLite reports it malformed, or its integrity check
    finds damage. ``path`` is the database, ``problem`` SQLite's first complaint (one line)."""

    def __init__(self, path: Path, problem: str):
        super().__init__(f"index {path} is damaged: {problem}")
        self.path = path
        self.problem = problem


class Index:
    """Thread-safe access to the node's SQLite database (one connection, one lock).

    Raises:
        IndexDamaged: when SQLite cannot open or set up the database (e.g. "database disk image
            is malformed").
    """

    def __init__(self, path: Path, *, synchronous: Literal["FULL", "NORMAL"] = "FULL"):
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(SCHEMA)
            for table, column, declaration in ADDED_COLUMNS:
                have = {r["name"] for r in self._db.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise IndexDamaged(path, str(exc).splitlines()[0]) from exc

    def integrity_problems(self, most: int = 10) -> list[str]:
        """SQLite's ``PRAGMA quick_check`` of the whole database: up to ``most`` lines naming
        what is damaged (pages, rows, indices), empty when it is sound. It reads every page
        (seconds for a large index): the node runs it once, at start.
        ``sqlite3.DatabaseError`` raised by the check itself is reported as its message."""
        with self._lock:
            try:
                rows = [str(r[0]) for r in self._db.execute(f"PRAGMA quick_check({int(most)})")]
            except sqlite3.DatabaseError as exc:
                return [str(exc).splitlines()[0]]
        return [] if rows == ["ok"] else rows

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
                """INSERT OR IGNORE INTO instances (sop_instance_uid, sop_class_uid, study_uid,
                   series_uid, path, size, calling_ae, received_at, peer_host, sha256)
                   VALUES (?,?,?,?,?,?,?,?,?,?)""",
                (row.sop_instance_uid, row.sop_class_uid, row.study_uid, row.series_uid, row.path,
                 row.size, row.calling_ae, now, row.peer_host, row.sha256),
            )
            if cursor.rowcount == 0:
                return False
            db.executemany(
                """INSERT INTO totals VALUES (?,?)
                   ON CONFLICT(name) DO UPDATE SET value=value+excluded.value""",
                [("instances_received", 1), ("bytes_received", row.size)],
            )
            db.execute(
                """INSERT INTO series (series_uid, study_uid, modality, first_received,
                   last_received, n_instances) VALUES (?,?,?,?,?,1)
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
        return [_instance_row(r) for r in rows]

    def instance(self, sop_instance_uid: str) -> InstanceRow | None:
        rows = self._query("SELECT * FROM instances WHERE sop_instance_uid=?", (sop_instance_uid,))
        if not rows:
            return None
        return _instance_row(rows[0])

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

    def quietest_receiving(self) -> float | None:
        """The last arrival of the series still receiving (not stable) that has been quiet the
        longest: it is the next to become stable, ``stable_after`` seconds after this. None when
        every series is stable."""
        return self._query(
            "SELECT min(last_received) AS t FROM series WHERE stable_at IS NULL")[0]["t"]

    # -- damaged spool copies -------------------------------------------------------------------

    def instance_files(self, batch: int = 10_000) -> Iterator[tuple[str, str, int]]:
        """(SOP Instance UID, spool path, size) of every indexed instance, in index order, read
        ``batch`` rows at a time: a large index is not held in memory, and rows forgotten while
        the caller iterates (``forget_instance``) do not disturb it."""
        last = 0
        while True:
            rows = self._query(
                """SELECT rowid, sop_instance_uid, path, size FROM instances WHERE rowid>?
                   ORDER BY rowid LIMIT ?""", (last, batch))
            if not rows:
                return
            yield from ((r["sop_instance_uid"], r["path"], r["size"]) for r in rows)
            last = rows[-1]["rowid"]

    def replace_instance_file(self, sop_instance_uid: str, size: int, sha256: str,
                              now: float | None = None) -> None:
        """Record, in one transaction, that the damaged spool copy of an indexed instance was
        replaced by an intact one (``node.ingest``): the row's size and sha256 are the new
        file's, and its series is repaired at ``now`` (``repaired_at``) and receiving again (not
        stable, last arrival ``now``), so the assembly tick marks it stable ``stable_after``
        later and routes it; a failed job that read the damaged copy is then queued again
        (``node.router``)."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            row = db.execute("SELECT series_uid FROM instances WHERE sop_instance_uid=?",
                             (sop_instance_uid,)).fetchone()
            if row is None:
                return
            db.execute("UPDATE instances SET size=?, sha256=? WHERE sop_instance_uid=?",
                       (size, sha256, sop_instance_uid))
            db.execute("""UPDATE series SET repaired_at=?, stable_at=NULL, last_received=?
                          WHERE series_uid=?""", (now, now, row["series_uid"]))

    def forget_instance(self, sop_instance_uid: str, reason: str,
                        now: float | None = None) -> InstanceRow | None:
        """Drop the row of an instance whose spool file is missing or damaged (start-up
        recovery, ``node.recovery``), in one transaction: its series counts one instance less
        and is repaired at ``now`` (``repaired_at``: the instance, sent again, is stored as a
        new one and makes the series receiving; routed then, a failed job that read the damaged
        copy is queued again, ``node.router``); a segmentation's references go (filed again
        when it is routed); and the jobs not finished that read it (of its series, or of it as
        the segmentation) fail with ``reason``, rather than run on a series without it. The
        series stays receiving or stable as it was: routed now, it would be without the
        instance. Returns the row dropped; None when it was not indexed."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            found = db.execute("SELECT * FROM instances WHERE sop_instance_uid=?",
                               (sop_instance_uid,)).fetchone()
            if found is None:
                return None
            row = _instance_row(found)
            db.execute("DELETE FROM instances WHERE sop_instance_uid=?", (sop_instance_uid,))
            db.execute("DELETE FROM seg_refs WHERE seg_sop_uid=?", (sop_instance_uid,))
            db.execute("""UPDATE series SET n_instances=max(n_instances-1, 0), repaired_at=?
                          WHERE series_uid=?""", (now, row.series_uid))
            unfinished = [r["id"] for r in db.execute(
                """SELECT id FROM jobs WHERE state IN ('queued', 'running')
                   AND (source_series_uid=? OR seg_sop_uid=?) ORDER BY id""",
                (row.series_uid, sop_instance_uid))]
            for job_id in unfinished:
                db.execute("UPDATE jobs SET state='failed', reason=?, finished_at=? WHERE id=?",
                           (reason, now, job_id))
                _audit_job(db, job_id, "job failed", detail={"reason": reason})
        return row

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
        inputs_digest: str, rerun_of: int | None = None,
    ) -> int | None:
        """Queue a job; None when a job of the same inputs and preset already exists.
        ``rerun_of`` is the earlier job of the same source, SEG and preset whose inputs changed."""
        with self._transaction() as db:
            cursor = db.execute(
                """INSERT OR IGNORE INTO jobs
                   (source_series_uid, seg_sop_uid, rule, preset, inputs_digest, state,
                    created_at, rerun_of)
                   VALUES (?,?,?,?,?,'queued',?,?)""",
                (source_series_uid, seg_sop_uid, rule, preset, inputs_digest, time.time(),
                 rerun_of),
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

    def claim_job(self, now: float | None = None) -> JobRow | None:
        """Move the oldest queued job that is due (no ``not_before`` after ``now``) to running
        (attempts + 1) and return it."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            row = db.execute(
                """SELECT id FROM jobs WHERE state='queued'
                   AND (not_before IS NULL OR not_before<=?) ORDER BY id LIMIT 1""", (now,)
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state='running', attempts=attempts+1, started_at=? WHERE id=?",
                (time.time(), row["id"]),
            )
            _audit_job(db, row["id"], "job started")
        return self.job(row["id"])

    def finish_job(self, job_id: int, deliveries: list[tuple[str, str, str]],
                   preset_hash: str | None = None,
                   models: dict[str, str] | None = None,
                   timings: dict[str, float] | None = None) -> None:
        """Mark a job done and queue its (destination, path, SOP Instance UID) deliveries in the
        same transaction, so a result is never done without its deliveries. ``preset_hash`` and
        ``models`` (model id -> version) record what made the result, for the audit trail;
        ``timings`` the seconds of each pipeline stage."""
        now = time.time()
        with self._transaction() as db:
            db.execute(
                """UPDATE jobs SET state='done', reason=NULL, finished_at=?, preset_hash=?,
                   models=?, timings=? WHERE id=?""",
                (now, preset_hash, json.dumps(models) if models is not None else None,
                 json.dumps(timings) if timings is not None else None, job_id),
            )
            _audit_job(db, job_id, "job done", detail={
                "preset_hash": preset_hash, "models": models,
                "deliveries": [[dest, uid] for dest, _, uid in deliveries]})
            _queue_deliveries(db, job_id, deliveries, now)

    def queue_early_deliveries(self, job_id: int,
                               deliveries: list[tuple[str, str, str]]) -> None:
        """Queue (destination, path, SOP Instance UID) deliveries of a job that is still running:
        the objects its pipeline wrote before its parametric maps, as the job runner is told of
        them (``node.jobs``; the announced writes of ``pipelines.process.job_plan``).
        ``finish_job`` queues them again with the rest, which changes nothing (one row per
        destination and object)."""
        with self._transaction() as db:
            if _queue_deliveries(db, job_id, deliveries, time.time()):
                _audit_job(db, job_id, "results queued before the job finished", detail={
                    "deliveries": [[dest, uid] for dest, _, uid in deliveries]})

    def fail_job(self, job_id: int, reason: str) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state='failed', reason=?, finished_at=? WHERE id=?",
                (reason, time.time(), job_id),
            )
            _audit_job(db, job_id, "job failed", detail={"reason": reason})

    def requeue_job(self, job_id: int, reason: str, not_before: float | None = None) -> None:
        """Put a running job back in the queue, keeping why its last attempt ended; it is not
        started again before ``not_before`` (epoch seconds) when given."""
        with self._transaction() as db:
            db.execute("UPDATE jobs SET state='queued', reason=?, not_before=? WHERE id=?",
                       (reason, not_before, job_id))
            _audit_job(db, job_id, "job queued again",
                       detail={"reason": reason, "not_before": not_before})

    def retry_jobs(self, ids: list[int] | None = None, actor: str = NODE,
                   event: str = "job retry requested") -> list[int]:
        """Run again: the failed jobs ``ids`` (or, when None, every failed one) go back to the
        queue with attempts 0, due now, their last reason kept until they run; the audit trail
        records ``event``, that ``actor`` (e.g. ``cli:alice``) asked. Returns the ids queued."""
        with self._transaction() as db:
            if ids is None:
                rows = db.execute("SELECT id FROM jobs WHERE state='failed' ORDER BY id")
            else:
                marks = ",".join("?" * len(ids))
                rows = db.execute(f"SELECT id FROM jobs WHERE state='failed' AND id IN ({marks})"
                                  " ORDER BY id", tuple(ids))
            queued = [r["id"] for r in rows.fetchall()]
            db.executemany("UPDATE jobs SET state='queued', attempts=0, not_before=NULL "
                           "WHERE id=?", [(i,) for i in queued])
            for job_id in queued:
                _audit_job(db, job_id, event, actor=actor)
        return queued

    def inputs_repaired_at(self, job_id: int) -> float | None:
        """When a damaged spool copy in the source series of job ``job_id`` or in its
        segmentation's series was last repaired (``repaired_at``: ``replace_instance_file``,
        ``forget_instance``), if that was after the job's last attempt started (after it was
        queued, when it never started): that attempt may have read the damaged copy. None
        otherwise."""
        return self._query(
            """SELECT max(s.repaired_at) AS t FROM jobs j JOIN series s
               ON s.series_uid=j.source_series_uid OR s.series_uid=
                  (SELECT series_uid FROM instances WHERE sop_instance_uid=j.seg_sop_uid)
               WHERE j.id=? AND s.repaired_at>coalesce(j.started_at, j.created_at)""",
            (job_id,))[0]["t"]

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

    def mark_sent(self, delivery_ids: list[int], now: float | None = None) -> None:
        """Record that the destination answered the send of these deliveries with a success
        status (they are delivered once verified, ``mark_verified``)."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            db.executemany("UPDATE outbox SET sent_at=? WHERE id=?",
                           [(now, delivery_id) for delivery_id in delivery_ids])

    def job_timeline(self, job_id: int) -> JobTimeline:
        """When job ``job_id`` was queued, started and finished, its pipeline stages, and when
        each of its result objects was stored and verified at each destination."""
        job = self._query("SELECT * FROM jobs WHERE id=?", (job_id,))[0]
        deliveries = self._query(
            """SELECT destination, sop_instance_uid, sent_at, delivered_at FROM outbox
               WHERE job_id=? ORDER BY id""", (job_id,))
        return JobTimeline(
            job_id, job["created_at"], job["started_at"], job["finished_at"],
            json.loads(job["timings"]) if job["timings"] else {},
            tuple(DeliveryTimes(r["destination"], r["sop_instance_uid"], r["sent_at"],
                                r["delivered_at"]) for r in deliveries))

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
            _audit_delivery(db, delivery_id,
                            "delivery dead-lettered" if retry_at is None else "delivery failed",
                            detail={"error": error, "retry_at": retry_at})

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
            _audit_delivery(db, delivery_id, "delivered", detail={"verified_by": method})

    def last_delivery_id(self) -> int:
        """The highest delivery id so far (0 when none): the outbox's deliveries queued later
        are new to it (``node.outbox``)."""
        [row] = self._query("SELECT COALESCE(MAX(id), 0) AS last FROM outbox")
        return int(row["last"])

    def delivery_rows(self, state: str | None = None) -> list[sqlite3.Row]:
        """Outbox rows with their verification method (NULL when not delivered), by id."""
        sql = """SELECT o.*, c.method AS verified_by FROM outbox o
                 LEFT JOIN delivery_checks c ON c.delivery_id=o.id"""
        if state is None:
            return self._query(sql + " ORDER BY o.id")
        return self._query(sql + " WHERE o.state=? ORDER BY o.id", (state,))

    def retry_deliveries(self, ids: list[int] | None = None, actor: str = NODE) -> list[int]:
        """Send again: the deliveries ``ids`` (or, when None, every dead one) that are not
        delivered go back to pending with attempts 0, due now; the audit trail records that
        ``actor`` (e.g. ``cli:alice``) asked. Returns the ids reset."""
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
            for delivery_id in reset:
                _audit_delivery(db, delivery_id, "delivery retry requested", actor=actor)
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

    # -- status page, metrics, audit trail and retention ----------------------------------------

    def totals(self) -> dict[str, int]:
        """Running totals kept across restarts and clean-ups: instances_received,
        bytes_received."""
        return {r["name"]: r["value"] for r in self._query("SELECT * FROM totals")}

    def add_audit(self, event: str, actor: str = NODE, *, study_uid: str | None = None,
                  series_uid: str | None = None, job_id: int | None = None,
                  delivery_id: int | None = None, detail: dict | None = None) -> None:
        """Append one row to the audit trail."""
        with self._transaction() as db:
            _audit(db, event, actor, study_uid=study_uid, series_uid=series_uid, job_id=job_id,
                   delivery_id=delivery_id, detail=detail)

    def audit_count(self, event: str) -> int:
        """How many audit rows record ``event``."""
        return self._query("SELECT count(*) AS n FROM audit WHERE event=?", (event,))[0]["n"]

    def audit_rows(self, event: str, limit: int) -> list[sqlite3.Row]:
        """The latest ``limit`` audit rows recording ``event``, newest first."""
        return self._query("SELECT * FROM audit WHERE event=? ORDER BY id DESC LIMIT ?",
                           (event, limit))

    def recent_studies(self, limit: int) -> list[sqlite3.Row]:
        """Studies by last arrival: series and instance counts, senders (AE@host)."""
        return self._query(
            """SELECT study_uid, count(DISTINCT series_uid) AS n_series, count(*) AS n_instances,
                      sum(size) AS bytes, min(received_at) AS first_received,
                      max(received_at) AS last_received,
                      group_concat(DISTINCT calling_ae || '@' || coalesce(peer_host, '?'))
                        AS senders
               FROM instances GROUP BY study_uid ORDER BY last_received DESC LIMIT ?""",
            (limit,))

    def recent_series(self, limit: int) -> list[sqlite3.Row]:
        """Series by last arrival, with their state (receiving or stable)."""
        return self._query(
            "SELECT * FROM series ORDER BY last_received DESC LIMIT ?", (limit,))

    def recent_jobs(self, limit: int) -> list[sqlite3.Row]:
        """Jobs, newest first, with the study of their source series."""
        return self._query(
            """SELECT j.*, s.study_uid FROM jobs j
               LEFT JOIN series s ON s.series_uid=j.source_series_uid
               ORDER BY j.id DESC LIMIT ?""", (limit,))

    def failed_jobs_matching(self, word: str, limit: int) -> list[sqlite3.Row]:
        """Failed jobs whose reason contains ``word`` (case-insensitive), newest first."""
        return self._query(
            """SELECT * FROM jobs WHERE state='failed' AND reason LIKE ?
               ORDER BY id DESC LIMIT ?""", (f"%{word}%", limit))

    def jobs_by_state(self) -> dict[str, int]:
        rows = self._query("SELECT state, count(*) AS n FROM jobs GROUP BY state")
        return {r["state"]: r["n"] for r in rows}

    def job_durations(self) -> list[float]:
        """Seconds from start to end of every finished (done or failed) job run."""
        rows = self._query(
            """SELECT finished_at - started_at AS d FROM jobs WHERE state IN ('done', 'failed')
               AND started_at IS NOT NULL AND finished_at IS NOT NULL""")
        return [max(0.0, r["d"]) for r in rows]

    def queue_depths(self) -> dict[str, int]:
        """Work waiting: queued and running jobs, pending and dead deliveries, waiting
        retrievals, series still receiving."""
        row = self._query(
            """SELECT (SELECT count(*) FROM jobs WHERE state='queued') AS jobs_queued,
                      (SELECT count(*) FROM jobs WHERE state='running') AS jobs_running,
                      (SELECT count(*) FROM outbox WHERE state='pending') AS deliveries_pending,
                      (SELECT count(*) FROM outbox WHERE state='dead') AS deliveries_dead,
                      (SELECT count(*) FROM retrievals WHERE state='waiting')
                        AS retrievals_waiting,
                      (SELECT count(*) FROM series WHERE stable_at IS NULL) AS series_receiving""")
        return dict(row[0])

    def versions_in_use(self) -> list[sqlite3.Row]:
        """Preset, preset hash and model versions of done jobs: how many, and the last one."""
        return self._query(
            """SELECT preset, preset_hash, models, count(*) AS jobs,
                      max(finished_at) AS last_finished
               FROM jobs WHERE state='done' GROUP BY preset, preset_hash, models
               ORDER BY last_finished DESC""")

    def oldest_due_delivery(self, now: float | None = None) -> float | None:
        """When the longest-waiting due pending delivery became due; None when none is due."""
        now = time.time() if now is None else now
        row = self._query("""SELECT min(next_attempt_at) AS t FROM outbox
                             WHERE state='pending' AND next_attempt_at<=?""", (now,))
        return row[0]["t"]

    def spool_bytes(self) -> int:
        """Bytes of the instances in the spool, by their index rows."""
        return self._query("SELECT coalesce(sum(size), 0) AS n FROM instances")[0]["n"]

    def study_trail(self, study_uid: str) -> dict[str, list[sqlite3.Row]]:
        """What the index knows of a study: who sent each series (``received``), the jobs that
        read its series, their deliveries, and its audit rows (``events``), oldest first."""
        received = self._query(
            """SELECT series_uid, sop_class_uid, calling_ae, peer_host, count(*) AS n_instances,
                      sum(size) AS bytes, min(received_at) AS first_received,
                      max(received_at) AS last_received
               FROM instances WHERE study_uid=?
               GROUP BY series_uid, sop_class_uid, calling_ae, peer_host
               ORDER BY first_received""", (study_uid,))
        jobs = self._query(
            """SELECT DISTINCT j.* FROM jobs j WHERE j.id IN
                 (SELECT job_id FROM audit WHERE study_uid=? AND job_id IS NOT NULL)
               OR j.source_series_uid IN (SELECT series_uid FROM instances WHERE study_uid=?)
               ORDER BY j.id""", (study_uid, study_uid))
        job_ids = tuple(r["id"] for r in jobs)
        marks = ",".join("?" * len(job_ids))
        deliveries = self._query(
            f"""SELECT o.*, c.method AS verified_by FROM outbox o
                LEFT JOIN delivery_checks c ON c.delivery_id=o.id
                WHERE o.job_id IN ({marks}) ORDER BY o.id""", job_ids) if job_ids else []
        events = self._query(
            f"""SELECT * FROM audit WHERE study_uid=?
                {f"OR job_id IN ({marks})" if job_ids else ""} ORDER BY id""",
            (study_uid, *job_ids))
        return {"received": received, "jobs": jobs, "deliveries": deliveries, "events": events}

    def remove_expired_series(self, received_before: float) -> list[InstanceRow]:
        """Drop from the index every stable series last received before ``received_before``
        that no unfinished work needs, and return its instances, whose files the caller deletes.

        Needed means: a job reading it (as source or SEG) that is not done, a delivery of such a
        job that is not delivered, or a waiting retrieval for it or for its SEG. Each series
        removed leaves an audit row with who sent it, so the trail outlives the files.
        """
        removed: list[InstanceRow] = []
        with self._transaction() as db:
            expired = db.execute(
                """SELECT s.* FROM series s WHERE s.stable_at IS NOT NULL
                   AND s.last_received < ?
                   AND NOT EXISTS (
                     SELECT 1 FROM jobs j LEFT JOIN outbox o ON o.job_id=j.id
                     WHERE (j.source_series_uid=s.series_uid OR j.seg_sop_uid IN
                            (SELECT sop_instance_uid FROM instances WHERE series_uid=s.series_uid))
                     AND (j.state!='done' OR o.state!='delivered'))
                   AND NOT EXISTS (
                     SELECT 1 FROM retrievals r WHERE r.state='waiting'
                     AND (r.series_uid=s.series_uid OR r.seg_sop_uid IN
                          (SELECT sop_instance_uid FROM instances WHERE series_uid=s.series_uid)))
                   ORDER BY s.last_received""", (received_before,)).fetchall()
            for series in expired:
                rows = [_instance_row(r) for r in db.execute(
                    "SELECT * FROM instances WHERE series_uid=?", (series["series_uid"],))]
                senders = sorted({f"{r.calling_ae}@{r.peer_host or '?'}" for r in rows})
                db.execute("DELETE FROM instances WHERE series_uid=?", (series["series_uid"],))
                db.execute("DELETE FROM series WHERE series_uid=?", (series["series_uid"],))
                _audit(db, "spool removed", study_uid=series["study_uid"],
                       series_uid=series["series_uid"],
                       detail={"modality": series["modality"], "instances": len(rows),
                               "bytes": sum(r.size for r in rows), "senders": senders,
                               "first_received": series["first_received"],
                               "last_received": series["last_received"]})
                removed += rows
        return removed

    def expired_results(self, finished_before: float) -> list[int]:
        """Done jobs finished before ``finished_before`` whose every delivery is delivered and
        whose results are not yet removed: the caller deletes their folders, then calls
        ``mark_results_removed`` (a crash in between only repeats the deletion)."""
        rows = self._query(
            """SELECT j.id FROM jobs j WHERE j.state='done' AND j.finished_at < ?
               AND j.results_removed_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.job_id=j.id
                               AND o.state!='delivered')
               ORDER BY j.id""", (finished_before,))
        return [r["id"] for r in rows]

    def mark_results_removed(self, job_id: int) -> None:
        with self._transaction() as db:
            db.execute("UPDATE jobs SET results_removed_at=? WHERE id=?", (time.time(), job_id))
            _audit_job(db, job_id, "results removed")


def _instance_row(r: sqlite3.Row) -> InstanceRow:
    return InstanceRow(r["sop_instance_uid"], r["sop_class_uid"], r["study_uid"],
                       r["series_uid"], r["path"], r["size"], r["calling_ae"], r["peer_host"],
                       r["sha256"])


def _audit(db: sqlite3.Connection, event: str, actor: str = NODE, *, study_uid: str | None = None,
           series_uid: str | None = None, job_id: int | None = None,
           delivery_id: int | None = None, detail: dict | None = None) -> None:
    """Append one row to the audit trail, inside the caller's transaction."""
    db.execute(
        """INSERT INTO audit (at, event, actor, study_uid, series_uid, job_id, delivery_id,
           detail) VALUES (?,?,?,?,?,?,?,?)""",
        (time.time(), event, actor, study_uid, series_uid, job_id, delivery_id,
         json.dumps(detail, sort_keys=True) if detail else None),
    )


def _queue_deliveries(db: sqlite3.Connection, job_id: int,
                      deliveries: list[tuple[str, str, str]], now: float) -> int:
    """Pending outbox rows, due ``now``, for (destination, path, SOP Instance UID) deliveries of
    job ``job_id``; one already there for a destination and object is kept as it is. How many
    rows were added."""
    return db.executemany(
        """INSERT OR IGNORE INTO outbox
           (job_id, destination, path, sop_instance_uid, state, next_attempt_at)
           VALUES (?,?,?,?,'pending',?)""",
        [(job_id, dest, path, uid, now) for dest, path, uid in deliveries],
    ).rowcount


def _audit_job(db: sqlite3.Connection, job_id: int, event: str, actor: str = NODE,
               detail: dict | None = None) -> None:
    """An audit row for a job, filed under the study of its source series."""
    row = db.execute(
        """SELECT j.source_series_uid, j.preset, j.attempts, s.study_uid FROM jobs j
           LEFT JOIN series s ON s.series_uid=j.source_series_uid WHERE j.id=?""",
        (job_id,)).fetchone()
    if row is None:
        return
    _audit(db, event, actor, study_uid=row["study_uid"], series_uid=row["source_series_uid"],
           job_id=job_id, detail={"preset": row["preset"], "attempt": row["attempts"],
                                  **(detail or {})})


def _audit_delivery(db: sqlite3.Connection, delivery_id: int, event: str, actor: str = NODE,
                    detail: dict | None = None) -> None:
    """An audit row for a delivery, filed under the study of its job's source series."""
    row = db.execute(
        """SELECT o.job_id, o.destination, o.sop_instance_uid, j.source_series_uid, s.study_uid
           FROM outbox o JOIN jobs j ON j.id=o.job_id
           LEFT JOIN series s ON s.series_uid=j.source_series_uid WHERE o.id=?""",
        (delivery_id,)).fetchone()
    if row is None:
        return
    _audit(db, event, actor, study_uid=row["study_uid"], series_uid=row["source_series_uid"],
           job_id=row["job_id"], delivery_id=delivery_id,
           detail={"destination": row["destination"], "sop_instance_uid": row["sop_instance_uid"],
                   **(detail or {})})


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
