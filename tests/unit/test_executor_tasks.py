"""Local jobs with task processes (``executor.task_processes``): a job's feature and map tasks
run in processes of the job worker's own, with the result of the serial job, and a task process
that dies ends its job worker, as the job runner expects of a dead worker."""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import psutil
import pytest

import node.flow.executor as executor
from demo.synthetic import SyntheticStudy
from node.config import NodeConfig
from node.flow.jobs import JobRunner
from pipelines.science.features import feature_keys
from pipelines.science.presets import load_preset
from tests.unit.test_executor import _outputs, _queued_job, _run_job, _until, study  # noqa: F401


def _pid(_: int) -> int:
    return os.getpid()


def _die(_: int) -> int:
    os._exit(9)


def test_local_job_with_task_processes_equals_the_serial_job(
    tmp_path: Path, study: SyntheticStudy,  # noqa: F811
) -> None:
    serial_index, serial_job = _run_job(tmp_path / "serial", study, {"kind": "local"})
    config, index, job_id = _queued_job(tmp_path / "tasks", study,
                                        {"kind": "local", "task_processes": 2})
    runner = JobRunner(config, index)
    try:
        runner.tick()
        _until(lambda: index.jobs.get(job_id).state != "running")
        # the job worker, with its two task processes (Dask's or other tests' processes have
        # no children of their own)
        parents = [p for p in psutil.Process().children() if p.children()]
        assert [len(p.children()) for p in parents] == [2]
    finally:
        runner.stop()
    assert index.jobs.get(job_id).state == "done", index.jobs.get(job_id).reason
    serial_objects, serial_rows = _outputs(serial_index, serial_job)
    objects, rows = _outputs(index, job_id)
    assert rows == serial_rows and len(rows) > 100  # every feature value, as text
    assert sorted(objects) == sorted(serial_objects)


def test_job_tasks_run_in_the_task_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        monkeypatch.setattr(executor, "_TASKS", pool)
        pids = executor._job_tasks(_pid, range(6))
    assert len(pids) == 6 and os.getpid() not in pids


def _worker_whose_task_dies() -> None:
    executor._TASKS = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    executor._job_tasks(_die, [1])


def test_a_dead_task_process_ends_the_job_worker() -> None:
    worker = multiprocessing.get_context("spawn").Process(target=_worker_whose_task_dies)
    worker.start()
    worker.join(120)
    assert worker.exitcode == 1


def test_job_workers_prepare_the_report_templates_of_the_rules_presets(tmp_path: Path) -> None:
    """A local job worker makes the report's templates of every preset its rules name before
    its first job; a preset it cannot load is logged, and the worker starts all the same."""
    log_file = tmp_path / "node.log"
    config = NodeConfig(state_dir=tmp_path, log_file=log_file, rules=[
        {"name": "ct", "preset": "ct-liver-basic", "modality": ["CT"]},
        {"name": "ct again", "preset": "ct-liver-basic", "modality": ["CT"]},
        {"name": "broken", "preset": str(tmp_path / "missing.yaml"), "modality": ["CT"]}])
    pool = executor.LocalExecutor(config)
    try:
        _until(lambda: log_file.exists() and "job worker ready" in log_file.read_text())
    finally:
        pool.shutdown()
    events = [json.loads(line) for line in log_file.read_text().splitlines()]
    [ready] = [e for e in events if e["event"] == "job worker ready"]
    # ct-liver-basic names no modality: its 107 features for CT and for MR, once
    assert ready["report_templates"] == 2 * len(feature_keys(load_preset("ct-liver-basic")))
    [warning] = [e for e in events if e["event"] == "report templates not prepared"]
    assert warning["preset"].endswith("missing.yaml") and "missing.yaml" in warning["error"]
