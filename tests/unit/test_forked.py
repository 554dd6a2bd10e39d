"""``node.flow.forked.ForkedCall``: a function run in a forked child, beside the caller, gives back
its result or its exception; a child that dies without a result is an error naming its exit
code. And a local job worker's runner (``node.flow.executor.LocalRunner``) writes the objects the
in-process runner writes, the report, derived SEG and summary image in a child while the maps
are computed, and each feature class's maps but the last in a child while the next class is
computed, and announces each child's objects in its own process as soon as they are written."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pydicom
import pytest

import pipelines.process
from demo.synthetic import SyntheticStudy, write_synthetic_study
from node.flow.executor import LocalRunner, run_in_process
from node.flow.forked import ForkedCall, ForkedCallError, fork_available
from pipelines.process import ProcessError, job_plan
from pipelines.science.presets import MapOptions, load_preset

pytestmark = pytest.mark.skipif(not fork_available(), reason="this platform does not fork")

# set anew each time an object is made (times, and the Dimension Organization UID highdicom
# draws at random): not part of what the object says
_MADE_NOW = {"ContentDate", "ContentTime", "InstanceCreationDate", "InstanceCreationTime",
             "TimeOfSecondaryCapture", "DateOfSecondaryCapture", "ContributionDateTime",
             "DimensionOrganizationUID"}


def test_the_child_has_the_parents_data_and_gives_back_its_result() -> None:
    data = list(range(100_000))  # inherited, not sent
    call = ForkedCall(lambda: (os.getpid(), sum(data)), "sum")
    pid, total = call.result()
    assert pid != os.getpid() and total == sum(data)


def test_a_child_with_a_large_result_ends_before_the_parent_asks_for_it() -> None:
    # 4 MB: far more than a pipe holds; the child must not wait for the parent to read it
    call = ForkedCall(lambda: bytes(4 << 20), "large")
    call._process.join(60)
    assert call._process.exitcode == 0
    assert call.result() == bytes(4 << 20)


def test_the_childs_exception_is_raised_in_the_parent() -> None:
    def fail() -> None:
        raise ProcessError("/spool/x.dcm: (0008,0060) Modality is missing")

    with pytest.raises(ProcessError, match=r"\(0008,0060\) Modality is missing"):
        ForkedCall(fail, "fail").result()


def test_a_child_that_dies_without_a_result_is_an_error_with_its_exit_code() -> None:
    with pytest.raises(ForkedCallError, match=r"the report: .*exit code 3"):
        ForkedCall(lambda: os._exit(3), "the report").result()
    with pytest.raises(ForkedCallError, match=f"exit code -{int(signal.SIGKILL)}"):
        ForkedCall(lambda: os.kill(os.getpid(), signal.SIGKILL), "killed").result()


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    return write_synthetic_study(tmp_path_factory.mktemp("study"), shape=(10, 48, 48))


def _without_made_now(dataset: pydicom.Dataset) -> pydicom.Dataset:
    for element in list(dataset):
        if element.keyword in _MADE_NOW:
            del dataset[element.tag]
        elif element.VR == "SQ":
            for item in element.value:
                _without_made_now(item)
    return dataset


def _content(path: Path) -> pydicom.Dataset:
    return _without_made_now(pydicom.dcmread(path))


def test_early_objects_written_beside_the_maps_are_the_serial_ones(
    study: SyntheticStudy, tmp_path: Path
) -> None:
    basic = load_preset("ct-liver-basic")
    preset = basic.model_copy(update={"name": "basic-maps", "maps": MapOptions(
        enabled=True, features=("firstorder_Mean", "glcm_Contrast"), kernel_radius=1,
        margin_mm=2.0)})
    calls: list[tuple[int, list[str]]] = []

    def announce(objects: tuple) -> None:  # in this process, when a child has written them
        calls.append((os.getpid(), [o.sop_instance_uid for o in objects]))

    serial = run_in_process(job_plan(study.ct_paths, study.seg_path, preset, tmp_path / "serial"))
    beside = LocalRunner(announce).run(
        job_plan(study.ct_paths, study.seg_path, preset, tmp_path / "beside"))
    assert [(o.sop_class_uid, o.sop_instance_uid) for o in beside.objects] == \
        [(o.sop_class_uid, o.sop_instance_uid) for o in serial.objects]
    for ours, theirs in zip(serial.objects, beside.objects, strict=True):
        assert _content(ours.path) == _content(theirs.path), ours.path.name
    for name in ("features.csv", "qc.csv"):
        assert (tmp_path / "beside" / name).read_bytes() == \
            (tmp_path / "serial" / name).read_bytes()
    # the report, SEG and summary written by one child, the first map by another (forked
    # when that map was computed), announced here in whichever order they were ready; the last
    # map by none
    maps = [o for o in beside.objects if o.sop_class_uid == pydicom.uid.ParametricMapStorage]
    assert len(maps) == 2 and list(beside.objects[-2:]) == maps
    assert {pid for pid, _ in calls} == {os.getpid()}
    assert sorted(uids for _, uids in calls) == sorted(
        [[o.sop_instance_uid for o in beside.objects[:-2]], [maps[0].sop_instance_uid]])
    times = beside.timings
    assert times.encode_report == times.encode_summary == times.encode_derived_seg == 0
    assert set(times.early_objects) == {"qc", "models", "encode_derived_seg", "encode_report",
                                        "encode_summary", "encode_maps", "writing"}
    assert all(seconds > 0 for stage, seconds in times.early_objects.items()
               if stage != "models")  # no model configured here
    assert times.qc == times.models == 0  # in the child
    assert [r.status for r in beside.qc] == [r.status for r in serial.qc]
    assert times.encode_maps > 0  # the last map, in this process
    assert times.beside_maps > 0 and serial.timings.beside_maps == 0
    assert not serial.timings.early_objects


def test_an_error_in_the_child_fails_the_job(study: SyntheticStudy, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    basic = load_preset("ct-liver-basic")
    preset = basic.model_copy(update={"maps": MapOptions(
        enabled=True, features=("firstorder_Mean",), kernel_radius=1, margin_mm=2.0)})

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipelines.process, "build_summary_image", refuse)  # forked with it
    with pytest.raises(OSError, match="No space left on device"):
        LocalRunner().run(job_plan(study.ct_paths, study.seg_path, preset, tmp_path))
