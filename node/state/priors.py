"""The prior study of a job (``job_priors``, delta radiomics): a row per job of a rule with a
``prior`` section, added with the job (``JobStore.add``, ``JobStore.add_study``) as ``pending``,
then ``found`` (the prior's files in ``folder``), ``none`` (no prior in the window) or
``failed`` (network errors past ``prior.max_attempts``, or files the node refused), each with
its one-line ``reason``. A job whose row is pending is not claimed (``JobStore.claim``)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from node.clock import Clock
from node.state.audit import record_job
from node.state.db import Database

PRIOR_EVENTS = {"found": "prior study found", "none": "no prior study",
                "failed": "prior study not fetched"}
"""The audit event of each end state of a job's prior lookup."""


@dataclass(frozen=True)
class PriorRow:
    """A job's prior lookup: its state, the prior's Study Instance UID, the image series and the
    segmentation fetched (found), the folder holding them, why (none, failed, or the last
    network error of a pending one), the attempts made and when the next is due."""

    job_id: int
    state: str
    prior_study_uid: str | None
    series_uid: str | None
    seg_sop_uid: str | None
    folder: str | None
    reason: str | None
    attempts: int
    next_attempt_at: float


def prior_row(r: sqlite3.Row) -> PriorRow:
    return PriorRow(r["job_id"], r["state"], r["prior_study_uid"], r["series_uid"],
                    r["seg_sop_uid"], r["folder"], r["reason"], r["attempts"],
                    r["next_attempt_at"])


def add_pending(db: sqlite3.Connection, job_id: int, now: float) -> None:
    """Inside the transaction that queues job ``job_id``: its prior lookup, due now."""
    db.execute("INSERT INTO job_priors (job_id, state, next_attempt_at) VALUES (?,'pending',?)",
               (job_id, now))


class PriorStore:
    """Prior lookups of one index (``Index.priors``)."""

    def __init__(self, db: Database, clock: Clock):
        self._db = db
        self._clock = clock

    def get(self, job_id: int) -> PriorRow | None:
        """The prior lookup of ``job_id``; None for a job of a rule without ``prior``."""
        rows = self._db.query("SELECT * FROM job_priors WHERE job_id=?", (job_id,))
        return prior_row(rows[0]) if rows else None

    def due(self) -> list[PriorRow]:
        """Pending lookups whose next attempt is due, of queued jobs, oldest job first."""
        rows = self._db.query(
            """SELECT p.* FROM job_priors p JOIN jobs j ON j.id=p.job_id
               WHERE p.state='pending' AND p.next_attempt_at<=? AND j.state='queued'
               ORDER BY p.job_id""", (self._clock.time(),))
        return [prior_row(r) for r in rows]

    def tried(self, job_id: int, reason: str, retry_at: float) -> None:
        """A lookup that met a network error: still pending, tried again at ``retry_at``."""
        with self._db.transaction() as db:
            db.execute("""UPDATE job_priors SET attempts=attempts+1, reason=?, next_attempt_at=?
                          WHERE job_id=?""", (reason, retry_at, job_id))

    def finish(self, job_id: int, state: str, reason: str, *, study_uid: str | None = None,
               series_uid: str | None = None, seg_sop_uid: str | None = None,
               folder: str | None = None) -> None:
        """End a lookup as ``found`` (with the prior's study, series, segmentation and folder),
        ``none`` or ``failed``, with its reason; the job's audit trail records it."""
        now = self._clock.time()
        with self._db.transaction() as db:
            db.execute(
                """UPDATE job_priors SET state=?, reason=?, prior_study_uid=?, series_uid=?,
                   seg_sop_uid=?, folder=?, attempts=attempts+1, finished_at=?
                   WHERE job_id=?""",
                (state, reason, study_uid, series_uid, seg_sop_uid, folder, now, job_id))
            record_job(db, now, job_id, PRIOR_EVENTS[state], detail={
                "reason": reason, "prior_study_uid": study_uid})
