"""Jobs (``jobs``): queued, claimed, finished with their deliveries queued in the same
transaction (``node.state.outbox.queue_deliveries``), failed, queued again or retried; each
job's timeline, and the expiry of its results. A study job's series by role (``job_series``) and
the segmentations waiting for a study rule's required roles (``study_waits``)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

from node.clock import Clock
from node.state.audit import NODE, record_job
from node.state.db import Database
from node.state.outbox import queue_deliveries
from node.state.priors import add_pending


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
    priority: int = 1  # node.config.PRIORITIES


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
    seconds), the seconds of each pipeline stage (``pipelines.outputs.result.StageTimes``; empty
    before it is done) and the times of each of its deliveries."""

    job_id: int
    queued_at: float
    started_at: float | None
    finished_at: float | None
    stages: dict[str, float]
    deliveries: tuple[DeliveryTimes, ...]


@dataclass(frozen=True)
class JobSeries:
    """One series of a study job: the role it plays, its Series Instance UID and the preset
    measured on it."""

    role: str
    series_uid: str
    preset: str


@dataclass(frozen=True)
class StudyWait:
    """A stable segmentation whose study rule waits for a required role: since when, on which
    series it was drawn, of which study."""

    rule: str
    seg_sop_uid: str
    study_uid: str
    source_series_uid: str
    since: float


def job_row(r: sqlite3.Row) -> JobRow:
    return JobRow(r["id"], r["source_series_uid"], r["seg_sop_uid"], r["rule"], r["preset"],
                  r["inputs_digest"], r["state"], r["attempts"], r["reason"], r["priority"])


class JobStore:
    """Jobs of one index (``Index.jobs``)."""

    def __init__(self, db: Database, clock: Clock):
        self._db = db
        self._clock = clock

    def add(
        self, source_series_uid: str, seg_sop_uid: str, rule: str, preset: str,
        inputs_digest: str, rerun_of: int | None = None, priority: int = 1,
        prior: bool = False,
    ) -> int | None:
        """Queue a job; None when a job of the same inputs and preset already exists.
        ``rerun_of`` is the earlier job of the same source, SEG and preset whose inputs changed;
        ``priority`` orders the queue (``node.config.PRIORITIES``: 0 first); with ``prior`` its
        prior lookup (``job_priors``, pending) in the same transaction."""
        with self._db.transaction() as db:
            cursor = db.execute(
                """INSERT OR IGNORE INTO jobs
                   (source_series_uid, seg_sop_uid, rule, preset, inputs_digest, state,
                    created_at, rerun_of, priority)
                   VALUES (?,?,?,?,?,'queued',?,?,?)""",
                (source_series_uid, seg_sop_uid, rule, preset, inputs_digest, self._clock.time(),
                 rerun_of, priority),
            )
            if not cursor.rowcount:
                return None
            if prior:
                add_pending(db, cursor.lastrowid, self._clock.time())
            return cursor.lastrowid

    def add_study(
        self, series: list[JobSeries], seg_sop_uid: str, rule: str, inputs_digest: str,
        rerun_of: int | None = None, priority: int = 1, failed: str | None = None,
        prior: bool = False,
    ) -> int | None:
        """Queue a study job of ``series`` (the segmented one first: its series is the job's
        source series, its preset the job's) and end the wait of (``rule``, ``seg_sop_uid``), in
        one transaction; None when a job of the same inputs exists. With ``failed`` (a one-line
        reason) the job is recorded failed at once instead: a study rule that gave up on a
        missing role (the status page and the study's audit trail show it). With ``prior`` (and
        not ``failed``) the job's prior lookup is added as for :meth:`add`."""
        now = self._clock.time()
        segmented = series[0]
        with self._db.transaction() as db:
            cursor = db.execute(
                """INSERT OR IGNORE INTO jobs
                   (source_series_uid, seg_sop_uid, rule, preset, inputs_digest, state,
                    created_at, rerun_of, priority, reason, finished_at)
                   VALUES (?,?,?,?,?,?,?,?,?,?,?)""",
                (segmented.series_uid, seg_sop_uid, rule, segmented.preset, inputs_digest,
                 "queued" if failed is None else "failed", now, rerun_of, priority, failed,
                 None if failed is None else now),
            )
            if not cursor.rowcount:
                return None
            job_id = cursor.lastrowid
            db.executemany(
                "INSERT INTO job_series VALUES (?,?,?,?,?)",
                [(job_id, i, item.role, item.series_uid, item.preset)
                 for i, item in enumerate(series)])
            db.execute("DELETE FROM study_waits WHERE rule=? AND seg_sop_uid=?",
                       (rule, seg_sop_uid))
            if failed is not None:
                record_job(db, now, job_id, "job failed", detail={"reason": failed})
            elif prior:
                add_pending(db, job_id, now)
            return job_id

    def series_of(self, job_id: int) -> list[JobSeries]:
        """The series of study job ``job_id`` by role, the segmented one first; empty for a job
        of one series."""
        rows = self._db.query(
            "SELECT * FROM job_series WHERE job_id=? ORDER BY position", (job_id,))
        return [JobSeries(r["role"], r["series_uid"], r["preset"]) for r in rows]

    def for_study(self, rule: str, seg_sop_uid: str) -> list[JobRow]:
        """Every study job, of any inputs, of study rule ``rule`` and this segmentation."""
        rows = self._db.query(
            """SELECT * FROM jobs j WHERE rule=? AND seg_sop_uid=?
               AND EXISTS (SELECT 1 FROM job_series js WHERE js.job_id=j.id) ORDER BY id""",
            (rule, seg_sop_uid))
        return [job_row(r) for r in rows]

    def wait_for_roles(self, rule: str, seg_sop_uid: str, study_uid: str,
                       source_series_uid: str) -> None:
        """Record that study rule ``rule`` waits for a required role before it queues the job
        of ``seg_sop_uid``, drawn on ``source_series_uid``; a wait already recorded keeps its
        ``since``."""
        with self._db.transaction() as db:
            db.execute("INSERT OR IGNORE INTO study_waits VALUES (?,?,?,?,?)",
                       (rule, seg_sop_uid, study_uid, source_series_uid, self._clock.time()))

    def study_waits(self) -> list[StudyWait]:
        """Every segmentation waiting for a study rule's required role, oldest first."""
        rows = self._db.query("SELECT * FROM study_waits ORDER BY since, rule, seg_sop_uid")
        return [StudyWait(r["rule"], r["seg_sop_uid"], r["study_uid"], r["source_series_uid"],
                          r["since"]) for r in rows]

    def end_wait(self, rule: str, seg_sop_uid: str) -> None:
        """Forget the wait of (``rule``, ``seg_sop_uid``): its job was queued, or it no longer
        applies (the rule was removed from the configuration)."""
        with self._db.transaction() as db:
            db.execute("DELETE FROM study_waits WHERE rule=? AND seg_sop_uid=?",
                       (rule, seg_sop_uid))

    def for_inputs(self, source_series_uid: str, seg_sop_uid: str, preset: str) -> list[JobRow]:
        """Every job of one series (not a study job), of any inputs, for this source series,
        SEG instance and preset."""
        rows = self._db.query(
            """SELECT * FROM jobs j WHERE source_series_uid=? AND seg_sop_uid=? AND preset=?
               AND NOT EXISTS (SELECT 1 FROM job_series js WHERE js.job_id=j.id)
               ORDER BY id""",
            (source_series_uid, seg_sop_uid, preset),
        )
        return [job_row(r) for r in rows]

    def claim(self) -> JobRow | None:
        """Move the queued job that is due (no ``not_before`` after ``now``) with the most urgent
        priority, the oldest of those, to running (attempts + 1) and return it: an urgent job
        overtakes every queued one, never a running one. A job whose prior lookup is pending
        (``job_priors``) waits for it."""
        now = self._clock.time()
        with self._db.transaction() as db:
            row = db.execute(
                """SELECT id FROM jobs WHERE state='queued'
                   AND (not_before IS NULL OR not_before<=?)
                   AND NOT EXISTS (SELECT 1 FROM job_priors p WHERE p.job_id=jobs.id
                                   AND p.state='pending')
                   ORDER BY priority, id LIMIT 1""",
                (now,)
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state='running', attempts=attempts+1, started_at=? WHERE id=?",
                (now, row["id"]),
            )
            record_job(db, now, row["id"], "job started")
        return self.get(row["id"])

    def finish(self, job_id: int, deliveries: list[tuple[str, str, str]],
               preset_hash: str | None = None,
               models: dict[str, str] | None = None,
               timings: dict[str, float] | None = None) -> None:
        """Mark a job done and queue its (destination, path, SOP Instance UID) deliveries in the
        same transaction, so a result is never done without its deliveries. ``preset_hash`` and
        ``models`` (model id -> version) record what made the result, for the audit trail;
        ``timings`` the seconds of each pipeline stage."""
        now = self._clock.time()
        with self._db.transaction() as db:
            db.execute(
                """UPDATE jobs SET state='done', reason=NULL, finished_at=?, preset_hash=?,
                   models=?, timings=? WHERE id=?""",
                (now, preset_hash, json.dumps(models) if models is not None else None,
                 json.dumps(timings) if timings is not None else None, job_id),
            )
            record_job(db, now, job_id, "job done", detail={
                "preset_hash": preset_hash, "models": models,
                "deliveries": [[dest, uid] for dest, _, uid in deliveries]})
            queue_deliveries(db, job_id, deliveries, now)

    def fail(self, job_id: int, reason: str) -> None:
        with self._db.transaction() as db:
            db.execute(
                "UPDATE jobs SET state='failed', reason=?, finished_at=? WHERE id=?",
                (reason, self._clock.time(), job_id),
            )
            record_job(db, self._clock.time(), job_id, "job failed", detail={"reason": reason})

    def requeue(self, job_id: int, reason: str, not_before: float | None = None) -> None:
        """Put a running job back in the queue, keeping why its last attempt ended; it is not
        started again before ``not_before`` (epoch seconds) when given."""
        with self._db.transaction() as db:
            db.execute("UPDATE jobs SET state='queued', reason=?, not_before=? WHERE id=?",
                       (reason, not_before, job_id))
            record_job(db, self._clock.time(), job_id, "job queued again",
                       detail={"reason": reason, "not_before": not_before})

    def retry(self, ids: list[int] | None = None, actor: str = NODE,
              event: str = "job retry requested") -> list[int]:
        """Run again: the failed jobs ``ids`` (or, when None, every failed one) go back to the
        queue with attempts 0, due now, their last reason kept until they run; the audit trail
        records ``event``, that ``actor`` (e.g. ``cli:alice``) asked. Returns the ids queued."""
        with self._db.transaction() as db:
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
                record_job(db, self._clock.time(), job_id, event, actor=actor)
        return queued

    def inputs_repaired_at(self, job_id: int) -> float | None:
        """When a damaged spool copy in the source series of job ``job_id`` (or any series of a
        study job) or in its segmentation's series was last repaired (``repaired_at``:
        ``InstanceStore.replace_file``, ``InstanceStore.forget``), if that was after the job's last
        attempt started (after it was queued, when it never started): that attempt may have read the
        damaged copy. None otherwise."""
        return self._db.query(
            """SELECT max(s.repaired_at) AS t FROM jobs j JOIN series s
               ON s.series_uid=j.source_series_uid OR s.series_uid=
                  (SELECT series_uid FROM instances WHERE sop_instance_uid=j.seg_sop_uid)
                  OR s.series_uid IN (SELECT series_uid FROM job_series WHERE job_id=j.id)
               WHERE j.id=? AND s.repaired_at>coalesce(j.started_at, j.created_at)""",
            (job_id,))[0]["t"]

    def requeue_interrupted(self) -> int:
        """Jobs left 'running' by a stopped node go back to the queue; returns how many."""
        with self._db.transaction() as db:
            return db.execute("UPDATE jobs SET state='queued' WHERE state='running'").rowcount

    def get(self, job_id: int) -> JobRow:
        return job_row(self._db.query("SELECT * FROM jobs WHERE id=?", (job_id,))[0])

    def all(self, state: str | None = None) -> list[JobRow]:
        if state is None:
            rows = self._db.query("SELECT * FROM jobs ORDER BY id")
        else:
            rows = self._db.query("SELECT * FROM jobs WHERE state=? ORDER BY id", (state,))
        return [job_row(r) for r in rows]

    def timeline(self, job_id: int) -> JobTimeline:
        """When job ``job_id`` was queued, started and finished, its pipeline stages, and when
        each of its result objects was stored and verified at each destination."""
        job = self._db.query("SELECT * FROM jobs WHERE id=?", (job_id,))[0]
        deliveries = self._db.query(
            """SELECT destination, sop_instance_uid, sent_at, delivered_at FROM outbox
               WHERE job_id=? ORDER BY id""", (job_id,))
        return JobTimeline(
            job_id, job["created_at"], job["started_at"], job["finished_at"],
            json.loads(job["timings"]) if job["timings"] else {},
            tuple(DeliveryTimes(r["destination"], r["sop_instance_uid"], r["sent_at"],
                                r["delivered_at"]) for r in deliveries))

    def expired_results(self, finished_before: float) -> list[int]:
        """Done jobs finished before ``finished_before`` whose every delivery is delivered and
        whose results are not yet removed: the caller deletes their folders, then calls
        ``mark_results_removed`` (a crash in between only repeats the deletion)."""
        rows = self._db.query(
            """SELECT j.id FROM jobs j WHERE j.state='done' AND j.finished_at < ?
               AND j.results_removed_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.job_id=j.id
                               AND o.state!='delivered')
               ORDER BY j.id""", (finished_before,))
        return [r["id"] for r in rows]

    def mark_results_removed(self, job_id: int) -> None:
        with self._db.transaction() as db:
            now = self._clock.time()
            db.execute("UPDATE jobs SET results_removed_at=? WHERE id=?", (now, job_id))
            record_job(db, now, job_id, "results removed")
