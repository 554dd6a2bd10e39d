"""RT Structure Set parsing and rasterisation (PS3.3 A.19, C.8.8.5, C.8.8.6, C.8.8.8)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from pipelines.io.references import referenced_series_uids
from pipelines.io.rtstruct import RTSTRUCT_SOP_CLASS_UID, parse_rtstruct
from pipelines.io.segmentation import SegmentationError, read_segmentation
from pipelines.io.series import SeriesVolume, read_series

STUDY, SERIES, FRAME = "1.2.826.0.1.1", "1.2.826.0.1.1.2", "1.2.826.0.1.1.3"
PIXEL_MM, SLICE_MM, SIZE, SLICES = 1.0, 1.5, 40, 24
CENTRE = np.array([1.3, -0.7, 0.4])  # off the voxel grid on purpose


def _ct(folder: Path) -> list[Path]:
    paths = []
    for k in range(SLICES):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = STUDY, SERIES, FRAME
        ds.Modality = "CT"
        half = (SIZE - 1) / 2 * PIXEL_MM
        ds.ImagePositionPatient = [-half, -half, (k - (SLICES - 1) / 2) * SLICE_MM]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [PIXEL_MM, PIXEL_MM]
        ds.Rows = ds.Columns = SIZE
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = np.zeros((SIZE, SIZE), dtype=np.int16).tobytes()
        paths.append(folder / f"{k}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def _circle(centre: np.ndarray, radius: float, z: float, vertices: int = 90) -> list[float]:
    angles = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    points = np.column_stack(
        [
            centre[0] + radius * np.cos(angles),
            centre[1] + radius * np.sin(angles),
            np.full(vertices, z),
        ]
    )
    return [round(float(v), 4) for v in points.ravel()]


def _rtstruct(path: Path, volume: SeriesVolume, rois: list[dict]) -> Path:
    """An RT Structure Set written with pydicom: ``rois`` give name, type, algorithm, contours."""
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS_UID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, generate_uid()
    ds.Modality, ds.StructureSetLabel = "RTSTRUCT", "test"
    series = pydicom.Dataset()
    series.SeriesInstanceUID = volume.series_instance_uid
    series.ContourImageSequence = []
    study = pydicom.Dataset()
    study.RTReferencedSeriesSequence = [series]
    frame = pydicom.Dataset()
    frame.FrameOfReferenceUID = volume.frame_of_reference_uid
    frame.RTReferencedStudySequence = [study]
    ds.ReferencedFrameOfReferenceSequence = [frame]
    ds.StructureSetROISequence, ds.ROIContourSequence, ds.RTROIObservationsSequence = [], [], []
    for number, roi in enumerate(rois, start=1):
        item = pydicom.Dataset()
        item.ROINumber, item.ROIName = number, roi["name"]
        item.ReferencedFrameOfReferenceUID = volume.frame_of_reference_uid
        item.ROIGenerationAlgorithm = roi["algorithm"]
        ds.StructureSetROISequence.append(item)
        contours = pydicom.Dataset()
        contours.ReferencedROINumber = number
        contours.ContourSequence = []
        for data in roi["contours"]:
            contour = pydicom.Dataset()
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(data) // 3
            contour.ContourData = data
            contours.ContourSequence.append(contour)
        ds.ROIContourSequence.append(contours)
        observation = pydicom.Dataset()
        observation.ObservationNumber = observation.ReferencedROINumber = number
        observation.RTROIInterpretedType = roi["type"]
        observation.ROIInterpreter = ""
        ds.RTROIObservationsSequence.append(observation)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> SeriesVolume:
    return read_series(_ct(tmp_path_factory.mktemp("ct")))


def test_sphere_contours_rasterise_to_the_sphere_volume(
    volume: SeriesVolume, tmp_path: Path
) -> None:
    radius = 9.0
    planes = [s.position[2] for s in volume.slices if abs(s.position[2] - CENTRE[2]) < radius]
    sphere = [_circle(CENTRE, np.sqrt(radius**2 - (z - CENTRE[2]) ** 2), z) for z in planes]
    ring = [_circle(CENTRE, 8.0, 0.75), _circle(CENTRE, 4.0, 0.75)]
    path = _rtstruct(
        tmp_path / "rs.dcm",
        volume,
        [
            {"name": "Tumour", "type": "GTV", "algorithm": "SEMIAUTOMATIC", "contours": sphere},
            {"name": "Ring", "type": "AVOIDANCE", "algorithm": "", "contours": ring},
        ],
    )

    decoded = read_segmentation(path, volume)

    assert decoded.is_rtstruct and decoded.path == path
    assert decoded.sop_class_uid == RTSTRUCT_SOP_CLASS_UID
    tumour, ring_roi = decoded.segments
    assert (tumour.number, tumour.label, tumour.algorithm_type) == (1, "Tumour", "SEMIAUTOMATIC")
    assert (tumour.property_type.value, tumour.property_type.scheme_designator) == (
        "228791009",
        "SCT",
    )
    assert tumour.category.value == "309825002"
    assert (ring_roi.label, ring_roi.algorithm_type, ring_roi.property_type.value) == (
        "Ring",
        "",
        "111030",
    )
    mask = sitk.GetArrayFromImage(tumour.mask)
    assert tumour.mask.GetSize() == volume.image.GetSize()
    assert tumour.mask.GetOrigin() == volume.image.GetOrigin()
    voxel_mm3 = PIXEL_MM * PIXEL_MM * SLICE_MM
    # Each slice holds a slab of 1.5 mm of the sphere: the slab volume sum is the reference.
    slabs = sum(np.pi * (radius**2 - (z - CENTRE[2]) ** 2) * SLICE_MM for z in planes)
    assert mask.sum() * voxel_mm3 == pytest.approx(slabs, rel=0.03)
    assert mask.sum() * voxel_mm3 == pytest.approx(4 / 3 * np.pi * radius**3, rel=0.05)
    # The voxel centres inside are exactly those inside the circles' polygons (90-gons).
    index = np.argwhere(mask > 0)
    points = np.array(
        [volume.image.TransformIndexToPhysicalPoint((int(c), int(r), int(k))) for k, r, c in index]
    )
    assert np.all(np.hypot(*(points[:, :2] - CENTRE[:2]).T) <= radius)
    annulus = sitk.GetArrayFromImage(ring_roi.mask)
    (k,) = np.flatnonzero(annulus.sum(axis=(1, 2)))
    assert annulus[k].sum() * PIXEL_MM**2 == pytest.approx(np.pi * (8.0**2 - 4.0**2), rel=0.05)
    centre_index = volume.image.TransformPhysicalPointToIndex((*CENTRE[:2], 0.75))
    assert annulus[k, centre_index[1], centre_index[0]] == 0  # the inner contour is a hole


def test_contours_off_the_slices_or_series_are_refused(
    volume: SeriesVolume, tmp_path: Path
) -> None:
    between = _rtstruct(
        tmp_path / "between.dcm",
        volume,
        [
            {
                "name": "x",
                "type": "GTV",
                "algorithm": "MANUAL",
                "contours": [_circle(CENTRE, 4.0, 0.0)],
            }
        ],
    )
    with pytest.raises(
        SegmentationError,
        match=r"between\.dcm: ROI 1 \(x\) contour 1: "
        r"\(3006,0050\) ContourData lies 17\.250 mm",
    ):
        read_segmentation(between, volume)

    other = pydicom.dcmread(between)
    other.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[
        0
    ].RTReferencedSeriesSequence[0].SeriesInstanceUID = "1.2.3"
    other.save_as(tmp_path / "other.dcm")
    with pytest.raises(SegmentationError, match=r"\(3006,0014\) RTReferencedSeriesSequence"):
        read_segmentation(tmp_path / "other.dcm", volume)


def test_pydicom_reference_rtstruct_is_parsed(refdata: Path) -> None:
    path = refdata / "pydicom/test_files/rtstruct.dcm"
    dataset = pydicom.dcmread(path, force=True)

    rois = parse_rtstruct(path, dataset)

    assert [(r.number, r.name, r.interpreted_type, r.algorithm_type) for r in rois] == [
        (1, "patient", "EXTERNAL", "MANUAL"),
        (2, "Isocenter 1", "ISOCENTER", "MANUAL"),
        (3, "Isocenter 2", "ISOCENTER", "MANUAL"),
    ]
    assert [len(r.contours) for r in rois] == [3, 0, 0]  # POINT contours enclose nothing
    assert [c.shape for c in rois[0].contours] == [(5, 3), (6, 3), (6, 3)]
    assert rois[0].contours[0][0].tolist() == [-200.0, 150.0, -200.0]
    assert rois[0].property_type.value == "111030"
    assert referenced_series_uids(dataset) == {"1.2.826.0.1.3680043.8.498.2010020400001.2.1.1"}
