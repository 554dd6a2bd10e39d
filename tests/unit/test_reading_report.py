"""The reading report: one group per lesion as drawn, none for a derived ROI, with its key
numbers first and no child under a NUM; the lesion outlined on the slice where it is largest (the
polygon, rasterised by matplotlib at the pixel centres, is the mask's slice), SELECTED FROM that
slice's image; the feature report's Tracking UIDs; both reports listing each other; read back by
highdicom and passed by dciodvfy; no report for a preset of derived ROIs only."""

from __future__ import annotations

import math
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from matplotlib.path import Path as Polygon
from pydicom.uid import Comprehensive3DSRStorage, ComprehensiveSRStorage

from pipelines.io.segmentation import read_segmentation
from pipelines.io.series import SeriesVolume, read_series
from pipelines.outputs.codes import feature_concept
from pipelines.outputs.derived_seg import DerivedSegmentation, build_derived_segmentation
from pipelines.outputs.feature_report import build_feature_report, feature_report_reference
from pipelines.outputs.outline import largest_slice_outline
from pipelines.outputs.reading_report import (
    READING_SERIES_NUMBER_OFFSET,
    build_reading_report,
    reading_report_reference,
)
from tests.unit.outputs_case import OutputsCase, build_case, dciodvfy
from tests.unit.test_segmentation_geometry import _ct_series, _lesion, _seg

KNOWN_WARNING = "<99RADNODE> for value 1 of attribute <Coding Scheme Designator>"
KEY_NAMES = ["Volume", "Maximum 3D diameter", "Mean", "Standard Deviation"]


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> OutputsCase:
    return build_case(tmp_path_factory.mktemp("reading"))


@pytest.fixture(scope="module")
def derived(case: OutputsCase) -> DerivedSegmentation:
    built = build_derived_segmentation(case.volume, case.seg, case.rois, case.masks, case.preset)
    assert built is not None
    return built


@pytest.fixture(scope="module")
def written(case: OutputsCase, derived: DerivedSegmentation,
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("reports")
    feature = build_feature_report(
        case.volume, case.seg, case.rois, case.preset, derived=derived,
        reading_report=reading_report_reference(case.volume, case.seg.sop_instance_uid,
                                                case.preset))
    reading = build_reading_report(
        case.volume, case.seg, case.rois, case.preset,
        feature_report=feature_report_reference(case.volume, case.seg.sop_instance_uid,
                                                case.preset))
    assert reading is not None
    paths = {"feature": folder / "feature.dcm", "reading": folder / "reading.dcm"}
    feature.save_as(paths["feature"], enforce_file_format=True)
    reading.save_as(paths["reading"], enforce_file_format=True)
    return paths


def _groups(path: Path) -> list[pydicom.Dataset]:
    dataset = pydicom.dcmread(path)
    [measurements] = [item for item in dataset.ContentSequence
                      if item.ConceptNameCodeSequence[0].CodeValue == "126010"]
    return list(measurements.ContentSequence)


def _child(group: pydicom.Dataset, code: str) -> list[pydicom.Dataset]:
    return [item for item in group.ContentSequence
            if item.ConceptNameCodeSequence[0].CodeValue == code]


def test_header_names_the_reading_report(case: OutputsCase, written: dict[str, Path]) -> None:
    report = pydicom.dcmread(written["reading"])
    source = case.volume.datasets[0]
    assert report.SOPClassUID == ComprehensiveSRStorage
    assert report.SeriesDescription == f"Radiomics reading report ({case.preset.name})"
    assert report.SeriesNumber == int(source.SeriesNumber) + READING_SERIES_NUMBER_OFFSET
    assert report.StudyInstanceUID == source.StudyInstanceUID
    assert report.SeriesInstanceUID != pydicom.dcmread(written["feature"]).SeriesInstanceUID


def test_one_group_per_lesion_as_drawn_with_the_feature_reports_tracking(
    case: OutputsCase, written: dict[str, Path]
) -> None:
    reading = hd.sr.ComprehensiveSR.from_dataset(pydicom.dcmread(written["reading"]))
    feature = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(written["feature"]))
    planar = reading.content.get_planar_roi_measurement_groups()
    drawn = [roi for roi in case.rois if not roi.derived]
    assert len(drawn) < len(case.rois)  # the case has rings and cores: none is reported here
    assert [g.tracking_identifier for g in planar] == [roi.tracking_identifier for roi in drawn]
    assert reading.content.get_volumetric_roi_measurement_groups() == []
    feature_uids = {g.tracking_identifier: g.tracking_uid
                    for g in feature.content.get_volumetric_roi_measurement_groups()}
    for group in planar:
        assert group.tracking_uid == feature_uids[group.tracking_identifier]


def test_a_preset_of_derived_rois_only_gets_no_reading_report(case: OutputsCase) -> None:
    derived_only = [roi for roi in case.rois if roi.derived]
    assert build_reading_report(case.volume, case.seg, derived_only, case.preset) is None


def test_key_numbers_come_first_and_no_num_has_a_child(
    case: OutputsCase, written: dict[str, Path]
) -> None:
    drawn = [roi for roi in case.rois if not roi.derived]
    for group, roi in zip(_groups(written["reading"]), drawn, strict=True):
        nums = [item for item in group.ContentSequence if item.ValueType == "NUM"]
        assert not any("ContentSequence" in item for item in nums)
        assert [n.ConceptNameCodeSequence[0].CodeMeaning for n in nums] == KEY_NAMES
        values = [float(n.MeasuredValueSequence[0].FloatingPointValue) for n in nums]
        features = roi.features.values
        assert values == [features["original_shape_MeshVolume"],
                          features["original_shape_Maximum3DDiameter"],
                          features["original_firstorder_Mean"],
                          math.sqrt(features["original_firstorder_Variance"])]
        units = [n.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue
                 for n in nums]
        assert units == ["mm3", "mm", "[hnsf'U]", "[hnsf'U]"]
        assert nums[0].ConceptNameCodeSequence[0].CodeValue == feature_concept(
            "original_shape_MeshVolume", "CT").name.value
        # nothing before the key numbers but the group's identification
        first_num = next(i for i, item in enumerate(group.ContentSequence)
                         if item.ValueType == "NUM")
        assert all(item.RelationshipType == "HAS OBS CONTEXT" or item.ValueType != "NUM"
                   for item in group.ContentSequence[:first_num])


def _mask_slice(case: OutputsCase, label: str) -> tuple[int, np.ndarray]:
    [segment] = [s for s in case.lesions if s.label == label]
    mask = sitk.GetArrayFromImage(segment.mask)
    k = int(np.argmax(mask.reshape(mask.shape[0], -1).sum(axis=1)))
    return k, mask[k]


def test_each_lesion_is_outlined_on_its_largest_slice(
    case: OutputsCase, written: dict[str, Path]
) -> None:
    planar = [g for g in _groups(written["reading"]) if _child(g, "111030")]
    assert len(planar) == len(case.lesions)
    for group in planar:
        [label] = [item.TextValue for item in _child(group, "112039")]
        [region] = _child(group, "111030")
        assert (region.ValueType, region.GraphicType) == ("SCOORD", "POLYLINE")
        [selected] = region.ContentSequence
        assert selected.RelationshipType == "SELECTED FROM"
        k, expected = _mask_slice(case, label)
        source = case.volume.datasets[k]
        assert selected.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == \
            source.SOPInstanceUID
        points = np.array(region.GraphicData, dtype=float).reshape(-1, 2)
        assert np.array_equal(points[0], points[-1])  # closed
        rows, columns = expected.shape
        centres = np.array([(c + 0.5, r + 0.5) for r in range(rows) for c in range(columns)])
        inside = Polygon(points).contains_points(centres).reshape(rows, columns)
        np.testing.assert_array_equal(inside, expected.astype(bool))


def test_image_library_holds_the_outlined_images(case: OutputsCase,
                                                 written: dict[str, Path]) -> None:
    report = pydicom.dcmread(written["reading"])
    [library] = [item for item in report.ContentSequence
                 if item.ConceptNameCodeSequence[0].CodeValue == "111028"]
    listed = {entry.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
              for group in library.ContentSequence for entry in group.ContentSequence}
    outlined = {case.volume.datasets[_mask_slice(case, s.label)[0]].SOPInstanceUID
                for s in case.lesions}
    assert listed == outlined


def test_the_two_reports_list_each_other(written: dict[str, Path]) -> None:
    reading = pydicom.dcmread(written["reading"])
    feature = pydicom.dcmread(written["feature"])
    for report, other in ((reading, feature), (feature, reading)):
        [study] = report.PertinentOtherEvidenceSequence
        assert study.StudyInstanceUID == report.StudyInstanceUID
        [series] = study.ReferencedSeriesSequence
        assert series.SeriesInstanceUID == other.SeriesInstanceUID
        [instance] = series.ReferencedSOPSequence
        assert (instance.ReferencedSOPClassUID, instance.ReferencedSOPInstanceUID) == (
            other.SOPClassUID, other.SOPInstanceUID)
    assert feature.SOPClassUID == Comprehensive3DSRStorage


def test_reading_report_is_small_and_valid(written: dict[str, Path]) -> None:
    errors, warnings = dciodvfy(written["reading"])
    assert errors == []
    assert [w for w in warnings if KNOWN_WARNING not in w] == []
    # a few content items per group, whatever the number of features
    assert all(len(group.ContentSequence) <= 20 for group in _groups(written["reading"]))


def test_outline_on_a_resampled_volume_is_drawn_on_the_nearest_acquired_slice(
    tmp_path: Path,
) -> None:
    """A stack with missing slices (0, 1.5, 3 and 7.5 mm along the normal) is resampled to
    1.5 mm: its first slice holding most of a lesion drawn largest on the last image is at 6 mm,
    no acquired image, so the outline goes on the acquired slice nearest to it along the normal
    (7.5 mm), through patient coordinates."""
    sources = _ct_series(tmp_path / "ct", (16, 20), z=[0.0, 1.5, 3.0, 7.5])
    volume: SeriesVolume = read_series(sorted((tmp_path / "ct").iterdir()),
                                       irregular_grid="resample")
    assert volume.resampled
    array = np.zeros((4, 16, 20), dtype=np.uint8)
    array[:, 5:9, 6:10] = _lesion((4, 16, 20), seed=2)[:, 5:9, 6:10]
    array[3, 3:13, 4:16] = 1  # largest on the acquired slice at 6 mm
    seg = _seg(sources, array)
    seg.save_as(tmp_path / "seg.dcm")
    [segment] = read_segmentation(tmp_path / "seg.dcm", volume).segments
    outline = largest_slice_outline(volume, segment)
    assert outline is not None
    assert outline.source.sop_instance_uid == sources[3].SOPInstanceUID
    assert outline.source.position[2] == pytest.approx(float(sources[3].ImagePositionPatient[2]))
    assert volume.image.TransformIndexToPhysicalPoint((0, 0, outline.slice_index))[2] == \
        pytest.approx(float(sources[0].ImagePositionPatient[2]) + 6.0)
    centres = np.array([(c + 0.5, r + 0.5) for r in range(16) for c in range(20)])
    inside = Polygon(outline.points).contains_points(centres).reshape(16, 20)
    np.testing.assert_array_equal(inside, array[3].astype(bool))
