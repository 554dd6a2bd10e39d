"""Where a job's time goes: a job returns the seconds of each of its stages (they follow
one another, so they sum to no more than the call took), the index records when a job was
queued, started and finished with those stages, and when each result object was stored at its
destination (the success status) and then verified. Durations are checked for presence, sign and
consistency, never against a limit."""

import sqlite3
import time
from pathlib import Path

import pydicom
import pytest

from demo.synthetic import SyntheticStudy, write_synthetic_study
from node.config import Destination, NodeConfig
from node.flow.executor import run_in_process
from node.flow.jobs import JobRunner
from node.state import Index
from node.state.instances import InstanceRow
from node.state.jobs import DeliveryTimes
from pipelines.outputs.result import StageTimes
from pipelines.process import job_plan
from pipelines.science.presets import load_preset

STAGES = ["read_series", "read_segmentation", "preprocessing", "extraction", "qc", "models",
          "encode_report", "encode_derived_seg", "encode_summary", "encode_maps", "writing",
          "beside_maps"]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    return write_synthetic_study(tmp_path_factory.mktemp("study"), shape=(10, 48, 48))


def test_a_job_times_each_stage(study: SyntheticStudy, tmp_path: Path) -> None:
    basic = load_preset("ct-liver-basic")
    preset = basic.model_copy(update={"maps": basic.maps.model_copy(
        update={"enabled": True, "features": ("firstorder_Mean",), "kernel_radius": 1})})
    start = time.perf_counter()
    result = run_in_process(job_plan(study.ct_paths, study.seg_path, preset, tmp_path))
    elapsed = time.perf_counter() - start

    times = result.timings.as_dict()
    assert list(times) == STAGES
    assert all(seconds >= 0 for seconds in times.values()), times
    assert result.timings.extraction > 0 and result.timings.encode_maps > 0
    assert result.timings.total == pytest.approx(sum(times.values()))
    assert result.timings.total <= elapsed  # consecutive laps inside the call
    assert result.timings.encoding == pytest.approx(
        sum(times[s] for s in STAGES if s.startswith("encode_")))
    assert len(result.objects) == 4  # two reports, summary and one map: every stage ran


def test_stage_times_total_is_the_sum_of_the_stages() -> None:
    times = StageTimes(**{stage: float(n) for n, stage in enumerate(STAGES)})
    assert times.total == sum(range(len(STAGES)))
    assert times.encoding == 6 + 7 + 8 + 9


def _index_study(index: Index, study: SyntheticStudy) -> str:
    for path in [*study.ct_paths, study.seg_path]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        index.instances.add(InstanceRow(ds.SOPInstanceUID, ds.SOPClassUID, ds.StudyInstanceUID,
                                       ds.SeriesInstanceUID, str(path), 1, "SCANNER"),
                           ds.Modality)
    return pydicom.dcmread(study.seg_path, stop_before_pixels=True).SOPInstanceUID


def test_job_runner_records_when_a_job_was_queued_started_finished_and_its_stages(
        tmp_path: Path, study: SyntheticStudy) -> None:
    config = NodeConfig(state_dir=tmp_path, destinations=[
        Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=4242)])
    index = Index(config.index_path)
    job_id = index.jobs.add(study.ct_series_uid, _index_study(index, study), "rule",
                           "ct-liver-basic", "digest")
    runner = JobRunner(config, index)
    try:
        runner.tick()
        deadline = time.monotonic() + 120
        while index.jobs.get(job_id).state == "running":
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.05)
    finally:
        runner.stop()
    assert index.jobs.get(job_id).state == "done", index.jobs.get(job_id).reason
    timeline = index.jobs.timeline(job_id)
    assert timeline.queued_at <= timeline.started_at <= timeline.finished_at
    assert list(timeline.stages) == STAGES
    assert all(seconds >= 0 for seconds in timeline.stages.values())
    # the pipeline ran between the claim and the finish
    assert sum(timeline.stages.values()) <= timeline.finished_at - timeline.started_at
    assert [d.destination for d in timeline.deliveries] == ["pacs"] * 3  # two reports, summary
    assert all(d.sent_at is None and d.delivered_at is None for d in timeline.deliveries)

    index.outbox.mark_sent([index.outbox.all()[0]["id"]], now=timeline.finished_at + 1)
    first, *rest = index.jobs.timeline(job_id).deliveries
    assert first.sent_at == timeline.finished_at + 1 and all(d.sent_at is None for d in rest)
    index.close()


def test_an_index_made_before_the_timing_columns_gets_them(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE jobs (id INTEGER PRIMARY KEY, source_series_uid TEXT NOT NULL,
            seg_sop_uid TEXT NOT NULL, rule TEXT NOT NULL, preset TEXT NOT NULL,
            inputs_digest TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
            reason TEXT, created_at REAL NOT NULL, started_at REAL, finished_at REAL,
            UNIQUE (source_series_uid, seg_sop_uid, preset, inputs_digest));
        CREATE TABLE outbox (id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL REFERENCES jobs(id),
            destination TEXT NOT NULL, path TEXT NOT NULL, sop_instance_uid TEXT NOT NULL,
            state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL,
            last_error TEXT, delivered_at REAL, UNIQUE (destination, sop_instance_uid));
        INSERT INTO jobs (source_series_uid, seg_sop_uid, rule, preset, inputs_digest, state,
                          created_at, started_at, finished_at)
            VALUES ('1.2', '1.3', 'r', 'p', 'd', 'done', 1.0, 2.0, 5.0);
        INSERT INTO outbox (job_id, destination, path, sop_instance_uid, state, next_attempt_at,
                            delivered_at)
            VALUES (1, 'pacs', '/x.dcm', '1.4', 'delivered', 5.0, 6.0);
    """)
    old.close()
    index = Index(path)
    timeline = index.jobs.timeline(1)
    assert (timeline.queued_at, timeline.started_at, timeline.finished_at) == (1.0, 2.0, 5.0)
    assert timeline.stages == {}
    assert timeline.deliveries == (DeliveryTimes("pacs", "1.4", None, 6.0),)
    index.close()
