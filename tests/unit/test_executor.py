"""Jobs on a Dask cluster with real TCP workers in their own processes: the same result as the
local process pool (feature values, result SOP Instance UIDs, every output file), with no
filesystem shared through paths, the features computed as one cluster task per lesion and image
type and the parametric maps as one per lesion and feature class (the same maps, bit for bit),
and a worker killed while it runs a feature task does not lose the job."""

from __future__ import annotations

import csv
import io
import os
import re
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pydicom
import pytest

from demo.synthetic import SyntheticStudy, write_synthetic_study
from node.config import Destination, NodeConfig
from node.flow.executor import run_in_process, run_shipped_job, unpack
from node.flow.jobs import JobRunner
from node.state import Index
from node.state.instances import InstanceRow
from pipelines.process import job_plan
from pipelines.science.presets import MapOptions, load_preset

distributed = pytest.importorskip("distributed")
from distributed.diagnostics.plugin import SchedulerPlugin  # noqa: E402
from distributed.utils import key_split  # noqa: E402


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    return write_synthetic_study(tmp_path_factory.mktemp("study"), shape=(12, 64, 64))


@pytest.fixture(scope="module")
def cluster() -> Iterator[distributed.LocalCluster]:
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  host="127.0.0.1", protocol="tcp", dashboard_address=None,
                                  silence_logs=40) as local:
        yield local


def _until(condition: Callable[[], bool], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _queued_job(tmp_path: Path, study: SyntheticStudy, executor: dict
                ) -> tuple[NodeConfig, Index, int]:
    """A node's config and index with the study's instances and one queued ct-liver-basic job."""
    config = NodeConfig(state_dir=tmp_path, executor=executor, destinations=[
        Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=4242)])
    index = Index(config.index_path)
    for path in [*study.ct_paths, study.seg_path]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        index.instances.add(InstanceRow(ds.SOPInstanceUID, ds.SOPClassUID, ds.StudyInstanceUID,
                                       ds.SeriesInstanceUID, str(path), 1, "SCANNER"),
                           ds.Modality)
    seg_uid = pydicom.dcmread(study.seg_path, stop_before_pixels=True).SOPInstanceUID
    job_id = index.jobs.add(study.ct_series_uid, seg_uid, "rule", "ct-liver-basic", "digest")
    return config, index, job_id


def _run_once(config: NodeConfig, index: Index, job_id: int) -> None:
    """Start the queued job and wait until it is no longer running."""
    runner = JobRunner(config, index)
    try:
        runner.tick()
        _until(lambda: index.jobs.get(job_id).state != "running")
    finally:
        runner.stop()


def _run_job(tmp_path: Path, study: SyntheticStudy, executor: dict) -> tuple[Index, int]:
    config, index, job_id = _queued_job(tmp_path, study, executor)
    _run_once(config, index, job_id)
    assert index.jobs.get(job_id).state == "done", index.jobs.get(job_id).reason
    return index, job_id


def _outputs(index: Index, job_id: int) -> tuple[dict[str, bytes], list[dict[str, str]]]:
    """Result objects by SOP Instance UID (pixel-free bytes compared through pydicom) and the
    rows of features.csv."""
    deliveries = index.outbox.all(job_id)
    objects = {row["sop_instance_uid"]: Path(row["path"]) for row in deliveries}
    assert objects and all(path.is_file() for path in objects.values())
    folder = next(iter(objects.values())).parent
    with (folder / "features.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {uid: path.read_bytes() for uid, path in objects.items()}, rows


def _task_names(records: Sequence[dict[str, Any]]) -> list[str]:
    """The function names of the tasks in a task stream, sorted."""
    return sorted(key_split(record["key"]) for record in records)


def test_dask_job_equals_local_job(tmp_path: Path, study: SyntheticStudy,
                                   cluster: distributed.LocalCluster) -> None:
    local_index, local_job = _run_job(tmp_path / "local", study, {"kind": "local"})
    with distributed.Client(cluster.scheduler_address) as client, \
            distributed.get_task_stream(client) as stream:
        dask_index, dask_job = _run_job(tmp_path / "dask", study, {
            "kind": "dask", "scheduler_address": cluster.scheduler_address})
    # one task for the job, one per lesion (two) and image type (ct-liver-basic: Original), and
    # as many for the eroded and dilated lesions of QC's robustness check
    assert _task_names(stream.data) == ["run_feature_task"] * 4 + ["run_shipped_job"]
    local_objects, local_rows = _outputs(local_index, local_job)
    dask_objects, dask_rows = _outputs(dask_index, dask_job)
    assert sorted(dask_objects) == sorted(local_objects)  # the same result UIDs
    assert dask_rows == local_rows and len(local_rows) > 100  # every feature value, as text
    for uid, data in local_objects.items():
        ours, theirs = (pydicom.dcmread(io.BytesIO(b)) for b in (data, dask_objects[uid]))
        assert theirs.SOPInstanceUID == ours.SOPInstanceUID == uid
        assert theirs.SeriesInstanceUID == ours.SeriesInstanceUID
    # the Dask result points into the node's results folder, not into a worker's temporary one
    assert all(str(tmp_path / "dask") in row["path"] for row in dask_index.outbox.all(dask_job))


def test_map_tasks_run_on_the_cluster_and_give_the_local_maps(
        tmp_path: Path, study: SyntheticStudy, cluster: distributed.LocalCluster) -> None:
    basic = load_preset("ct-liver-basic")
    preset = basic.model_copy(update={"name": "basic-maps", "maps": MapOptions(
        enabled=True, features=("firstorder_Mean", "glcm_Contrast"), kernel_radius=1,
        margin_mm=2.0)})
    local = run_in_process(job_plan(study.ct_paths, study.seg_path, preset, tmp_path / "local"))
    with distributed.Client(cluster.scheduler_address) as client, \
            distributed.get_task_stream(client) as stream:
        future = client.submit(run_shipped_job,
                               [("", [p.read_bytes() for p in study.ct_paths], preset)],
                               study.seg_path.read_bytes(), pure=False)
        result = unpack(future.result(timeout=300), tmp_path / "dask")
    # per lesion (two): one feature task (Original), one for its eroded and dilated versions
    # (robustness) and one map task per feature class (two)
    assert _task_names(stream.data) == \
        ["run_feature_task"] * 4 + ["run_map_task"] * 4 + ["run_shipped_job"]
    assert [o.sop_instance_uid for o in result.objects] == \
        [o.sop_instance_uid for o in local.objects]
    maps = 0
    for ours, theirs in zip(local.objects, result.objects, strict=True):
        here, there = pydicom.dcmread(ours.path), pydicom.dcmread(theirs.path)
        if "FloatPixelData" in here:  # a Parametric Map: the maps' values, bit for bit
            maps += 1
            assert there.FloatPixelData == here.FloatPixelData
    assert maps == 2  # one Parametric Map per feature


class _KillFirstFeatureTaskWorker(SchedulerPlugin):
    """SIGKILLs the worker the scheduler gives the first feature task to, as it gives it."""

    def __init__(self, scheduler: distributed.Scheduler):
        self.scheduler = scheduler
        self.killed: int | None = None

    def transition(self, key: str, start: str, finish: str, *args: object,
                   **kwargs: object) -> None:
        if self.killed is None and finish == "processing" \
                and key_split(key) == "run_feature_task":
            self.killed = self.scheduler.tasks[key].processing_on.pid
            os.kill(self.killed, signal.SIGKILL)


def test_worker_killed_running_a_feature_task_does_not_change_the_result(
        tmp_path: Path, study: SyntheticStudy, cluster: distributed.LocalCluster) -> None:
    basic = load_preset("ct-liver-basic")
    preset = basic.model_copy(update={"name": "basic-log", "radiomics": {
        **basic.radiomics, "imageType": {"Original": {}, "LoG": {"sigma": [2.0, 3.0]}}}})
    local = run_in_process(job_plan(study.ct_paths, study.seg_path, preset, tmp_path / "local"))
    killer = _KillFirstFeatureTaskWorker(cluster.scheduler)
    cluster.scheduler.add_plugin(killer, name="kill-first-feature-task")
    try:
        with distributed.Client(cluster.scheduler_address) as client:
            future = client.submit(run_shipped_job,
                                   [("", [p.read_bytes() for p in study.ct_paths], preset)],
                                   study.seg_path.read_bytes(), pure=False)
            result = unpack(future.result(timeout=300), tmp_path / "out")
            assert killer.killed is not None
            _until(lambda: len(client.scheduler_info()["workers"]) == 2, timeout=60)
            assert killer.killed not in client.run(os.getpid).values()  # it did die
    finally:
        cluster.scheduler.remove_plugin(name="kill-first-feature-task")
    assert all(o.path.parent == tmp_path / "out" for o in result.objects)
    assert [o.sop_instance_uid for o in result.objects] == \
        [o.sop_instance_uid for o in local.objects]
    assert result.lesions == local.lesions  # every value of Original, LoG 2 mm and 3 mm
    assert len(result.lesions[0].features) == 14 + 93 * 3


def test_feature_task_whose_workers_all_died_queues_the_job_again(
        tmp_path: Path, study: SyntheticStudy, cluster: distributed.LocalCluster) -> None:
    """Dask's KilledWorker of a feature task reaches the node through the job task (or directly,
    when the killed worker ran the job too): the node's 'worker died' path, queued again."""
    config, index, job_id = _queued_job(tmp_path, study, {
        "kind": "dask", "scheduler_address": cluster.scheduler_address})
    killer = _KillFirstFeatureTaskWorker(cluster.scheduler)
    cluster.scheduler.add_plugin(killer, name="kill-first-feature-task")
    allowed, cluster.scheduler.allowed_failures = cluster.scheduler.allowed_failures, 0
    try:
        _run_once(config, index, job_id)
    finally:
        cluster.scheduler.allowed_failures = allowed
        cluster.scheduler.remove_plugin(name="kill-first-feature-task")
    job = index.jobs.get(job_id)
    assert killer.killed is not None
    assert (job.state, job.attempts) == ("queued", 1)
    # KilledWorker of the feature task, or of the job task when both ran on the killed worker
    assert re.match(r"worker process died: .*'(run_feature_task|run_shipped_job)-", job.reason)


def test_a_preset_file_is_shipped_to_the_cluster_as_a_preset(tmp_path: Path) -> None:
    """A rule's preset file exists on the node's machine only: the task gets the preset read
    there (same hash), a shipped preset's name as it is."""
    from node.flow.executor import shipped_preset

    path = tmp_path / "site-preset.yaml"
    path.write_text((Path(__file__).parents[2] / "pipelines/presets/ct-liver-basic.yaml")
                    .read_text().replace("name: ct-liver-basic", "name: site-preset"))
    shipped = shipped_preset(str(path))
    assert not isinstance(shipped, str)
    assert (shipped.name, shipped.hash) == ("site-preset", load_preset(path).hash)
    assert shipped_preset("ct-liver-basic") == "ct-liver-basic"
