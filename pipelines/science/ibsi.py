"""Image processing as the IBSI 1 reference manual (Zwanenburg et al., arXiv:1612.07003, chapter 2)
defines it, where pyradiomics 3.1 does it differently; used by ``pipelines.science.features`` for
presets with an ``ibsi`` section (``pipelines.science.presets.IbsiOptions``):

* interpolation onto a grid centred on the original grid (section 2.4, "align grid centres"),
  intensities interpolated in floating point and, for CT, rounded to integers; masks interpolated
  linearly and kept at or above the partial-volume threshold (or by nearest neighbour);
* re-segmentation of the intensity mask by range and by outliers together (section 2.5);
* discretisation (section 2.7): fixed bin size counted from the re-segmentation range's lower
  bound, fixed bin number from the ROI's minimum, applied through pyradiomics' discretisation hook
  (``pipelines.science.radiomics_adapter.with_binning``);
* the aggregation of each texture family's matrices (section 3.6.2) as pyradiomics' ``force2D``
  (in-plane neighbourhood, slices merged: 2.5D) and ``weightingNorm`` (directions merged), and
  per slice (2D: the family run on each slice by itself, grey levels of the whole ROI, features
  averaged over the slices);
* the intensity-volume histogram features (section 3.5, ``pipelines.science.ivh``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk
from radiomics.base import RadiomicsFeaturesBase
from radiomics.featureextractor import RadiomicsFeatureExtractor, getFeatureClasses

from pipelines.io.series import Grid
from pipelines.science import ivh
from pipelines.science.preprocess import PreprocessError
from pipelines.science.presets import PER_SLICE_AGGREGATIONS, IbsiOptions, IbsiResegmentation
from pipelines.science.radiomics_adapter import with_binning
from pipelines.science.rois import RoiMask


def centred_grid(source: Grid, spacing: Sequence[float]) -> Grid:
    """The grid of ``spacing`` (0: the source's) whose centre is the source grid's centre (IBSI 1,
    section 2.4): per axis n_b = ceil(n_a s_a / s_b) voxels, origin shifted along the axis by
    (s_a (n_a - 1) - s_b (n_b - 1)) / 2; an axis whose spacing does not change keeps its voxels."""
    if len(spacing) != len(source.size):
        raise PreprocessError(
            f"resampledPixelSpacing {list(spacing)} has {len(spacing)} values; the image has "
            f"{len(source.size)} dimensions"
        )
    sizes, shifts, spacings = [], [], []
    for n_a, s_a, wanted in zip(source.size, source.spacing, spacing, strict=True):
        s_b = float(wanted) if wanted else s_a
        if math.isclose(s_a, s_b, rel_tol=1e-9):
            sizes.append(int(n_a))
            shifts.append(0.0)
            spacings.append(s_a)
            continue
        n_b = math.ceil(round(n_a * s_a / s_b, 9))
        sizes.append(n_b)
        shifts.append((s_a * (n_a - 1) - s_b * (n_b - 1)) / 2.0 / s_a)
        spacings.append(s_b)
    geometry = Grid(source.origin, source.spacing, source.direction, (1,) * len(source.size))
    origin = geometry.blank().TransformContinuousIndexToPhysicalPoint(shifts)
    return Grid(tuple(origin), tuple(spacings), source.direction, tuple(sizes))


def _resample(image: sitk.Image, target: Grid, interpolator: int, pixel_id: int) -> sitk.Image:
    return sitk.Resample(
        image, [int(n) for n in target.size], sitk.Transform(), interpolator, target.origin,
        target.spacing, target.direction, 0.0, pixel_id, True,  # nearest-neighbour extrapolation
    )


_TIE_DECIMALS = 6
"""Interpolated values are rounded to this many decimals before a tie is decided (rounding to
integers, the partial-volume threshold): a slice spacing read from slice positions carries
floating point error (the CT phantom's 3 mm reads 2.9999999999998486 mm), and where the new grid
falls half-way between slices it would decide ties that exact arithmetic (MIRP) leaves at .5."""


def interpolate_image(image: sitk.Image, target: Grid, interpolator: str,
                      round_intensities: bool) -> sitk.Image:
    """``image`` interpolated onto ``target`` in double precision (IBSI 1, section 2.4), points
    beyond the source's edge taken from its nearest voxel; rounded to the nearest integer (half
    to even, after :data:`_TIE_DECIMALS`) when ``round_intensities``."""
    result = _resample(sitk.Cast(image, sitk.sitkFloat64), target, getattr(sitk, interpolator),
                       sitk.sitkFloat64)
    if round_intensities:
        array = np.rint(np.round(sitk.GetArrayViewFromImage(result), _TIE_DECIMALS))
        rounded = sitk.GetImageFromArray(array)
        rounded.CopyInformation(result)
        return rounded
    return result


def interpolate_roi(roi: RoiMask, target: Grid, threshold: float | None) -> RoiMask:
    """The ROI on ``target``: its 0/1 mask (padded by one empty voxel, so that the fraction falls
    to 0 across its edge) interpolated linearly and kept where the fraction is at or above
    ``threshold`` (IBSI 1, section 2.4, partial-volume threshold; the fraction rounded to
    :data:`_TIE_DECIMALS` first), or by nearest neighbour when
    ``threshold`` is None; cut to the voxels it holds.

    Raises:
        PreprocessError: no voxel of ``target`` lies in the ROI.
    """
    padded = sitk.ConstantPad(roi.mask, [1] * roi.mask.GetDimension(),
                              [1] * roi.mask.GetDimension(), 0)
    if threshold is None:
        inside = _resample(padded, target, sitk.sitkNearestNeighbor, sitk.sitkUInt8)
    else:
        fraction = _resample(sitk.Cast(padded, sitk.sitkFloat64), target, sitk.sitkLinear,
                             sitk.sitkFloat64)
        kept = np.round(sitk.GetArrayViewFromImage(fraction), _TIE_DECIMALS) >= threshold
        inside = sitk.GetImageFromArray(kept.astype(np.uint8))
        inside.CopyInformation(fraction)
    where = np.nonzero(sitk.GetArrayViewFromImage(inside))
    if not where[0].size:
        raise PreprocessError(f"ROI {roi.name}: no voxel of the interpolated grid lies in it")
    lower = [int(axis.min()) for axis in where][::-1]  # x, y, z
    upper = [int(axis.max()) for axis in where][::-1]
    size = [u - lo + 1 for lo, u in zip(lower, upper, strict=True)]
    return RoiMask(roi.name, sitk.RegionOfInterest(inside, size, lower), tuple(lower))


def intensity_mask(image: np.ndarray, mask: np.ndarray,
                   resegmentation: IbsiResegmentation) -> np.ndarray:
    """The intensity mask (IBSI 1, section 2.5) of the boolean ROI ``mask`` on ``image``: voxels
    inside the range and within ``outlier_sigma`` SD of the ROI's mean (population SD over the
    ROI's voxels)."""
    values = image[mask]
    low, high = -np.inf, np.inf
    if resegmentation.range is not None:
        low = resegmentation.range[0] if resegmentation.range[0] is not None else low
        high = resegmentation.range[1] if resegmentation.range[1] is not None else high
    if resegmentation.outlier_sigma is not None and values.size:
        mean, sd = float(values.mean()), float(values.std())
        low = max(low, mean - resegmentation.outlier_sigma * sd)
        high = min(high, mean + resegmentation.outlier_sigma * sd)
    return mask & (image >= low) & (image <= high)


def resegments(resegmentation: IbsiResegmentation) -> bool:
    """Whether the re-segmentation changes anything."""
    return resegmentation.range is not None or resegmentation.outlier_sigma is not None


def grey_levels(values: np.ndarray, settings: dict[str, Any], lower_bound: float | None,
                extent: tuple[float, float] | None = None) -> np.ndarray:
    """IBSI 1 section 2.7 grey levels (1, 2, ...) of ``values``: fixed bin number
    (``binCount`` N_g) floor(N_g (X - X_min) / (X_max - X_min)) + 1, X_max in bin N_g; else fixed
    bin size (``binWidth`` w_b, pyradiomics' default 25) floor((X - X_min) / w_b) + 1 with X_min
    the re-segmentation range's lower bound ``lower_bound``, or the ROI's minimum without one.
    ``extent`` is the ROI's (minimum, maximum) where ``values`` are part of it (one slice);
    without it, that of ``values``."""
    bin_count = settings.get("binCount")
    minimum, maximum = extent if extent is not None else (float(values.min()),
                                                          float(values.max()))
    if bin_count is not None:
        spread = maximum - minimum
        if spread == 0:
            return np.ones(values.shape, dtype=int)
        levels = np.floor(bin_count * (values - minimum) / spread).astype(int) + 1
        return np.minimum(levels, bin_count)
    width = settings.get("binWidth", 25)
    start = lower_bound if lower_bound is not None else minimum
    return np.floor((values - start) / width).astype(int) + 1


def _with_ibsi_levels(feature_class: type[RadiomicsFeaturesBase], lower_bound: float | None,
                      extent: tuple[float, float] | None = None
                      ) -> type[RadiomicsFeaturesBase]:
    """``feature_class`` discretising with :func:`grey_levels` instead of pyradiomics' bins."""

    def apply_binning(self: RadiomicsFeaturesBase, matrix: np.ndarray) -> np.ndarray:
        levels = np.zeros(matrix.shape, dtype=int)
        levels[self.maskArray] = grey_levels(matrix[self.maskArray], self.settings, lower_bound,
                                             extent)
        self.coefficients["grayLevels"] = np.unique(levels[self.maskArray])
        # N_g of the whole ROI, where the array is one slice of it
        highest = (self.coefficients["grayLevels"] if extent is None else
                   grey_levels(np.array(extent), self.settings, lower_bound, extent))
        self.coefficients["Ng"] = int(np.max(highest))
        return levels

    return with_binning(feature_class, apply_binning)


_AGGREGATION_SETTINGS = {
    "3D_avg": {"force2D": False, "weightingNorm": None},
    "3D_mrg": {"force2D": False, "weightingNorm": "no_weighting"},
    "2.5D_d_mrg": {"force2D": True, "force2Ddimension": 0, "weightingNorm": None},
    "2.5D_v_mrg": {"force2D": True, "force2Ddimension": 0, "weightingNorm": "no_weighting"},
    "3D": {"force2D": False},
    "2.5D": {"force2D": True, "force2Ddimension": 0},
    "2D_avg": {"force2D": True, "force2Ddimension": 0, "weightingNorm": None},
    "2D_s_mrg": {"force2D": True, "force2Ddimension": 0, "weightingNorm": "no_weighting"},
    "2D": {"force2D": True, "force2Ddimension": 0},
}


def _per_slice(feature_class: type[RadiomicsFeaturesBase], image: sitk.Image, mask: sitk.Image,
               names: Sequence[str] | None, settings: dict[str, Any]) -> dict[str, float]:
    """IBSI 1 section 3.6.2 2D aggregation: ``feature_class`` (in-plane settings) on each slice
    that holds ROI voxels, by itself, and each feature averaged over those slices."""
    inside = sitk.GetArrayViewFromImage(mask) == 1
    per_slice = []
    for z in np.flatnonzero(inside.any(axis=(1, 2))):
        z = int(z)
        calculator = feature_class(image[:, :, z:z + 1], mask[:, :, z:z + 1], **settings)
        for name in names or []:
            calculator.enableFeatureByName(name)
        per_slice.append(calculator.execute())
    return {name: float(np.mean([values[name] for values in per_slice]))
            for name in per_slice[0]}


def compute_features(extractor: RadiomicsFeatureExtractor, image: sitk.Image, mask: sitk.Image,
                     image_type: str, settings: dict[str, Any], options: IbsiOptions
                     ) -> OrderedDict[str, Any]:
    """``extractor.computeFeatures`` with IBSI discretisation (the range's lower bound on the
    original image only: a filter's response is not in the range's unit) and each family's
    aggregation settings; keys and order as pyradiomics gives them, then, on the original image
    where ``options.ivh`` asks, the intensity-volume histogram's (``pipelines.science.ivh``) as
    ``original_ivh_<feature>``."""
    lower_bound = None
    if image_type == "original" and options.resegmentation.range is not None:
        lower_bound = options.resegmentation.range[0]
    classes = getFeatureClasses()
    inside = sitk.GetArrayViewFromImage(image)[sitk.GetArrayViewFromImage(mask) == 1]
    extent = (float(inside.min()), float(inside.max()))
    values: OrderedDict[str, Any] = OrderedDict()
    for class_name, names in extractor.enabledFeatures.items():
        if class_name.startswith("shape") or class_name not in classes:
            continue
        feature_class = classes[class_name]
        if options.discretisation == "ibsi":
            feature_class = _with_ibsi_levels(feature_class, lower_bound, extent)
        aggregation = options.texture_aggregation.get(class_name)
        kwargs = {**settings, **_AGGREGATION_SETTINGS.get(aggregation or "", {})}
        if aggregation in PER_SLICE_AGGREGATIONS:
            computed = _per_slice(feature_class, image, mask, names, kwargs)
        else:
            calculator = feature_class(image, mask, **kwargs)
            for name in names or []:
                calculator.enableFeatureByName(name)
            computed = calculator.execute()
        for name, value in computed.items():
            values[f"{image_type}_{class_name}_{name}"] = value
    if image_type == "original" and options.ivh is not None:
        for name, value in ivh.features(inside, options.ivh,
                                        options.resegmentation.range).items():
            values[f"{image_type}_ivh_{name}"] = value
    return values
