"""Assembly and routing on a real index: a job is queued when the matching image series and a
segmentation (SEG or RTSTRUCT) that references it are both stable, whichever became stable last,
and only once; a missing series is asked for; a segmentation that references no series is
refused in one line."""

import html
import json
import logging
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid

from demo.synthetic import SyntheticStudy, write_synthetic_study
from node.config import NodeConfig, SeriesRule
from node.flow.router import Router
from node.ops.health import check_health
from node.ops.status import StatusServer
from node.state import Index
from node.state.audit import SEGMENTATION_NOT_PROCESSED
from node.state.instances import InstanceRow


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    return write_synthetic_study(tmp_path_factory.mktemp("study"), shape=(6, 48, 48))


def _receive(index: Index, paths: list[Path], now: float) -> None:
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        row = InstanceRow(ds.SOPInstanceUID, ds.SOPClassUID, ds.StudyInstanceUID,
                          ds.SeriesInstanceUID, str(path), path.stat().st_size, "SCANNER")
        index.instances.add(row, ds.Modality, now=now)


def _node(tmp_path: Path, rules: list[SeriesRule] | None = None) -> tuple[Index, Router]:
    config = NodeConfig(state_dir=tmp_path, **({"rules": rules} if rules is not None else {}))
    index = Index(config.index_path)
    return index, Router(config, index)


def _stabilise(index: Index, router: Router, quiet_since: float) -> list[int]:
    return [job for series in index.instances.mark_stable(quiet_since)
            for job in router.route(series)]


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
    [job] = index.jobs.all()
    assert job.state == "queued" and job.preset == "ct-liver-basic" and job.rule == "ct-liver"
    assert job.source_series_uid == study.ct_series_uid
    assert job.seg_sop_uid == pydicom.dcmread(study.seg_path).SOPInstanceUID


def test_series_still_receiving_is_not_stable(tmp_path: Path, study: SyntheticStudy) -> None:
    index, router = _node(tmp_path)
    _receive(index, [*study.ct_paths, study.seg_path], now=100.0)
    assert _stabilise(index, router, quiet_since=99.0) == []
    assert index.instances.series(study.ct_series_uid).stable_at is None


def test_same_study_sent_twice_queues_one_job(tmp_path: Path, study: SyntheticStudy) -> None:
    index, router = _node(tmp_path)
    _receive(index, [*study.ct_paths, study.seg_path], now=100.0)
    assert len(_stabilise(index, router, quiet_since=150.0)) == 1
    _receive(index, [*study.ct_paths, study.seg_path], now=200.0)  # duplicates: ignored
    assert _stabilise(index, router, quiet_since=250.0) == []
    assert len(index.jobs.all()) == 1


def test_series_that_matches_no_rule_queues_nothing(tmp_path: Path,
                                                    study: SyntheticStudy) -> None:
    index, router = _node(tmp_path, rules=[SeriesRule(name="mr-only", modality=["MR"])])
    _receive(index, [*study.ct_paths, study.seg_path], now=100.0)
    assert _stabilise(index, router, quiet_since=150.0) == []
    assert index.jobs.all() == []


def test_each_matching_preset_gets_a_job(tmp_path: Path, study: SyntheticStudy) -> None:
    rules = [SeriesRule(name="a", preset="ct-liver-basic"),
             SeriesRule(name="b", preset="ct-liver-basic"),
             SeriesRule(name="c", preset="other-preset")]
    index, router = _node(tmp_path, rules=rules)
    _receive(index, [*study.ct_paths, study.seg_path], now=100.0)
    _stabilise(index, router, quiet_since=150.0)
    assert sorted((j.rule, j.preset) for j in index.jobs.all()) == [
        ("a", "ct-liver-basic"), ("c", "other-preset")]


def test_interrupted_jobs_are_queued_again(tmp_path: Path, study: SyntheticStudy) -> None:
    index, router = _node(tmp_path)
    _receive(index, [*study.ct_paths, study.seg_path], now=100.0)
    _stabilise(index, router, quiet_since=150.0)
    claimed = index.jobs.claim()
    assert claimed is not None and claimed.state == "running" and claimed.attempts == 1
    assert index.jobs.requeue_interrupted() == 1
    again = index.jobs.claim()
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
    jobs = index.jobs.all()
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
        router.route(index.instances.series(study.ct_series_uid))  # stable again, same instances
        assert len(index.jobs.all()) == expected, policy


def test_the_nodes_own_derived_seg_sent_back_is_not_processed(
        tmp_path: Path, study: SyntheticStudy) -> None:
    from pipelines.outputs.software import MANUFACTURER

    own = pydicom.dcmread(study.seg_path)
    own.Manufacturer = own.ManufacturerModelName = MANUFACTURER  # as derived_seg writes
    own.SOPInstanceUID = own.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    own.SeriesInstanceUID = pydicom.uid.generate_uid()
    path = tmp_path / "derived-seg.dcm"
    own.save_as(path)
    index, router = _node(tmp_path)
    _receive(index, [*study.ct_paths, path], now=100.0)
    assert _stabilise(index, router, quiet_since=150.0) == []
    assert index.jobs.all() == []


def _rtstruct(directory: Path, study: SyntheticStudy, series: list[Dataset] | None,
              referenced_study_uid: str | None = None) -> Path:
    """An RT Structure Set (PS3.3 A.19) of ``study`` whose Referenced Frame of Reference
    Sequence > RT Referenced Study Sequence holds the RT Referenced Series Sequence items
    ``series`` (None: the sequence absent); the study item names ``referenced_study_uid`` (the
    CT's study when None). The router reads the header only: one ROI, no contour."""
    ct = pydicom.dcmread(study.ct_paths[0], stop_before_pixels=True)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study.study_instance_uid, generate_uid()
    ds.PatientID, ds.PatientName = ct.PatientID, ct.PatientName
    ds.Modality, ds.StructureSetLabel, ds.Manufacturer = "RTSTRUCT", "lesions", "Planning"
    referenced_study = Dataset()
    referenced_study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Study Component
    referenced_study.ReferencedSOPInstanceUID = referenced_study_uid or study.study_instance_uid
    if series is not None:
        referenced_study.RTReferencedSeriesSequence = series
    frame = Dataset()
    frame.FrameOfReferenceUID = ct.FrameOfReferenceUID
    frame.RTReferencedStudySequence = [referenced_study]
    ds.ReferencedFrameOfReferenceSequence = [frame]
    roi = Dataset()
    roi.ROINumber, roi.ROIName = 1, "Lesion 1"
    roi.ReferencedFrameOfReferenceUID = ct.FrameOfReferenceUID
    roi.ROIGenerationAlgorithm = "MANUAL"
    ds.StructureSetROISequence = [roi]
    path = directory / f"rtstruct-{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _other_patient(study: SyntheticStudy, directory: Path, *, study_uid: str | None = None,
                   patient: str = "OTHER-PATIENT") -> list[Path]:
    """The study's CT series as another patient's: Patient ID ``patient``, Study Instance UID
    ``study_uid`` (the CT's own when None)."""
    directory.mkdir()
    paths = []
    for path in study.ct_paths:
        ds = pydicom.dcmread(path)
        ds.PatientID = patient
        ds.StudyInstanceUID = study_uid or ds.StudyInstanceUID
        paths.append(directory / path.name)
        ds.save_as(paths[-1])
    return paths


def _series_item(series_uid: str) -> Dataset:
    item = Dataset()
    item.SeriesInstanceUID = series_uid
    return item


@pytest.mark.parametrize("rtstruct_first", [True, False])
def test_rtstruct_is_paired_like_a_seg_whichever_is_stable_last(
        tmp_path: Path, study: SyntheticStudy, rtstruct_first: bool) -> None:
    rtstruct = _rtstruct(tmp_path, study, [_series_item(study.ct_series_uid)])
    index, router = _node(tmp_path)
    first, second = [rtstruct], list(study.ct_paths)
    if not rtstruct_first:
        first, second = second, first
    _receive(index, first, now=100.0)
    assert _stabilise(index, router, quiet_since=150.0) == []
    # an RTSTRUCT alone asks for its series (node.flow.retrieve); a series alone waits
    assert [r.series_uid for r in index.retrievals.all()] == \
        ([study.ct_series_uid] if rtstruct_first else [])
    _receive(index, second, now=200.0)
    assert len(_stabilise(index, router, quiet_since=250.0)) == 1
    [job] = index.jobs.all()
    rtstruct_uid = pydicom.dcmread(rtstruct).SOPInstanceUID
    assert (job.source_series_uid, job.seg_sop_uid) == (study.ct_series_uid, rtstruct_uid)
    rtstruct_series = pydicom.dcmread(rtstruct).SeriesInstanceUID
    assert index.instances.series(rtstruct_series).modality == "RTSTRUCT"
    assert index.instances.segs_referencing(study.ct_series_uid) == [rtstruct_uid]
    # stable again with the same instances: no second job
    assert router.route(index.instances.series(study.ct_series_uid)) == []


def test_rtstruct_of_a_missing_series_asks_for_it_in_the_study_it_names(
        tmp_path: Path, study: SyntheticStudy) -> None:
    """The series is retrieved from the study the RT Referenced Study Sequence item names
    (Referenced SOP Instance UID, PS3.3 C.8.8.5), which need not be the structure set's, and is
    paired when it is in that study."""
    other_study = generate_uid()
    rtstruct = _rtstruct(tmp_path, study, [_series_item(study.ct_series_uid)],
                         referenced_study_uid=other_study)
    index, router = _node(tmp_path)
    _receive(index, [rtstruct], now=100.0)
    assert _stabilise(index, router, quiet_since=150.0) == []
    [retrieval] = index.retrievals.all()
    assert (retrieval.series_uid, retrieval.study_uid, retrieval.seg_sop_uid, retrieval.state) \
        == (study.ct_series_uid, other_study, pydicom.dcmread(rtstruct).SOPInstanceUID, "waiting")
    # as node.flow.retrieve would store them: the series in the study named, of the same patient
    ct = pydicom.dcmread(study.ct_paths[0], stop_before_pixels=True)
    images = _other_patient(study, tmp_path / "ct", study_uid=other_study,
                            patient=str(ct.PatientID))
    _receive(index, images, now=200.0)
    assert len(_stabilise(index, router, quiet_since=250.0)) == 1


def _without_references(tmp_path: Path, study: SyntheticStudy, case: str) -> Path:
    """The study's SEG without (``seg-absent``) or with an empty (``seg-empty``) Referenced
    Series Sequence, or an RTSTRUCT whose RT Referenced Series Sequence is absent, empty, or
    holds an item without a Series Instance UID."""
    if case.startswith("seg"):
        seg = pydicom.dcmread(study.seg_path)
        if case == "seg-absent":
            del seg.ReferencedSeriesSequence
        else:
            seg.ReferencedSeriesSequence = []
        seg.SOPInstanceUID = seg.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        seg.SeriesInstanceUID = generate_uid()
        path = tmp_path / f"{case}.dcm"
        seg.save_as(path)
        return path
    return _rtstruct(tmp_path, study, {"rtstruct-empty": [], "rtstruct-no-uid": [Dataset()],
                                       "rtstruct-absent": None}[case])


@pytest.mark.parametrize(("case", "reason"), [
    ("seg-absent", "SEG references no series ((0008,1115) ReferencedSeriesSequence absent): "
                   "not processed"),
    ("seg-empty", "SEG references no series ((0008,1115) ReferencedSeriesSequence empty): "
                  "not processed"),
    ("rtstruct-empty", "RTSTRUCT references no series ((3006,0010) "
                       "ReferencedFrameOfReferenceSequence > (3006,0012) RTReferencedStudySequence"
                       " > (3006,0014) RTReferencedSeriesSequence empty): not processed"),
    ("rtstruct-absent", "(3006,0014) RTReferencedSeriesSequence absent): not processed"),
    ("rtstruct-no-uid", "(3006,0014) RTReferencedSeriesSequence items hold no SeriesInstanceUID"
                        "): not processed"),
])
def test_segmentation_that_references_no_series_is_refused_in_one_line(
        tmp_path: Path, study: SyntheticStudy, caplog: pytest.LogCaptureFixture, case: str,
        reason: str) -> None:
    """Never paired, not even with a series of its study: the reason, naming the file and the
    attribute, is one line in the log, the audit trail and the status page."""
    path = _without_references(tmp_path, study, case)
    index, router = _node(tmp_path)
    _receive(index, [*study.ct_paths, path], now=100.0)
    with caplog.at_level(logging.INFO, logger="node.flow.router"):
        assert _stabilise(index, router, quiet_since=150.0) == []
    assert index.jobs.all() == [] and index.retrievals.all() == []
    [record] = [r for r in caplog.records if r.getMessage() == SEGMENTATION_NOT_PROCESSED]
    logged = record.fields["reason"]
    assert record.levelno == logging.WARNING
    assert logged.startswith(f"{path}: ") and logged.endswith(reason) and "\n" not in logged
    [audit] = index.audit.rows(SEGMENTATION_NOT_PROCESSED, 10)
    assert json.loads(audit["detail"])["reason"] == logged
    assert audit["study_uid"] == study.study_instance_uid
    config = NodeConfig(state_dir=tmp_path)
    page = StatusServer(config, index, lambda: check_health(config, index, True, True, None))
    assert html.escape(logged) in page.render_page()


def test_segmentation_whose_series_matches_no_rule_says_so(
        tmp_path: Path, study: SyntheticStudy, caplog: pytest.LogCaptureFixture) -> None:
    rtstruct = _rtstruct(tmp_path, study, [_series_item(study.ct_series_uid)])
    index, router = _node(tmp_path, rules=[SeriesRule(name="mr-only", modality=["MR"])])
    _receive(index, list(study.ct_paths), now=100.0)
    _stabilise(index, router, quiet_since=150.0)
    _receive(index, [rtstruct], now=200.0)
    with caplog.at_level(logging.INFO, logger="node.flow.router"):
        assert _stabilise(index, router, quiet_since=250.0) == []
    [record] = [r for r in caplog.records
                if r.getMessage() == "segmentation not processed: its source series matches "
                                     "no rule"]
    assert record.fields["source_series_uid"] == study.ct_series_uid
    assert record.fields["modality"] == "RTSTRUCT" and record.fields["source_modality"] == "CT"


# -- references taken from the input: exact UIDs of the segmentation's own study and patient -----

def _seg_referencing(tmp_path: Path, study: SyntheticStudy, *series_uids: str) -> Path:
    """The study's SEG, as a new instance whose Referenced Series Sequence (0008,1115) lists
    ``series_uids`` (values written as given, valid UIDs or not)."""
    seg = pydicom.dcmread(study.seg_path)
    seg.ReferencedSeriesSequence = [_series_item(uid) for uid in series_uids]
    seg.SOPInstanceUID = seg.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    seg.SeriesInstanceUID = generate_uid()
    path = tmp_path / f"seg-{seg.SOPInstanceUID}.dcm"
    seg.save_as(path)
    return path


def _not_processed_reason(caplog: pytest.LogCaptureFixture) -> str:
    [record] = [r for r in caplog.records if r.getMessage() == SEGMENTATION_NOT_PROCESSED]
    return record.fields["reason"]


SEG_SERIES_UID = "(0008,1115) ReferencedSeriesSequence > (0020,000E) SeriesInstanceUID"

INVALID_UI_WARNINGS = pytest.mark.filterwarnings(
    "ignore:Invalid value for VR UI:UserWarning", "ignore:The value length:UserWarning")
"""pydicom warns of each invalid UI value these tests write and the router reads."""


@INVALID_UI_WARNINGS
@pytest.mark.parametrize(("value", "shown"), [
    ("*", "'*'"),
    ("1.2.3*", "'1.2.3*'"),
    ("?", "'?'"),
    ("1" * 65, f"'{'1' * 64}'... (65 characters)"),
    ("1.2.3\\1.2.4", "'1.2.3\\\\1.2.4'"),  # two values: a list of UIDs matches either
])
def test_seg_referencing_a_value_that_is_no_uid_is_not_processed(
        tmp_path: Path, study: SyntheticStudy, caplog: pytest.LogCaptureFixture, value: str,
        shown: str) -> None:
    """A wildcard or an over-long value would select series the SEG does not name (PS3.4
    C.2.2.2.4): nothing is requested, not even for the valid UID listed with it, and the one
    line names the tag and the value, cut to 64 characters."""
    path = _seg_referencing(tmp_path, study, study.ct_series_uid, value)
    index, router = _node(tmp_path)
    _receive(index, [*study.ct_paths, path], now=100.0)
    with caplog.at_level(logging.INFO, logger="node.flow.router"):
        assert _stabilise(index, router, quiet_since=150.0) == []
    assert index.jobs.all() == [] and index.retrievals.all() == []
    assert _not_processed_reason(caplog) == (
        f"{path}: SEG references an invalid UID ({SEG_SERIES_UID} {shown} is not a UID, "
        "PS3.5 9.1): not processed")


def test_seg_referencing_an_empty_uid_asks_for_nothing(
        tmp_path: Path, study: SyntheticStudy, caplog: pytest.LogCaptureFixture) -> None:
    """The measured attack: an empty Referenced Series UID reached Orthanc's /tools/find as
    match-all. Empty values are dropped, and a SEG left with none references no series."""
    path = _seg_referencing(tmp_path, study, "")
    index, router = _node(tmp_path)
    _receive(index, [path], now=100.0)
    with caplog.at_level(logging.INFO, logger="node.flow.router"):
        assert _stabilise(index, router, quiet_since=150.0) == []
    assert index.jobs.all() == [] and index.retrievals.all() == []
    assert _not_processed_reason(caplog).endswith(
        "SEG references no series ((0008,1115) ReferencedSeriesSequence items hold no "
        "SeriesInstanceUID): not processed")


@INVALID_UI_WARNINGS
def test_leading_zero_component_is_taken_as_the_node_takes_uids(
        tmp_path: Path, study: SyntheticStudy) -> None:
    """PS3.5 9.1 forbids a component such as ``03``, but ``node.state.spool.is_uid`` (and so ingest)
    accepts it, as archives hold such UIDs: the router is consistent with what the node stores
    and asks for that exact series, which is no wildcard."""
    from node.state.spool import is_uid

    assert is_uid("1.2.03")
    path = _seg_referencing(tmp_path, study, "1.2.03")
    index, router = _node(tmp_path)
    _receive(index, [path], now=100.0)
    assert _stabilise(index, router, quiet_since=150.0) == []
    [retrieval] = index.retrievals.all()
    assert (retrieval.series_uid, retrieval.study_uid) == ("1.2.03", study.study_instance_uid)


@INVALID_UI_WARNINGS
@pytest.mark.parametrize("where", ["series", "study"])
def test_rtstruct_referencing_a_value_that_is_no_uid_is_not_processed(
        tmp_path: Path, study: SyntheticStudy, caplog: pytest.LogCaptureFixture,
        where: str) -> None:
    """An RT Structure Set names its study too (RT Referenced Study Sequence > Referenced SOP
    Instance UID, PS3.3 C.8.8.5): that value is the study key of the retrieval."""
    if where == "series":
        rtstruct = _rtstruct(tmp_path, study, [_series_item("1.2.*")])
        tag = "(3006,0014) RTReferencedSeriesSequence > (0020,000E) SeriesInstanceUID '1.2.*'"
    else:
        rtstruct = _rtstruct(tmp_path, study, [_series_item(generate_uid())],
                             referenced_study_uid="*")
        tag = "(0008,1155) ReferencedSOPInstanceUID '*'"
    index, router = _node(tmp_path)
    _receive(index, [rtstruct], now=100.0)
    with caplog.at_level(logging.INFO, logger="node.flow.router"):
        assert _stabilise(index, router, quiet_since=150.0) == []
    assert index.retrievals.all() == []
    reason = _not_processed_reason(caplog)
    assert reason.startswith(f"{rtstruct}: RTSTRUCT references an invalid UID ((3006,0010) ")
    assert reason.endswith(f"{tag} is not a UID, PS3.5 9.1): not processed")


@pytest.mark.parametrize(("case", "seg_first"), [
    ("other study", True), ("other study", False),
    ("other patient", True), ("other patient", False)])
def test_segmentation_is_not_paired_with_a_series_of_another_study_or_patient(
        tmp_path: Path, study: SyntheticStudy, caplog: pytest.LogCaptureFixture, case: str,
        seg_first: bool) -> None:
    """Whichever is stable last, the SEG's referenced series must be in its study with its
    Patient ID; else one line says which attribute differs (UIDs shown, Patient IDs not)."""
    other_study = generate_uid()
    ct = _other_patient(study, tmp_path / "ct",
                        study_uid=other_study if case == "other study" else None,
                        patient="SAME-PATIENT-ID" if case == "other study" else "OTHER-PATIENT")
    seg = pydicom.dcmread(study.seg_path)
    if case == "other study":
        seg.PatientID = "SAME-PATIENT-ID"
    patient = str(seg.PatientID)
    path = tmp_path / "seg.dcm"
    seg.save_as(path)
    index, router = _node(tmp_path)
    first, second = ([path], ct) if seg_first else (ct, [path])
    with caplog.at_level(logging.INFO, logger="node.flow.router"):
        _receive(index, first, now=100.0)
        _stabilise(index, router, quiet_since=150.0)
        _receive(index, second, now=200.0)
        assert _stabilise(index, router, quiet_since=250.0) == []
    assert index.jobs.all() == []
    reason = _not_processed_reason(caplog)
    if case == "other study":
        assert reason.endswith(
            f"SEG references series {study.ct_series_uid} of study {other_study}, not of study "
            f"{study.study_instance_uid} ((0020,000D) StudyInstanceUID): not processed")
    else:
        assert reason.endswith(
            f"SEG references series {study.ct_series_uid} of another patient ((0010,0020) "
            "PatientID differs; values not logged): not processed")
    assert patient not in caplog.text and "OTHER-PATIENT" not in caplog.text

