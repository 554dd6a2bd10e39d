"""The job runner with real worker processes: a pipeline error fails the job with its reason in
one line (a refusal as the pipeline worded it, anything else with its type); a worker killed
mid-job is replaced and the job runs again."""

import json
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
import yaml

from demo.synthetic import SyntheticStudy, write_synthetic_study
from node.config import Destination, NodeConfig
from node.flow.jobs import MAX_REASON, JobRunner, failure_reason, is_refusal
from node.state import Index
from node.state.instances import InstanceRow
from pipelines.io.rtstruct import RTStructError
from pipelines.science.presets import load_preset


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    return write_synthetic_study(tmp_path_factory.mktemp("study"), shape=(12, 64, 64))


def _index_study(index: Index, study: SyntheticStudy) -> str:
    for path in [*study.ct_paths, study.seg_path]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        index.instances.add(InstanceRow(ds.SOPInstanceUID, ds.SOPClassUID, ds.StudyInstanceUID,
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
    job_id = index.jobs.add(study.ct_series_uid, seg_uid, "rule", preset, "digest")
    return index, JobRunner(config, index), job_id


def test_pipeline_error_fails_the_job_with_its_reason(tmp_path: Path,
                                                      study: SyntheticStudy) -> None:
    index, runner, job_id = _runner(tmp_path, study, "no-such-preset")
    try:
        runner.tick()
        _until(lambda: index.jobs.get(job_id).state == "failed")
        assert "no-such-preset" in index.jobs.get(job_id).reason
        assert index.outbox.all() == []
    finally:
        runner.stop()


def test_killed_worker_is_replaced_and_the_job_runs_again(tmp_path: Path,
                                                          study: SyntheticStudy) -> None:
    index, runner, job_id = _runner(tmp_path, study, "ct-liver-basic")
    try:
        runner.tick()
        assert index.jobs.get(job_id).state == "running"
        _until(lambda: bool(multiprocessing.active_children()))
        for child in multiprocessing.active_children():
            os.kill(child.pid, signal.SIGKILL)
        _until(lambda: index.jobs.get(job_id).state == "queued")
        assert "worker process died" in index.jobs.get(job_id).reason
        runner.tick()
        _until(lambda: index.jobs.get(job_id).state == "done")
        job = index.jobs.get(job_id)
        assert job.attempts == 2 and job.reason is None
        deliveries = index.outbox.all()
        assert len(deliveries) == 3  # ct-liver-basic: the two reports and the summary image
        for delivery in deliveries:
            assert delivery["destination"] == "pacs" and Path(delivery["path"]).is_file()
    finally:
        runner.stop()


def test_the_worker_queues_the_early_objects_before_the_job_is_done(
        tmp_path: Path, study: SyntheticStudy) -> None:
    """A local job worker queues the report and the summary image, written beside the maps by
    a forked child, and the entropy map (the first feature class) in the index itself; the
    job's completion queues them again with the last map (GLCM contrast), which adds its row
    only."""
    basic = load_preset("ct-liver-basic")
    with_maps = tmp_path / "basic-with-maps.yaml"
    with_maps.write_text(yaml.safe_dump(
        {**basic.model_dump(mode="json", exclude_none=True), "name": "basic-with-maps",
         "maps": {**basic.maps.model_dump(mode="json"), "enabled": True}}))
    index, runner, job_id = _runner(tmp_path, study, str(with_maps))
    try:
        runner.tick()
        _until(lambda: index.jobs.get(job_id).state == "done")
        events = index.audit.study_trail(study.study_instance_uid)["events"]
        early = [e for e in events if e["event"] == "results queued before the job finished"]
        [done] = [e for e in events if e["event"] == "job done"]
        assert len(early) == 2  # the child's objects and the first map, in either order
        assert all(e["job_id"] == job_id and e["id"] < done["id"] for e in early)
        assert {e["actor"] for e in early} == {"node"}
        deliveries = index.outbox.all()
        queued = [[f"{uid}.dcm" for _, uid in json.loads(e["detail"])["deliveries"]]
                  for e in early]
        assert [Path(d["path"]).name for d in deliveries][:4] == [*queued[0], *queued[1]]
        classes = [pydicom.dcmread(d["path"], stop_before_pixels=True).SOPClassUID
                   for d in deliveries]
        assert sorted(map(len, queued)) == [1, 3]  # the entropy map; the reports and summary
        assert sorted(classes[:4]) == sorted([pydicom.uid.ComprehensiveSRStorage,
                                              pydicom.uid.Comprehensive3DSRStorage,
                                              pydicom.uid.SecondaryCaptureImageStorage,
                                              pydicom.uid.ParametricMapStorage])
        assert classes[4:] == [pydicom.uid.ParametricMapStorage]  # the contrast map, at the end
        assert {d["job_id"] for d in deliveries} == {job_id}
    finally:
        runner.stop()


def test_a_refused_input_fails_the_job_with_the_pipelines_one_line(
        tmp_path: Path, study: SyntheticStudy, caplog: pytest.LogCaptureFixture) -> None:
    """The pipeline's refusal (a ValueError of ``pipelines`` naming file, attribute and reason)
    is the job's reason as worded, in the index and the "job failed" log line, with no
    traceback."""
    mr_only = tmp_path / "mr-only.yaml"
    mr_only.write_text(yaml.safe_dump(
        {**load_preset("ct-liver-basic").model_dump(mode="json", exclude_none=True),
         "name": "mr-only", "modality": "MR"}))
    index, runner, job_id = _runner(tmp_path, study, str(mr_only))
    try:
        with caplog.at_level(logging.DEBUG, logger="node.flow.jobs"):
            runner.tick()
            _until(lambda: index.jobs.get(job_id).state == "failed")
            _until(lambda: any(r.getMessage() == "job failed" for r in caplog.records))
    finally:
        runner.stop()
    reason = index.jobs.get(job_id).reason
    file, _, rest = reason.partition(": ")
    assert Path(file) in study.ct_paths
    assert rest == "(0008,0060) Modality CT; preset mr-only is for MR"
    [failed] = [r for r in caplog.records if r.getMessage() == "job failed"]
    assert failed.fields == {"job_id": job_id, "refused": True, "reason": reason}
    assert failed.exc_info is None
    assert not [r for r in caplog.records if r.getMessage() == "job failure traceback"]


def test_an_unexpected_error_is_one_line_with_its_type_and_the_traceback_at_debug(
        tmp_path: Path, study: SyntheticStudy, caplog: pytest.LogCaptureFixture) -> None:
    """Not a refusal (here the results folder cannot be made: its parent is a file): the
    reason is ``<type>: <message>``; the worker's traceback is logged at debug level only."""
    index, runner, job_id = _runner(tmp_path, study, "ct-liver-basic")
    (tmp_path / "results").write_text("a file where the results folder should be")
    try:
        with caplog.at_level(logging.DEBUG, logger="node.flow.jobs"):
            runner.tick()
            _until(lambda: index.jobs.get(job_id).state == "failed")
            _until(lambda: any(r.getMessage() == "job failure traceback"
                               for r in caplog.records))
    finally:
        runner.stop()
    reason = index.jobs.get(job_id).reason
    assert reason.startswith("NotADirectoryError: [Errno 20] Not a directory: ")
    assert "\n" not in reason and "Traceback" not in reason
    [failed] = [r for r in caplog.records if r.getMessage() == "job failed"]
    assert failed.levelno == logging.ERROR and failed.exc_info is None
    assert failed.fields["refused"] is False and failed.fields["reason"] == reason
    [traceback] = [r for r in caplog.records if r.getMessage() == "job failure traceback"]
    assert traceback.levelno == logging.DEBUG and traceback.exc_info is not None
    assert "job_plan" in logging.Formatter().formatException(traceback.exc_info)


@pytest.mark.parametrize(("exc", "reason"), [
    (RTStructError("/spool/rt.dcm: ROI 1 (ROI-1): (3006,0024) ReferencedFrameOfReferenceUID is "
                   "1.2.3, the volume's is 1.2.4\n  detail a reader need not see"),
     "/spool/rt.dcm: ROI 1 (ROI-1): (3006,0024) ReferencedFrameOfReferenceUID is 1.2.3, the "
     "volume's is 1.2.4"),
    (AttributeError("'FileDataset' object has no attribute 'SegmentSequence'"),
     "AttributeError: 'FileDataset' object has no attribute 'SegmentSequence'"),
    (ValueError("\n\noperands could not be broadcast together\nwith shapes (2,) (3,)"),
     "ValueError: operands could not be broadcast together"),
    (MemoryError(), "MemoryError"),
])
def test_failure_reason_is_the_first_line(exc: BaseException, reason: str) -> None:
    """A refusal of ``pipelines`` as worded; anything else, a library's bare ValueError
    included, with its type."""
    assert is_refusal(exc) == isinstance(exc, RTStructError)
    assert failure_reason(exc) == reason


def test_failure_reason_is_bounded() -> None:
    long = failure_reason(RTStructError("/spool/rt.dcm: " + "x" * 2000))
    assert len(long) == MAX_REASON and long.endswith("\u2026")
    assert long.startswith("/spool/rt.dcm: xxx")
