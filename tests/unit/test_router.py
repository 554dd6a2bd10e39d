"""Assembly and routing on a real index: a job is queued when the matching image series and a SEG
that references it are both stable, whichever became stable last, and only once."""

from pathlib import Path

import pydicom
import pytest

from node.config import NodeConfig, SeriesRule
from node.index import Index, InstanceRow
from node.router import Router
from pipelines.synthetic import SyntheticStudy, write_synthetic_study


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    return write_synthetic_study(tmp_path_factory.mktemp("study"), shape=(6, 48, 48))


def _receive(index: Index, paths: list[Path], now: float) -> None:
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        row = InstanceRow(ds.SOPInstanceUID, ds.SOPClassUID, ds.StudyInstanceUID,
                          ds.SeriesInstanceUID, str(path), path.stat().st_size, "SCANNER")
        index.add_instance(row, ds.Modality, now=now)


def _node(tmp_path: Path, rules: list[SeriesRule] | None = None) -> tuple[Index, Router]:
    config = NodeConfig(state_dir=tmp_path, **({"rules": rules} if rules is not None else {}))
    index = Index(config.index_path)
    return index, Router(config, index)


def _stabilise(index: Index, router: Router, quiet_since: float) -> list[int]:
    return [job for series in index.mark_stable(quiet_since) for job in router.route(series)]


@pytest.mark.parametrize("seg_first", [True, False])
def test_job_queued_when_the_later_of_the_two_is_stable(tmp_path: Path, study: SyntheticStudy,
                                                        seg_first: bool) -> None:
    index, router = _node(tmp_path)
    first, second = ([study.seg_path], list(study.ct_paths))
    if not seg_first:
        first, second = second, first
    _receive(index, first, now=100.0)
    assert _stabilise(index, router, quiet_since=150.0) == []  # the other half is missing
    _receive(index, second, now=200.0)
    jobs = _stabilise(index, router, quiet_since=250.0)
    assert len(jobs) == 1
    [job] = index.jobs()
    assert job.state == "queued" and job.preset == "ct-liver-basic" and job.rule == "ct-liver"
    assert job.source_series_uid == study.ct_series_uid
    assert job.seg_sop_uid == pydicom.dcmread(study.seg_path).SOPInstanceUID


def test_series_still_receiving_is_not_stable(tmp_path: Path, study: SyntheticStudy) -> None:
    index, router = _node(tmp_path)
    _receive(index, [*study.ct_paths, study.seg_path], now=100.0)
    assert _stabilise(index, router, quiet_since=99.0) == []
    assert index.series(study.ct_series_uid).stable_at is None


def test_same_study_sent_twice_queues_one_job(tmp_path: Path, study: SyntheticStudy) -> None:
    index, router = _node(tmp_path)
    _receive(index, [*study.ct_paths, study.seg_path], now=100.0)
    assert len(_stabilise(index, router, quiet_since=150.0)) == 1
    _receive(index, [*study.ct_paths, study.seg_path], now=200.0)  # duplicates: ignored
    assert _stabilise(index, router, quiet_since=250.0) == []
    assert len(index.jobs()) == 1


def test_series_that_matches_no_rule_queues_nothing(tmp_path: Path,
                                                    study: SyntheticStudy) -> None:
    index, router = _node(tmp_path, rules=[SeriesRule(name="mr-only", modality=["MR"])])
    _receive(index, [*study.ct_paths, study.seg_path], now=100.0)
    assert _stabilise(index, router, quiet_since=150.0) == []
    assert index.jobs() == []


def test_each_matching_preset_gets_a_job(tmp_path: Path, study: SyntheticStudy) -> None:
    rules = [SeriesRule(name="a", preset="ct-liver-basic"),
             SeriesRule(name="b", preset="ct-liver-basic"),
             SeriesRule(name="c", preset="other-preset")]
    index, router = _node(tmp_path, rules=rules)
    _receive(index, [*study.ct_paths, study.seg_path], now=100.0)
    _stabilise(index, router, quiet_since=150.0)
    assert sorted((j.rule, j.preset) for j in index.jobs()) == [
        ("a", "ct-liver-basic"), ("c", "other-preset")]


def test_interrupted_jobs_are_queued_again(tmp_path: Path, study: SyntheticStudy) -> None:
    index, router = _node(tmp_path)
    _receive(index, [*study.ct_paths, study.seg_path], now=100.0)
    _stabilise(index, router, quiet_since=150.0)
    claimed = index.claim_job()
    assert claimed is not None and claimed.state == "running" and claimed.attempts == 1
    assert index.requeue_interrupted_jobs() == 1
    again = index.claim_job()
    assert again is not None and again.id == claimed.id and again.attempts == 2


def _late_instance(study: SyntheticStudy, directory: Path) -> Path:
    """A copy of the last CT slice with a new SOP Instance UID: an instance that came late."""
    ds = pydicom.dcmread(study.ct_paths[-1])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(
        entropy_srcs=["late", ds.SOPInstanceUID])
    ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + float(ds.SliceThickness)
    path = directory / "late.dcm"
    ds.save_as(path)
    return path


@pytest.mark.parametrize(("policy", "jobs_after_change"), [
    ("on_change", 2), ("never", 1), ("always", 2)])
def test_reprocess_policy_on_a_grown_series(tmp_path: Path, study: SyntheticStudy, policy: str,
                                            jobs_after_change: int) -> None:
    config = NodeConfig(state_dir=tmp_path, reprocess=policy)
    index = Index(config.index_path)
    router = Router(config, index)
    _receive(index, [*study.ct_paths, study.seg_path], now=100.0)
    assert len(_stabilise(index, router, quiet_since=150.0)) == 1
    _receive(index, [_late_instance(study, tmp_path)], now=200.0)
    _stabilise(index, router, quiet_since=250.0)
    jobs = index.jobs()
    assert len(jobs) == jobs_after_change
    if jobs_after_change == 2:
        assert jobs[0].inputs_digest != jobs[1].inputs_digest


def test_always_reprocesses_unchanged_inputs_but_on_change_does_not(
        tmp_path: Path, study: SyntheticStudy) -> None:
    for policy, expected in (("on_change", 1), ("always", 2)):
        config = NodeConfig(state_dir=tmp_path / policy, reprocess=policy)
        index = Index(config.index_path)
        router = Router(config, index)
        _receive(index, [*study.ct_paths, study.seg_path], now=100.0)
        _stabilise(index, router, quiet_since=150.0)
        router.route(index.series(study.ct_series_uid))  # stable again, the same instances
        assert len(index.jobs()) == expected, policy


def test_the_nodes_own_derived_seg_sent_back_is_not_processed(
        tmp_path: Path, study: SyntheticStudy) -> None:
    from pipelines.software import MANUFACTURER

    own = pydicom.dcmread(study.seg_path)
    own.Manufacturer = own.ManufacturerModelName = MANUFACTURER  # as derived_seg writes
    own.SOPInstanceUID = own.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    own.SeriesInstanceUID = pydicom.uid.generate_uid()
    path = tmp_path / "derived-seg.dcm"
    own.save_as(path)
    index, router = _node(tmp_path)
    _receive(index, [*study.ct_paths, path], now=100.0)
    assert _stabilise(index, router, quiet_since=150.0) == []
    assert index.jobs() == []
