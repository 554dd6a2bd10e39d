"""Where pipeline jobs run, and how: the node's one seam between a job's plan and processes.

A job is a plan (``pipelines.process.job_plan``, ``pipelines.plan``): a generator that yields
its fan-outs of feature and map tasks, its writes and a gather, and never runs anything
concurrently itself. A runner (:class:`PlanRunner`) drives it:

* :class:`InProcessRunner`: everything in the calling process, task after task (tests and
  ``radiomics-node process``; :func:`run_in_process`);
* :class:`LocalRunner`: in a local job worker (``executor.kind: local``, the default service):
  the tasks in the worker's task processes when it has them (``executor.task_processes``), the
  plan's ``beside`` writes (quality control, the models, the report, derived SEG and summary
  image, and each feature class's maps but the last) in a child forked beside the maps
  (``node.flow.forked``), so they overlap the maps on another core;
* :class:`DaskRunner`: the plan's tasks submitted to a ``dask.distributed`` cluster, one
  cluster task each, from a client or from inside a cluster task (``worker_client``).

Every runner writes the same objects with the same bytes in the same order: the tasks compute
what the serial path computes, and the writes run the same functions.

``executor.kind: local`` (default) runs each job in a ``ProcessPoolExecutor`` of ``workers``
spawned processes on the node's machine, with the spool files' paths. The objects of a write
the plan announces are reported, as soon as they are written, to the node's process on a queue
(:class:`LocalExecutor`), where the job runner queues its deliveries in the index: the outbox
sends the report while the maps are computed, and no worker or child touches the index.

``executor.kind: dask`` submits each job to the ``dask.distributed`` scheduler at
``executor.scheduler_address``; its workers may be other machines that share no filesystem with
the node and need only this package installed: the node reads the job's input files and ships
their bytes, the worker writes them to a temporary folder, runs the same plan with a
:class:`DaskRunner` (its feature and map tasks on the same cluster, so one study's lesions,
filters and maps spread over every worker while reading, QC and encoding stay with the job) and
returns the result with the bytes of every file it wrote, which the node writes into the job's
results folder. Dask re-runs a task whose worker died (up to the scheduler's
``distributed.scheduler.allowed-failures``), so a job survives the loss of a worker, whether it
ran the job or one of its tasks. A Dask job's objects are all queued when it is done.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.queues
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from node import logs
from node.config import NodeConfig
from node.flow.forked import ForkedCall, fork_available
from pipelines.plan import Laps, Pending, Plan, Step, Tasks, Write, Written, drive

if TYPE_CHECKING:  # imported where used: the node spawns its workers before it imports them
    from pipelines.outputs.result import OutputObject, PipelineResult
    from pipelines.science.presets import Preset
    from pipelines.study import JobInputs

log = logging.getLogger(__name__)

T = TypeVar("T")
_Task = TypeVar("_Task")
_Result = TypeVar("_Result")

Announce = Callable[[Sequence["OutputObject"]], None]
"""Told the objects of a write the plan announces, in the process that runs the plan."""


@dataclasses.dataclass(frozen=True)
class _Done(Generic[T]):
    """A write done in the plan's process: its stages are in the job's laps already."""

    value: T
    beside: bool = False

    def result(self) -> tuple[T, dict[str, float]]:
        return self.value, {}


class PlanRunner:
    """Drives a plan (``pipelines.plan``): sends each :class:`~pipelines.plan.Tasks` step's
    results back in task order (or throws the task's exception into the plan),
    each :class:`~pipelines.plan.Write` step's :class:`~pipelines.plan.Pending`, and each
    :class:`~pipelines.plan.Gather` step's values. This base class runs everything in the
    calling process; subclasses choose where tasks (:meth:`map_tasks`) and ``beside`` writes
    (:meth:`write`) run. ``announce`` is told the objects of each write the plan announces,
    once they are written, in this process. ``split_maps`` is what a job plan should be given
    (``pipelines.process.job_plan``): whether its tasks run side by side."""

    split_maps = False

    def __init__(self, announce: Announce | None = None):
        self._announce = announce

    def map_tasks(self, fn: Callable[[_Task], _Result], tasks: Iterable[_Task]
                  ) -> list[_Result]:
        """``fn`` over ``tasks``, results in task order."""
        return list(map(fn, tasks))

    def write(self, step: Write[T]) -> Pending[T]:
        """Run the write here, on the job's laps, and announce its objects."""
        written = step.fn(step.laps)
        self._announced(step, written)
        return _Done(written.value)

    def _announced(self, step: Write[Any], written: Written[Any]) -> None:
        if step.announce and self._announce is not None:
            self._announce(written.objects)

    def run(self, plan: Plan[T]) -> T:
        """The plan's return value; an exception of the plan (or of a task or write it did not
        catch) propagates."""
        return drive(plan, self._answer)

    def _answer(self, step: Step) -> Any:
        if isinstance(step, Tasks):
            return self.map_tasks(step.fn, step.tasks)
        if isinstance(step, Write):
            return self.write(step)
        return [pending.result() for pending in step.pending]


class InProcessRunner(PlanRunner):
    """Everything in the calling process, task after task: tests, ``radiomics-node process``."""


def run_in_process(plan: Plan[T], announce: Announce | None = None) -> T:
    """``plan`` run by an :class:`InProcessRunner`."""
    return InProcessRunner(announce).run(plan)


def _write_beside(step: Write[T]) -> tuple[Written[T], dict[str, float]]:
    """In the forked child: the write, on laps of its own."""
    laps = Laps()
    return step.fn(laps), laps.seconds


class _Beside(Generic[T]):
    """A write run by a forked child (``node.flow.forked``); a thread of the plan's process waits
    for it and announces its objects as soon as the child has written them."""

    beside = True

    def __init__(self, step: Write[T], announce: Callable[[Write[Any], Written[Any]], None]):
        call = ForkedCall(lambda: _write_beside(step), step.name)
        self._outcome: tuple[Written[T], dict[str, float]] | None = None
        self._error: BaseException | None = None

        def wait() -> None:
            try:
                self._outcome = call.result()
            except BaseException as exc:  # raised again by result()
                self._error = exc
                return
            try:
                announce(step, self._outcome[0])
            except Exception:  # the objects are queued with the job's result anyway
                log.exception("written objects not announced", extra=logs.fields(
                    write=step.name))

        self._waiter = threading.Thread(target=wait, name=f"beside: {step.name}", daemon=True)
        self._waiter.start()

    def result(self) -> tuple[T, dict[str, float]]:
        self._waiter.join()
        if self._error is not None:
            raise self._error
        assert self._outcome is not None
        written, seconds = self._outcome
        return written.value, seconds


class LocalRunner(PlanRunner):
    """A local job worker's runner: tasks in ``tasks`` (the worker's task processes) when
    given, else here; ``beside`` writes in a forked child where the platform forks."""

    def __init__(self, announce: Announce | None = None,
                 tasks: Callable[[Callable[[Any], Any], Iterable[Any]], list[Any]] | None = None):
        super().__init__(announce)
        self._tasks = tasks
        self.split_maps = tasks is not None

    def map_tasks(self, fn: Callable[[_Task], _Result], tasks: Iterable[_Task]
                  ) -> list[_Result]:
        return self._tasks(fn, tasks) if self._tasks is not None else list(map(fn, tasks))

    def write(self, step: Write[T]) -> Pending[T]:
        if step.beside and fork_available():
            return _Beside(step, self._announced)
        return super().write(step)


class DaskRunner(PlanRunner):
    """Every task of the plan a task of a ``dask.distributed`` cluster, results gathered in
    order: through ``client``, or, when None, from inside a cluster task (:func:`on_cluster`).
    Writes run here."""

    split_maps = True

    def __init__(self, client: Any = None, announce: Announce | None = None):
        super().__init__(announce)
        self._client = client

    def map_tasks(self, fn: Callable[[_Task], _Result], tasks: Iterable[_Task]
                  ) -> list[_Result]:
        if self._client is None:
            return on_cluster(fn, tasks)
        return list(self._client.gather(self._client.map(fn, list(tasks), pure=False)))


class JobFuture(Protocol):
    """What the job runner needs of a running job: a concurrent.futures.Future or a
    distributed.Future."""

    def result(self, timeout: float | None = None) -> PipelineResult: ...

    def add_done_callback(self, fn: Any) -> None: ...


OnWritten = Callable[[Sequence[tuple[str, str]]], None]
"""Told (path, SOP Instance UID) of each object a running job has written and announced."""


class Executor(Protocol):
    """Runs a job (``pipelines.study.study_plan(inputs, out_dir, models=models)``) somewhere and
    returns a future; ``models`` are (package path, pinned sha256) pairs;
    ``written`` is told, in the node's process, the objects the job writes before it is done
    where the executor can (local jobs)."""

    def submit(self, inputs: JobInputs, out_dir: Path, models: Sequence[tuple[str, str]] = (),
               written: OnWritten | None = None) -> JobFuture:
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
                      presets: tuple[str, ...] = (),
                      announcements: multiprocessing.queues.SimpleQueue[Any] | None = None
                      ) -> None:
    """Initializer of a local job worker: :func:`_start_worker`, then highdicom's tables of the
    standard are read (:func:`pipelines.io.segmentation.load_standard_tables`), which the first job
    after a start otherwise waited for while reading its SEG, and the report's templates of every
    feature of the rules' ``presets`` are made
    (:func:`pipelines.outputs.feature_report.prepare_report`), which the first report otherwise made
    (docs/history/performance.md, "End to end"). A preset that cannot be loaded is logged and left
    to its jobs, which fail with the same reason. The worker's jobs announce their written objects
    on ``announcements`` (:class:`LocalExecutor`)."""
    from pipelines.io.segmentation import load_standard_tables
    from pipelines.outputs.feature_report import prepare_report
    from pipelines.science.presets import load_preset

    global _ANNOUNCEMENTS
    _ANNOUNCEMENTS = announcements
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
# where a job worker announces its jobs' written objects: (job token, [(path, uid), ...])
_ANNOUNCEMENTS: multiprocessing.queues.SimpleQueue[Any] | None = None


def _job_tasks(fn: Callable[[_Task], _Result], tasks: Iterable[_Task]) -> list[_Result]:
    """The tasks of a job in a local job worker, run in the worker's task processes, results in
    task order. A task process that dies (e.g. the OOM killer) ends the job worker too, so the
    node sees what it sees when a job's worker dies (the job is run again, up to
    ``max_job_attempts``) and starts a new pool."""
    assert _TASKS is not None
    try:
        return list(_TASKS.map(fn, tasks))
    except BrokenProcessPool:
        os._exit(1)


def run_local_job(inputs: JobInputs, out_dir: str, models: Sequence[tuple[str, str]] = (),
                  token: int | None = None) -> PipelineResult:
    """A job in a local job worker: its plan run by a :class:`LocalRunner`, the objects it
    announces sent to the node's process with ``token`` (none when None)."""
    from pipelines.study import study_plan

    queue = _ANNOUNCEMENTS

    def announce(objects: Sequence[OutputObject]) -> None:
        if queue is not None and token is not None:
            queue.put((token, [(str(obj.path), obj.sop_instance_uid) for obj in objects]))

    runner = LocalRunner(announce, _job_tasks if _TASKS is not None else None)
    return runner.run(study_plan(inputs, out_dir, models=models, split_maps=runner.split_maps))


def _ready() -> None:
    """A task that does nothing, submitted once per worker to a new pool: the pool starts its
    processes at once, and their initializer imports the pipeline (``pipelines.process``), so
    the first job waits for neither (seconds of process start and imports, ``bench/e2e.py``'s
    worker hand-off)."""


class LocalExecutor:
    """``workers`` spawned processes on this machine, reading the spool files directly; started
    with the pool, not at the first job. With ``executor.task_processes`` N, each of them has N
    spawned task processes of its own that run its jobs' feature and map tasks.

    The objects a job announces come back on a queue the workers share, read here by a thread
    that calls the ``written`` the job was submitted with; a job that is done has nothing more
    to say (its result lists every object), so announcements that come later are dropped."""

    def __init__(self, config: NodeConfig):
        self._config = config
        self._tokens = itertools.count(1)
        self._written: dict[int, OnWritten] = {}
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("spawn")
        # a queue per pool: a worker killed while it wrote may leave the old one unusable
        announcements = context.SimpleQueue()
        threading.Thread(target=self._read_announcements, args=(announcements,),
                         name="job-announcements", daemon=True).start()
        pool = ProcessPoolExecutor(
            max_workers=self._config.workers,
            mp_context=context,
            initializer=_start_job_worker,
            initargs=(self._config.log_level, self._config.log_file,
                      self._config.executor.task_processes,
                      tuple(dict.fromkeys(self._config.rule_presets().values())),
                      announcements),
        )
        for _ in range(self._config.workers):
            pool.submit(_ready)
        return pool

    def _read_announcements(self, announcements: multiprocessing.queues.SimpleQueue[Any]
                            ) -> None:
        while True:
            try:
                token, objects = announcements.get()
            except (EOFError, OSError):  # closed at shutdown
                return
            written = self._written.get(token)
            if written is None:
                continue
            try:
                written(objects)
            except Exception:  # the objects are queued with the job's result anyway
                log.exception("written objects not queued", extra=logs.fields(token=token))

    def submit(self, inputs: JobInputs, out_dir: Path, models: Sequence[tuple[str, str]] = (),
               written: OnWritten | None = None) -> Future[PipelineResult]:
        token = next(self._tokens)
        if written is not None:
            self._written[token] = written
        future = self._pool.submit(run_local_job, inputs, str(out_dir), models=list(models),
                                   token=token if written is not None else None)
        future.add_done_callback(lambda _: self._written.pop(token, None))
        return future

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
    """A :class:`DaskRunner`'s tasks from inside a Dask task: every feature or map task becomes
    a task of the cluster this worker belongs to, the results come back in order.
    ``worker_client`` takes the waiting job task out of the worker's thread pool (no deadlock
    when all threads run jobs); priority 1 runs the lesion tasks of jobs already started before
    new jobs. The tasks' arguments (arrays) are kept by the scheduler, so a lesion
    task whose worker died runs again on another one."""
    from distributed import worker_client

    with worker_client() as client:
        return client.gather(client.map(fn, list(tasks), pure=False, priority=1))


def shipped_preset(preset: str) -> str | Preset:
    """What a cluster task is given for a rule's ``preset``: a shipped preset's name (every
    worker has the package), or a preset file of this machine read here, as a Preset (a worker
    on another machine has not got the file; ``pipelines.science.presets.load_preset`` tells the two
    apart)."""
    from pipelines.science.presets import is_preset_file, load_preset

    return load_preset(preset) if is_preset_file(preset) else preset


ShippedPrior = tuple[list[bytes], bytes]
"""A job's prior study as a cluster task is given it: the bytes of its image files and of its
segmentation (``pipelines.study.PriorInputs``)."""


def ship(inputs: JobInputs) -> tuple[list[tuple[str, list[bytes], str | Preset]], bytes,
                                     ShippedPrior | None]:
    """What a cluster task is given for a job's ``inputs``: each series as (role, the bytes of
    its files, :func:`shipped_preset`), the segmentation's bytes, and the prior study's
    (:data:`ShippedPrior`, None without one)."""
    prior = None if inputs.prior is None else (
        [Path(p).read_bytes() for p in inputs.prior.paths], Path(inputs.prior.seg).read_bytes())
    return ([(item.role, [Path(p).read_bytes() for p in item.paths],
              item.preset if not isinstance(item.preset, str) else shipped_preset(item.preset))
             for item in inputs.series], Path(inputs.seg).read_bytes(), prior)


def _write_files(folder: Path, files: Sequence[bytes]) -> tuple[str, ...]:
    """Write ``files`` into ``folder`` (made) as numbered ``.dcm`` files; their paths."""
    folder.mkdir(parents=True)
    paths = []
    for number, data in enumerate(files):
        path = folder / f"{number:05d}.dcm"
        path.write_bytes(data)
        paths.append(str(path))
    return tuple(paths)


def run_shipped_job(series: Sequence[tuple[str, Sequence[bytes], str | Preset]], seg: bytes,
                    models: Sequence[tuple[dict[str, bytes], str]] = (),
                    prior: ShippedPrior | None = None) -> RemoteResult:
    """On a Dask worker: write the shipped files (each series' images, the segmentation, the
    files of each model package with its pinned sha256, the prior study's images and
    segmentation) to a temporary folder, run the job's plan there with its tasks on the cluster
    (:class:`DaskRunner`, :func:`on_cluster`) and return its result and output files (paths
    relative to the output folder). ``series`` and ``prior`` as :func:`ship` gives them."""
    from pipelines.study import JobInputs, PriorInputs, SeriesInput, study_plan

    with tempfile.TemporaryDirectory(prefix="radiomics-job-") as tmp:
        folder, out = Path(tmp) / "in", Path(tmp) / "out"
        received = [SeriesInput(role, _write_files(folder / str(position), images), preset)
                    for position, (role, images, preset) in enumerate(series)]
        seg_path = folder / "seg.dcm"
        seg_path.write_bytes(seg)
        prior_inputs = None
        if prior is not None:
            prior_seg = folder / "prior-seg.dcm"
            prior_seg.write_bytes(prior[1])
            prior_inputs = PriorInputs(_write_files(folder / "prior", prior[0]), str(prior_seg))
        packages = []
        for number, (files, sha256) in enumerate(models):
            package = Path(tmp) / f"model-{number}"
            for name, data in files.items():
                (package / name).parent.mkdir(parents=True, exist_ok=True)
                (package / name).write_bytes(data)
            packages.append((package, sha256))
        runner = DaskRunner()
        result = runner.run(study_plan(JobInputs(tuple(received), str(seg_path), prior_inputs),
                                       out, models=packages, split_maps=runner.split_maps))
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

    def submit(self, inputs: JobInputs, out_dir: Path, models: Sequence[tuple[str, str]] = (),
               written: OnWritten | None = None) -> _UnpackedFuture:
        """The job as one cluster task; ``written`` is not told (the objects come back with
        the result: all are queued when the job is done)."""
        from models.package import package_files

        # The bytes are arguments of the task itself, not scattered data: the scheduler keeps
        # them with the task, so it can run the task again on another worker when one dies
        # (scattered data would die with the worker that holds it).
        series, seg, prior = ship(inputs)
        future = self._client.submit(run_shipped_job, series, seg,
                                     [(package_files(Path(path)), sha256)
                                      for path, sha256 in models], prior, pure=False)
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
