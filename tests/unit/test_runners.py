"""The node's three plan runners (``node.flow.executor``): in this process, a local job worker's
(tasks in given processes, ``beside`` writes forked) and Dask's (tasks on a cluster) drive the same
plan to the same result: tasks' results in task order, a task's exception thrown into the plan
where it yielded, announced writes told once written, and a job's objects and CSVs the same
whichever runner ran it."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Generator, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pydicom
import pytest

from demo.synthetic import SyntheticStudy, write_synthetic_study
from node.flow.executor import DaskRunner, InProcessRunner, LocalRunner, PlanRunner
from node.flow.forked import fork_available
from pipelines.outputs.result import PipelineResult
from pipelines.plan import Gather, Laps, Tasks, Write, Written
from pipelines.process import job_plan
from pipelines.science.presets import MapOptions, load_preset
from tests.unit.test_forked import _content

distributed = pytest.importorskip("distributed")


def _square(n: int) -> int:
    return n * n


def _odd_only(n: int) -> int:
    if n % 2 == 0:
        raise ValueError(f"{n} is even")
    return n


def _write(laps: Laps) -> Written[int]:
    laps.lap("writing")
    return Written((f"object of {os.getpid()}",), os.getpid())


def _plan(caught: list[str]) -> Generator[Any, Any, tuple[list[int], list[Any]]]:
    squares = yield Tasks(_square, range(5))
    try:
        yield Tasks(_odd_only, [1, 2, 3])
    except ValueError as error:
        caught.append(str(error))
    pending = [(yield Write("beside", _write, Laps(), beside=True, announce=True)),
               (yield Write("here", _write, Laps(), beside=False, announce=False))]
    gathered = yield Gather(pending)
    return squares, gathered


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with distributed.LocalCluster(n_workers=1, processes=False, threads_per_worker=2,
                                  dashboard_address=None, silence_logs=40) as cluster, \
            distributed.Client(cluster) as dask_client:
        yield dask_client


@pytest.fixture(scope="module")
def task_pool() -> Iterator[ProcessPoolExecutor]:
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


def _runners(announce: Any, client: Any, pool: ProcessPoolExecutor) -> dict[str, PlanRunner]:
    return {"in process": InProcessRunner(announce),
            "local": LocalRunner(announce, lambda fn, tasks: list(pool.map(fn, tasks))),
            "dask": DaskRunner(client, announce)}


def test_every_runner_sends_results_in_order_throws_errors_and_announces(
        client: Any, task_pool: ProcessPoolExecutor) -> None:
    for name in ("in process", "local", "dask"):
        announced: list[tuple[str, ...]] = []
        runner = _runners(announced.append, client, task_pool)[name]
        caught: list[str] = []
        squares, [(beside, beside_laps), (here, here_laps)] = runner.run(_plan(caught))
        assert squares == [0, 1, 4, 9, 16], name
        assert caught == ["2 is even"], name
        assert here == os.getpid() and here_laps == {}, name
        assert announced == [(f"object of {beside}",)], name  # once written, here
        if name == "local" and fork_available():  # written by a forked child, on its own laps
            assert beside != os.getpid() and set(beside_laps) == {"writing"}
        else:
            assert beside == os.getpid() and beside_laps == {}, name


def test_an_error_the_plan_does_not_catch_ends_the_run(client: Any,
                                                        task_pool: ProcessPoolExecutor) -> None:
    def plan() -> Generator[Any, Any, None]:
        yield Tasks(_odd_only, [2])

    for runner in _runners(None, client, task_pool).values():
        with pytest.raises(ValueError, match="2 is even"):
            runner.run(plan())


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    return write_synthetic_study(tmp_path_factory.mktemp("study"), shape=(10, 48, 48))


def test_a_job_is_the_same_whichever_runner_runs_it(
        study: SyntheticStudy, tmp_path: Path, client: Any,
        task_pool: ProcessPoolExecutor) -> None:
    basic = load_preset("ct-liver-basic")
    preset = basic.model_copy(update={"name": "basic-maps", "maps": MapOptions(
        enabled=True, features=("firstorder_Mean", "glcm_Contrast"), kernel_radius=1,
        margin_mm=2.0)})
    results: dict[str, PipelineResult] = {}
    for name, runner in _runners(None, client, task_pool).items():
        results[name] = runner.run(job_plan(study.ct_paths, study.seg_path, preset,
                                            tmp_path / name, split_maps=runner.split_maps))
    serial = results.pop("in process")
    assert len(serial.objects) == 5  # the report, SEG, summary image, two maps
    for name, result in results.items():
        assert [o.sop_instance_uid for o in result.objects] == \
            [o.sop_instance_uid for o in serial.objects], name
        for ours, theirs in zip(serial.objects, result.objects, strict=True):
            here, there = pydicom.dcmread(ours.path), pydicom.dcmread(theirs.path)
            if "FloatPixelData" in here:  # the maps' values, bit for bit
                assert there.FloatPixelData == here.FloatPixelData, name
            assert _content(ours.path) == _content(theirs.path), (name, ours.path.name)
        for csv in ("features.csv", "qc.csv"):
            assert (tmp_path / name / csv).read_bytes() == \
                (tmp_path / "in process" / csv).read_bytes(), (name, csv)
