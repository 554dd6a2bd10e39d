"""A transient failure (a full disk) is retried after a back-off, a failed job runs again when
asked (``radiomics-node jobs retry``), and no job starts while the disk is below the floor."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
import yaml

from demo.synthetic import SyntheticStudy, write_synthetic_study
from node.clock import SYSTEM_CLOCK, Clock
from node.config import NodeConfig
from node.flow import jobs as jobs_module
from node.flow.jobs import JobRunner, is_transient
from node.state import Index
from node.state.instances import InstanceRow
from pipelines.io.segmentation import SegmentationError
from tests.fake_clock import FakeClock


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    return write_synthetic_study(tmp_path_factory.mktemp("study"), shape=(8, 48, 48))


def _until(condition: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _job(config: NodeConfig, study: SyntheticStudy,
         clock: Clock = SYSTEM_CLOCK) -> tuple[Index, int]:
    index = Index(config.index_path, clock=clock)
    for path in [*study.ct_paths, study.seg_path]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        index.instances.add(InstanceRow(ds.SOPInstanceUID, ds.SOPClassUID, ds.StudyInstanceUID,
                                       ds.SeriesInstanceUID, str(path), 1, "SCANNER"),
                           ds.Modality)
    seg_uid = pydicom.dcmread(study.seg_path, stop_before_pixels=True).SOPInstanceUID
    return index, index.jobs.add(study.ct_series_uid, seg_uid, "rule", "ct-liver-basic", "d")


@contextlib.contextmanager
def _small_disk(folder: Path, size: str) -> Iterator[None]:
    """A tmpfs of ``size`` mounted on ``folder``: a disk that fills up for real (root only)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                              str(folder)], capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_transient_causes_are_told_from_the_others() -> None:
    assert is_transient(OSError(errno.ENOSPC, "No space left on device"))
    assert is_transient(MemoryError())
    assert not is_transient(OSError(errno.ENOENT, "No such file or directory"))
    assert not is_transient(SegmentationError("seg.dcm: (0062,0002) SegmentSequence missing"))
    assert not is_transient(ValueError("something else"))


def test_a_full_disk_is_retried_after_a_back_off_and_the_job_then_runs(
        tmp_path: Path, study: SyntheticStudy, clock: FakeClock) -> None:
    config = NodeConfig(state_dir=tmp_path / "state", min_free_bytes=0)
    index, job_id = _job(config, study, clock)
    runner = JobRunner(config, index)
    try:
        with _small_disk(config.results_dir, "64k"):
            runner.tick()
            _until(lambda: index.jobs.get(job_id).state != "running")
            job = index.jobs.get(job_id)
            assert job.state == "queued", job.reason
            assert "No space left on device" in job.reason and "\n" not in job.reason
            runner.tick()  # the back-off holds it
            assert index.jobs.get(job_id).state == "queued"
        clock.advance(jobs_module.RETRY_BACKOFF)  # space is back, and the back-off over
        runner.tick()
        _until(lambda: index.jobs.get(job_id).state == "done")
        assert index.jobs.get(job_id).attempts == 2
    finally:
        runner.stop()
        index.close()


def test_no_job_starts_below_the_disk_floor(tmp_path: Path, study: SyntheticStudy) -> None:
    config = NodeConfig(state_dir=tmp_path / "state", min_free_bytes=2**62)
    index, job_id = _job(config, study)
    runner = JobRunner(config, index)
    try:
        runner.tick()
        assert index.jobs.get(job_id).state == "queued"
    finally:
        runner.stop()
        index.close()


def test_jobs_retry_queues_a_failed_job_again(tmp_path: Path, study: SyntheticStudy) -> None:
    config = NodeConfig(state_dir=tmp_path / "state")
    index, job_id = _job(config, study)
    other = index.jobs.add(study.ct_series_uid, "1.2.3", "rule", "ct-liver-basic", "e")
    index.jobs.claim()
    index.jobs.fail(job_id, "seg.dcm: refused")
    config_file = tmp_path / "node.yaml"
    config_file.write_text(yaml.safe_dump({"state_dir": str(config.state_dir)}))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "node.cli", "jobs", *args, "--config",
                               str(config_file)], capture_output=True, text=True, check=False)

    listed = cli("list", "--state", "failed")
    assert listed.returncode == 0 and "[seg.dcm: refused]" in listed.stdout
    assert cli("retry", str(other)).returncode == 1  # queued, not failed: not retried
    retried = cli("retry", "--failed")
    assert retried.returncode == 0 and f"queued again, attempts reset: {job_id}" in retried.stdout
    job = index.jobs.get(job_id)
    assert (job.state, job.attempts) == ("queued", 0)
    [asked] = index.audit.rows("job retry requested", 10)
    assert asked["actor"].startswith("cli:")
    index.close()
