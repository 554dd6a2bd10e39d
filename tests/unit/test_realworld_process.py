"""Every case of the real-world corpus (``../shared/refdata/realworld``: series and segmentations
that other tools wrote) through ``radiomics-node process``, checked against ``cases.tsv`` beside
it: processed with the expected ROIs, or refused with one line that names a file of the case and
matches the case's refusal pattern.

The expectations are the corpus' own table, ``cases.tsv`` (case folder, preset, ROIs measured,
refusal pattern or ``-``); a case added to it is run here too. What was measured is checked
against readers the node does not use:

* a SEG's segments: voxel counts of highdicom's ``segread(...).get_volume()`` of the input;
* an RTSTRUCT's ROIs: the node's derived SEG, read by highdicom, against two independent
  rasterisations of the contours: rt-utils (PyPI; OpenCV polygon fill, boundary pixels
  included) where it reads the structure set, and matplotlib's ``Path.contains_points``
  (pixel centres inside, contours of one ROI on one slice combined by exclusive or, as
  dicompyler-core does) on each slice's own geometry; within 2 %.
"""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from matplotlib.path import Path as Polygon
from pydicom.errors import InvalidDicomError

from tests.conftest import REFDATA

RTSTRUCT = "1.2.840.10008.5.1.4.1.1.481.3"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"  # the reading report
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"  # the feature report
SEGMENTATION = frozenset({"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"})
CORPUS = REFDATA / "realworld"
TOLERANCE = 0.02  # the bound between the node's and an independent rasterisation


@dataclass(frozen=True)
class Case:
    """One row of ``cases.tsv``."""

    folder: str
    preset: str
    rois: int
    refusal: str | None  # None: the case must be processed

    @property
    def path(self) -> Path:
        return CORPUS / self.folder

    @property
    def preset_argument(self) -> str:
        return str(CORPUS / self.preset) if self.preset.endswith((".yaml", ".yml")) \
            else self.preset


def _cases() -> list[Case]:
    table = CORPUS / "cases.tsv"
    if not table.is_file():
        return []
    rows = [line for line in table.read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    reader = csv.DictReader(rows, delimiter="\t")
    return [Case(row["case_dir"], row["preset"], int(row["rois"]),
                 None if row["refusal_ok"].strip() == "-" else row["refusal_ok"])
            for row in reader]


def _dicom_files(folder: Path) -> list[tuple[Path, pydicom.Dataset]]:
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            found.append((path, pydicom.dcmread(path, stop_before_pixels=True)))
        except (InvalidDicomError, OSError):
            continue
    return found


def _segmentation(case: Case) -> tuple[Path, pydicom.Dataset]:
    [found] = [(path, dataset) for path, dataset in _dicom_files(case.path)
               if str(dataset.SOPClassUID) in SEGMENTATION | {RTSTRUCT}]
    return found


def _images(case: Case) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(path) for path, dataset in _dicom_files(case.path)
            if "Rows" in dataset and str(dataset.SOPClassUID) not in SEGMENTATION]


def _polygon_counts(rtstruct: pydicom.Dataset, images: list[pydicom.Dataset]) -> dict[int, int]:
    """Voxels per ROI number by pixel centres inside each closed planar contour, contours of one
    ROI on one slice combined by exclusive or, each contour on the slice nearest along the
    normal, in that slice's own pixel coordinates (single-frame images)."""
    geometry = []
    for image in images:
        row, column = (np.array(image.ImageOrientationPatient[:3], float),
                       np.array(image.ImageOrientationPatient[3:], float))
        geometry.append((np.array(image.ImagePositionPatient, float), row, column,
                         [float(v) for v in image.PixelSpacing], int(image.Rows),
                         int(image.Columns)))
    normal = np.cross(geometry[0][1], geometry[0][2])  # single-frame images only
    along = np.array([g[0] @ normal for g in geometry])
    counts: dict[int, int] = {}
    for roi in rtstruct.ROIContourSequence:
        planes: dict[int, np.ndarray] = {}
        for contour in roi.get("ContourSequence", []):
            if contour.ContourGeometricType != "CLOSED_PLANAR":
                continue
            points = np.array(contour.ContourData, float).reshape(-1, 3)
            k = int(np.argmin(np.abs(along - points.mean(axis=0) @ normal)))
            origin, row, column, spacing, rows, columns = geometry[k]
            xy = np.column_stack([(points - origin) @ row / spacing[1],
                                  (points - origin) @ column / spacing[0]])
            grid = np.column_stack([a.ravel() for a in np.meshgrid(np.arange(columns),
                                                                    np.arange(rows))])
            inside = Polygon(xy).contains_points(grid).reshape(rows, columns)
            planes[k] = planes[k] ^ inside if k in planes else inside
        counts[int(roi.ReferencedROINumber)] = int(sum(p.sum() for p in planes.values()))
    return counts


def _rt_utils_counts(case: Case, rtstruct_path: Path) -> dict[str, int] | None:
    """Voxels per ROI name by rt-utils, or None where it does not read the structure set (it
    needs every instance its Contour Image Sequence names)."""
    from rt_utils import RTStructBuilder

    images = {path.parent for path, dataset in _dicom_files(case.path)
              if "Rows" in dataset and str(dataset.SOPClassUID) not in SEGMENTATION}
    if len(images) != 1:
        return None
    try:
        builder = RTStructBuilder.create_from(dicom_series_path=str(images.pop()),
                                              rt_struct_path=str(rtstruct_path))
        return {name: int(builder.get_roi_mask_by_name(name).sum())
                for name in builder.get_roi_names()}
    except Exception:  # rt-utils raises several types for what it does not read
        return None


def _node_outputs(out: Path) -> dict[str, list[pydicom.Dataset]]:
    found: dict[str, list[pydicom.Dataset]] = {}
    for path in out.rglob("*.dcm"):
        dataset = pydicom.dcmread(path)
        found.setdefault(str(dataset.Modality), []).append(dataset)
    return found


def _library(report: pydicom.Dataset) -> set[str]:
    """SOP Instance UIDs of a TID 1500 report's Image Library entries."""
    [library] = [item for item in report.ContentSequence
                 if item.ConceptNameCodeSequence[0].CodeValue == "111028"]
    return {entry.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            for group in library.ContentSequence for entry in group.ContentSequence}


def _check_reading_report(reading: pydicom.Dataset, feature: pydicom.Dataset,
                          case: Case) -> None:
    """The reading report has a group per ROI, each with a tracking UID of the feature report;
    each ROI as drawn is outlined by a closed polygon on an image of the source series (one the
    feature report's Image Library lists)."""
    report = hd.sr.ComprehensiveSR.from_dataset(reading)
    planar = report.content.get_planar_roi_measurement_groups()
    volumetric = report.content.get_volumetric_roi_measurement_groups()
    assert len(planar) + len(volumetric) == case.rois
    assert planar, "no ROI outlined"
    feature_uids = {group.tracking_uid for group in hd.sr.Comprehensive3DSR.from_dataset(
        feature).content.get_volumetric_roi_measurement_groups()}
    source_images = _library(feature)
    for group in planar:
        assert group.tracking_uid in feature_uids
        points = group.roi.value
        assert len(points) >= 4 and np.array_equal(points[0], points[-1])
        [selected_from] = group.roi.ContentSequence
        assert selected_from.ReferencedSOPSequence[0].ReferencedSOPInstanceUID in source_images
    assert _library(reading) <= source_images


def _within(got: int, want: int) -> bool:
    return abs(got - want) <= TOLERANCE * want


@pytest.mark.parametrize("case", _cases(), ids=lambda case: case.folder)
def test_case_is_processed_or_refused_as_its_readme_says(case: Case, tmp_path: Path,
                                                         refdata: Path) -> None:
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "node.cli", "process", str(case.path), "--preset",
         case.preset_argument, "--out", str(out)],
        capture_output=True, text=True, check=False)
    lines = run.stdout.splitlines()
    assert "Traceback" not in run.stdout + run.stderr, run.stderr[-3000:]
    processed = [line for line in lines if re.search(r": \d+ ROI\(s\), \d+ values -> ", line)]
    if not processed:
        assert case.refusal is not None, run.stdout + run.stderr[-3000:]
        assert run.returncode == 1
        refusals = [line for line in lines if re.search(case.refusal, line)]
        assert refusals, run.stdout
        assert any(str(case.path) in line for line in refusals), refusals
        return
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]
    [line] = processed
    assert int(re.search(r": (\d+) ROI\(s\)", line).group(1)) == case.rois, line
    outputs = _node_outputs(out)
    reports = {str(report.SOPClassUID): report for report in outputs["SR"]}
    assert sorted(reports) == [COMPREHENSIVE_SR, COMPREHENSIVE_3D_SR]
    sr = hd.sr.Comprehensive3DSR.from_dataset(reports[COMPREHENSIVE_3D_SR])
    groups = sr.content.get_volumetric_roi_measurement_groups()
    # one feature group per ROI and image filter
    assert len({group.tracking_uid for group in groups}) == case.rois
    groups = [group for group in groups if group.method.value == "filter.original"]
    assert len(groups) == case.rois
    _check_reading_report(reports[COMPREHENSIVE_SR], sr, case)
    seg_path, segmentation = _segmentation(case)
    if str(segmentation.SOPClassUID) == RTSTRUCT:
        _check_rtstruct(case, seg_path, outputs, groups)
    else:
        _check_seg(seg_path, out, groups)


def _check_seg(seg_path: Path, out: Path, groups: list) -> None:
    """Each group's segment of the input SEG, with the voxel count highdicom reads (the
    features' VoxelVolume over the voxel's volume on the acquired grid of these presets)."""
    seg = hd.seg.segread(seg_path)
    rows = list(csv.DictReader((out.rglob("features.csv").__next__()).open()))
    volumes = {int(row["segment_number"]): float(row["value"]) for row in rows
               if row["feature"] == "original_shape_VoxelVolume"}
    for group in groups:
        [number] = group.referenced_segment.referenced_segment_numbers
        assert group.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
        volume = seg.get_volume(segment_numbers=[number], combine_segments=True,
                                allow_missing_positions=True)
        expected = int(np.count_nonzero(volume.array))
        voxel_volume = float(np.prod(volume.spacing))
        assert round(volumes[number] / voxel_volume) == expected, number


def _check_rtstruct(case: Case, rtstruct_path: Path, outputs: dict[str, list[pydicom.Dataset]],
                    groups: list) -> None:
    """Each group references its ROI's segment in the node's derived SEG, whose voxels (read by
    highdicom) agree within 2 % with the independent rasterisations."""
    rtstruct = pydicom.dcmread(rtstruct_path)
    names = {int(item.ROINumber): str(item.ROIName) for item in rtstruct.StructureSetROISequence}
    images = _images(case)
    single_frame = all(int(image.get("NumberOfFrames", 1) or 1) == 1 for image in images)
    polygon = _polygon_counts(rtstruct, images) if single_frame else None
    rt_utils = _rt_utils_counts(case, rtstruct_path)
    [derived] = outputs["SEG"]
    seg = hd.seg.Segmentation.from_dataset(derived)
    by_tracking = {str(item.TrackingUID): item for item in derived.SegmentSequence}
    for group in groups:
        assert group.referenced_segment.referenced_sop_instance_uid == derived.SOPInstanceUID
        item = by_tracking[str(group.tracking_uid)]
        [number] = group.referenced_segment.referenced_segment_numbers
        assert int(item.SegmentNumber) == number
        match = re.search(r"ROI Number (\d+) \(ROI Name (.*)\)$", item.SegmentDescription)
        roi_number, roi_name = int(match.group(1)), match.group(2)
        assert names[roi_number] == roi_name == str(group.tracking_identifier)
        voxels = int(np.count_nonzero(seg.get_volume(
            segment_numbers=[number], combine_segments=True, allow_missing_positions=True,
        ).array))
        if polygon is not None:
            assert _within(voxels, polygon[roi_number]), (roi_name, voxels, polygon[roi_number])
        if rt_utils is not None:
            assert _within(voxels, rt_utils[roi_name]), (roi_name, voxels, rt_utils[roi_name])


def test_the_corpus_is_there(refdata: Path) -> None:
    """The table is read: a corpus with no case would make the test above test nothing."""
    assert len(_cases()) >= 10
