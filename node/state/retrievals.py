"""Pull mode (``feed_state``, ``retrievals``): the position in each Orthanc change feed, and the
source series the node asked for because a segmentation references them."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from node.clock import Clock
from node.state.db import Database


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


def retrieval_row(r: sqlite3.Row) -> RetrievalRow:
    return RetrievalRow(r["series_uid"], r["study_uid"], r["seg_sop_uid"], r["state"],
                        r["attempts"], r["requested_at"], r["reason"])


class RetrievalStore:
    """Feed positions and retrievals of one index (``Index.retrievals``)."""

    def __init__(self, db: Database, clock: Clock):
        self._db = db
        self._clock = clock

    def feed_seq(self, feed: str) -> int | None:
        """The last change of ``feed`` whose instances are all stored; None before the first."""
        rows = self._db.query("SELECT last_seq FROM feed_state WHERE feed=?", (feed,))
        return rows[0]["last_seq"] if rows else None

    def set_feed_seq(self, feed: str, seq: int) -> None:
        with self._db.transaction() as db:
            db.execute(
                """INSERT INTO feed_state VALUES (?,?,?) ON CONFLICT(feed) DO UPDATE SET
                   last_seq=excluded.last_seq, updated_at=excluded.updated_at""",
                (feed, seq, self._clock.time()),
            )

    def request(self, series_uid: str, study_uid: str, seg_sop_uid: str) -> bool:
        """Ask for a source series a segmentation references; False when already asked."""
        now = self._clock.time()
        with self._db.transaction() as db:
            cursor = db.execute(
                """INSERT OR IGNORE INTO retrievals
                   (series_uid, study_uid, seg_sop_uid, state, requested_at, next_attempt_at)
                   VALUES (?,?,?,'waiting',?,?)""",
                (series_uid, study_uid, seg_sop_uid, now, now),
            )
            return cursor.rowcount > 0

    def due(self) -> list[RetrievalRow]:
        now = self._clock.time()
        rows = self._db.query(
            """SELECT * FROM retrievals WHERE state='waiting' AND next_attempt_at<=?
               ORDER BY requested_at""", (now,))
        return [retrieval_row(r) for r in rows]

    def tried(self, series_uid: str, reason: str, retry_at: float) -> None:
        """Record a fetch that brought nothing; try again at ``retry_at``."""
        with self._db.transaction() as db:
            db.execute(
                """UPDATE retrievals SET attempts=attempts+1, reason=?, next_attempt_at=?
                   WHERE series_uid=?""",
                (reason, retry_at, series_uid),
            )

    def finish(self, series_uid: str, state: str, reason: str | None = None) -> None:
        """End a retrieval: ``fetched`` (the node got it), ``received`` (it came by itself) or
        ``failed`` (``reason`` says why)."""
        with self._db.transaction() as db:
            db.execute(
                "UPDATE retrievals SET state=?, reason=?, finished_at=? WHERE series_uid=?",
                (state, reason, self._clock.time(), series_uid),
            )

    def all(self, state: str | None = None) -> list[RetrievalRow]:
        if state is None:
            rows = self._db.query("SELECT * FROM retrievals ORDER BY requested_at")
        else:
            rows = self._db.query(
                "SELECT * FROM retrievals WHERE state=? ORDER BY requested_at", (state,))
        return [retrieval_row(r) for r in rows]
