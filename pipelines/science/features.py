"""Radiomics features of ROIs, computed by pyradiomics with a preset's parameter set.

The extractor is configured from ``Preset.radiomics`` exactly as pyradiomics reads a parameter
file (``RadiomicsFeatureExtractor(dict)``), so a preset and a pyradiomics parameter file with the
same content give the same values. :func:`extract_features` is plain pyradiomics on one ROI.
:func:`extract_lesions` computes the same values for many ROI variants of many lesions without
repeating work (issue 4, "Speed of extraction"):

* pyradiomics' whole-image steps (``normalize``) run once per image, not once per ROI;
* with resampling, each lesion's source is cropped with the interpolator's margin and resampled
  once onto the union of the grids pyradiomics builds for its ROI variants
  (``pipelines.science.preprocess.pyradiomics_grid``, same lattice, same origin arithmetic), instead
  of interpolating the whole volume per ROI; each variant's window is then cut from that union and
  its mask is sampled from the full-grid mask exactly as pyradiomics samples it;
* filtered images (LoG, wavelet, ...) are computed once per window and shared by the ROI
  variants whose pyradiomics window is the same (e.g. a ring and intra + the same ring). Variants
  with different windows get their own: pyradiomics filters the window it resampled, and the
  recursive Gaussian of its LoG and the periodic wavelet depend on the window's extent, so sharing
  them across windows would change the values (docs/presets.md, "Speed");
* without resampling pyradiomics filters the whole image, so the pipeline filters it once for
  all lesions and ROI variants and crops the filtered images around each lesion;
* the work is split into one task per lesion and image type (LoG: per sigma), each computing
  that image type's features of all the lesion's ROI variants on arrays (no SimpleITK object
  crosses a process boundary), merged back into pyradiomics' keys and order; the tasks are a
  step of a plan (:func:`features_plan`, ``pipelines.plan``) that whoever runs the plan maps
  where it likes (this process, the node's task processes or its Dask cluster).

Feature definitions follow IBSI 1 (Zwanenburg et al., Radiology 2020) where pyradiomics does;
``pipelines.outputs.codes`` records where it does not.

Logging: pyradiomics installs its own stderr handler on the ``radiomics`` logger and logs every
extraction step at INFO. On import this module silences that handler and raises the logger to
WARNING; warnings and errors still propagate to the application's handlers.
"""

from __future__ import annotations

import copy
import logging
import pickle
import warnings
from collections import OrderedDict
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import radiomics
import SimpleITK as sitk
from radiomics import generalinfo, imageoperations
from radiomics.featureextractor import RadiomicsFeatureExtractor, getFeatureClasses

from pipelines.plan import Tasks, run_tasks
from pipelines.science import ibsi
from pipelines.science.preprocess import (
    Grid,
    PreprocessError,
    Window,
    apply_zscore,
    crop,
    pyradiomics_grid,
    resample,
    resampling_enabled,
    source_region_for,
    union_grid,
)
from pipelines.science.presets import IbsiOptions, Preset
from pipelines.science.radiomics_adapter import default_settings, set_tolerance
from pipelines.science.rois import RoiMask

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


Extractor = TypeVar("Extractor", bound=RadiomicsFeatureExtractor)
_VALIDATED: OrderedDict[tuple[type, bytes], RadiomicsFeatureExtractor] = OrderedDict()
VALIDATED_KEPT = 64  # extractors kept per process, least recently used dropped first


def validated_extractor(radiomics_params: dict[str, Any], kind: type[Extractor]) -> Extractor:
    """A pyradiomics extractor of class ``kind`` with ``radiomics_params``, a copy of one made
    once per process, class and parameters: the constructor
    validates the parameters against pyradiomics' schema with pykwalify, 11 ms each time,
    which a job paid once per feature and map task (about 1.5 s on the demo study); the
    ``VALIDATED_KEPT`` most recently used are kept (presets change over a worker's life). The copy
    has the same settings, image types and features, and sets SimpleITK's geometry tolerance
    as the constructor does (``geometryTolerance``, a process-wide setting)."""
    key = (kind, pickle.dumps(radiomics_params, protocol=5))
    if key not in _VALIDATED:
        with warnings.catch_warnings():
            # pykwalify loads pyradiomics' schema functions with the deprecated load_module().
            warnings.simplefilter("ignore", DeprecationWarning)
            _VALIDATED[key] = kind(copy.deepcopy(radiomics_params))
        while len(_VALIDATED) > VALIDATED_KEPT:  # presets edited over a worker's life
            _VALIDATED.popitem(last=False)
    _VALIDATED.move_to_end(key)
    extractor = copy.deepcopy(_VALIDATED[key])
    set_tolerance(extractor)
    return extractor  # type: ignore[return-value]  # _VALIDATED[key] is a kind


def _extractor(radiomics_params: dict[str, Any]) -> RadiomicsFeatureExtractor:
    return validated_extractor(radiomics_params, RadiomicsFeatureExtractor)


def _as_features(result: dict[str, Any], where: str) -> RoiFeatures:
    values: dict[str, float] = {}
    diagnostics: dict[str, str] = {}
    for key, value in result.items():
        if key.startswith(_DIAGNOSTICS_PREFIX):
            diagnostics[key] = str(value)
            continue
        values[key] = _real(value, f"{where}: {key}")
    return RoiFeatures(values=values, diagnostics=diagnostics)


_IMAGINARY_TOLERANCE = 1e-9
"""Largest imaginary part, relative to the value's size, taken for rounding."""


def _real(value: Any, where: str) -> float:
    """``value`` as a float. With NumPy 2.5.2 some pyradiomics values arrive as NumPy complex
    numbers (a ComplexWarning on every job; its ``numpy.linalg.eigvals``, for the shape axes and
    GLCM MCC, can give them), and ``float()`` of one keeps the real part with only a warning. A
    value whose imaginary part is more than rounding (:data:`_IMAGINARY_TOLERANCE` of its size)
    is refused instead of being reported as a real number."""
    if np.iscomplexobj(value):
        real, imaginary = float(np.real(value)), float(np.imag(value))
        if abs(imaginary) > _IMAGINARY_TOLERANCE * max(1.0, abs(real)):
            raise FeatureError(f"{where}: not a real number ({value!r})")
        value = real
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise FeatureError(f"{where}: not a number ({value!r})") from exc


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
class ArrayImage:
    """A SimpleITK image as a NumPy array (z, y, x) and its geometry: the form in which images
    travel to other processes and machines (no SimpleITK object is pickled; with pickle
    protocol 5, as Dask uses it, the array's buffer is sent as it is)."""

    array: np.ndarray
    origin: tuple[float, ...]
    spacing: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> ArrayImage:
        """The pixels and geometry of ``image``, copied."""
        return cls(sitk.GetArrayFromImage(image), image.GetOrigin(), image.GetSpacing(),
                   image.GetDirection())

    def image(self) -> sitk.Image:
        """The SimpleITK image again: the same pixel type, values and geometry."""
        image = sitk.GetImageFromArray(self.array)
        image.SetOrigin(self.origin)
        image.SetSpacing(self.spacing)
        image.SetDirection(self.direction)
        return image


@dataclass(frozen=True)
class ImageTypeUnit:
    """One pyradiomics image type (``imageType`` entry) with its custom settings; LoG with one
    sigma, as ``getLoGImage`` filters each sigma on its own."""

    image_type: str
    custom: dict[str, Any]


@dataclass(frozen=True)
class WindowData:
    """One pyradiomics window of a lesion, ready for the feature classes: the (normalised,
    resampled) image, each ROI variant's mask on it, and, without resampling, the task's image
    types computed on the whole image and cropped to the window (None: computed from ``image``)."""

    image: ArrayImage
    masks: tuple[tuple[str, ArrayImage], ...]  # (ROI variant name, 0/1 mask)
    filtered: tuple[tuple[ArrayImage, str, dict[str, Any]], ...] | None


@dataclass(frozen=True)
class FeatureTask:
    """The unit of work of :func:`features_plan`: one image type of one lesion, for every ROI
    variant of that lesion. ``head`` tasks (one per lesion) also compute pyradiomics' general
    diagnostics and the shape features, which do not depend on the image type; ``unit`` None
    is a head task of a preset whose image types yield no image."""

    preset: Preset
    where: str  # the lesion, for error messages
    unit: ImageTypeUnit | None
    head: bool
    windows: tuple[WindowData, ...]


TaskResult = dict[str, dict[str, Any]]  # ROI variant name -> pyradiomics keys and values
@dataclass(frozen=True)
class LesionJob:
    """One lesion's inputs as cut from the source image.

    ``rois`` are on regions of the ``source`` grid; ``image`` is the region of the (preprocessed)
    source at ``image_index``. With resampling it holds what interpolation onto every window
    reads; without, it holds every ROI, and ``filtered`` holds, per :class:`ImageTypeUnit`,
    pyradiomics' images computed on the whole source and cropped like ``image`` (None: no image
    type other than Original).
    """

    source: Grid
    image_index: tuple[int, ...]
    image: sitk.Image
    filtered: tuple[tuple[FilteredImage, ...], ...] | None
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


def _units(preset: Preset) -> list[ImageTypeUnit]:
    """The preset's image types in pyradiomics' order, LoG split into one unit per sigma."""
    settings = _window_settings(preset)
    units: list[ImageTypeUnit] = []
    for image_type, custom in _extractor(preset.radiomics).enabledImagetypes.items():
        if image_type == "LoG":
            sigmas = {**settings, **custom}.get("sigma", [])
            units.extend(ImageTypeUnit(image_type, {**custom, "sigma": [s]}) for s in sigmas)
        else:
            units.append(ImageTypeUnit(image_type, dict(custom)))
    return units


def _unit_images(
    unit: ImageTypeUnit | None, image: sitk.Image, settings: dict[str, Any]
) -> list[FilteredImage]:
    """pyradiomics' images of one image type of ``image``, as ``execute`` builds them (step 6).
    The generators pyradiomics ships ignore the mask argument."""
    if unit is None:
        return []
    generator = getattr(imageoperations, f"get{unit.image_type}Image")
    return list(generator(image, None, **{**settings, **unit.custom}))


def _roi_values(
    extractor: RadiomicsFeatureExtractor,
    settings: dict[str, Any],
    image: sitk.Image,
    mask: sitk.Image,
    images: Iterable[FilteredImage],
    head: bool,
    where: str,
    options: IbsiOptions | None = None,
) -> dict[str, Any]:
    """pyradiomics ``execute`` steps 2 to 6 on an already loaded window, with the images of some
    of its image types given; general diagnostics and shape only when ``head``. With IBSI
    ``options``, their re-segmentation, discretisation and texture aggregation
    (``pipelines.science.ibsi``)."""
    try:
        mask = imageoperations.getMask(mask, **settings)
        box, _ = imageoperations.checkMask(image, mask, **settings)
        info = generalinfo.GeneralInfo() if head else None
        if info is not None:
            info.addGeneralSettings(settings)
            info.addEnabledImageTypes(extractor.enabledImagetypes)
            info.addMaskElements(image, mask, 1)
        # pyradiomics crops the shape's mask to the re-segmented box; IBSI morphology is of
        # the whole morphological mask (IBSI 1, section 2.5)
        shape_box = box
        resegmented = None
        if settings.get("resegmentRange") is not None:
            resegmented = imageoperations.resegmentMask(image, mask, **settings)
        elif options is not None and ibsi.resegments(options.resegmentation):
            resegmented = _ibsi_intensity_mask(image, mask, options)
        if resegmented is not None:
            box, _ = imageoperations.checkMask(image, resegmented, **settings)
            if info is not None:
                info.addMaskElements(image, resegmented, 1, "resegmented")
        result: dict[str, Any] = {}
        if info is not None:
            result.update(info.getGeneralInfo())
            if settings.get("resegmentShape", False) and resegmented is not None:
                result.update(extractor.computeShape(image, resegmented, box, **settings))
            else:
                result.update(extractor.computeShape(
                    image, mask, box if options is None else shape_box, **settings))
        if resegmented is not None:
            mask = resegmented
        for filtered, name, kwargs in images:
            cropped, cropped_mask = imageoperations.cropToTumorMask(filtered, mask, box)
            if options is None:
                result.update(extractor.computeFeatures(cropped, cropped_mask, name, **kwargs))
            else:
                result.update(ibsi.compute_features(extractor, cropped, cropped_mask, name,
                                                    kwargs, options))
    except (ValueError, RuntimeError, IndexError) as exc:
        raise FeatureError(f"{where}: pyradiomics: {exc}") from exc
    return result


def _ibsi_intensity_mask(image: sitk.Image, mask: sitk.Image, options: IbsiOptions
                         ) -> sitk.Image:
    """The IBSI intensity mask (``pipelines.science.ibsi.intensity_mask``) as a 0/1 image like
    ``mask``.

    Raises:
        ValueError: no voxel is left (pyradiomics' words for its own re-segmentation).
    """
    inside = ibsi.intensity_mask(sitk.GetArrayViewFromImage(image),
                                 sitk.GetArrayViewFromImage(mask) == 1, options.resegmentation)
    if not inside.any():
        raise ValueError("no voxel left in the ROI after IBSI re-segmentation")
    resegmented = sitk.GetImageFromArray(inside.astype(np.uint8))
    resegmented.CopyInformation(mask)
    return resegmented


def _window_settings(preset: Preset) -> dict[str, Any]:
    """The preset's settings for a window that is already resampled and normalised."""
    settings = default_settings()
    settings.update(preset.settings)
    settings.update(label=1, normalize=False, resampledPixelSpacing=None)
    return settings


FEATURE_KEYS_CUBE = 24  # voxels per side of the image pyradiomics' filters name their images on


def feature_keys(preset: Preset) -> list[str]:
    """The feature keys an extraction with ``preset`` gives (``<image type>_<class>_<feature>``,
    as in :class:`RoiFeatures`), without extracting: the names of the filtered images are those
    pyradiomics' own image-type generators give on a small noise cube (one LoG image per sigma,
    one per wavelet decomposition, ...), the features those the preset enables per class (all
    but the deprecated ones where it lists none), shape on the original image only, as
    ``RadiomicsFeatureExtractor.execute`` computes it. For what a process prepares before its
    first job (``pipelines.outputs.feature_report.prepare_report``)."""
    extractor = _extractor(preset.radiomics)
    settings = _window_settings(preset)
    cube = sitk.GetImageFromArray(np.random.default_rng(0).normal(
        100.0, 20.0, (FEATURE_KEYS_CUBE,) * 3))
    image_types = [name for unit in _units(preset)
                   for _, name, _ in _unit_images(unit, cube, settings)]
    classes = getFeatureClasses()
    keys = []
    for image_type in image_types:
        for class_name, enabled in extractor.enabledFeatures.items():
            if class_name.startswith("shape") and image_type != "original":
                continue
            names = enabled or [name for name, deprecated
                                in classes[class_name].getFeatureNames().items()
                                if not deprecated]
            keys += [f"{image_type}_{class_name}_{name}" for name in names]
    return keys


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


def _lesion_windows(
    job: LesionJob, preset: Preset
) -> list[tuple[sitk.Image, list[tuple[str, sitk.Image]], tuple[tuple[FilteredImage, ...], ...]
                | None]]:
    """The windows pyradiomics computes the lesion's ROI variants on (module docstring): image,
    (ROI name, mask) pairs and, without resampling, the per-unit filtered crops."""
    if not resampling_enabled(preset.settings):
        region = Grid.of(job.image)
        masks = [(roi.name, _paste_box(roi, region, job.image_index)) for roi in job.rois]
        return [(job.image, masks, job.filtered)]

    settings = _window_settings(preset)
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
    windows = []
    for grid, group in members.items():
        if group[0][1].interpolated:
            union, union_image = unions[grid.spacing]
            _, (_, offset) = union_grid([union, grid])
            image = crop(union_image, offset, grid.size)
            image.SetOrigin(grid.origin)
            masks = [(roi.name, _interpolated_mask(roi, job.source, grid, threshold))
                     for roi, _ in group]
        else:
            region_index = _index_on(job.source, grid.origin)
            offset = [r - i for r, i in zip(region_index, job.image_index, strict=True)]
            image = crop(job.image, offset, grid.size)
            masks = [(roi.name, _paste_box(roi, grid, region_index)) for roi, _ in group]
        windows.append((image, masks, None))
    return windows


def _lesion_tasks(job: LesionJob, preset: Preset, units: Sequence[ImageTypeUnit],
                  where: str) -> list[FeatureTask]:
    """One task per image type unit of the lesion (a single head task when there is none),
    every window converted to arrays once and shared by the tasks."""
    windows = [
        (ArrayImage.of(image), tuple((name, ArrayImage.of(mask)) for name, mask in masks),
         filtered)
        for image, masks, filtered in _lesion_windows(job, preset)
    ]
    tasks = []
    for number, unit in enumerate(units or [None]):
        data = tuple(
            WindowData(image, masks, None if filtered is None or unit is None else tuple(
                (ArrayImage.of(item), name, kwargs) for item, name, kwargs in filtered[number]))
            for image, masks, filtered in windows
        )
        tasks.append(FeatureTask(preset, where, unit, number == 0, data))
    return tasks


def run_feature_task(task: FeatureTask) -> TaskResult:
    """Compute one task (in any process, on any machine with this package): pyradiomics keys and
    values of each of the lesion's ROI variants for the task's image type."""
    radiomics.setVerbosity(60)
    logging.getLogger("radiomics").setLevel(logging.WARNING)
    settings = _window_settings(task.preset)
    extractor = _extractor({**task.preset.radiomics, "setting": settings})
    results: TaskResult = {}
    for window in task.windows:
        image = window.image.image()
        if window.filtered is None:
            images = _unit_images(task.unit, image, settings)
        else:
            images = [(item.image(), name, kwargs) for item, name, kwargs in window.filtered]
        for name, mask in window.masks:
            results[name] = _roi_values(extractor, settings, image, mask.image(), images,
                                        task.head, f"{task.where}, ROI {name}", task.preset.ibsi)
    return results


def _region_of(boxes: Sequence[tuple[Sequence[int], Sequence[int]]]) -> tuple[list[int], list[int]]:
    lower = np.min([b[0] for b in boxes], axis=0)
    upper = np.max([np.add(b[0], b[1]) for b in boxes], axis=0)
    return lower.tolist(), (upper - lower).tolist()


def extract_lesions(
    image: sitk.Image,
    lesions: Sequence[Sequence[RoiMask]],
    preset: Preset,
    *,
    zscore: Sequence[tuple[float, float] | None] | None = None,
    names: Sequence[str] | None = None,
) -> list[dict[str, RoiFeatures]]:
    """:func:`features_plan` run in this process, task after task.

    Raises:
        FeatureError: as :func:`features_plan`.
    """
    return run_tasks(features_plan(image, lesions, preset, zscore=zscore, names=names))


def features_plan(
    image: sitk.Image,
    lesions: Sequence[Sequence[RoiMask]],
    preset: Preset,
    *,
    zscore: Sequence[tuple[float, float] | None] | None = None,
    names: Sequence[str] | None = None,
) -> Generator[Tasks[FeatureTask, TaskResult], list[TaskResult], list[dict[str, RoiFeatures]]]:
    """A plan (``pipelines.plan``) whose result is the features of every ROI variant of every
    lesion: the values plain pyradiomics gives for
    ``extract_features(image, on_full_grid(roi, image), preset)`` (to 1e-6 relative; see the
    module docstring for how work is shared).

    ``zscore`` gives, per lesion, (mean, SD) to normalise the image with before extraction
    (preprocessing.zscore with the ROI as reference), or None. ``names`` label the lesions in
    error messages.

    The work is split into tasks (:class:`FeatureTask`, :func:`run_feature_task`), one per
    lesion and image type (one LoG sigma each), whose results are merged into the keys and
    order of one pyradiomics ``execute`` per ROI. The plan yields them as one
    :class:`pipelines.plan.Tasks` step, lazily (run in order in one process, one lesion is
    prepared at a time); wherever they run, each computes what the serial path computes for its
    image type, on the same arrays.

    Raises:
        FeatureError: pyradiomics refused a ROI; the message names lesion and ROI variant.
    """
    settings = preset.settings
    if settings.get("normalize", False):
        image = imageoperations.normalizeImage(image, **settings)
    if preset.ibsi is not None and resampling_enabled(settings):
        image, lesions, preset = _ibsi_interpolated(image, lesions, preset, preset.ibsi)
        settings = preset.settings
    source = Grid.of(image)
    zscore = list(zscore) if zscore is not None else [None] * len(lesions)
    names = list(names) if names is not None else [f"lesion {n}" for n in range(len(lesions))]
    resampled = resampling_enabled(settings)
    units = _units(preset)
    whole_filtered: dict[tuple[float, float] | None, list[list[FilteredImage]]] = {}

    def lesion_job(rois: Sequence[RoiMask], affine: tuple[float, float] | None) -> LesionJob:
        boxes = [_roi_box(roi) for roi in rois]
        windows = tuple(pyradiomics_grid(source, lo, size, settings) for lo, size in boxes)
        filtered = None
        if resampled:
            interpolator = settings.get("interpolator", "sitkBSpline")
            regions = [
                source_region_for(source, w.grid, interpolator)
                if w.interpolated
                else (_index_on(source, w.grid.origin), list(w.grid.size))
                for w in windows
            ]
            index, size = _region_of(regions)
        else:
            index, size = _region_of(boxes)
            if _uses_filters(preset):
                if affine not in whole_filtered:
                    whole = apply_zscore(image, *affine) if affine is not None else image
                    whole_filtered[affine] = [
                        _unit_images(unit, whole, _window_settings(preset)) for unit in units
                    ]
                filtered = tuple(
                    tuple((crop(item, index, size), name, kwargs) for item, name, kwargs in items)
                    for items in whole_filtered[affine]
                )
        region = crop(image, index, size)
        if affine is not None:
            region = apply_zscore(region, *affine)
        return LesionJob(source, tuple(index), region, filtered, tuple(rois), windows)

    def tasks() -> Iterator[FeatureTask]:
        for rois, affine, name in zip(lesions, zscore, names, strict=True):
            yield from _lesion_tasks(lesion_job(rois, affine), preset, units, name)

    results = iter((yield Tasks(run_feature_task, tasks())))
    merged = []
    for rois, name in zip(lesions, names, strict=True):
        values: dict[str, dict[str, Any]] = {roi.name: {} for roi in rois}
        for _ in units or [None]:
            for roi_name, result in next(results).items():
                values[roi_name].update(result)
        merged.append({roi: _as_features(result, f"{name}, ROI {roi}")
                       for roi, result in values.items()})
    return merged


def _ibsi_interpolated(
    image: sitk.Image, lesions: Sequence[Sequence[RoiMask]], preset: Preset,
    options: IbsiOptions,
) -> tuple[sitk.Image, list[list[RoiMask]], Preset]:
    """IBSI interpolation (``pipelines.science.ibsi``) of the whole image and of every ROI onto the
    grid centred on the source grid, and the preset to extract on it with: the same, with
    ``resampledPixelSpacing`` null (the image is on its extraction grid already)."""
    settings = preset.settings
    target = ibsi.centred_grid(Grid.of(image), settings["resampledPixelSpacing"])
    interpolated = ibsi.interpolate_image(
        image, target, settings.get("interpolator", "sitkBSpline"), options.round_intensities)
    threshold = preset.preprocessing.mask_partial_volume_threshold
    try:
        rois = [[ibsi.interpolate_roi(roi, target, threshold) for roi in lesion]
                for lesion in lesions]
    except PreprocessError as exc:
        raise FeatureError(str(exc)) from exc
    on_grid = preset.model_copy(update={"radiomics": {
        **preset.radiomics, "setting": {**settings, "resampledPixelSpacing": None}}})
    return interpolated, rois, on_grid


def _uses_filters(preset: Preset) -> bool:
    """Whether the preset enables an image type other than Original."""
    return any(name != "Original" for name in preset.radiomics.get("imageType") or {})
