"""Preprocessing: pyradiomics' resampled grid reproduced from geometry alone, cropped resampling
equal to whole-image resampling, z-score, N4."""


import numpy as np
import pytest
import SimpleITK as sitk
from radiomics import imageoperations

from pipelines.science.preprocess import (
    Grid,
    PreprocessError,
    apply_zscore,
    crop,
    n4_correct,
    pyradiomics_grid,
    resample,
    source_region_for,
    union_grid,
    zscore_parameters,
)
from pipelines.science.presets import N4Options


def _image(seed: int = 0, size=(40, 36, 14), spacing=(0.8, 0.8, 2.5)) -> sitk.Image:
    rng = np.random.default_rng(seed)
    image = sitk.GetImageFromArray(rng.normal(50, 20, size[::-1]).astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin((-12.3, 4.1, 7.7))
    image.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, -1))  # a permuted, left-handed frame on purpose
    return image


def _mask(image: sitk.Image, lower, upper) -> sitk.Image:
    array = np.zeros(image.GetSize()[::-1], dtype=np.uint8)
    array[lower[2]:upper[2], lower[1]:upper[1], lower[0]:upper[0]] = 1
    mask = sitk.GetImageFromArray(array)
    mask.CopyInformation(image)
    return mask


@pytest.mark.parametrize(
    ("lower", "upper", "spacing"),
    [
        ((5, 6, 3), (20, 18, 9), [1, 1, 1]),
        ((0, 0, 0), (40, 36, 14), [1, 1, 1]),  # touches every border: clamped
        ((10, 10, 5), (12, 30, 6), [2, 2, 2]),  # one slice: z keeps its spacing
        ((3, 4, 2), (9, 9, 8), [0.8, 0.8, 0]),  # spacing 0 and equal spacing: a crop
        ((3, 4, 2), (9, 9, 8), [0.5, 0, 1.7]),
    ],
)
def test_grid_is_the_one_pyradiomics_resamples_onto(lower, upper, spacing) -> None:
    image = _image()
    mask = _mask(image, lower, upper)
    settings = {"resampledPixelSpacing": spacing, "interpolator": "sitkBSpline", "padDistance": 5}
    resampled, _ = imageoperations.resampleImage(image, mask, **settings)
    size = [u - lo for lo, u in zip(lower, upper, strict=True)]
    window = pyradiomics_grid(Grid.of(image), lower, size, settings)
    assert window.grid == Grid.of(resampled)  # exactly: same floating point operations

    if window.interpolated:
        index, region_size = source_region_for(Grid.of(image), window.grid, "sitkBSpline")
        from_crop = resample(crop(image, index, region_size), window.grid, "sitkBSpline")
        difference = sitk.GetArrayFromImage(from_crop) - sitk.GetArrayFromImage(resampled)
        assert np.abs(difference).max() <= 1e-4  # float32 rounding of the same values


def test_grid_without_resampling_is_the_whole_image() -> None:
    image = _image()
    window = pyradiomics_grid(Grid.of(image), (1, 1, 1), (3, 3, 3), {"resampledPixelSpacing": None})
    assert window.grid == Grid.of(image) and not window.interpolated


def test_union_of_windows_and_off_lattice_refusal() -> None:
    image = _image()
    settings = {"resampledPixelSpacing": [1, 1, 1], "interpolator": "sitkBSpline"}
    small = pyradiomics_grid(Grid.of(image), (10, 10, 5), (4, 4, 3), settings).grid
    large = pyradiomics_grid(Grid.of(image), (6, 8, 3), (15, 12, 8), settings).grid
    union, offsets = union_grid([small, large])
    assert union.size == large.size and offsets[1] == (0, 0, 0)
    assert union_grid([union, small])[1][1] == offsets[0]
    shifted = Grid(tuple(o + 0.3 for o in small.origin), small.spacing, small.direction,
                   small.size)
    with pytest.raises(PreprocessError, match="not on the lattice"):
        union_grid([small, shifted])


def test_zscore_in_region_and_refusals() -> None:
    image = _image()
    region = _mask(image, (5, 5, 2), (25, 25, 10))
    mean, sd = zscore_parameters(image, region)
    normalised = sitk.GetArrayFromImage(apply_zscore(image, mean, sd))
    inside = sitk.GetArrayFromImage(region) > 0
    assert normalised[inside].mean() == pytest.approx(0, abs=1e-5)
    assert normalised[inside].std() == pytest.approx(1, abs=1e-5)
    part = sitk.GetArrayFromImage(apply_zscore(crop(image, (5, 5, 2), (8, 8, 4)), mean, sd))
    assert np.array_equal(part, normalised[2:6, 5:13, 5:13])  # element-wise: crop == whole
    with pytest.raises(PreprocessError, match="has 1 voxel"):
        zscore_parameters(image, _mask(image, (1, 1, 1), (2, 2, 2)))
    flat = sitk.Image(image.GetSize(), sitk.sitkFloat32) + 3.0
    flat.CopyInformation(image)
    with pytest.raises(PreprocessError, match="constant intensity"):
        zscore_parameters(flat, region)


def test_n4_removes_a_smooth_multiplicative_bias() -> None:
    size = (48, 48, 16)
    _, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in size[::-1]], indexing="ij")
    body = (x**2 + y**2) <= 0.8
    rng = np.random.default_rng(3)
    truth = np.where(body, 100.0 + rng.normal(0, 2, body.shape), 0.0)
    bias = np.exp(0.4 * x + 0.2 * y)
    image = sitk.GetImageFromArray((truth * bias).astype(np.float32))
    corrected = sitk.GetArrayFromImage(
        n4_correct(image, N4Options(shrink_factor=2, iterations=(20, 20)))
    )
    def spread(values: np.ndarray) -> float:
        return float(values[body].std() / values[body].mean())
    assert spread(corrected) < 0.5 * spread(truth * bias)
