"""assess_roi: mask checks and image checks (noise, metal, MR bias field) of
pipelines.science.qc."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from pipelines.io.series import SeriesVolume
from pipelines.science.qc import QCSettings, assess_roi
from pipelines.science.qc.masks import bounding_box
from tests.unit.qc_volumes import ball, make_volume, mask_like

SHAPE = (20, 64, 64)  # z, y, x
SPACING = (1.0, 1.0, 2.0)  # x, y, z in mm
CENTRE = (10.0, 32.0, 32.0)
NOISE_HU = 10.0


def _ct(noise_hu: float = NOISE_HU, seed: int = 1) -> np.ndarray:
    """Soft tissue at 60 HU with white noise, and a 40 HU lesion of radius 8 mm at CENTRE."""
    rng = np.random.default_rng(seed)
    values = 60.0 + rng.normal(0.0, noise_hu, SHAPE)
    values[ball(SHAPE, CENTRE, 8.0, SPACING)] -= 20.0
    return values


def _lesion(volume: SeriesVolume, centre: tuple[float, float, float] = CENTRE,
            radius_mm: float = 8.0) -> sitk.Image:
    return mask_like(volume.image, ball(SHAPE, centre, radius_mm, SPACING))


@pytest.fixture(scope="module")
def clean() -> SeriesVolume:
    return make_volume(_ct(), SPACING)


def test_clean_lesion_passes_every_check(clean: SeriesVolume) -> None:
    report = assess_roi(clean, _lesion(clean), subject="segment 1 Lesion")

    assert report.status == "pass", report.failing()
    assert report.scope == "roi" and report.subject == "segment 1 Lesion"
    assert [c.name for c in report.checks] == [
        "mask.grid", "mask.voxels", "mask.inside_image", "mask.components", "mask.border",
        "lesion.volume", "lesion.air", "lesion.fat", "image.noise", "image.metal"]
    expected = int(ball(SHAPE, CENTRE, 8.0, SPACING).sum())
    assert report.check("mask.voxels").value == expected
    assert report.check("mask.components").value == 1
    assert report.check("image.noise").value == pytest.approx(NOISE_HU, rel=0.1)


def test_empty_mask_fails_and_stops(clean: SeriesVolume) -> None:
    report = assess_roi(clean, mask_like(clean.image, np.zeros(SHAPE, bool)))

    assert report.status == "fail"
    assert (report.check("mask.voxels").status, report.check("mask.voxels").value) == ("fail", 0)
    assert [c.name for c in report.checks] == ["mask.grid", "mask.voxels"]


def test_other_label_is_measured(clean: SeriesVolume) -> None:
    labels = ball(SHAPE, CENTRE, 8.0, SPACING).astype(np.uint8) * 3

    report = assess_roi(clean, mask_like(clean.image, labels), label=3)

    assert report.check("mask.voxels").value == int((labels == 3).sum())


def test_tiny_mask_warns(clean: SeriesVolume) -> None:
    report = assess_roi(clean, _lesion(clean, radius_mm=2.0))

    check = report.check("mask.voxels")
    assert check.status == "warn" and 0 < int(check.value) < 64


def test_two_components_warn(clean: SeriesVolume) -> None:
    two = ball(SHAPE, (10, 20, 20), 4.0, SPACING) | ball(SHAPE, (10, 44, 44), 4.0, SPACING)

    report = assess_roi(clean, mask_like(clean.image, two))

    check = report.check("mask.components")
    assert (check.status, check.value) == ("warn", 2)
    assert report.status == "warn"
    assert assess_roi(clean, mask_like(clean.image, two),
                      QCSettings(max_components=2)).check("mask.components").status == "pass"


def test_diagonal_neighbours_are_one_component_only_when_fully_connected(
    clean: SeriesVolume,
) -> None:
    voxels = np.zeros(SHAPE, bool)
    voxels[10, 30:34, 30:34] = True
    voxels[11, 34:38, 34:38] = True  # touches the first block by one corner

    full = assess_roi(clean, mask_like(clean.image, voxels)).check("mask.components")
    faces = assess_roi(clean, mask_like(clean.image, voxels),
                       QCSettings(fully_connected=False)).check("mask.components")

    assert (full.value, faces.value) == (1, 2)


def test_mask_touching_the_first_slice_warns(clean: SeriesVolume) -> None:
    report = assess_roi(clean, _lesion(clean, centre=(0.0, 32.0, 32.0)))

    check = report.check("mask.border")
    assert (check.status, check.value) == ("warn", 1)
    assert "first/last slice" in check.message


def test_mask_on_another_grid_fails_and_is_located_physically(clean: SeriesVolume) -> None:
    shifted = _lesion(clean)
    shifted.SetOrigin((0.5, 0.0, 0.0))
    far = _lesion(clean)
    far.SetOrigin((0.0, 0.0, 100.0))

    near_report, far_report = assess_roi(clean, shifted), assess_roi(clean, far)

    assert near_report.check("mask.grid").status == "fail"
    assert near_report.check("mask.inside_image").status == "pass"
    assert far_report.check("mask.inside_image").status == "fail"
    assert "image.noise" not in {c.name for c in far_report.checks}


def test_roi_in_the_padding_outside_the_field_of_view_fails() -> None:
    values = _ct()
    values[ball(SHAPE, CENTRE, 8.0, SPACING) & (np.indices(SHAPE)[2] < 30)] = -3024.0
    volume = make_volume(values, SPACING)

    check = assess_roi(volume, _lesion(volume)).check("mask.inside_image")

    assert check.status == "fail" and int(check.value) > 0


@pytest.mark.parametrize(("distance_mm", "status"), [(12.0, "warn"), (30.0, "pass")])
def test_metal_near_the_roi_warns(distance_mm: float, status: str) -> None:
    values = _ct()
    x = int(CENTRE[2] + 8 + distance_mm)
    values[9:12, 31:34, x:x + 3] = 3071.0
    volume = make_volume(values, SPACING)

    check = assess_roi(volume, _lesion(volume)).check("image.metal")

    assert check.status == status
    assert check.value == (27 if status == "warn" else 0)


def test_high_noise_warns() -> None:
    volume = make_volume(_ct(noise_hu=40.0), SPACING)

    check = assess_roi(volume, _lesion(volume)).check("image.noise")

    assert check.status == "warn"
    assert check.value == pytest.approx(40.0, rel=0.1)


def test_noise_is_measured_in_the_reference_region_when_given() -> None:
    values = _ct()
    rng = np.random.default_rng(2)
    liver = np.zeros(SHAPE, bool)
    liver[:, :, 32:] = True
    values[liver] = 60.0 + rng.normal(0.0, 20.0, int(liver.sum()))
    volume = make_volume(values, SPACING)
    lesion = _lesion(volume, centre=(10.0, 32.0, 48.0), radius_mm=5.0)

    ring = assess_roi(volume, lesion).check("image.noise")
    reference = assess_roi(volume, lesion, reference_mask=mask_like(volume.image, liver)).check(
        "image.noise")

    assert reference.value == pytest.approx(20.0, rel=0.1)
    assert "reference region" in reference.message
    assert "shell" in ring.message


def test_reference_mask_on_another_grid_is_refused(clean: SeriesVolume) -> None:
    other = sitk.Image(8, 8, 8, sitk.sitkUInt8)

    with pytest.raises(ValueError, match="reference_mask is not on the image grid"):
        assess_roi(clean, _lesion(clean), reference_mask=other)


def _mr(ramp: float, field_strength: float = 1.5) -> SeriesVolume:
    """MR intensity 500 with 2 % noise, times a linear ramp of +-``ramp`` across x."""
    rng = np.random.default_rng(3)
    x = np.linspace(-1.0, 1.0, SHAPE[2])[None, None, :]
    values = (500.0 + rng.normal(0.0, 10.0, SHAPE)) * (1.0 + ramp * x)
    return make_volume(values, SPACING, "MR", MagneticFieldStrength=field_strength)


def test_flat_mr_passes_the_bias_field_check() -> None:
    volume = _mr(ramp=0.0)

    report = assess_roi(volume, _lesion(volume))

    check = report.check("image.bias_field")
    assert check.status == "pass" and check.value > 98.0
    assert report.check("image.noise").status == "info"
    assert "image.metal" not in {c.name for c in report.checks}


def test_mr_bias_field_ramp_warns() -> None:
    volume = _mr(ramp=0.4)

    check = assess_roi(volume, _lesion(volume)).check("image.bias_field")

    assert check.status == "warn" and check.value < 87.5
    assert check.threshold == ">= 87.5 %"


def test_3t_uses_the_lower_uniformity_limit() -> None:
    """A ramp of +-20 % gives a PIU of about 85 %: below the 87.5 % limit, above the 3 T 82 %."""
    at_1t5, at_3t = _mr(ramp=0.2), _mr(ramp=0.2, field_strength=3.0)

    low_field = assess_roi(at_1t5, _lesion(at_1t5)).check("image.bias_field")
    high_field = assess_roi(at_3t, _lesion(at_3t)).check("image.bias_field")

    assert 82.0 < low_field.value < 87.5
    assert (low_field.status, high_field.status) == ("warn", "pass")
    assert high_field.threshold == ">= 82 %"


@pytest.mark.parametrize("seed", range(5))
def test_bounding_box_is_argwheres_extent(seed: int) -> None:
    """The projections give the box ``np.argwhere`` gives, for a few scattered voxels and for
    regions touching the array's faces."""
    rng = np.random.default_rng(seed)
    region = rng.random((9, 13, 11)) > (0.995 if seed % 2 else 0.6)
    region[tuple(rng.integers(0, n) for n in region.shape)] = True
    found = np.argwhere(region)
    assert bounding_box(region) == tuple(
        slice(int(lo), int(hi) + 1) for lo, hi in zip(found.min(0), found.max(0), strict=True))


def test_components_are_counted_on_the_box_as_on_the_whole_mask(clean: SeriesVolume) -> None:
    """Three components, one of them a single voxel on the box's corner: counted and sized as
    ``ConnectedComponent`` counts them on the whole mask."""
    voxels = ball(SHAPE, CENTRE, 6.0, SPACING)
    voxels[2, 3, 4] = voxels[SHAPE[0] - 3, SHAPE[1] - 2, SHAPE[2] - 5] = True
    mask = mask_like(clean.image, voxels)
    whole = sitk.LabelShapeStatisticsImageFilter()
    whole.Execute(sitk.ConnectedComponent(mask, True))
    sizes = sorted((whole.GetNumberOfPixels(c) for c in whole.GetLabels()), reverse=True)
    check = assess_roi(clean, mask).check("mask.components")
    assert check.value == len(sizes) == 3 and sizes[1:] == [1, 1]
    assert check.message.endswith("voxels: " + ", ".join(map(str, sizes)))
