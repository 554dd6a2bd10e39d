"""A study job (pipelines.study.study_plan): the segmentation drawn on one series measured on
another series of the study too, with the propagation's checks, one Tracking UID per lesion
across series, a derived SEG per series, a features table by role, and a model that needs two
roles."""

from __future__ import annotations

import csv
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import Comprehensive3DSRStorage, SegmentationStorage, generate_uid

from demo.synthetic import SyntheticStudy, write_synthetic_study
from node.flow.executor import run_in_process
from node.ops.model_commands import export_features
from pipelines.outputs.report_parts import measurement_groups
from pipelines.outputs.result import PipelineResult
from pipelines.process import job_plan
from pipelines.science.inference import ModelOutput, NotApplied
from pipelines.study import JobInputs, SeriesInput, study_plan
from tests.unit.model_helpers import two_role_model

PRESET = "ct-liver-basic"
MEAN = "intra/original_firstorder_Mean"


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    return write_synthetic_study(tmp_path_factory.mktemp("study"), shape=(30, 128, 128),
                                 pixel_spacing=1.5, slice_thickness=3.0)


def _phase(study: SyntheticStudy, out: Path, name: str, *, frame_of_reference: str | None = None,
           pixels: np.ndarray | None = None) -> tuple[str, ...]:
    """The study's CT again as another series ``name`` of the same study: the same grid, the
    same frame of reference unless one is given, the same pixels unless ``pixels`` (slices,
    rows, columns of stored values) are."""
    out.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid(entropy_srcs=[name])
    paths = []
    for number, path in enumerate(study.ct_paths):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[name, ds.SOPInstanceUID])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesDescription, ds.SeriesNumber = name.upper(), 3
        if frame_of_reference is not None:
            ds.FrameOfReferenceUID = frame_of_reference
        if pixels is not None:
            ds.PixelData = pixels[number].astype(np.int16).tobytes()
        target = out / Path(path).name
        ds.save_as(target)
        paths.append(str(target))
    return tuple(paths)


def _inputs(study: SyntheticStudy, others: dict[str, tuple[str, ...]]) -> JobInputs:
    return JobInputs((SeriesInput("portal_venous", tuple(map(str, study.ct_paths)), PRESET),
                      *(SeriesInput(role, paths, PRESET) for role, paths in others.items())),
                     str(study.seg_path))


def _objects(result: PipelineResult, sop_class: str) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(o.path) for o in result.objects if o.sop_class_uid == sop_class]


def test_each_series_is_measured_with_one_tracking_uid_per_lesion(
        tmp_path: Path, small: SyntheticStudy) -> None:
    arterial = _phase(small, tmp_path / "arterial", "arterial")
    result = run_in_process(study_plan(_inputs(small, {"arterial": arterial}),
                                       tmp_path / "out"))
    assert {lesion.role for lesion in result.lesions} == {"", "arterial"}
    # identical grid, same frame of reference: the masks are copied, the features equal
    drawn = {(s.segment_number, s.roi_variant): s.features for s in result.lesions if not s.role}
    copied = {(s.segment_number, s.roi_variant): s.features for s in result.lesions if s.role}
    assert copied == drawn
    registration = next(r for r in result.qc if r.subject == "arterial: propagation")
    assert registration.check("propagation method").value == "identical-grid"
    assert registration.status == "pass"

    [report] = _objects(result, Comprehensive3DSRStorage)
    sr = hd.sr.Comprehensive3DSR.from_dataset(report)
    groups = sr.content.get_volumetric_roi_measurement_groups()
    sessions = [[item.TextValue for item in group.ContentSequence
                 if item.ConceptNameCodeSequence[0].CodeMeaning == "Activity Session"]
                for group in measurement_groups(report)]
    assert sessions == [["portal_venous"]] * 2 + [["arterial"]] * 2
    assert [g.tracking_uid for g in groups[:2]] == [g.tracking_uid for g in groups[2:]]
    # the arterial groups reference the derived SEG on the arterial series, which holds the
    # lesions as drawn, propagated, with the reports' Tracking UIDs
    [derived] = _objects(result, SegmentationStorage)
    assert derived.SeriesDescription == f"Radiomics ROIs arterial ({PRESET})"
    assert {str(item.ReferencedSOPInstanceUID) for item in derived.ReferencedSeriesSequence[0]
            .ReferencedInstanceSequence} <= {pydicom.dcmread(p).SOPInstanceUID for p in arterial}
    assert [g.referenced_segment.referenced_sop_instance_uid for g in groups[2:]] == \
        [derived.SOPInstanceUID] * 2
    assert [str(s.TrackingUID) for s in derived.SegmentSequence] == \
        [g.tracking_uid for g in groups[2:]]
    assert all("propagated" not in s.SegmentDescription and "copied" in s.SegmentDescription
               for s in derived.SegmentSequence)

    with result.features_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["role"] for row in rows] == \
        ["portal_venous"] * (len(rows) // 2) + ["arterial"] * (len(rows) // 2)
    assert len(rows) == 2 * len([row for row in result.lesions if not row.role
                                 for _ in row.features])
    export = tmp_path / "export.csv"
    # one row per lesion, a column per feature and role: the arterial ones as "arterial:..."
    assert export_features(tmp_path, export) == (2, len(rows) // 2)
    with export.open(newline="") as handle:
        columns = next(csv.reader(handle))
    assert MEAN in columns and f"arterial:{MEAN}" in columns


def test_a_series_whose_propagation_fails_is_reported_not_measured(
        tmp_path: Path, small: SyntheticStudy) -> None:
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 2000, (30, 128, 128))
    unrelated = _phase(small, tmp_path / "unrelated", "delayed",
                       frame_of_reference=generate_uid(entropy_srcs=["elsewhere"]), pixels=noise)
    result = run_in_process(study_plan(_inputs(small, {"delayed": unrelated}), tmp_path / "out"))
    registration = next(r for r in result.qc if r.subject == "delayed: propagation")
    assert registration.status == "fail"
    assert registration.check("propagation method").value == "rigid"
    assert {lesion.role for lesion in result.lesions} == {""}  # the job goes on without it
    assert _objects(result, SegmentationStorage) == []
    with result.qc_csv.open(newline="") as handle:
        failed = [row["check"] for row in csv.DictReader(handle)
                  if row["subject"] == "delayed: propagation" and row["status"] == "fail"]
    assert failed


def test_a_model_that_needs_two_roles_runs_on_a_study_job_only(
        tmp_path: Path, small: SyntheticStudy) -> None:
    package, digest = two_role_model(tmp_path, PRESET, (MEAN, f"arterial:{MEAN}"))
    arterial = _phase(small, tmp_path / "arterial", "arterial")
    study = run_in_process(study_plan(_inputs(small, {"arterial": arterial}), tmp_path / "study",
                                      models=[(package, digest)]))
    assert len(study.models) == 2
    assert all(isinstance(m.outcome, ModelOutput) for m in study.models), study.models
    single = run_in_process(job_plan(small.ct_paths, small.seg_path, PRESET, tmp_path / "one",
                                     models=[(package, digest)]))
    assert all(isinstance(m.outcome, NotApplied) for m in single.models)
    assert all(f"arterial:{MEAN}" in str(m.outcome.reasons) for m in single.models)
