"""write_synthetic_study: the truth it records is what read_series and read_segmentation find."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from demo.synthetic import (
    PATIENT_BIRTH_DATE,
    PATIENT_ID,
    PATIENT_NAME,
    SyntheticStudy,
    write_synthetic_study,
)
from pipelines.io.references import referenced_series_uids
from pipelines.io.segmentation import read_segmentation
from pipelines.io.series import read_series

SMALL = {"shape": (20, 128, 128)}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    return write_synthetic_study(tmp_path_factory.mktemp("small"), **SMALL)


@pytest.fixture(scope="module")
def default(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    return write_synthetic_study(tmp_path_factory.mktemp("default"))


def _voxel_centres(headers: list[pydicom.Dataset]) -> np.ndarray:
    """(slices, rows, columns, 3) patient coordinates from each CT header (PS3.3 C.7.6.2.1.1)."""
    points = []
    for ds in headers:
        orientation = np.array([float(v) for v in ds.ImageOrientationPatient])
        row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
        r, c = np.mgrid[0 : ds.Rows, 0 : ds.Columns]
        points.append(
            np.array([float(v) for v in ds.ImagePositionPatient])
            + c[..., None] * column_spacing * orientation[:3]
            + r[..., None] * row_spacing * orientation[3:]
        )
    return np.stack(points)


def test_round_trip_finds_the_designed_lesions(small: SyntheticStudy) -> None:
    volume = read_series(list(small.ct_paths))
    decoded = read_segmentation(small.seg_path, volume)

    assert volume.image.GetSize() == (128, 128, 20)
    np.testing.assert_allclose(volume.image.GetSpacing(), (0.8, 0.8, 2.5))
    assert volume.series_instance_uid == small.ct_series_uid
    assert volume.study_instance_uid == small.study_instance_uid
    assert [s.label for s in decoded.segments] == ["Lesion 1", "Lesion 2"]
    hu = sitk.GetArrayFromImage(volume.image)
    centres = _voxel_centres(list(volume.datasets))
    voxel_mm3 = float(np.prod(volume.image.GetSpacing()))
    for segment, lesion in zip(decoded.segments, small.lesions, strict=True):
        mask = sitk.GetArrayFromImage(segment.mask).astype(bool)
        sphere = np.linalg.norm(centres - np.array(lesion.center_mm), axis=-1) <= lesion.radius_mm
        assert np.count_nonzero(mask != sphere) <= 0.005 * sphere.sum()
        analytic_mm3 = 4 / 3 * np.pi * lesion.radius_mm**3
        assert mask.sum() * voxel_mm3 == pytest.approx(analytic_mm3, rel=0.04)
        assert float(hu[mask].mean()) == pytest.approx(lesion.mean_hu, abs=2.0)
    first, second = (hu[sitk.GetArrayFromImage(s.mask).astype(bool)] for s in decoded.segments)
    assert small.lesions[0].radius_mm == pytest.approx(2 * small.lesions[1].radius_mm)
    assert first.std() > 1.5 * second.std(), "Lesion 1 is the heterogeneous one"


def test_default_size_has_lesions_of_18_and_9_mm(default: SyntheticStudy) -> None:
    header = pydicom.dcmread(default.ct_paths[0], stop_before_pixels=True)

    assert len(default.ct_paths) == 60
    assert (header.Rows, header.Columns) == (512, 512)
    assert [float(v) for v in header.PixelSpacing] == [0.8, 0.8]
    assert float(header.SliceThickness) == 2.5
    assert [lesion.radius_mm for lesion in default.lesions] == [18.0, 9.0]
    assert [lesion.mean_hu for lesion in default.lesions] == [35.0, 80.0]


def test_ct_and_seg_carry_the_fictitious_patient_and_reference_each_other(
    small: SyntheticStudy,
) -> None:
    ct = pydicom.dcmread(small.ct_paths[0])
    seg = pydicom.dcmread(small.seg_path)

    for ds in (ct, seg):
        assert str(ds.PatientName) == PATIENT_NAME == "Synthetic^Liver"
        assert ds.PatientID == PATIENT_ID
        assert ds.PatientBirthDate == PATIENT_BIRTH_DATE
        assert ds.StudyInstanceUID == small.study_instance_uid
    assert ct.pixel_array.dtype == np.int16
    assert (float(ct.RescaleIntercept), float(ct.RescaleSlope)) == (-1024.0, 1.0)
    assert referenced_series_uids(seg) == {small.ct_series_uid}
    assert seg.SegmentationType == "BINARY"
    for item in seg.SegmentSequence:
        assert item.SegmentAlgorithmType == "MANUAL"
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"


def test_same_seed_writes_the_same_files(small: SyntheticStudy, tmp_path: Path) -> None:
    again = write_synthetic_study(tmp_path / "again", **SMALL)
    other = write_synthetic_study(tmp_path / "other", **SMALL, seed=1)

    assert again.ct_paths[7].read_bytes() == small.ct_paths[7].read_bytes()
    assert again.seg_path.read_bytes() == small.seg_path.read_bytes()
    assert other.study_instance_uid != small.study_instance_uid
    ct, other_ct = (pydicom.dcmread(s.ct_paths[10]) for s in (small, other))
    assert not np.array_equal(ct.pixel_array, other_ct.pixel_array)


def test_grid_too_coarse_for_a_lesion_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Lesion 1 holds no voxel centre"):
        write_synthetic_study(tmp_path, shape=(2, 16, 16), slice_thickness=10.0)


def _dciodvfy(path: Path) -> str:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) is not on PATH")
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return done.stdout + done.stderr


@pytest.mark.parametrize(("which", "iod"), [("ct", "CTImage"), ("seg", "Segmentation")])
def test_dciodvfy_finds_no_errors(default: SyntheticStudy, which: str, iod: str) -> None:
    path = default.ct_paths[30] if which == "ct" else default.seg_path

    report = _dciodvfy(path)

    assert iod in report, report  # dciodvfy recognised the IOD and checked against it
    errors = [line for line in report.splitlines() if "Error" in line]
    assert errors == []
