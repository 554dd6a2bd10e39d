"""The job runner: claims queued jobs from the index and runs their pipeline in worker processes.

The node never computes a feature itself: it hands file paths and a preset name to
``pipelines.process.process_study`` in a process pool and records the outcome. A job's state is a
row (queued -> running -> done | failed); a node stopped mid-job finds it 'running' at start and
queues it again.
"""

from __future__ import annotations

import logging
import multiprocessing
import shutil
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from node import logs
from node.config import NodeConfig
from node.index import Index, JobRow
from node.logs import fields
from pipelines.process import PipelineResult, process_study

log = logging.getLogger(__name__)


class JobRunner:
    """Runs at most ``config.workers`` jobs at a time in a pool of spawned processes."""

    def __init__(self, config: NodeConfig, index: Index):
        self._config = config
        self._index = index
        self._pool = self._new_pool()
        self._running: dict[int, Future[PipelineResult]] = {}
        self._lock = threading.Lock()
        self._stopping = False

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self._config.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=logs.configure,  # worker processes log JSON lines too
            initargs=(self._config.log_level, self._config.log_file),
        )

    def tick(self) -> None:
        """Start queued jobs while workers are free."""
        while True:
            with self._lock:
                if len(self._running) >= self._config.workers:
                    return
                job = self._index.claim_job()
                if job is None:
                    return
                self._start(job)

    def _start(self, job: JobRow) -> None:
        images = [row.path for row in self._index.instances_of(job.source_series_uid)]
        seg = self._index.instance(job.seg_sop_uid)
        if not images or seg is None:
            self._index.fail_job(job.id, "inputs are no longer in the index")
            return
        out_dir = self._config.results_dir / f"job-{job.id}"
        shutil.rmtree(out_dir, ignore_errors=True)  # a rerun starts from an empty folder
        log.info("job started", extra=fields(
            job_id=job.id, preset=job.preset, attempt=job.attempts, images=len(images),
            source_series_uid=job.source_series_uid, seg_sop_uid=job.seg_sop_uid))
        future = self._pool.submit(process_study, images, seg.path, job.preset, str(out_dir))
        self._running[job.id] = future
        future.add_done_callback(lambda done, job_id=job.id: self._finished(job_id, done))

    def _finished(self, job_id: int, future: Future[PipelineResult]) -> None:
        with self._lock:
            self._running.pop(job_id, None)
        if self._stopping:
            return  # left 'running' in the index: the next start queues it again
        try:
            result = future.result()
        except BrokenProcessPool as exc:
            self._worker_died(job_id, exc)
            return
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            self._index.fail_job(job_id, reason)
            log.error("job failed", extra=fields(job_id=job_id, reason=reason))
            return
        deliveries = [(dest.name, str(obj.path), obj.sop_instance_uid)
                      for obj in result.objects for dest in self._config.destinations]
        self._index.finish_job(job_id, deliveries, preset_hash=result.preset_hash)
        log.info("job done", extra=fields(
            job_id=job_id, preset=result.preset, preset_hash=result.preset_hash,
            lesions=len(result.lesions), objects=[str(Path(o.path).name) for o in result.objects],
            deliveries=len(deliveries)))

    def _worker_died(self, job_id: int, exc: BrokenProcessPool) -> None:
        """A worker process ended abruptly (killed, out of memory): a new pool, and the job runs
        again until ``max_job_attempts``; the pipeline itself did not fail."""
        with self._lock:
            if self._stopping:
                return
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
        job = self._index.job(job_id)
        reason = f"worker process died: {exc}"
        if job.attempts < self._config.max_job_attempts:
            self._index.requeue_job(job_id, reason)
            log.warning("job queued again", extra=fields(
                job_id=job_id, attempts=job.attempts, reason=reason))
        else:
            self._index.fail_job(job_id, reason)
            log.error("job failed", extra=fields(job_id=job_id, attempts=job.attempts,
                                                 reason=reason))

    def stop(self) -> None:
        """Stop at once: worker processes are ended, their jobs rerun at the next start."""
        self._stopping = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        for child in multiprocessing.active_children():
            child.terminate()
