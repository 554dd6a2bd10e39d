"""Retention: received instances and results leave the disk once they are processed, delivered
and old enough (``retention`` in the configuration).

A job's prior study (``priors/job-<id>/``, ``node.flow.priors``) goes with its results.
Nothing that unfinished work needs is removed: the index decides
(``InstanceStore.remove_expired_series`` and ``JobStore.expired_results``, ``node.state``) inside
one transaction, so a series a job still reads, a result
still waiting for delivery or a dead-lettered one stays until it is delivered. Each removal is a
row of the audit trail. Spool rows leave the index before their files are deleted: a crash in
between leaves files without rows, which ``node.state.recovery`` indexes again at the next start
(kept, never lost), and which a later clean-up removes.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from node.config import NodeConfig
from node.logs import fields
from node.state import Index

log = logging.getLogger(__name__)

DAY = 86400.0


class Retention:
    """Removes expired spool series and result folders; ``tick`` runs every
    ``retention.interval`` seconds."""

    def __init__(self, config: NodeConfig, index: Index):
        self._config = config
        self._index = index

    def tick(self, now: float | None = None) -> tuple[int, int]:
        """Clean up once; returns (instances removed from the spool, result folders removed)."""
        now = self._index.clock.time() if now is None else now
        settings = self._config.retention
        instances = results = 0
        if settings.spool_days is not None:
            instances = self._spool(now - settings.spool_days * DAY)
        if settings.results_days is not None:
            results = self._results(now - settings.results_days * DAY)
        return instances, results

    def _spool(self, received_before: float) -> int:
        removed = self._index.instances.remove_expired_series(received_before)
        folders: set[Path] = set()
        for row in removed:
            path = Path(row.path)
            path.unlink(missing_ok=True)
            folders.add(path.parent)
        spool = self._config.spool_dir.resolve()
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            _remove_empty_up_to(folder, spool)
        if removed:
            log.info("spool cleaned", extra=fields(
                instances=len(removed), series=len({r.series_uid for r in removed}),
                bytes=sum(r.size for r in removed)))
        return len(removed)

    def _results(self, finished_before: float) -> int:
        """Remove the results folder of each expired job (``JobStore.expired_results``: done,
        every delivery delivered) and the folder its prior study was fetched to
        (``node.flow.priors``); how many jobs."""
        job_ids = self._index.jobs.expired_results(finished_before)
        for job_id in job_ids:
            shutil.rmtree(self._config.results_dir / f"job-{job_id}", ignore_errors=True)
            shutil.rmtree(self._config.priors_dir / f"job-{job_id}", ignore_errors=True)
            self._index.jobs.mark_results_removed(job_id)
        if job_ids:
            log.info("results cleaned", extra=fields(jobs=job_ids))
        return len(job_ids)


def _remove_empty_up_to(folder: Path, root: Path) -> None:
    """Remove ``folder`` and its parents while they are empty, stopping at ``root``."""
    folder = folder.resolve()
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty (or already gone): stop here
            return
        folder = folder.parent
