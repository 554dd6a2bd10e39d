"""Read-only queries across the tables for the status page, ``/healthz`` and ``/metrics``: they
change nothing, and each is one read."""

from __future__ import annotations

import sqlite3

from node.state.db import Database


class StatusQueries:
    """Counts and recent rows of one index (``Index.queries``)."""

    def __init__(self, db: Database):
        self._db = db

    def totals(self) -> dict[str, int]:
        """Running totals kept across restarts and clean-ups: instances_received,
        bytes_received."""
        return {r["name"]: r["value"] for r in self._db.query("SELECT * FROM totals")}

    def recent_studies(self, limit: int) -> list[sqlite3.Row]:
        """Studies by last arrival: series and instance counts, senders (AE@host)."""
        return self._db.query(
            """SELECT study_uid, count(DISTINCT series_uid) AS n_series, count(*) AS n_instances,
                      sum(size) AS bytes, min(received_at) AS first_received,
                      max(received_at) AS last_received,
                      group_concat(DISTINCT calling_ae || '@' || coalesce(peer_host, '?'))
                        AS senders
               FROM instances GROUP BY study_uid ORDER BY last_received DESC LIMIT ?""",
            (limit,))

    def recent_series(self, limit: int) -> list[sqlite3.Row]:
        """Series by last arrival, with their state (receiving or stable)."""
        return self._db.query(
            "SELECT * FROM series ORDER BY last_received DESC LIMIT ?", (limit,))

    def recent_jobs(self, limit: int) -> list[sqlite3.Row]:
        """Jobs, newest first, with the study of their source series and, for a study job, its
        roles (``roles``: comma-separated, the segmented one first; NULL for a job of one
        series) and, for a job of a rule with ``prior``, its prior lookup's state and reason
        (``delta``, ``delta_reason``; NULL otherwise)."""
        return self._db.query(
            """SELECT j.*, s.study_uid,
                      (SELECT group_concat(role, ', ') FROM
                         (SELECT role FROM job_series WHERE job_id=j.id ORDER BY position))
                      AS roles, p.state AS delta, p.reason AS delta_reason
               FROM jobs j
               LEFT JOIN series s ON s.series_uid=j.source_series_uid
               LEFT JOIN job_priors p ON p.job_id=j.id
               ORDER BY j.id DESC LIMIT ?""", (limit,))

    def failed_jobs_matching(self, word: str, limit: int) -> list[sqlite3.Row]:
        """Failed jobs whose reason contains ``word`` (case-insensitive), newest first."""
        return self._db.query(
            """SELECT * FROM jobs WHERE state='failed' AND reason LIKE ?
               ORDER BY id DESC LIMIT ?""", (f"%{word}%", limit))

    def jobs_by_state(self) -> dict[str, int]:
        rows = self._db.query("SELECT state, count(*) AS n FROM jobs GROUP BY state")
        return {r["state"]: r["n"] for r in rows}

    def job_durations(self) -> list[float]:
        """Seconds from start to end of every finished (done or failed) job run."""
        rows = self._db.query(
            """SELECT finished_at - started_at AS d FROM jobs WHERE state IN ('done', 'failed')
               AND started_at IS NOT NULL AND finished_at IS NOT NULL""")
        return [max(0.0, r["d"]) for r in rows]

    def queue_depths(self) -> dict[str, int]:
        """Work waiting: queued and running jobs, pending and dead deliveries, waiting
        retrievals, series still receiving."""
        row = self._db.query(
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
        return self._db.query(
            """SELECT preset, preset_hash, models, count(*) AS jobs,
                      max(finished_at) AS last_finished
               FROM jobs WHERE state='done' GROUP BY preset, preset_hash, models
               ORDER BY last_finished DESC""")

    def oldest_due_delivery(self, now: float) -> float | None:
        """When the longest-waiting due pending delivery became due; None when none is due."""
        row = self._db.query("""SELECT min(next_attempt_at) AS t FROM outbox
                             WHERE state='pending' AND next_attempt_at<=?""", (now,))
        return row[0]["t"]

    def spool_bytes(self) -> int:
        """Bytes of the instances in the spool, by their index rows."""
        return self._db.query("SELECT coalesce(sum(size), 0) AS n FROM instances")[0]["n"]
