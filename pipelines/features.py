"""Radiomics features of ROIs, computed by pyradiomics with a preset's parameter set.

The extractor is configured from ``Preset.radiomics`` exactly as pyradiomics reads a parameter
file (``RadiomicsFeatureExtractor(dict)``), so a preset and a pyradiomics parameter file with the
same content give the same values. :func:`extract_features` is plain pyradiomics on one ROI.
:func:`extract_lesions` computes the same values for many ROI variants of many lesions without
repeating work (issue 4, "Speed of extraction"):

* pyradiomics' whole-image steps (``normalize``) run once per image, not once per ROI;
* with resampling, each lesion's source is cropped with the interpolator's margin and resampled
  once onto the union of the grids pyradiomics builds for its ROI variants
  (``pipelines.preprocess.pyradiomics_grid``, same lattice, same origin arithmetic), instead of
  interpolating the whole volume per ROI; each variant's window is then cut from that union and
  its mask is sampled from the full-grid mask exactly as pyradiomics samples it;
* filtered images (LoG, wavelet, ...) are computed once per window and shared by the ROI
  variants whose pyradiomics window is the same (e.g. a ring and intra + the same ring). Variants
  with different windows get their own: pyradiomics filters the window it resampled, and the
  recursive Gaussian of its LoG and the periodic wavelet depend on the window's extent, so sharing
  them across windows would change the values (docs/presets.md, "Speed");
* without resampling pyradiomics filters the whole image, so the pipeline filters it once for
  all lesions and ROI variants and crops the filtered images around each lesion;
* lesions run in parallel processes when ``workers`` > 1.

Feature definitions follow IBSI 1 (Zwanenburg et al., Radiology 2020) where pyradiomics does;
``pipelines.codes`` records where it does not.

Logging: pyradiomics installs its own stderr handler on the ``radiomics`` logger and logs every
extraction step at INFO. On import this module silences that handler and raises the logger to
WARNING; warnings and errors still propagate to the application's handlers.
"""

from __future__ import annotations

import copy
import logging
import multiprocessing
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import radiomics
import SimpleITK as sitk
from radiomics import generalinfo, imageoperations
from radiomics.featureextractor import RadiomicsFeatureExtractor

from pipelines.preprocess import (
    Grid,
    Window,
    apply_zscore,
    crop,
    pyradiomics_grid,
    resample,
    resampling_enabled,
    source_region_for,
    union_grid,
)
from pipelines.presets import Preset
from pipelines.rois import RoiMask

radiomics.setVerbosity(60)  # 60: pyradiomics' "quiet" level for its own stderr handler
logging.getLogger("radiomics").setLevel(logging.WARNING)

_DIAGNOSTICS_PREFIX = "diagnostics_"


class FeatureError(ValueError):
    """pyradiomics refused the image/mask pair, or returned a value that is not a number."""


@dataclass(frozen=True)
class RoiFeatures:
    """Feature values of one ROI and pyradiomics' diagnostics of the extraction."""

    values: dict[str, float]  # pyradiomics keys, e.g. "original_glcm_Contrast"
    diagnostics: dict[str, str]  # "diagnostics_*" keys, values as text


def _extractor(radiomics_params: dict[str, Any]) -> RadiomicsFeatureExtractor:
    with warnings.catch_warnings():
        # pykwalify loads pyradiomics' schema functions with the deprecated load_module().
        warnings.simplefilter("ignore", DeprecationWarning)
        return RadiomicsFeatureExtractor(copy.deepcopy(radiomics_params))


def _as_features(result: dict[str, Any], where: str) -> RoiFeatures:
    values: dict[str, float] = {}
    diagnostics: dict[str, str] = {}
    for key, value in result.items():
        if key.startswith(_DIAGNOSTICS_PREFIX):
            diagnostics[key] = str(value)
            continue
        try:
            values[key] = float(value)
        except (TypeError, ValueError) as exc:
            raise FeatureError(f"{where}: {key}: not a number ({value!r})") from exc
    return RoiFeatures(values=values, diagnostics=diagnostics)


def extract_features(
    image: sitk.Image, mask: sitk.Image, preset: Preset, label: int = 1
) -> RoiFeatures:
    """Compute the preset's features of the voxels of ``mask`` equal to ``label``.

    ``label`` overrides any ``setting.label`` of the preset: the ROI is chosen by the caller.
    Raises :class:`FeatureError` naming the preset and label when pyradiomics refuses the ROI
    (e.g. too few voxels, mask and image geometry differ) or a value cannot be read as a float.
    """
    extractor = _extractor(preset.radiomics)
    try:
        result = extractor.execute(image, mask, label=label)
    except (ValueError, RuntimeError, IndexError) as exc:
        raise FeatureError(f"preset {preset.name}, label {label}: pyradiomics: {exc}") from exc
    return _as_features(result, f"preset {preset.name}, label {label}")


FilteredImage = tuple[sitk.Image, str, dict[str, Any]]  # pyradiomics image-type generator item


@dataclass(frozen=True)
class LesionJob:
    """One lesion's inputs, small enough to send to a worker process.

    ``rois`` are on regions of the ``source`` grid; ``image`` is the region of the (preprocessed)
    source at ``image_index``. With resampling it holds what interpolation onto every window
    reads; without, it holds every ROI, and ``filtered`` holds pyradiomics' image types computed
    on the whole source and cropped like ``image``.
    """

    source: Grid
    image_index: tuple[int, ...]
    image: sitk.Image
    filtered: tuple[FilteredImage, ...] | None
    rois: tuple[RoiMask, ...]
    windows: tuple[Window, ...]  # pyradiomics' window of each ROI, in ``rois`` order


def _roi_box(roi: RoiMask) -> tuple[list[int], list[int]]:
    """Bounding box (index on the source grid, size) of the ROI's voxels, as pyradiomics'
    LabelShapeStatisticsImageFilter gives it."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(roi.mask)
    dimension = roi.mask.GetDimension()
    box = stats.GetBoundingBox(1)
    return [i + o for i, o in zip(box[:dimension], roi.index, strict=True)], list(box[dimension:])


def _index_on(source: Grid, point: Sequence[float]) -> list[int]:
    """Index of a voxel centre of the ``source`` lattice."""
    geometry = Grid(source.origin, source.spacing, source.direction, (1,) * len(source.size))
    return list(geometry.blank().TransformPhysicalPointToIndex(point))


def _paste_box(roi: RoiMask, region: Grid, region_index: Sequence[int]) -> sitk.Image:
    """The ROI's mask on ``region``, a region of the source grid starting at ``region_index``."""
    lower, size = _roi_box(roi)
    return sitk.Paste(
        region.blank(),
        roi.mask,
        size,
        [lo - i for lo, i in zip(lower, roi.index, strict=True)],
        [lo - r for lo, r in zip(lower, region_index, strict=True)],
    )


def _image_types(
    extractor: RadiomicsFeatureExtractor, image: sitk.Image, settings: dict[str, Any]
) -> list[FilteredImage]:
    """pyradiomics' image types of ``image``, as ``execute`` builds them (step 6). The generators
    pyradiomics ships ignore the mask argument."""
    items: list[FilteredImage] = []
    for image_type, custom in extractor.enabledImagetypes.items():
        generator = getattr(imageoperations, f"get{image_type}Image")
        items.extend(generator(image, None, **{**settings, **custom}))
    return items


def _roi_features(
    extractor: RadiomicsFeatureExtractor,
    settings: dict[str, Any],
    image: sitk.Image,
    mask: sitk.Image,
    images: Iterable[FilteredImage],
    where: str,
) -> RoiFeatures:
    """pyradiomics ``execute`` steps 2 to 6 on an already loaded window, with its image types
    given (computed once for all ROIs of the window)."""
    try:
        mask = imageoperations.getMask(mask, **settings)
        box, _ = imageoperations.checkMask(image, mask, **settings)
        info = generalinfo.GeneralInfo()
        info.addGeneralSettings(settings)
        info.addEnabledImageTypes(extractor.enabledImagetypes)
        info.addMaskElements(image, mask, 1)
        resegmented = None
        if settings.get("resegmentRange") is not None:
            resegmented = imageoperations.resegmentMask(image, mask, **settings)
            box, _ = imageoperations.checkMask(image, resegmented, **settings)
            info.addMaskElements(image, resegmented, 1, "resegmented")
        result: dict[str, Any] = dict(info.getGeneralInfo())
        if settings.get("resegmentShape", False) and resegmented is not None:
            mask = resegmented
        result.update(extractor.computeShape(image, mask, box, **settings))
        if resegmented is not None:
            mask = resegmented
        for filtered, name, kwargs in images:
            cropped, cropped_mask = imageoperations.cropToTumorMask(filtered, mask, box)
            result.update(extractor.computeFeatures(cropped, cropped_mask, name, **kwargs))
    except (ValueError, RuntimeError, IndexError) as exc:
        raise FeatureError(f"{where}: pyradiomics: {exc}") from exc
    return _as_features(result, where)


def _window_settings(preset: Preset) -> dict[str, Any]:
    """The preset's settings for a window that is already resampled and normalised."""
    settings = RadiomicsFeatureExtractor._getDefaultSettings()
    settings.update(preset.settings)
    settings.update(label=1, normalize=False, resampledPixelSpacing=None)
    return settings


def _interpolated_mask(
    roi: RoiMask, source: Grid, window: Grid, threshold: float | None
) -> sitk.Image:
    """The ROI's mask on an interpolated window: nearest neighbour from the full-grid mask, with
    the same arithmetic as pyradiomics' ``resampleImage``; or, with a partial-volume threshold,
    linear interpolation of the 0/1 mask kept at or above the threshold (IBSI 1, section 2.4)."""
    if threshold is None:
        full = sitk.Paste(
            source.blank(), roi.mask, roi.mask.GetSize(), [0] * len(roi.index), list(roi.index)
        )
        return resample(full, window, sitk.sitkNearestNeighbor)
    fraction = resample(sitk.Cast(roi.mask, sitk.sitkFloat32), window, sitk.sitkLinear)
    return sitk.Cast(fraction >= threshold, sitk.sitkUInt8)


def _extract_lesion(job: LesionJob, preset: Preset, where: str) -> dict[str, RoiFeatures]:
    """Features of every ROI variant of one lesion (module docstring)."""
    settings = _window_settings(preset)
    extractor = _extractor({**preset.radiomics, "setting": settings})
    results: dict[str, RoiFeatures] = {}

    if job.filtered is not None:
        region = Grid.of(job.image)
        for roi in job.rois:
            mask = _paste_box(roi, region, job.image_index)
            results[roi.name] = _roi_features(
                extractor, settings, job.image, mask, job.filtered, f"{where}, ROI {roi.name}"
            )
        return results

    members: dict[Grid, list[tuple[RoiMask, Window]]] = {}
    for roi, window in zip(job.rois, job.windows, strict=True):
        members.setdefault(window.grid, []).append((roi, window))
    unions: dict[tuple[float, ...], tuple[Grid, sitk.Image]] = {}
    for spacing in {grid.spacing for grid, m in members.items() if m[0][1].interpolated}:
        union, _ = union_grid(
            [g for g, m in members.items() if m[0][1].interpolated and g.spacing == spacing]
        )
        interpolator = settings.get("interpolator", "sitkBSpline")
        unions[spacing] = (union, resample(job.image, union, interpolator))
    threshold = preset.preprocessing.mask_partial_volume_threshold
    for grid, group in members.items():
        if group[0][1].interpolated:
            union, union_image = unions[grid.spacing]
            _, (_, offset) = union_grid([union, grid])
            image = crop(union_image, offset, grid.size)
            image.SetOrigin(grid.origin)
            masks = [_interpolated_mask(roi, job.source, grid, threshold) for roi, _ in group]
        else:
            region_index = _index_on(job.source, grid.origin)
            offset = [r - i for r, i in zip(region_index, job.image_index, strict=True)]
            image = crop(job.image, offset, grid.size)
            masks = [_paste_box(roi, grid, region_index) for roi, _ in group]
        images = _image_types(extractor, image, settings)
        for (roi, _), mask in zip(group, masks, strict=True):
            results[roi.name] = _roi_features(
                extractor, settings, image, mask, images, f"{where}, ROI {roi.name}"
            )
    return {roi.name: results[roi.name] for roi in job.rois}


def _region_of(boxes: Sequence[tuple[Sequence[int], Sequence[int]]]) -> tuple[list[int], list[int]]:
    lower = np.min([b[0] for b in boxes], axis=0)
    upper = np.max([np.add(b[0], b[1]) for b in boxes], axis=0)
    return lower.tolist(), (upper - lower).tolist()


def _run(job: LesionJob, preset: Preset, where: str) -> dict[str, RoiFeatures]:
    radiomics.setVerbosity(60)
    logging.getLogger("radiomics").setLevel(logging.WARNING)
    return _extract_lesion(job, preset, where)


def extract_lesions(
    image: sitk.Image,
    lesions: Sequence[Sequence[RoiMask]],
    preset: Preset,
    *,
    zscore: Sequence[tuple[float, float] | None] | None = None,
    workers: int = 1,
    names: Sequence[str] | None = None,
) -> list[dict[str, RoiFeatures]]:
    """Features of every ROI variant of every lesion: the values plain pyradiomics gives for
    ``extract_features(image, on_full_grid(roi, image), preset)`` (to 1e-6 relative; see the
    module docstring for how work is shared).

    ``zscore`` gives, per lesion, (mean, SD) to normalise the image with before extraction
    (preprocessing.zscore with the ROI as reference), or None. ``names`` label the lesions in
    error messages. ``workers`` > 1 runs lesions in that many processes.

    Raises:
        FeatureError: pyradiomics refused a ROI; the message names lesion and ROI variant.
    """
    settings = preset.settings
    if settings.get("normalize", False):
        image = imageoperations.normalizeImage(image, **settings)
    source = Grid.of(image)
    zscore = list(zscore) if zscore is not None else [None] * len(lesions)
    names = list(names) if names is not None else [f"lesion {n}" for n in range(len(lesions))]
    resampled = resampling_enabled(settings)
    whole_filtered: dict[tuple[float, float] | None, list[FilteredImage]] = {}
    jobs = []
    for rois, affine in zip(lesions, zscore, strict=True):
        boxes = [_roi_box(roi) for roi in rois]
        windows = tuple(pyradiomics_grid(source, lo, size, settings) for lo, size in boxes)
        if resampled:
            interpolator = settings.get("interpolator", "sitkBSpline")
            regions = [
                source_region_for(source, w.grid, interpolator)
                if w.interpolated
                else (_index_on(source, w.grid.origin), list(w.grid.size))
                for w in windows
            ]
            index, size = _region_of(regions)
            filtered = None
        else:
            index, size = _region_of(boxes)
            filtered = None
            if _uses_filters(preset):
                if affine not in whole_filtered:
                    whole = apply_zscore(image, *affine) if affine is not None else image
                    whole_filtered[affine] = _image_types(
                        _extractor(preset.radiomics), whole, _window_settings(preset)
                    )
                filtered = tuple(
                    (crop(item, index, size), name, kwargs)
                    for item, name, kwargs in whole_filtered[affine]
                )
        region = crop(image, index, size)
        if affine is not None:
            region = apply_zscore(region, *affine)
        if not resampled and filtered is None:
            filtered = tuple(_image_types(_extractor(preset.radiomics), region,
                                          _window_settings(preset)))
        jobs.append(LesionJob(source, tuple(index), region, filtered, tuple(rois), windows))

    if workers <= 1 or len(jobs) <= 1:
        return [_extract_lesion(job, preset, name) for job, name in zip(jobs, names, strict=True)]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return list(pool.map(_run, jobs, [preset] * len(jobs), names))


def _uses_filters(preset: Preset) -> bool:
    """Whether the preset enables an image type other than Original."""
    return any(name != "Original" for name in preset.radiomics.get("imageType") or {})
