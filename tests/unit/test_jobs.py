"""The job runner with real worker processes: a pipeline error fails the job with its reason; a
worker killed mid-job is replaced and the job runs again."""

import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from node.config import Destination, NodeConfig
from node.index import Index, InstanceRow
from node.jobs import JobRunner
from pipelines.synthetic import SyntheticStudy, write_synthetic_study


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    return write_synthetic_study(tmp_path_factory.mktemp("study"), shape=(12, 64, 64))


def _index_study(index: Index, study: SyntheticStudy) -> str:
    for path in [*study.ct_paths, study.seg_path]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        index.add_instance(InstanceRow(ds.SOPInstanceUID, ds.SOPClassUID, ds.StudyInstanceUID,
                                       ds.SeriesInstanceUID, str(path), 1, "SCANNER"),
                           ds.Modality)
    return pydicom.dcmread(study.seg_path, stop_before_pixels=True).SOPInstanceUID


def _until(condition: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _runner(tmp_path: Path, study: SyntheticStudy, preset: str) -> tuple[Index, JobRunner, int]:
    config = NodeConfig(state_dir=tmp_path, destinations=[
        Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=4242)])
    index = Index(config.index_path)
    seg_uid = _index_study(index, study)
    job_id = index.add_job(study.ct_series_uid, seg_uid, "rule", preset, "digest")
    return index, JobRunner(config, index), job_id


def test_pipeline_error_fails_the_job_with_its_reason(tmp_path: Path,
                                                      study: SyntheticStudy) -> None:
    index, runner, job_id = _runner(tmp_path, study, "no-such-preset")
    try:
        runner.tick()
        _until(lambda: index.job(job_id).state == "failed")
        assert "no-such-preset" in index.job(job_id).reason
        assert index.deliveries() == []
    finally:
        runner.stop()


def test_killed_worker_is_replaced_and_the_job_runs_again(tmp_path: Path,
                                                          study: SyntheticStudy) -> None:
    index, runner, job_id = _runner(tmp_path, study, "ct-liver-basic")
    try:
        runner.tick()
        assert index.job(job_id).state == "running"
        _until(lambda: bool(multiprocessing.active_children()))
        for child in multiprocessing.active_children():
            os.kill(child.pid, signal.SIGKILL)
        _until(lambda: index.job(job_id).state == "queued")
        assert "worker process died" in index.job(job_id).reason
        runner.tick()
        _until(lambda: index.job(job_id).state == "done")
        job = index.job(job_id)
        assert job.attempts == 2 and job.reason is None
        deliveries = index.deliveries()
        assert len(deliveries) == 2  # ct-liver-basic: the report and the summary image
        for delivery in deliveries:
            assert delivery["destination"] == "pacs" and Path(delivery["path"]).is_file()
    finally:
        runner.stop()
