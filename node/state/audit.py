"""The audit trail (``audit``): who did what to which study, series, job and delivery, and
the read of one study's whole trail. ``record``, ``record_job`` and ``record_delivery`` append
a row inside the transaction of the store that changes the state it records."""

from __future__ import annotations

import json
import sqlite3

from node.clock import Clock
from node.state.db import Database

NODE = "node"
"""The audit actor for what the node does by itself; people are ``cli:<user>`` or
``status-page:<user>``."""

SEGMENTATION_NOT_PROCESSED = "segmentation not processed"
"""The audit event of a segmentation that the router can pair with no series (``node.flow.router``);
its detail holds ``seg_sop_uid``, ``modality`` and the one-line ``reason``."""


def record(db: sqlite3.Connection, at: float, event: str, actor: str = NODE, *,
           study_uid: str | None = None, series_uid: str | None = None,
           job_id: int | None = None, delivery_id: int | None = None,
           detail: dict | None = None) -> None:
    """Append one row to the audit trail, at ``at`` (epoch seconds), inside the caller's
    transaction."""
    db.execute(
        """INSERT INTO audit (at, event, actor, study_uid, series_uid, job_id, delivery_id,
           detail) VALUES (?,?,?,?,?,?,?,?)""",
        (at, event, actor, study_uid, series_uid, job_id, delivery_id,
         json.dumps(detail, sort_keys=True) if detail else None),
    )


def record_job(db: sqlite3.Connection, at: float, job_id: int, event: str, actor: str = NODE,
               detail: dict | None = None) -> None:
    """An audit row for a job, filed under the study of its source series."""
    row = db.execute(
        """SELECT j.source_series_uid, j.preset, j.attempts, s.study_uid FROM jobs j
           LEFT JOIN series s ON s.series_uid=j.source_series_uid WHERE j.id=?""",
        (job_id,)).fetchone()
    if row is None:
        return
    record(db, at, event, actor, study_uid=row["study_uid"], series_uid=row["source_series_uid"],
           job_id=job_id, detail={"preset": row["preset"], "attempt": row["attempts"],
                                  **(detail or {})})


def record_delivery(db: sqlite3.Connection, at: float, delivery_id: int, event: str,
                    actor: str = NODE, detail: dict | None = None) -> None:
    """An audit row for a delivery, filed under the study of its job's source series."""
    row = db.execute(
        """SELECT o.job_id, o.destination, o.sop_instance_uid, j.source_series_uid, s.study_uid
           FROM outbox o JOIN jobs j ON j.id=o.job_id
           LEFT JOIN series s ON s.series_uid=j.source_series_uid WHERE o.id=?""",
        (delivery_id,)).fetchone()
    if row is None:
        return
    record(db, at, event, actor, study_uid=row["study_uid"], series_uid=row["source_series_uid"],
           job_id=row["job_id"], delivery_id=delivery_id,
           detail={"destination": row["destination"], "sop_instance_uid": row["sop_instance_uid"],
                   **(detail or {})})


class AuditStore:
    """The audit trail of one index (``Index.audit``)."""

    def __init__(self, db: Database, clock: Clock):
        self._db = db
        self._clock = clock

    def add(self, event: str, actor: str = NODE, *, study_uid: str | None = None,
            series_uid: str | None = None, job_id: int | None = None,
            delivery_id: int | None = None, detail: dict | None = None) -> None:
        """Append one row to the audit trail."""
        with self._db.transaction() as db:
            record(db, self._clock.time(), event, actor, study_uid=study_uid,
                   series_uid=series_uid, job_id=job_id, delivery_id=delivery_id, detail=detail)

    def count(self, event: str) -> int:
        """How many audit rows record ``event``."""
        return self._db.query("SELECT count(*) AS n FROM audit WHERE event=?", (event,))[0]["n"]

    def rows(self, event: str, limit: int) -> list[sqlite3.Row]:
        """The latest ``limit`` audit rows recording ``event``, newest first."""
        return self._db.query("SELECT * FROM audit WHERE event=? ORDER BY id DESC LIMIT ?",
                           (event, limit))

    def study_trail(self, study_uid: str) -> dict[str, list[sqlite3.Row]]:
        """What the index knows of a study: who sent each series (``received``), the jobs that
        read its series, their deliveries, and its audit rows (``events``), oldest first."""
        received = self._db.query(
            """SELECT series_uid, sop_class_uid, calling_ae, peer_host, count(*) AS n_instances,
                      sum(size) AS bytes, min(received_at) AS first_received,
                      max(received_at) AS last_received
               FROM instances WHERE study_uid=?
               GROUP BY series_uid, sop_class_uid, calling_ae, peer_host
               ORDER BY first_received""", (study_uid,))
        jobs = self._db.query(
            """SELECT DISTINCT j.* FROM jobs j WHERE j.id IN
                 (SELECT job_id FROM audit WHERE study_uid=? AND job_id IS NOT NULL)
               OR j.source_series_uid IN (SELECT series_uid FROM instances WHERE study_uid=?)
               ORDER BY j.id""", (study_uid, study_uid))
        job_ids = tuple(r["id"] for r in jobs)
        marks = ",".join("?" * len(job_ids))
        deliveries = self._db.query(
            f"""SELECT o.*, c.method AS verified_by FROM outbox o
                LEFT JOIN delivery_checks c ON c.delivery_id=o.id
                WHERE o.job_id IN ({marks}) ORDER BY o.id""", job_ids) if job_ids else []
        events = self._db.query(
            f"""SELECT * FROM audit WHERE study_uid=?
                {f"OR job_id IN ({marks})" if job_ids else ""} ORDER BY id""",
            (study_uid, *job_ids))
        return {"received": received, "jobs": jobs, "deliveries": deliveries, "events": events}
