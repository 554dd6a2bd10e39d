"""Summary image: an RGB Secondary Capture in the source study that dciodvfy accepts, showing
each lesion's largest cross-section with its contours, and the banner only when flagged."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from pipelines.outputs.summary import (
    SIZE_PX,
    SummaryError,
    _key_slice,
    build_summary_image,
)
from tests.unit.outputs_case import OutputsCase, build_case, dciodvfy

BANNER_RGB = (0xC6, 0x28, 0x28)
LESION_RGB = (0xFF, 0xD7, 0x00)


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> OutputsCase:
    return build_case(tmp_path_factory.mktemp("summary"))


def _summary(case: OutputsCase, flagged: bool) -> hd.sc.SCImage:
    return build_summary_image(
        case.volume, case.rois, case.masks, preset_name=case.preset.name,
        preset_hash=case.preset.hash, seg_sop_instance_uid=case.seg.sop_instance_uid,
        qc_lines=["Series: pass"], model_lines=["demo model 1.0: probability 0.4"],
        not_for_diagnostic_use=flagged)


def _count(pixels: np.ndarray, rgb: tuple[int, int, int]) -> int:
    return int(np.all(np.abs(pixels.astype(int) - rgb) <= 2, axis=-1).sum())


@pytest.fixture(scope="module")
def flagged(case: OutputsCase) -> hd.sc.SCImage:
    return _summary(case, flagged=True)


def test_secondary_capture_in_the_study(case: OutputsCase, flagged: hd.sc.SCImage,
                                        tmp_path: Path) -> None:
    path = tmp_path / "summary.dcm"
    flagged.save_as(path, enforce_file_format=True)
    errors, _ = dciodvfy(path)
    assert errors == []
    read = pydicom.dcmread(path)
    assert read.StudyInstanceUID == case.volume.study_instance_uid
    assert read.PatientID == case.volume.datasets[0].PatientID
    assert read.SeriesInstanceUID != case.volume.series_instance_uid
    assert read.SeriesNumber == case.volume.datasets[0].SeriesNumber + 1001
    assert (read.Rows, read.Columns, read.SamplesPerPixel) == (SIZE_PX, SIZE_PX, 3)
    assert read.PhotometricInterpretation == "RGB"
    assert read.BurnedInAnnotation == "YES"
    np.testing.assert_array_equal(read.pixel_array, flagged.pixel_array)


def test_banner_only_when_flagged(case: OutputsCase, flagged: hd.sc.SCImage) -> None:
    plain = _summary(case, flagged=False)
    assert _count(flagged.pixel_array, BANNER_RGB) > 2000
    assert _count(plain.pixel_array, BANNER_RGB) == 0
    assert plain.SOPInstanceUID == flagged.SOPInstanceUID  # same inputs, same object identity


def test_each_lesion_panel_shows_its_contour(flagged: hd.sc.SCImage) -> None:
    """The panels fill the upper half, one per lesion side by side; each has the lesion's
    contour colour."""
    panels = flagged.pixel_array[int(0.09 * SIZE_PX):int(0.48 * SIZE_PX)]
    left, right = panels[:, :SIZE_PX // 2], panels[:, SIZE_PX // 2:]
    assert _count(left, LESION_RGB) > 100
    assert _count(right, LESION_RGB) > 50


def test_key_slice_is_the_largest_cross_section(case: OutputsCase) -> None:
    for lesion in case.lesions:
        voxels = sitk.GetArrayFromImage(lesion.mask)
        areas = [int(voxels[k].sum()) for k in range(voxels.shape[0])]
        assert areas[_key_slice(lesion.mask)] == max(areas)


def test_rois_and_masks_must_pair(case: OutputsCase) -> None:
    with pytest.raises(SummaryError, match="paired with mask"):
        build_summary_image(
            case.volume, case.rois, case.masks[::-1], preset_name="p", preset_hash="0" * 64,
            seg_sop_instance_uid=case.seg.sop_instance_uid, qc_lines=[], model_lines=[],
            not_for_diagnostic_use=False)
