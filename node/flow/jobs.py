"""The job runner: claims queued jobs from the index and runs their pipeline in worker processes.

The node never computes a feature itself: it hands a job's inputs (``pipelines.study.JobInputs``:
file paths and a preset name, of one series or of each role of a study job) to an executor
(``node.flow.executor``: a local process pool or a Dask cluster), queues the deliveries of the
objects a running job announces, and records the outcome. A job's state is a row (queued -> running
-> done | failed); a node stopped mid-job finds it 'running' at start and queues it again. A done
job keeps the seconds of each pipeline stage (``Index.jobs.timeline``).

A failed job's reason is one line (:func:`failure_reason`): the pipeline's own refusal of its
inputs as the pipeline worded it (naming file, attribute and reason), or the type and message of
an unexpected exception, whose traceback goes to the log at debug level only.

Failures are classified. A transient one (:func:`is_transient`: the disk full, an I/O error, out
of memory; a worker process that died) says nothing about the inputs: the job is queued again
after a back-off that doubles from ``RETRY_BACKOFF`` seconds, up to ``max_job_attempts`` runs,
and fails with its reason only then. A refusal or any other error fails it at once. A failed job
runs again when someone asks (``radiomics-node jobs retry``). While free disk in the results
folder is below ``min_free_bytes``, no job is started: its output could not be written.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import logging
import re
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from node.config import Destination, NodeConfig
from node.flow.executor import Executor, JobFuture, make_executor
from node.flow.priors import prior_files
from node.logs import fields
from node.state import Index
from node.state.jobs import JobRow
from pipelines.outputs.result import PipelineResult  # see JobRunner._finished
from pipelines.study import JobInputs, PriorInputs, SeriesInput, one_series

log = logging.getLogger(__name__)

MAX_REASON = 500
"""Most characters of a job's failure reason; a longer first line is cut and ends with "…"."""


def is_refusal(exc: BaseException) -> bool:
    """The pipeline refused its inputs: a ValueError subclass defined in the ``pipelines``
    package (SeriesError, SegmentationError, RTStructError, ProcessError, ReportError, ...),
    each raised with a one-line message naming the file, the attribute and the reason. A bare
    ValueError, or one of a library, is not a refusal but an unexpected error."""
    return isinstance(exc, ValueError) and type(exc).__module__.partition(".")[0] == "pipelines"


def failure_reason(exc: BaseException) -> str:
    """The one line a failed job records (index, log line, status page): a refusal's message
    (:func:`is_refusal`), else ``<exception type>: <message>``; only the first non-empty line
    of the message, at most ``MAX_REASON`` characters."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    first = lines[0] if lines else ""
    if not first:
        line = type(exc).__name__
    elif is_refusal(exc):
        line = first
    else:
        line = f"{type(exc).__name__}: {first}"
    return line if len(line) <= MAX_REASON else line[:MAX_REASON - 1] + "\u2026"


RETRY_BACKOFF = 60.0
"""Seconds before the first rerun of a job that failed for a transient cause; doubled at each
further failure, at most ``RETRY_BACKOFF_MAX``."""
RETRY_BACKOFF_MAX = 3600.0
_TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ENOMEM, errno.EAGAIN,
                               errno.EMFILE, errno.ENFILE})


def is_transient(exc: BaseException) -> bool:
    """A failure of the machine, not of the inputs, which may pass by itself: an OSError for a
    full disk or quota, an I/O error, no memory or file handles (``errno``), or a MemoryError,
    raised or the cause of what was raised (pydicom re-raises a write error as a new OSError
    without its errno, the original as its cause). A refusal (:func:`is_refusal`) never is."""
    if is_refusal(exc):
        return False
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, MemoryError) or (isinstance(cause, OSError)
                                              and _errno(cause) in _TRANSIENT_ERRNOS):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _errno(exc: OSError) -> int | None:
    """The error number of ``exc``, or the one its message quotes as ``[Errno N]``: a worker
    process's exception reaches the node pickled, without the cause that carried it."""
    if exc.errno is not None:
        return exc.errno
    quoted = re.search(r"\[Errno (\d+)\]", str(exc))
    return int(quoted.group(1)) if quoted else None


def _worker_lost(exc: BaseException) -> bool:
    """A worker process ended abruptly: a broken local pool, or Dask's KilledWorker (the task's
    workers died ``allowed-failures`` times)."""
    return isinstance(exc, BrokenProcessPool) or type(exc).__name__ == "KilledWorker"


class JobRunner:
    """Runs at most ``config.workers`` jobs at a time on the configured executor; ``on_done`` is
    called with a job's id whenever deliveries of it are queued: objects it announced while it
    runs, and every object once it is done (the node wakes the outbox with it)."""

    def __init__(self, config: NodeConfig, index: Index, executor: Executor | None = None,
                 on_done: Callable[[int], None] | None = None):
        self._config = config
        self._index = index
        self._executor = executor or make_executor(config)
        self._on_done = on_done
        self._running: dict[int, tuple[JobFuture, float]] = {}
        self._lock = threading.Lock()
        self._stopping = False
        self._disk_was_ok = True

    def tick(self) -> None:
        """Start queued jobs that are due while workers are free and the disk holds their
        output (module docstring)."""
        while True:
            with self._lock:
                if len(self._running) >= self._config.workers:
                    return
                if not self._disk_allows():
                    return
                job = self._index.jobs.claim()
                if job is None:
                    return
                self._start(job)

    def _disk_allows(self) -> bool:
        """Whether free disk where results are written is at least ``min_free_bytes``; a
        warning is logged when that changes to no, an info line when it changes back."""
        folder = self._config.results_dir
        while not folder.is_dir() and folder != folder.parent:
            folder = folder.parent  # not made yet: the disk it will be made on
        free = shutil.disk_usage(folder).free
        allows = free >= self._config.min_free_bytes
        if allows != self._disk_was_ok:
            self._disk_was_ok = allows
            if allows:
                log.info("disk above floor: jobs start again", extra=fields(free_bytes=free))
            else:
                log.warning("disk below floor: no job started", extra=fields(
                    free_bytes=free, min_free_bytes=self._config.min_free_bytes))
        return allows

    def _inputs(self, job: JobRow) -> JobInputs | None:
        """What ``job`` is given (``pipelines.study``): for a study job each of its series by
        role (``JobStore.series_of``, the segmented one first) with its preset; for a job of one
        series ``one_series`` of its source series and the job's preset. None when an image
        series or the segmentation is no longer in the index. ``prior`` is the prior study a
        lookup found (:meth:`_prior`)."""
        seg = self._index.instances.get(job.seg_sop_uid)
        roles = self._index.jobs.series_of(job.id)
        if seg is None:
            return None
        if not roles:
            images = [row.path for row in self._index.instances.of_series(job.source_series_uid)]
            return dataclasses.replace(one_series(images, seg.path, job.preset),
                                       prior=self._prior(job)) if images else None
        series = []
        for item in roles:
            paths = tuple(row.path for row in self._index.instances.of_series(item.series_uid))
            if not paths:
                return None
            series.append(SeriesInput(item.role, paths, item.preset))
        return JobInputs(tuple(series), seg.path, self._prior(job))

    def _prior(self, job: JobRow) -> PriorInputs | None:
        """The prior study of ``job`` when its lookup found one (``node.flow.priors``) and its
        files are still there; else None: the job runs without delta."""
        row = self._index.priors.get(job.id)
        if row is None or row.state != "found" or not row.folder or not row.seg_sop_uid:
            return None
        files = prior_files(row.folder, row.seg_sop_uid)
        if files is None:
            log.warning("prior study's files gone: the job runs without it", extra=fields(
                job_id=job.id, folder=row.folder))
            return None
        return PriorInputs(*files)

    def _missing_roles(self, job: JobRow, inputs: JobInputs) -> list[str]:
        """The required roles of ``job``'s study rule (when still configured) that its inputs
        lack: a job recorded failed because a role was missing (``node.flow.study_router``),
        retried by hand before a series plays it."""
        rule = next((r for r in self._config.study_rules if r.name == job.rule), None)
        if rule is None or not inputs.segmented.role:
            return []
        have = {item.role for item in inputs.series}
        return [name for name, role in rule.roles.items() if role.required and name not in have]

    def _start(self, job: JobRow) -> None:
        inputs = self._inputs(job)
        if inputs is None:
            self._index.jobs.fail(job.id, "inputs are no longer in the index")
            return
        missing = self._missing_roles(job, inputs)
        if missing:
            reason = (f"study rule {job.rule}: required role(s) {', '.join(missing)} missing; "
                      "the study job is queued anew when a series of the study plays them")
            self._index.jobs.fail(job.id, reason)
            log.error("job failed", extra=fields(job_id=job.id, reason=reason))
            return
        out_dir = self._config.results_dir / f"job-{job.id}"
        shutil.rmtree(out_dir, ignore_errors=True)  # a rerun starts from an empty folder
        prior = self._index.priors.get(job.id)
        log.info("job started", extra=fields(
            job_id=job.id, preset=job.preset, attempt=job.attempts,
            delta=prior.state if prior else None,
            delta_reason=prior.reason if prior and inputs.prior is None else None,
            prior_study_uid=prior.prior_study_uid if prior and inputs.prior else None,
            images=sum(len(item.paths) for item in inputs.series),
            roles=[item.role for item in inputs.series if item.role],
            source_series_uid=job.source_series_uid, seg_sop_uid=job.seg_sop_uid))
        models = [(str(ref.path), ref.sha256) for ref in self._config.models]
        written = functools.partial(self._written, job.id) if self._dicom_destinations() \
            else None
        future = self._executor.submit(inputs, out_dir, models, written)
        self._running[job.id] = (future, time.monotonic())
        future.add_done_callback(lambda done, job_id=job.id: self._finished(job_id, done))

    def _written(self, job_id: int, objects: Sequence[tuple[str, str]]) -> None:
        """Queue the deliveries of (path, SOP Instance UID) objects a running job has written
        and announced (the report while the maps are computed: ``node.flow.executor``), here in the
        node's process; ``JobStore.finish`` queues them again with the rest, which changes
        nothing."""
        self._index.outbox.queue_early(job_id, [
            (dest.name, path, uid) for path, uid in objects
            for dest in self._dicom_destinations()])
        if self._on_done is not None:
            self._on_done(job_id)

    def _finished(self, job_id: int, future: JobFuture) -> None:
        with self._lock:
            _, started = self._running.pop(job_id, (None, time.monotonic()))
        if self._stopping:
            return  # left 'running' in the index: the next start queues it again
        try:
            # unpickled into the pipeline's classes: imported with this module, at the node's
            # start, not at the first result (seconds of imports in that job's hand-off)
            result: PipelineResult = future.result()
        except Exception as exc:
            if _worker_lost(exc):
                self._worker_died(job_id, exc)
                return
            if is_transient(exc):
                self._again_later(job_id, failure_reason(exc))
                return
            reason = failure_reason(exc)
            self._index.jobs.fail(job_id, reason)
            refused = is_refusal(exc)
            log.error("job failed", extra=fields(job_id=job_id, refused=refused, reason=reason))
            if not refused:
                log.debug("job failure traceback", exc_info=exc,
                          extra=fields(job_id=job_id, error_type=type(exc).__name__))
            return
        deliveries = [(dest.name, str(obj.path), obj.sop_instance_uid)
                      for obj in result.objects for dest in self._dicom_destinations()]
        deliveries += self._bundle_deliveries(job_id, result)
        models = {r.outcome.model.name: r.outcome.model.version for r in result.models}
        stages = {stage: round(seconds, 3)
                  for stage, seconds in result.timings.with_early_objects().items()}
        self._index.jobs.finish(job_id, deliveries, preset_hash=result.preset_hash,
                               models=models, timings=stages)
        for error in result.model_errors:
            log.error("model package not run", extra=fields(job_id=job_id, error=error))
        log.info("job done", extra=fields(
            job_id=job_id, preset=result.preset, preset_hash=result.preset_hash,
            lesions=len(result.lesions), objects=[str(Path(o.path).name) for o in result.objects],
            deliveries=len(deliveries), models=models,
            duration_s=round(time.monotonic() - started, 3), stages_s=stages))
        if self._on_done is not None:
            self._on_done(job_id)

    def _dicom_destinations(self) -> list[Destination]:
        """The destinations that take the result objects themselves (every kind but fhir)."""
        return [dest for dest in self._config.destinations if dest.kind != "fhir"]

    def _bundle_deliveries(self, job_id: int, result: PipelineResult
                           ) -> list[tuple[str, str, str]]:
        """For each fhir destination, the job's results bundle (``pipelines.outputs.fhir_report``),
        written beside its objects as ``fhir-report.json`` and keyed by the feature report's
        SOP Instance UID; none when no fhir destination is configured. A bundle that cannot be
        built is logged with its reason and not queued: the DICOM results still go."""
        fhir = [dest for dest in self._config.destinations if dest.kind == "fhir"]
        if not fhir:
            return []
        import pydicom

        from pipelines.outputs.fhir_report import build_results_bundle, write_results_bundle

        report = result.report
        try:
            series = self._index.instances.series(result.source_series_uid)
            header = pydicom.dcmread(report.path, stop_before_pixels=True)
            bundle = build_results_bundle(result, header, series.modality if series else "")
            path = write_results_bundle(bundle, Path(report.path).parent / "fhir-report.json")
        except (OSError, ValueError) as exc:
            log.error("FHIR results bundle not built", extra=fields(
                job_id=job_id, reason=failure_reason(exc)))
            return []
        return [(dest.name, str(path), report.sop_instance_uid) for dest in fhir]

    def _worker_died(self, job_id: int, exc: Exception) -> None:
        """A worker process ended abruptly (killed, out of memory): a new pool, and the job runs
        again until ``max_job_attempts``; the pipeline itself did not fail."""
        with self._lock:
            if self._stopping:
                return
            self._executor.renew()
        self._again_later(job_id, f"worker process died: {failure_reason(exc)}", backoff=False)

    def _again_later(self, job_id: int, reason: str, backoff: bool = True) -> None:
        """A transient failure: the job is queued again (after the back-off of the module
        docstring when ``backoff``) until ``max_job_attempts`` runs, then it fails."""
        job = self._index.jobs.get(job_id)
        if job.attempts >= self._config.max_job_attempts:
            reason = f"{reason} (transient; gave up after {job.attempts} attempts)"
            self._index.jobs.fail(job_id, reason)
            log.error("job failed", extra=fields(job_id=job_id, attempts=job.attempts,
                                                 transient=True, reason=reason))
            return
        delay = min(RETRY_BACKOFF * 2 ** (job.attempts - 1), RETRY_BACKOFF_MAX) if backoff \
            else 0.0
        self._index.jobs.requeue(
            job_id, reason, not_before=self._index.clock.time() + delay if delay else None)
        log.warning("job queued again", extra=fields(
            job_id=job_id, attempts=job.attempts, reason=reason, retry_in_s=delay))

    def stop(self) -> None:
        """Stop at once: worker processes are ended, their jobs rerun at the next start."""
        self._stopping = True
        self._executor.shutdown()
