"""Where pipeline jobs run: a local pool of spawned processes, or a Dask cluster.

``executor.kind: local`` (default) runs ``pipelines.process.process_study`` in a
``ProcessPoolExecutor`` of ``workers`` spawned processes on the node's machine, with the spool
files' paths. ``executor.kind: dask`` submits each job to the ``dask.distributed`` scheduler at
``executor.scheduler_address``; its workers may be other machines that share no filesystem with
the node and need only this package installed: the node reads the job's input files and ships
their bytes, the worker writes them to a temporary folder, runs the same ``process_study`` and
returns the result with the bytes of every file it wrote, which the node writes into the job's
results folder. Inside that job task, feature extraction is split into one task per lesion and
image type (``pipelines.features.FeatureTask``: the lesion's windows as NumPy arrays), and the
parametric maps into tasks per lesion, feature class and run of voxel batches
(``pipelines.parametric_map.MapTask``), which the job submits to the same cluster
(:func:`on_cluster`), so one study's lesions, filters and maps spread over every worker while
reading, QC and encoding stay with the job. Dask re-runs a task whose worker died (up to the
scheduler's ``distributed.scheduler.allowed-failures``), so a job survives the loss of a worker,
whether it ran the job or one of its lesion tasks. Both paths call the same function on the same
bytes, and the tasks compute what the serial path computes, so a job's result (feature values,
maps, result UIDs) is the same whichever executor ran it.

A local job queues the result objects its pipeline writes before the parametric maps (the
report, the derived SEG, the summary image) for delivery itself, from the worker
(:class:`EarlyDelivery`), so the outbox sends them while the maps are computed; a Dask job's
worker has no index to queue them in, and its objects are all queued when it is done.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from node import logs
from node.config import NodeConfig

if TYPE_CHECKING:  # imported where used: the node spawns its workers before it imports them
    from pipelines.presets import Preset
    from pipelines.process import PipelineResult

log = logging.getLogger(__name__)

_Task = TypeVar("_Task")
_Result = TypeVar("_Result")


class JobFuture(Protocol):
    """What the job runner needs of a running job: a concurrent.futures.Future or a
    distributed.Future."""

    def result(self, timeout: float | None = None) -> PipelineResult: ...

    def add_done_callback(self, fn: Any) -> None: ...


@dataclasses.dataclass(frozen=True)
class EarlyDelivery:
    """``process_study``'s ``on_early_objects`` in a local job worker: queues the objects the
    pipeline wrote before its parametric maps for each of ``destinations``, as deliveries of job
    ``job_id`` in the index at ``index_path`` (``Index.outbox.queue_early``); the node's
    outbox sends them at its next tick."""

    index_path: str
    job_id: int
    destinations: tuple[str, ...]

    def __call__(self, objects: Sequence[Any]) -> None:
        from node.state import Index

        index = Index(Path(self.index_path))
        try:
            index.outbox.queue_early(self.job_id, [
                (destination, str(obj.path), obj.sop_instance_uid)
                for obj in objects for destination in self.destinations])
        finally:
            index.close()


class Executor(Protocol):
    """Runs ``process_study(images, seg, preset, out_dir, models=models)`` somewhere and returns
    a future; ``models`` are (package path, pinned sha256) pairs; ``early`` queues the objects
    written before the parametric maps where the executor can (local jobs)."""

    def submit(self, images: Sequence[str], seg: str, preset: str, out_dir: Path,
               models: Sequence[tuple[str, str]] = (),
               early: EarlyDelivery | None = None) -> JobFuture:
        """Start one job."""

    def renew(self) -> None:
        """Replace a broken pool (a worker process died); a no-op where the engine recovers."""

    def shutdown(self) -> None:
        """Stop at once; running jobs are abandoned (the index queues them again at start)."""


def _end_with_parent() -> None:
    """Wait until the node's process has ended, then end this worker: after SIGKILL or the OOM
    killer nobody shuts the pool down, and its idle workers would wait for tasks forever,
    holding their memory (``multiprocessing.parent_process().sentinel`` is ready then)."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)


def _start_worker(log_level: str, log_file: Path | None, task_processes: int = 0) -> None:
    """Pool initializer: worker processes log JSON lines too, and end when the node ends; with
    ``task_processes``, each job worker starts its own pool of task processes
    (:func:`_job_tasks`), which end when it ends. The pipeline is imported here, before any
    job or task arrives (this module imports it only where it is used, so that the node can
    start its pool before it imports the rest of itself: ``node.cli``)."""
    import pipelines.process  # noqa: F401

    logs.configure(log_level, log_file)
    threading.Thread(target=_end_with_parent, name="end-with-node", daemon=True).start()
    global _TASKS
    if task_processes:
        _TASKS = ProcessPoolExecutor(
            max_workers=task_processes, mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker, initargs=(log_level, log_file))
        for _ in range(task_processes):
            _TASKS.submit(_ready)


def _start_job_worker(log_level: str, log_file: Path | None, task_processes: int,
                      presets: tuple[str, ...] = ()) -> None:
    """Initializer of a local job worker: :func:`_start_worker`, then highdicom's tables of the
    standard are read (:func:`pipelines.segmentation.load_standard_tables`), which the first job
    after a start otherwise waited for while reading its SEG (0.52 against 0.06 s), and the
    report's templates of every feature of the rules' ``presets`` are made
    (:func:`pipelines.feature_report.prepare_report`), which the first report otherwise made (0.13 s
    for ``ct-liver-crlm``; docs/history/performance.md, "End to end", third and seventh rounds). A
    preset that cannot be loaded is
    logged and left to its jobs, which fail with the same reason."""
    from pipelines.feature_report import prepare_report
    from pipelines.presets import load_preset
    from pipelines.segmentation import load_standard_tables

    _start_worker(log_level, log_file, task_processes)
    start = time.perf_counter()
    load_standard_tables()
    tables = time.perf_counter() - start
    templates = 0
    for preset in presets:
        try:
            templates += prepare_report(load_preset(preset))
        except (OSError, ValueError) as exc:  # PresetError is a ValueError
            log.warning("report templates not prepared", extra=logs.fields(
                preset=preset, error=f"{type(exc).__name__}: {exc}"))
    log.info("job worker ready", extra=logs.fields(
        pid=os.getpid(), tables_s=round(tables, 3), report_templates=templates,
        templates_s=round(time.perf_counter() - start - tables, 3)))


_TASKS: ProcessPoolExecutor | None = None  # a job worker's task processes, if any


def _job_tasks(fn: Callable[[_Task], _Result], tasks: Iterable[_Task]) -> list[_Result]:
    """The map function of ``extract_lesions`` and ``compute_maps`` in a local job worker: the
    tasks run in the worker's task processes, results in task order. A task process that dies
    (e.g. the OOM killer) ends the job worker too, so the node sees what it sees when a job's
    worker dies (the job is run again, up to ``max_job_attempts``) and starts a new pool."""
    assert _TASKS is not None
    try:
        return list(_TASKS.map(fn, tasks))
    except BrokenProcessPool:
        os._exit(1)


def run_local_job(images: Sequence[str], seg: str, preset: str, out_dir: str,
                  models: Sequence[tuple[str, str]] = (),
                  early: EarlyDelivery | None = None) -> PipelineResult:
    """A job in a local worker: ``process_study`` with its tasks in the worker's task
    processes when it has them (``executor.task_processes``), else in the worker itself; QC,
    the models, the report, derived SEG and summary image done by a forked child while the
    worker computes the maps, and each feature class's maps but the last while it computes the
    next (``early_beside_maps``), all queued by ``early``."""
    from pipelines.process import process_study

    return process_study(images, seg, preset, out_dir, models=models,
                         map_tasks=_job_tasks if _TASKS is not None else None,
                         on_early_objects=early, early_beside_maps=True)


def _ready() -> None:
    """A task that does nothing, submitted once per worker to a new pool: the pool starts its
    processes at once, and their initializer imports the pipeline (``pipelines.process``), so
    the first job waits for neither (seconds of process start and imports, ``bench/e2e.py``'s
    worker hand-off)."""


class LocalExecutor:
    """``workers`` spawned processes on this machine, reading the spool files directly; started
    with the pool, not at the first job. With ``executor.task_processes`` N, each of them has N
    spawned task processes of its own that run its jobs' feature and map tasks."""

    def __init__(self, config: NodeConfig):
        self._config = config
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(
            max_workers=self._config.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_job_worker,
            initargs=(self._config.log_level, self._config.log_file,
                      self._config.executor.task_processes,
                      tuple(dict.fromkeys(rule.preset for rule in self._config.rules))),
        )
        for _ in range(self._config.workers):
            pool.submit(_ready)
        return pool

    def submit(self, images: Sequence[str], seg: str, preset: str, out_dir: Path,
               models: Sequence[tuple[str, str]] = (),
               early: EarlyDelivery | None = None) -> Future[PipelineResult]:
        return self._pool.submit(run_local_job, list(images), seg, preset, str(out_dir),
                                 models=list(models), early=early)

    def renew(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._new_pool()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for child in multiprocessing.active_children():
            if child.name.startswith("SpawnProcess"):  # the pool's workers, not receivers
                child.terminate()


@dataclasses.dataclass(frozen=True)
class RemoteResult:
    """What a Dask worker sends back: the result with paths relative to the job's folder and
    the bytes of every file the job wrote, by relative path."""

    result: PipelineResult
    files: dict[str, bytes]


def _rebase(value: Any, old: Path, new: Path) -> Any:
    """``value`` with every Path under ``old`` moved under ``new``: the paths in a
    PipelineResult (dataclasses, tuples, lists, dicts of them) follow the files."""
    if isinstance(value, Path):
        return new / value.relative_to(old) if value.is_relative_to(old) else value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: _rebase(getattr(value, f.name), old, new)
                   for f in dataclasses.fields(value) if f.init}
        return dataclasses.replace(value, **changes)
    if isinstance(value, tuple | list):
        return type(value)(_rebase(item, old, new) for item in value)
    if isinstance(value, dict):
        return {key: _rebase(item, old, new) for key, item in value.items()}
    return value


def on_cluster(fn: Callable[[_Task], _Result], tasks: Iterable[_Task]) -> list[_Result]:
    """The map function of ``extract_lesions`` and ``compute_maps`` inside a Dask task: every
    feature or map task becomes a task of the cluster this worker belongs to, the results come
    back in order. ``worker_client`` takes the waiting job task out of the worker's thread pool
    (no deadlock when all threads run jobs); priority 1 runs the lesion tasks of jobs already
    started before new jobs. The tasks' arguments (arrays) are kept by the scheduler, so a lesion
    task whose worker died runs again on another one."""
    from distributed import worker_client

    with worker_client() as client:
        return client.gather(client.map(fn, list(tasks), pure=False, priority=1))


def shipped_preset(preset: str) -> str | Preset:
    """What a cluster task is given for a rule's ``preset``: a shipped preset's name (every
    worker has the package), or a preset file of this machine read here, as a Preset (a worker
    on another machine has not got the file; ``pipelines.presets.load_preset`` tells the two
    apart)."""
    from pipelines.presets import is_preset_file, load_preset

    return load_preset(preset) if is_preset_file(preset) else preset


def run_shipped_job(images: Sequence[bytes], seg: bytes, preset: str | Preset,
                    models: Sequence[tuple[dict[str, bytes], str]] = ()) -> RemoteResult:
    """On a Dask worker: write the shipped files (images, SEG, the files of each model package
    with its pinned sha256) to a temporary folder, run ``process_study`` there with its feature
    tasks on the cluster (:func:`on_cluster`) and return its result and output files (paths
    relative to the output folder). ``preset`` is a preset name or a Preset."""
    from pipelines.process import process_study

    with tempfile.TemporaryDirectory(prefix="radiomics-job-") as tmp:
        inputs, out = Path(tmp) / "in", Path(tmp) / "out"
        inputs.mkdir()
        paths = []
        for number, data in enumerate(images):
            path = inputs / f"{number:05d}.dcm"
            path.write_bytes(data)
            paths.append(path)
        seg_path = inputs / "seg.dcm"
        seg_path.write_bytes(seg)
        packages = []
        for number, (files, sha256) in enumerate(models):
            package = Path(tmp) / f"model-{number}"
            for name, data in files.items():
                (package / name).parent.mkdir(parents=True, exist_ok=True)
                (package / name).write_bytes(data)
            packages.append((package, sha256))
        result = process_study(paths, seg_path, preset, out, models=packages,
                               map_tasks=on_cluster)
        files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
                 if p.is_file()}
        return RemoteResult(_rebase(result, out, Path()), files)


def unpack(remote: RemoteResult, out_dir: Path) -> PipelineResult:
    """Write a worker's output files into ``out_dir``; the result with paths there."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in remote.files.items():
        target = out_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return _rebase(remote.result, Path(), out_dir)


class _UnpackedFuture:
    """A distributed.Future of a RemoteResult seen as a future of the unpacked PipelineResult."""

    def __init__(self, future: Any, out_dir: Path):
        self._future = future
        self._out_dir = out_dir

    def result(self, timeout: float | None = None) -> PipelineResult:
        return unpack(self._future.result(timeout), self._out_dir)

    def add_done_callback(self, fn: Any) -> None:
        self._future.add_done_callback(lambda _: fn(self))


class DaskExecutor:
    """Jobs on the Dask cluster whose scheduler is ``executor.scheduler_address``."""

    def __init__(self, config: NodeConfig):
        from distributed import Client  # only nodes configured for Dask import it

        self._client = Client(config.executor.scheduler_address,
                              timeout=config.executor.connect_timeout)

    def submit(self, images: Sequence[str], seg: str, preset: str, out_dir: Path,
               models: Sequence[tuple[str, str]] = (),
               early: EarlyDelivery | None = None) -> _UnpackedFuture:
        """The job as one cluster task; ``early`` is not used (the worker has no index: all
        objects are queued when the job is done)."""
        from models.package import package_files

        # The bytes are arguments of the task itself, not scattered data: the scheduler keeps
        # them with the task, so it can run the task again on another worker when one dies
        # (scattered data would die with the worker that holds it).
        future = self._client.submit(run_shipped_job, [Path(p).read_bytes() for p in images],
                                     Path(seg).read_bytes(), shipped_preset(preset),
                                     [(package_files(Path(path)), sha256)
                                      for path, sha256 in models], pure=False)
        return _UnpackedFuture(future, out_dir)

    def renew(self) -> None:
        """Dask re-runs the tasks of a dead worker itself."""

    def shutdown(self) -> None:
        self._client.close()


def make_executor(config: NodeConfig) -> Executor:
    """The executor ``config.executor`` names."""
    if config.executor.kind == "dask":
        return DaskExecutor(config)
    return LocalExecutor(config)
