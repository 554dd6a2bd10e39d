"""Instances and series (``instances``, ``series``, ``seg_refs``, the ``totals`` of what was
received): what the spool holds, each series' arrivals and stability, the segmentations'
references, repairs of damaged spool copies, and the removal of expired series."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass

from node.clock import Clock
from node.state.audit import record, record_job
from node.state.db import Database


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
    last_received: float | None = None


def instance_row(r: sqlite3.Row) -> InstanceRow:
    return InstanceRow(r["sop_instance_uid"], r["sop_class_uid"], r["study_uid"],
                       r["series_uid"], r["path"], r["size"], r["calling_ae"], r["peer_host"],
                       r["sha256"])


def series_row(r: sqlite3.Row) -> SeriesRow:
    return SeriesRow(r["series_uid"], r["study_uid"], r["modality"], r["n_instances"],
                     r["stable_at"], r["last_received"])


class InstanceStore:
    """Instances and series of one index (``Index.instances``)."""

    def __init__(self, db: Database, clock: Clock):
        self._db = db
        self._clock = clock

    def has(self, sop_instance_uid: str) -> bool:
        return bool(
            self._db.query("SELECT 1 FROM instances WHERE sop_instance_uid=?", (sop_instance_uid,))
        )

    def add(self, row: InstanceRow, modality: str, now: float | None = None) -> bool:
        """Record a stored instance and touch its series; False when it was already indexed."""
        now = self._clock.time() if now is None else now
        with self._db.transaction() as db:
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

    def of_series(self, series_uid: str) -> list[InstanceRow]:
        rows = self._db.query(
            "SELECT * FROM instances WHERE series_uid=? ORDER BY received_at", (series_uid,)
        )
        return [instance_row(r) for r in rows]

    def get(self, sop_instance_uid: str) -> InstanceRow | None:
        rows = self._db.query("SELECT * FROM instances WHERE sop_instance_uid=?",
                              (sop_instance_uid,))
        if not rows:
            return None
        return instance_row(rows[0])

    def series(self, series_uid: str) -> SeriesRow | None:
        rows = self._db.query("SELECT * FROM series WHERE series_uid=?", (series_uid,))
        return series_row(rows[0]) if rows else None

    def of_study(self, study_uid: str) -> list[SeriesRow]:
        """Every series of ``study_uid`` the index holds, in Series Instance UID order."""
        rows = self._db.query("SELECT * FROM series WHERE study_uid=? ORDER BY series_uid",
                              (study_uid,))
        return [series_row(r) for r in rows]

    def segs_of_study(self, study_uid: str) -> list[tuple[str, str]]:
        """(SEG or RTSTRUCT SOP Instance UID, referenced series UID) of every reference filed
        (``add_seg_refs``) to a series of ``study_uid``, by SOP Instance UID."""
        rows = self._db.query(
            """SELECT r.seg_sop_uid, r.source_series_uid FROM seg_refs r
               JOIN series s ON s.series_uid=r.source_series_uid WHERE s.study_uid=?
               ORDER BY r.seg_sop_uid, r.source_series_uid""", (study_uid,))
        return [(r["seg_sop_uid"], r["source_series_uid"]) for r in rows]

    def studies_segmented_by(self, seg_series_uid: str) -> list[str]:
        """The studies of the indexed series that the segmentations of series
        ``seg_series_uid`` reference (``add_seg_refs``), in UID order."""
        rows = self._db.query(
            """SELECT DISTINCT s.study_uid FROM seg_refs r
               JOIN series s ON s.series_uid=r.source_series_uid WHERE r.seg_series_uid=?
               ORDER BY s.study_uid""", (seg_series_uid,))
        return [r["study_uid"] for r in rows]

    def mark_stable(self, quiet_since: float, now: float | None = None) -> list[SeriesRow]:
        """Mark series whose last instance came before ``quiet_since`` as stable; return them."""
        now = self._clock.time() if now is None else now
        with self._db.transaction() as db:
            rows = db.execute(
                "SELECT * FROM series WHERE stable_at IS NULL AND last_received < ?",
                (quiet_since,),
            ).fetchall()
            db.executemany(
                "UPDATE series SET stable_at=? WHERE series_uid=?",
                [(now, r["series_uid"]) for r in rows],
            )
        return [series_row(r) for r in rows]

    def quietest_receiving(self) -> float | None:
        """The last arrival of the series still receiving (not stable) that has been quiet the
        longest: it is the next to become stable, ``stable_after`` seconds after this. None when
        every series is stable."""
        return self._db.query(
            "SELECT min(last_received) AS t FROM series WHERE stable_at IS NULL")[0]["t"]

    def files(self, batch: int = 10_000) -> Iterator[tuple[str, str, int]]:
        """(SOP Instance UID, spool path, size) of every indexed instance, in index order, read
        ``batch`` rows at a time: a large index is not held in memory, and rows forgotten while
        the caller iterates (``forget``) do not disturb it."""
        last = 0
        while True:
            rows = self._db.query(
                """SELECT rowid, sop_instance_uid, path, size FROM instances WHERE rowid>?
                   ORDER BY rowid LIMIT ?""", (last, batch))
            if not rows:
                return
            yield from ((r["sop_instance_uid"], r["path"], r["size"]) for r in rows)
            last = rows[-1]["rowid"]

    def replace_file(self, sop_instance_uid: str, size: int, sha256: str) -> None:
        """Record, in one transaction, that the damaged spool copy of an indexed instance was
        replaced by an intact one (``node.dicom.ingest``): the row's size and sha256 are the new
        file's, and its series is repaired at ``now`` (``repaired_at``) and receiving again (not
        stable, last arrival ``now``), so the assembly tick marks it stable ``stable_after``
        later and routes it; a failed job that read the damaged copy is then queued again
        (``node.flow.router``)."""
        now = self._clock.time()
        with self._db.transaction() as db:
            row = db.execute("SELECT series_uid FROM instances WHERE sop_instance_uid=?",
                             (sop_instance_uid,)).fetchone()
            if row is None:
                return
            db.execute("UPDATE instances SET size=?, sha256=? WHERE sop_instance_uid=?",
                       (size, sha256, sop_instance_uid))
            db.execute("""UPDATE series SET repaired_at=?, stable_at=NULL, last_received=?
                          WHERE series_uid=?""", (now, now, row["series_uid"]))

    def forget(self, sop_instance_uid: str, reason: str) -> InstanceRow | None:
        """Drop the row of an instance whose spool file is missing or damaged (start-up recovery,
        ``node.state.recovery``), in one transaction: its series counts one instance less and is
        repaired at ``now`` (``repaired_at``: the instance, sent again, is stored as a new one and
        makes the series receiving; routed then, a failed job that read the damaged copy is queued
        again, ``node.flow.router``); a segmentation's references go (filed again when it is
        routed); and the jobs not finished that read it (of its series, or of it as the
        segmentation, or of it in a study job's role) fail with ``reason``, rather than run on a
        series without it. The series stays receiving or stable as it was: routed now, it would be
        without the instance. Returns the row dropped; None when it was not indexed."""
        now = self._clock.time()
        with self._db.transaction() as db:
            found = db.execute("SELECT * FROM instances WHERE sop_instance_uid=?",
                               (sop_instance_uid,)).fetchone()
            if found is None:
                return None
            row = instance_row(found)
            db.execute("DELETE FROM instances WHERE sop_instance_uid=?", (sop_instance_uid,))
            db.execute("DELETE FROM seg_refs WHERE seg_sop_uid=?", (sop_instance_uid,))
            db.execute("""UPDATE series SET n_instances=max(n_instances-1, 0), repaired_at=?
                          WHERE series_uid=?""", (now, row.series_uid))
            unfinished = [r["id"] for r in db.execute(
                """SELECT id FROM jobs WHERE state IN ('queued', 'running')
                   AND (source_series_uid=? OR seg_sop_uid=? OR id IN
                        (SELECT job_id FROM job_series WHERE series_uid=?)) ORDER BY id""",
                (row.series_uid, sop_instance_uid, row.series_uid))]
            for job_id in unfinished:
                db.execute("UPDATE jobs SET state='failed', reason=?, finished_at=? WHERE id=?",
                           (reason, now, job_id))
                record_job(db, now, job_id, "job failed", detail={"reason": reason})
        return row

    def add_seg_refs(self, seg_sop_uid: str, seg_series_uid: str, sources: set[str]) -> None:
        with self._db.transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO seg_refs VALUES (?,?,?)",
                [(seg_sop_uid, seg_series_uid, s) for s in sorted(sources)],
            )

    def segs_referencing(self, source_series_uid: str) -> list[str]:
        rows = self._db.query(
            "SELECT seg_sop_uid FROM seg_refs WHERE source_series_uid=? ORDER BY seg_sop_uid",
            (source_series_uid,),
        )
        return [r["seg_sop_uid"] for r in rows]

    def remove_expired_series(self, received_before: float) -> list[InstanceRow]:
        """Drop from the index every stable series last received before ``received_before``
        that no unfinished work needs, and return its instances, whose files the caller deletes.

        Needed means: a job reading it (as source, a study job's role or SEG) that is not done, a
        delivery of such a job that is not delivered, or a waiting retrieval for it or for its SEG.
        Each series removed leaves an audit row with who sent it, so the trail outlives the files.
        """
        removed: list[InstanceRow] = []
        with self._db.transaction() as db:
            expired = db.execute(
                """SELECT s.* FROM series s WHERE s.stable_at IS NOT NULL
                   AND s.last_received < ?
                   AND NOT EXISTS (
                     SELECT 1 FROM jobs j LEFT JOIN outbox o ON o.job_id=j.id
                     WHERE (j.source_series_uid=s.series_uid
                            OR j.id IN (SELECT job_id FROM job_series js
                                        WHERE js.series_uid=s.series_uid)
                            OR j.seg_sop_uid IN
                            (SELECT sop_instance_uid FROM instances WHERE series_uid=s.series_uid))
                     AND (j.state!='done' OR o.state!='delivered'))
                   AND NOT EXISTS (
                     SELECT 1 FROM retrievals r WHERE r.state='waiting'
                     AND (r.series_uid=s.series_uid OR r.seg_sop_uid IN
                          (SELECT sop_instance_uid FROM instances WHERE series_uid=s.series_uid)))
                   ORDER BY s.last_received""", (received_before,)).fetchall()
            for series in expired:
                rows = [instance_row(r) for r in db.execute(
                    "SELECT * FROM instances WHERE series_uid=?", (series["series_uid"],))]
                senders = sorted({f"{r.calling_ae}@{r.peer_host or '?'}" for r in rows})
                db.execute("DELETE FROM instances WHERE series_uid=?", (series["series_uid"],))
                db.execute("DELETE FROM series WHERE series_uid=?", (series["series_uid"],))
                record(db, self._clock.time(), "spool removed", study_uid=series["study_uid"],
                       series_uid=series["series_uid"],
                       detail={"modality": series["modality"], "instances": len(rows),
                               "bytes": sum(r.size for r in rows), "senders": senders,
                               "first_received": series["first_received"],
                               "last_received": series["last_received"]})
                removed += rows
        return removed
