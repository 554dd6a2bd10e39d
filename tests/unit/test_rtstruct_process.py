"""An RT Structure Set through the whole pipeline: each ROI with a closed contour measured, its
rasterised voxels in the derived SEG, the report's group referencing that segment and naming the
ROI; ROIs with only point or open contours said not measured, one line each."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from demo.synthetic import SyntheticStudy, write_synthetic_study
from node.flow.executor import run_in_process
from pipelines.io.rtstruct import RTSTRUCT_SOP_CLASS_UID
from pipelines.io.segmentation import Segment, read_segmentation
from pipelines.io.series import SeriesVolume, read_series
from pipelines.outputs.result import PipelineResult
from pipelines.process import ProcessError, job_plan
from pipelines.science.presets import Preset, load_preset


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    return write_synthetic_study(tmp_path_factory.mktemp("rtstruct-study"), shape=(20, 96, 96),
                                 pixel_spacing=1.6)


def _outline(mask: np.ndarray, k: int, volume: SeriesVolume) -> list[float]:
    """A closed polygon around the voxels of slice ``k`` of ``mask`` (z, y, x): the corners of
    the slice's bounding box at half a pixel out, in patient coordinates."""
    y, x = np.nonzero(mask[k])
    corners = [(x.min() - 0.5, y.min() - 0.5), (x.max() + 0.5, y.min() - 0.5),
               (x.max() + 0.5, y.max() + 0.5), (x.min() - 0.5, y.max() + 0.5)]
    points = [volume.image.TransformContinuousIndexToPhysicalPoint((cx, cy, float(k)))
              for cx, cy in corners]
    return [round(float(v), 3) for point in points for v in point]


def _write_rtstruct(path: Path, study: SyntheticStudy, volume: SeriesVolume,
                    rois: list[tuple[str, str, list[tuple[str, list[float]]]]]) -> Path:
    """An RT Structure Set of ``volume`` (PS3.3 A.19) with ``rois`` as (name, interpreted type,
    [(contour geometric type, contour data)])."""
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS_UID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    source = volume.datasets[0]
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "StudyTime",
                    "AccessionNumber", "ReferringPhysicianName", "StudyID"):
        setattr(ds, keyword, source.get(keyword, ""))
    ds.SeriesInstanceUID, ds.Modality, ds.StructureSetLabel = generate_uid(), "RTSTRUCT", "test"
    series = pydicom.Dataset()
    series.SeriesInstanceUID = volume.series_instance_uid
    series.ContourImageSequence = []
    referenced_study = pydicom.Dataset()
    referenced_study.RTReferencedSeriesSequence = [series]
    frame = pydicom.Dataset()
    frame.FrameOfReferenceUID = volume.frame_of_reference_uid
    frame.RTReferencedStudySequence = [referenced_study]
    ds.ReferencedFrameOfReferenceSequence = [frame]
    ds.StructureSetROISequence, ds.ROIContourSequence, ds.RTROIObservationsSequence = [], [], []
    for number, (name, kind, contours) in enumerate(rois, start=1):
        item = pydicom.Dataset()
        item.ROINumber, item.ROIName = number, name
        item.ReferencedFrameOfReferenceUID = volume.frame_of_reference_uid
        item.ROIGenerationAlgorithm = "MANUAL"
        ds.StructureSetROISequence.append(item)
        holder = pydicom.Dataset()
        holder.ReferencedROINumber = number
        holder.ContourSequence = []
        for geometric_type, data in contours:
            contour = pydicom.Dataset()
            contour.ContourGeometricType = geometric_type
            contour.NumberOfContourPoints = len(data) // 3
            contour.ContourData = data
            holder.ContourSequence.append(contour)
        ds.ROIContourSequence.append(holder)
        observation = pydicom.Dataset()
        observation.ObservationNumber = observation.ReferencedROINumber = number
        observation.RTROIInterpretedType = kind
        observation.ROIInterpreter = ""
        ds.RTROIObservationsSequence.append(observation)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def rtstruct(study: SyntheticStudy, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Box outlines of the synthetic SEG's last lesion on each of its slices (GTV), a POINT
    marker and an OPEN_PLANAR line."""
    volume = read_series(list(study.ct_paths))
    lesion = read_segmentation(study.seg_path, volume).segments[-1]
    mask = _array(lesion)
    slices = [k for k in range(mask.shape[0]) if mask[k].any()]
    centre = list(volume.image.TransformIndexToPhysicalPoint((48, 48, slices[0])))
    return _write_rtstruct(
        tmp_path_factory.mktemp("rtstruct") / "rs.dcm", study, volume,
        [("GTV lesion", "GTV", [("CLOSED_PLANAR", _outline(mask, k, volume)) for k in slices]),
         ("Marker", "MARKER", [("POINT", centre)]),
         ("Line", "CONTROL", [("OPEN_PLANAR", [*centre, centre[0] + 5, centre[1], centre[2]])])])


def _array(segment: Segment) -> np.ndarray:
    """The segment's full-grid mask as a (z, y, x) array."""
    return sitk.GetArrayFromImage(segment.mask)


@pytest.fixture(scope="module")
def result(study: SyntheticStudy, rtstruct: Path,
           tmp_path_factory: pytest.TempPathFactory) -> PipelineResult:
    return run_in_process(job_plan(study.ct_paths, rtstruct, "ct-liver-basic",
                                   tmp_path_factory.mktemp("out")))


def test_the_closed_roi_is_measured_and_the_others_said_not_measured(
        result: PipelineResult, rtstruct: Path) -> None:
    assert [(lesion.segment_number, lesion.label) for lesion in result.lesions] == [
        (1, "GTV lesion")]
    assert len(result.not_measured) == 2
    marker, line = result.not_measured
    assert marker.startswith(f"{rtstruct}: ROI 2 (Marker): (3006,0042) ContourGeometricType is "
                             "POINT")
    assert "OPEN_PLANAR" in line and "ROI 3 (Line)" in line
    assert all("\n" not in reason for reason in result.not_measured)


def test_the_report_references_the_rasterised_roi_in_the_derived_seg(
        result: PipelineResult, study: SyntheticStudy, rtstruct: Path) -> None:
    objects = {o.sop_class_uid: pydicom.dcmread(o.path) for o in result.objects}
    derived = objects["1.2.840.10008.5.1.4.1.1.66.4"]
    sr = hd.sr.Comprehensive3DSR.from_dataset(objects["1.2.840.10008.5.1.4.1.1.88.34"])
    [group] = sr.content.get_volumetric_roi_measurement_groups()
    assert str(group.tracking_identifier) == "GTV lesion"
    reference = group.referenced_segment
    assert reference.referenced_sop_instance_uid == derived.SOPInstanceUID
    [item] = derived.SegmentSequence
    assert reference.referenced_segment_numbers == [int(item.SegmentNumber)]
    assert str(item.TrackingUID) == str(group.tracking_uid)
    assert item.SegmentLabel == "GTV lesion"
    assert item.SegmentAlgorithmType == "MANUAL"
    structure = pydicom.dcmread(rtstruct)
    assert item.SegmentDescription == (f"RT Structure Set {structure.SOPInstanceUID} ROI Number 1 "
                                       "(ROI Name GTV lesion)")
    # the RTSTRUCT is evidence of the report (PS3.3 C.17.2.3)
    evidence = {str(instance.ReferencedSOPInstanceUID)
                for study_item in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study_item.ReferencedSeriesSequence
                for instance in series.ReferencedSOPSequence}
    assert structure.SOPInstanceUID in evidence
    # the derived segment holds the voxels that were measured
    volume = read_series(list(study.ct_paths))
    measured = read_segmentation(rtstruct, volume).segments[0]
    seg = hd.seg.Segmentation.from_dataset(derived)
    voxels = np.count_nonzero(seg.get_volume(combine_segments=True).array)
    assert voxels == np.count_nonzero(_array(measured))


def test_a_structure_set_with_only_point_contours_is_refused(
        study: SyntheticStudy, tmp_path: Path) -> None:
    volume = read_series(list(study.ct_paths))
    centre = list(volume.image.TransformIndexToPhysicalPoint((48, 48, 10)))
    path = _write_rtstruct(tmp_path / "points.dcm", study, volume,
                           [("Marker", "MARKER", [("POINT", centre)])])
    with pytest.raises(ValueError, match=r"no ROI has a closed planar contour") as error:
        run_in_process(job_plan(study.ct_paths, path, "ct-liver-basic", tmp_path / "out"))
    message = str(error.value)
    assert str(path) in message and "ROI 1 (Marker)" in message and "\n" not in message


def _liver_only(study: SyntheticStudy, tmp_path: Path) -> Path:
    volume = read_series(list(study.ct_paths))
    lesion = read_segmentation(study.seg_path, volume).segments[-1]
    mask = _array(lesion)
    slices = [k for k in range(mask.shape[0]) if mask[k].any()]
    return _write_rtstruct(tmp_path / "liver.dcm", study, volume, [
        ("Liver", "ORGAN", [("CLOSED_PLANAR", _outline(mask, k, volume)) for k in slices])])


def test_a_structure_set_with_only_the_liver_is_refused_in_one_line(
        study: SyntheticStudy, tmp_path: Path) -> None:
    path = _liver_only(study, tmp_path)
    with pytest.raises(ProcessError) as error:
        run_in_process(job_plan(study.ct_paths, path, "ct-liver-basic", tmp_path / "out"))
    message = str(error.value)
    assert message.startswith(f"{path}: the RTSTRUCT has no lesion to measure under preset "
                              "ct-liver-basic")
    assert "[1 (Liver)]" in message and "rois.liver.measure" in message and "\n" not in message


def test_rois_liver_measure_measures_the_liver_as_drawn(study: SyntheticStudy,
                                                        tmp_path: Path) -> None:
    chosen = load_preset("ct-liver-basic").model_dump()
    chosen["rois"]["liver"]["measure"] = True
    preset = Preset.model_validate(chosen)
    assert preset.hash != load_preset("ct-liver-basic").hash
    result = run_in_process(job_plan(study.ct_paths, _liver_only(study, tmp_path), preset,
                                      tmp_path / "out"))
    assert [(lesion.label, lesion.roi_variant) for lesion in result.lesions] == [
        ("Liver", "intra")]
