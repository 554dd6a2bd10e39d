"""Image checks around one ROI: noise, metal near the ROI, MR bias field.

All distances are millimetres on the physical grid (Euclidean distance transform with the voxel
spacing), measured in a box cropped around the ROI and the reference region so that a small lesion
in a large volume costs little.

Reference region: the voxels of ``reference`` (e.g. a liver segment) outside the ROI when the
caller has one; otherwise a shell around the ROI between the inner and outer distance of
``noise_ring_mm`` (noise) or ``bias_ring_mm`` (bias field). For CT it keeps only soft tissue
(``ct_tissue_hu_range``), leaving out air, fat and bone.

- Noise: the median, over the reference region, of the standard deviation in a 3 x 3 in-plane
  window around each voxel whose window lies wholly in the region. This is the local-SD approach of
  Christianson et al. (AJR 2015;205:W93-W99, "Automated technique to measure noise in clinical CT
  examinations"), who take the mode of the local-SD histogram in soft tissue; the median of small
  in-plane windows is used here because a lesion's shell holds too few voxels for a histogram mode.
  Windows stay within one slice, so slice thickness does not mix anatomy into the estimate.
- Metal: voxels at or above ``metal_hu`` within ``metal_distance_mm`` of the ROI (inside included).
  Dense cortical bone stays below about 2000 HU at 120 kV; metal saturates at 3000 HU and above.
- Bias field (MR): the reference region's intensity smoothed by a Gaussian of
  ``bias_smoothing_mm`` (normalised convolution: only region voxels enter the average), then the
  percent integral uniformity of the ACR MRI phantom test, PIU = 100 (1 - (high - low) /
  (high + low)), with high and low the 99th and 1st percentiles of the smoothed map (the ACR test
  takes the extreme means of 1 cm2 regions; percentiles keep single voxels from deciding).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from pipelines.science.qc.masks import bounding_box
from pipelines.science.qc.report import QCCheck, Status
from pipelines.science.qc.settings import QCSettings

_SCOPE = "roi"
_HU = "[hnsf'U]"


def crop_box(regions: list[np.ndarray], spacing_zyx: tuple[float, float, float],
             margin_mm: float) -> tuple[slice, slice, slice]:
    """Bounding box of the union of ``regions``, grown by ``margin_mm`` plus one voxel."""
    union = np.logical_or.reduce(regions)
    grow = [int(np.ceil(margin_mm / s)) + 1 for s in spacing_zyx]
    return tuple(  # type: ignore[return-value]
        slice(max(0, box.start - g), min(n, box.stop + g))
        for box, g, n in zip(bounding_box(union), grow, union.shape, strict=True))


def distance_outside(roi: np.ndarray, spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    """Distance in mm from each voxel to the nearest ROI voxel (0 inside the ROI)."""
    return ndimage.distance_transform_edt(~roi, sampling=spacing_zyx)


def reference_region(
    values: np.ndarray, roi: np.ndarray, distance: np.ndarray, ring_mm: tuple[float, float],
    reference: np.ndarray | None, modality: str, settings: QCSettings,
) -> tuple[np.ndarray, str]:
    """The voxels to measure the background in, and a phrase saying where they are."""
    if reference is not None:
        region, where = reference & ~roi, "the reference region outside the ROI"
    else:
        inner, outer = ring_mm
        region = (distance > inner) & (distance <= outer)
        where = f"a shell {inner:g} to {outer:g} mm around the ROI"
    if modality == "CT":
        low, high = settings.ct_tissue_hu_range
        region = region & (values >= low) & (values <= high)
        where += f", {low:g} to {high:g} HU"
    return region, where


def noise_check(values: np.ndarray, region: np.ndarray, where: str, modality: str,
                settings: QCSettings) -> QCCheck:
    """Median local standard deviation (3 x 3 in-plane windows) in ``region``."""
    unit = _HU if modality == "CT" else "1"
    window = (1, 3, 3)
    valid = ndimage.binary_erosion(region, structure=np.ones(window, dtype=bool))
    count = int(np.count_nonzero(valid))
    maximum = settings.ct_max_noise_hu if modality == "CT" else None
    rule = "" if maximum is None else f"<= {maximum:g} {unit}"
    if count < settings.min_reference_voxels:
        return QCCheck("image.noise", _SCOPE, "info", None, unit, rule,
                       f"only {count} windows fit in {where} (< {settings.min_reference_voxels}):"
                       " noise not estimated")
    data = values.astype(np.float64)
    mean = ndimage.uniform_filter(data, size=window)
    mean_sq = ndimage.uniform_filter(data * data, size=window)
    n = float(np.prod(window))
    local_var = np.clip(mean_sq[valid] - mean[valid] ** 2, 0.0, None) * n / (n - 1)
    sd = float(np.median(np.sqrt(local_var)))
    text = f"median local SD {sd:.3g} {unit} over {count} voxels in {where}"
    if maximum is None:
        return QCCheck("image.noise", _SCOPE, "info", sd, unit, "", text)
    ok = sd <= maximum
    return QCCheck("image.noise", _SCOPE, "pass" if ok else "warn", sd, unit, rule,
                   text + ("" if ok else f": above {maximum:g} {unit}"))


def metal_check(values: np.ndarray, distance: np.ndarray, settings: QCSettings) -> QCCheck:
    """Voxels at or above ``metal_hu`` within ``metal_distance_mm`` of the ROI (CT)."""
    near = distance <= settings.metal_distance_mm
    hot = near & (values >= settings.metal_hu)
    count = int(np.count_nonzero(hot))
    highest = float(values[near].max())
    status: Status = "warn" if count >= settings.metal_min_voxels else "pass"
    where = f"within {settings.metal_distance_mm:g} mm of the ROI"
    return QCCheck("image.metal", _SCOPE, status, count, "",
                   f"< {settings.metal_min_voxels} voxels >= {settings.metal_hu:g} {_HU}",
                   f"{count} voxels >= {settings.metal_hu:g} HU {where} (highest {highest:g} HU)"
                   + (": metal and its streaks may corrupt the features" if status == "warn"
                      else ""))


def bias_field_check(values: np.ndarray, region: np.ndarray, where: str,
                     spacing_zyx: tuple[float, float, float], field_strength_t: float | None,
                     settings: QCSettings) -> QCCheck:
    """Percent integral uniformity of the smoothed intensity in ``region`` (MR)."""
    count = int(np.count_nonzero(region))
    at_3t = field_strength_t is not None and field_strength_t >= 2.5
    minimum = settings.mr_min_piu_percent_3t if at_3t else settings.mr_min_piu_percent
    rule = "" if minimum is None else f">= {minimum:g} %"
    if count < settings.min_reference_voxels:
        return QCCheck("image.bias_field", _SCOPE, "info", None, "%", rule,
                       f"only {count} voxels in {where} (< {settings.min_reference_voxels}): "
                       "bias field not estimated")
    sigma = [settings.bias_smoothing_mm / s for s in spacing_zyx]
    weight = ndimage.gaussian_filter(region.astype(np.float64), sigma, mode="constant")
    summed = ndimage.gaussian_filter(np.where(region, values, 0.0).astype(np.float64), sigma,
                                     mode="constant")
    smoothed = summed[region] / weight[region]
    low, high = (float(v) for v in np.percentile(smoothed, [1, 99]))
    if low <= 0:
        return QCCheck("image.bias_field", _SCOPE, "info", None, "%", rule,
                       f"smoothed intensity reaches {low:g} in {where}: uniformity needs "
                       "positive intensities")
    piu = 100.0 * (1.0 - (high - low) / (high + low))
    text = (f"PIU {piu:.3g} % (smoothed intensity {low:.4g} to {high:.4g}, "
            f"{settings.bias_smoothing_mm:g} mm Gaussian) in {where}")
    if minimum is None:
        return QCCheck("image.bias_field", _SCOPE, "info", piu, "%", "", text)
    ok = piu >= minimum
    return QCCheck("image.bias_field", _SCOPE, "pass" if ok else "warn", piu, "%", rule,
                   text + ("" if ok else f": below {minimum:g} %, intensity non-uniformity"))
