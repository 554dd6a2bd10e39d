"""feature_robustness: one-voxel erosion and dilation of the ROI, features re-extracted."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

import pipelines.science.qc.robustness as robustness
from pipelines.io.segmentation import voxel_box
from pipelines.science.features import extract_features
from pipelines.science.preprocess import apply_zscore
from pipelines.science.presets import Preset, load_preset
from pipelines.science.qc import QCReport, QCSettings, assess_roi, feature_robustness
from pipelines.science.qc.robustness import Perturbation, perturbed_features, perturbed_rois
from pipelines.science.rois import RoiMask, on_full_grid
from tests.unit.qc_volumes import ball, make_volume, mask_like

SHAPE = (16, 24, 24)
SPACING = (1.0, 1.0, 1.0)
CENTRE = (8.0, 12.0, 12.0)
# ITK's ball of radius 1 is the 3 x 3 x 3 cube without its corners: scipy's connectivity 2.
BALL_1 = ndimage.generate_binary_structure(3, 2)


@pytest.fixture(scope="module")
def preset() -> Preset:
    return load_preset("ct-liver-basic")


def _image(values: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.SetSpacing(SPACING)
    return image


def test_volume_moves_and_the_mean_of_a_homogeneous_lesion_does_not(preset: Preset) -> None:
    rng = np.random.default_rng(0)
    image = _image(100.0 + rng.normal(0.0, 2.0, SHAPE))
    roi = ball(SHAPE, CENTRE, 5.0, SPACING)

    report = feature_robustness(image, mask_like(image, roi), preset)

    n = roi.sum()
    eroded = ndimage.binary_erosion(roi, BALL_1).sum()
    dilated = ndimage.binary_dilation(roi, BALL_1).sum()
    volume = report.check("robustness.original_shape_VoxelVolume")
    assert volume.status == "warn"
    assert volume.value == pytest.approx(100 * max(n - eroded, dilated - n) / n)
    mean = report.check("robustness.original_firstorder_Mean")
    assert mean.status == "pass" and mean.value < 1.0
    warned = [c for c in report.checks if c.status == "warn"]
    assert report.check("robustness.unstable").value == len(warned)
    assert report.status == "warn"


def test_feature_that_is_zero_on_the_roi_and_not_on_the_dilation_is_unbounded(
    preset: Preset,
) -> None:
    roi = ball(SHAPE, CENTRE, 4.0, SPACING)
    image = _image(np.where(roi, 100.0, 300.0))

    report = feature_robustness(image, mask_like(image, roi), preset)

    variance = report.check("robustness.original_firstorder_Variance")
    assert variance.status == "warn" and variance.value == float("inf")
    assert report.to_rows()[report.checks.index(variance)]["value"] == "inf"


def test_tiny_roi_that_erodes_away_is_flagged(preset: Preset) -> None:
    rng = np.random.default_rng(1)
    image = _image(100.0 + rng.normal(0.0, 10.0, SHAPE))
    roi = np.zeros(SHAPE, bool)
    roi[7:9, 11:13, 11:13] = True

    report = feature_robustness(image, mask_like(image, roi), preset, label=1, subject="tiny")

    erosion = report.check("robustness.erosion")
    assert (erosion.status, erosion.value) == ("warn", 0)
    assert report.subject == "tiny"
    assert "dilation" in report.check("robustness.original_shape_VoxelVolume").message
    assert report.check("robustness.original_shape_VoxelVolume").status == "warn"


def test_roi_that_cannot_be_extracted_is_reported_not_raised(preset: Preset) -> None:
    image = _image(np.zeros(SHAPE))

    report = feature_robustness(image, mask_like(image, np.zeros(SHAPE, bool)), preset)

    assert [c.name for c in report.checks] == ["robustness.original"]
    assert report.status == "warn"


def test_given_features_save_the_plain_extraction(
    preset: Preset, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(2)
    image = _image(100.0 + rng.normal(0.0, 5.0, SHAPE))
    mask = mask_like(image, ball(SHAPE, CENTRE, 4.0, SPACING))
    plain = extract_features(image, mask, preset)
    without = feature_robustness(image, mask, preset)
    calls = []

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(args)
        return extract_features(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(robustness, "extract_features", counting)
    given = feature_robustness(image, mask, preset, original=plain)

    assert calls == []  # eroded and dilated ROIs go through extract_lesions' cropped path
    assert given == without


def test_assess_roi_runs_robustness_only_with_a_preset_and_the_setting(preset: Preset) -> None:
    rng = np.random.default_rng(3)
    values = 60.0 + rng.normal(0.0, 5.0, SHAPE)
    volume = make_volume(values, SPACING)
    mask = mask_like(volume.image, ball(SHAPE, CENTRE, 4.0, SPACING))

    def names(report: QCReport) -> set[str]:
        return {c.name for c in report.checks if c.name.startswith("robustness.")}

    assert names(assess_roi(volume, mask)) == set()
    assert names(assess_roi(volume, mask, QCSettings(feature_robustness=False),
                            preset=preset)) == set()
    with_robustness = names(assess_roi(volume, mask, preset=preset))
    assert "robustness.original_firstorder_Mean" in with_robustness
    assert "robustness.unstable" in with_robustness


def _full_grid(roi: RoiMask | None, reference: sitk.Image) -> np.ndarray:
    if roi is None:
        return np.zeros(sitk.GetArrayViewFromImage(reference).shape, bool)
    return sitk.GetArrayFromImage(on_full_grid(roi, reference)).astype(bool)


@pytest.mark.parametrize("where", ["inside", "at the border"])
def test_perturbed_rois_of_a_region_are_the_full_grid_erosion_and_dilation(where: str) -> None:
    image = _image(np.zeros(SHAPE))
    roi = ball(SHAPE, CENTRE if where == "inside" else (0.0, 12.0, 12.0), 4.0, SPACING)
    mask = mask_like(image, roi)
    lower, size = voxel_box(mask)
    region = sitk.RegionOfInterest(mask, size, lower)

    rois = perturbed_rois(region, lower, image.GetSize(), QCSettings())

    binary = sitk.Cast(mask == 1, sitk.sitkUInt8)
    eroded = sitk.BinaryErode(binary, [1, 1, 1], sitk.sitkBall, 0.0, 1.0)
    dilated = sitk.BinaryDilate(binary, [1, 1, 1], sitk.sitkBall, 0.0, 1.0)
    assert np.array_equal(_full_grid(rois["erosion"], image),
                          sitk.GetArrayFromImage(eroded).astype(bool))
    assert np.array_equal(_full_grid(rois["dilation"], image),
                          sitk.GetArrayFromImage(dilated).astype(bool))
    if where == "at the border":  # the border counts as foreground: slice 0 keeps voxels
        assert _full_grid(rois["erosion"], image)[0].any()


def test_perturbed_features_use_the_lesions_z_score(preset: Preset) -> None:
    """Perturbed ROIs are measured on the image their lesion's own features come from: with a
    per-lesion z-score, the normalised image, not the raw one."""
    rng = np.random.default_rng(4)
    image = _image(400.0 + rng.normal(0.0, 30.0, SHAPE))
    mask = mask_like(image, ball(SHAPE, CENTRE, 5.0, SPACING))
    lower, size = voxel_box(mask)
    affine = (400.0, 30.0)

    [perturbed] = perturbed_features(image, [(sitk.RegionOfInterest(mask, size, lower), lower)],
                                     preset, QCSettings(), zscore=[affine])

    eroded = sitk.BinaryErode(sitk.Cast(mask, sitk.sitkUInt8), [1, 1, 1], sitk.sitkBall, 0.0, 1.0)
    plain = extract_features(apply_zscore(image, *affine), eroded, preset)
    got = perturbed["erosion"].features
    assert got is not None and perturbed["erosion"].voxels == int(
        sitk.GetArrayViewFromImage(eroded).sum())
    for key in ("original_firstorder_Mean", "original_glcm_Contrast",
                "original_shape_VoxelVolume"):
        assert got.values[key] == pytest.approx(plain.values[key], rel=1e-6, abs=1e-9)
    assert abs(got.values["original_firstorder_Mean"]) < 1.0  # z-scored, not about 400


def test_a_refused_perturbed_roi_names_its_reason_and_spares_the_other_lesions(
    preset: Preset,
) -> None:
    rng = np.random.default_rng(5)
    image = _image(100.0 + rng.normal(0.0, 10.0, SHAPE))
    big = mask_like(image, ball(SHAPE, CENTRE, 5.0, SPACING))
    thin = np.zeros(SHAPE, bool)
    thin[3, 2:5, 2] = True  # 3 voxels in a line: eroded away; its dilation is a thin slab
    lesions = []
    for mask in (big, mask_like(image, thin)):
        lower, size = voxel_box(mask)
        lesions.append((sitk.RegionOfInterest(mask, size, lower), lower))
    settings = QCSettings()
    strict = preset.model_copy(update={"radiomics": {
        **preset.radiomics, "setting": {**preset.radiomics["setting"], "minimumROISize": 40}}})

    big_result, thin_result = perturbed_features(image, lesions, strict, settings)

    assert big_result["erosion"].features is not None
    assert big_result["dilation"].features is not None
    assert thin_result["erosion"] == Perturbation(0, None, "no voxel is left")
    assert thin_result["dilation"].features is None
    assert thin_result["dilation"].reason.startswith("lesion 1, ROI dilation: pyradiomics: Size")
    assert thin_result["dilation"].voxels > 0
