"""Voxel-wise feature maps around each lesion, written as DICOM Parametric Maps.

A map gives every voxel the value a feature takes in the kernel around it (pyradiomics
voxel-based extraction, ``RadiomicsFeatureExtractor.execute(..., voxelBased=True)``, with the
preset's ``maps.kernel_radius`` and ``maps.masked_kernel``; van Griethuysen et al., Cancer Res.
2017, "voxel-based extraction"). The cost is bounded by computing only around each lesion:

* the mapped region is the lesion's bounding box grown by ``maps.margin_mm`` on each side;
* the image is cropped (SimpleITK ``RegionOfInterest``) to that region plus what the kernels and
  the interpolator read beyond it, and pyradiomics maps every voxel of the region (the mask given
  to pyradiomics is the whole region, so peritumoral tissue is mapped too);
* with a resampling preset pyradiomics computes the map on its resampled grid; the region it maps
  then reaches one resampled voxel beyond the written region, and the map is interpolated back
  linearly onto the source grid (IBSI 1, section 2.4: interpolation of intensities is linear or
  cubic); without resampling the map is on the source lattice and is copied.

The work is split into tasks (:class:`MapTask`: the crop as a NumPy array and the grids as
numbers, no SimpleITK object and no path), one per lesion, pyradiomics feature class and run of
``BATCHES_PER_TASK`` of pyradiomics' voxel batches (``maps.voxel_batch`` voxels each, computed
independently of one another): a step of a plan (:func:`maps_plan`, ``pipelines.plan``) that
whoever runs it maps where it likes, as the feature tasks of ``pipelines.science.features``; in one
process, one task per lesion and class (each task resamples its crop once). Each returns
pyradiomics' maps at its voxels; the job merges them and brings them back onto the source
grid, so the maps are those of one extraction.

Grey levels are discretised over the voxels the kernels see (pyradiomics: over the whole cropped
image unless ``masked_kernel``), so a map value is not the feature of the same kernel discretised
over the lesion alone.

One Parametric Map (PS3.3 A.75) per feature covers every lesion: one float32 frame per slice of
the source grid, every slice of the series with its rows and columns, so that a viewer that fills
the source's volume frame by frame (OHIF) can overlay it; frames in the source slices' order,
along the slice normal (row x column cosines), the order OHIF fills them in. Voxels outside the
mapped regions hold the padding value (:func:`map_padding_value`, below every mapped value and 0),
declared as Float Pixel Padding Value (PS3.3 C.7.6.24), so a mapped 0 is told from "not mapped";
where two lesions' regions overlap the later lesion's values are written. Its Real World Value
Mapping (PS3.3 C.7.6.16.2.11) names the quantity by the feature's concept
(``pipelines.outputs.codes``: IBSI or ``99RADNODE`` code) and its UCUM unit from the padding value
to the highest mapped value; the shared Frame Anatomy (PS3.3 C.7.6.16.2.8) names the lesions'
anatomic region (dcmqi reads no map without it); the Referenced Series Sequence and each frame's
Derivation Image Sequence point to the source images. The data set is deflated
(:data:`MAP_TRANSFER_SYNTAX`): the padding costs almost nothing, and the values are those computed,
bit for bit. Its Content Creator's Name (0070,0084, PS3.3 C.10.9) is the node's and its General
Study attributes are the source's (``pipelines.outputs.result_attributes``).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
import radiomics
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import DeflatedExplicitVRLittleEndian
from radiomics.featureextractor import RadiomicsFeatureExtractor, getFeatureClasses

from pipelines.io.segmentation import DecodedSegmentation, Segment, voxel_box
from pipelines.io.series import Grid, SeriesVolume
from pipelines.outputs.codes import coding_schemes, feature_concept, ucum_unit
from pipelines.outputs.result_attributes import (
    CONTENT_CREATOR_NAME,
    copy_study_attributes,
    fill_unknown_slice_thickness,
)
from pipelines.outputs.software import MANUFACTURER, software_version
from pipelines.outputs.uids import result_uid
from pipelines.plan import Tasks, run_tasks
from pipelines.science.features import ArrayImage, validated_extractor
from pipelines.science.presets import IMAGE_INTERPOLATORS, Preset
from pipelines.science.radiomics_adapter import keep_voxel_batches

PM_SERIES_NUMBER_OFFSET = 1100  # map k (0-based, preset order) gets source SeriesNumber + 1100 + k

# The maps' transfer syntax: the whole data set deflated (PS3.5 A.5), lossless, and read by OHIF's
# dcmjs, dcmqi's DCMTK and pydicom (highdicom); the encapsulated syntaxes that highdicom writes
# take integer pixels only, which OHIF shows undecoded and unscaled (docs/outputs.md, "Frames,
# padding and encoding").
MAP_TRANSFER_SYNTAX = DeflatedExplicitVRLittleEndian
LIVER = hd.sr.CodedConcept.from_code(codes.SCT.Liver)  # Frame Anatomy when the SEG names none


class MapError(ValueError):
    """A map that cannot be computed or encoded; names the lesion and the feature."""


@dataclass(frozen=True)
class LesionMaps:
    """The maps of one lesion, keyed by ``<class>_<feature>``: float32 images on the region of the
    source grid that starts at ``index`` (voxel (0, 0, 0) of each map is source voxel ``index``).

    ``computed_voxels`` counts the voxels pyradiomics evaluated (on its grid, per feature).
    """

    segment_number: int
    label: str
    index: tuple[int, int, int]
    maps: dict[str, sitk.Image]
    computed_voxels: int


def _bounding_box(lesion: Segment, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) source indices of the box of the lesion's voxels, upper exclusive."""
    box = voxel_box(lesion.region)
    if box is None:
        raise MapError(f"{where}: the mask has no voxel")
    lower = np.array(box[0]) + np.array(lesion.index)
    return lower, lower + np.array(box[1])


def _clipped(lower: np.ndarray, upper: np.ndarray, grow: np.ndarray,
             size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    return np.maximum(lower - grow, 0), np.minimum(upper + grow, np.array(size))


BATCHES_PER_TASK = 8  # pyradiomics voxel batches (``maps.voxel_batch`` voxels each) per task


class _BatchRangeExtractor(RadiomicsFeatureExtractor):
    """pyradiomics' extractor that computes, in voxel-based extraction, only part ``k`` of ``n``
    of each feature class's voxel batches
    (``pipelines.science.radiomics_adapter.keep_voxel_batches``); the other voxels keep
    ``initValue``. Every batch is the batch the whole extraction computes, so its values are the
    same."""

    def __init__(self, params: dict[str, Any], part: tuple[int, int] = (0, 1)):
        super().__init__(params)
        self.part = part

    def computeFeatures(self, image: sitk.Image, mask: sitk.Image, image_type: str,
                        **kwargs: Any) -> dict[str, Any]:
        """pyradiomics' ``computeFeatures`` (feature classes other than shape, enabled features
        only), each class's voxels narrowed to this part's batches."""
        vector: dict[str, Any] = {}
        classes = getFeatureClasses()
        for class_name, names in self.enabledFeatures.items():
            feature_class = classes[class_name](image, mask, **kwargs)
            for name in names:
                feature_class.enableFeatureByName(name)
            keep_voxel_batches(feature_class, self.part)
            for name, value in feature_class.execute().items():
                vector[f"{image_type}_{class_name}_{name}"] = value
        return vector


def _extractor(preset: Preset, features: Sequence[str], part: tuple[int, int]
               ) -> RadiomicsFeatureExtractor:
    """pyradiomics with the preset's settings, the Original image and the map features, for
    part ``part`` (k, n) of the voxel batches."""
    options = preset.maps
    settings = {**copy.deepcopy(preset.settings), "label": 1, "additionalInfo": False}
    voxel_settings = {
        "kernelRadius": options.kernel_radius,
        "maskedKernel": options.masked_kernel,
        "voxelBatch": options.voxel_batch,
        "initValue": math.nan,  # a voxel pyradiomics did not map reads NaN, never a value
    }
    classes: dict[str, list[str]] = {}
    for name in features:
        feature_class, _, feature = name.partition("_")
        classes.setdefault(feature_class, []).append(feature)
    extractor = validated_extractor({
        "setting": settings, "voxelSetting": voxel_settings, "imageType": {"Original": {}},
        "featureClass": classes,
    }, _BatchRangeExtractor)
    extractor.part = part
    return extractor


@dataclass(frozen=True)
class MapTask:
    """The unit of work of :func:`maps_plan`: part ``part`` (k of n) of pyradiomics' voxel
    batches of one lesion's maps for one pyradiomics feature class (``features``,
    ``<class>_<feature>`` in preset order), on arrays only, so that it runs in any process or on
    any machine with this package (no SimpleITK object, no path).

    ``crop`` is the image pyradiomics reads, ``mapped`` the box of ``crop`` indices it maps
    ((x, y, z) lower, upper exclusive; the mask is that box), ``region`` the region of the source
    grid the maps are written on (its voxel (0, 0, 0) is source voxel ``region_index``),
    ``interpolated`` whether the maps come back onto it linearly (pyradiomics resampled the crop)
    or by copy.
    """

    preset: Preset
    where: str  # the lesion, for error messages
    features: tuple[str, ...]
    part: tuple[int, int]
    crop: ArrayImage
    mapped: tuple[tuple[int, ...], tuple[int, ...]]
    region: Grid
    region_index: tuple[int, ...]
    interpolated: bool


@dataclass(frozen=True)
class MapPart:
    """One feature's values from one task: pyradiomics' map grid, and the values (float64) at
    the voxels the task computed, by flat (z, y, x) index; the rest of the grid is another
    task's (or NaN: not mapped)."""

    grid: Grid
    indices: np.ndarray
    values: np.ndarray


MapTaskResult = dict[str, MapPart]  # feature name -> its part


def map_feature_groups(preset: Preset) -> list[tuple[str, ...]]:
    """``preset.maps.features`` by pyradiomics feature class (the ``<class>_`` prefix), classes
    in the order they first appear, features in preset order. pyradiomics computes each class
    on its own (its own discretisation of the same image and mask, van Griethuysen et al. 2017),
    so each group's maps can be computed, encoded and sent without the others."""
    groups: dict[str, list[str]] = {}
    for name in preset.maps.features:
        groups.setdefault(name.partition("_")[0], []).append(name)
    return [tuple(group) for group in groups.values()]


def lesion_map_tasks(image: sitk.Image, lesion: Segment, preset: Preset,
                     features: Sequence[str] | None = None, *, split: bool = True
                     ) -> list[MapTask]:
    """The tasks of ``lesion``'s maps (a segment on ``image``'s grid) of ``features`` (all of
    ``preset.maps.features`` when None): the region, crop and mask of the module docstring, as
    arrays, per feature class (:func:`map_feature_groups`) and, with ``split``, per run of
    ``BATCHES_PER_TASK`` voxel batches (estimated from the mapped box on pyradiomics' grid; the
    task counts them exactly), for tasks run in parallel; without it one task per class, which
    pyradiomics resamples once (every task resamples its crop: with 86 tasks in one process the
    demo study's extraction took 26 to 29 s, with 4 tasks 12.5 to 13.4 s;
    docs/history/performance.md, "End to end", seventh round). pyradiomics computes each feature
    class on its own and each
    voxel batch on its own, so a task gives the values the whole extraction gives at its
    voxels.

    Raises:
        MapError: the preset names no map feature, ``features`` names one it does not map, or
            the lesion is empty.
    """
    where = f"segment {lesion.number} ({lesion.label})"
    options = preset.maps
    if not options.features:
        raise MapError(f"{where}: preset {preset.name} names no maps.features")
    wanted = set(options.features if features is None else features)
    if not wanted <= set(options.features):
        raise MapError(f"{where}: preset {preset.name} maps no "
                       f"{', '.join(sorted(wanted - set(options.features)))}")
    spacing = np.array(image.GetSpacing())
    size = image.GetSize()
    settings = preset.settings
    lower, upper = _bounding_box(lesion, where)
    lower, upper = _clipped(lower, upper, np.ceil(options.margin_mm / spacing - 1e-9).astype(int),
                            size)
    target = settings.get("resampledPixelSpacing")
    if target is not None:
        target = np.where(np.array(target, dtype=float) > 0, target, spacing)
        interpolator = settings.get("interpolator", "sitkBSpline")
        beyond = np.ceil(target / spacing).astype(int) + 1
        read = np.ceil(options.kernel_radius * target / spacing).astype(int) + \
            IMAGE_INTERPOLATORS[interpolator]
    else:
        beyond = np.zeros(3, dtype=int)
        read = np.full(3, options.kernel_radius)
    mapped_lower, mapped_upper = _clipped(lower, upper, beyond, size)
    crop_lower, crop_upper = _clipped(mapped_lower, mapped_upper, read, size)
    crop = ArrayImage.of(
        sitk.RegionOfInterest(image, (crop_upper - crop_lower).tolist(), crop_lower.tolist()))
    mapped = (tuple(int(i) for i in mapped_lower - crop_lower),
              tuple(int(i) for i in mapped_upper - crop_lower))
    region = Grid.of(sitk.RegionOfInterest(image, (upper - lower).tolist(), lower.tolist()))
    extent = (mapped_upper - mapped_lower) * (spacing / target if target is not None else 1)
    parts = max(1, math.ceil(float(np.prod(extent)) / options.voxel_batch / BATCHES_PER_TASK)) \
        if split else 1
    groups = [tuple(name for name in group if name in wanted)
              for group in map_feature_groups(preset)]
    return [MapTask(preset, where, group, (number, parts), crop, mapped, region,
                    tuple(int(i) for i in lower), target is not None)
            for group in groups if group for number in range(parts)]


def run_map_task(task: MapTask) -> MapTaskResult:
    """Compute one task (in any process): pyradiomics' voxel-based maps of the task's features
    on its crop, at the voxels of its part of the batches, on pyradiomics' grid.

    Raises:
        MapError: pyradiomics refused the region.
    """
    radiomics.setVerbosity(60)  # as pipelines.science.features: quiet in a fresh worker process too
    logging.getLogger("radiomics").setLevel(logging.WARNING)
    crop = task.crop.image()
    mask_array = np.zeros(task.crop.array.shape, dtype=np.uint8)
    lo, hi = task.mapped
    mask_array[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] = 1
    mask = sitk.GetImageFromArray(mask_array)
    mask.CopyInformation(crop)
    extractor = _extractor(task.preset, task.features, task.part)
    try:
        result = extractor.execute(crop, mask, label=1, voxelBased=True)
    except (ValueError, RuntimeError, IndexError) as exc:
        raise MapError(f"{task.where}: preset {task.preset.name}: pyradiomics: {exc}") from exc
    parts: MapTaskResult = {}
    for name in task.features:
        computed_map = result[f"original_{name}"]
        values = sitk.GetArrayViewFromImage(computed_map).ravel()
        indices = np.flatnonzero(~np.isnan(values))
        parts[name] = MapPart(Grid.of(computed_map), indices, values[indices])
    return parts


def _lesion_maps(lesion: Segment, tasks: Sequence[MapTask], results: Sequence[MapTaskResult],
                 features: Sequence[str]) -> LesionMaps:
    """The lesion's maps of ``features`` from its tasks' results: each feature's parts merged
    (every voxel is computed by one part) and brought back onto the region (module docstring),
    in the order of ``features``; ``computed_voxels`` counts the last feature's.

    Raises:
        MapError: pyradiomics left a voxel of the region unmapped.
    """
    task = tasks[0]
    region = task.region.blank()
    interpolation = sitk.sitkLinear if task.interpolated else sitk.sitkNearestNeighbor
    maps: dict[str, sitk.Image] = {}
    computed = 0
    for name in features:
        parts = [result[name] for result in results if name in result]
        grid = parts[0].grid
        values = np.full(grid.size[::-1], math.nan)
        for part in parts:
            values.flat[part.indices] = part.values
        computed = int(np.count_nonzero(~np.isnan(values)))
        computed_map = ArrayImage(values, grid.origin, grid.spacing, grid.direction).image()
        on_source = sitk.Resample(sitk.Cast(computed_map, sitk.sitkFloat64), region,
                                  sitk.Transform(), interpolation, math.nan, sitk.sitkFloat32)
        if np.isnan(sitk.GetArrayViewFromImage(on_source)).any():
            upper = np.add(task.region_index, task.region.size)
            raise MapError(
                f"{task.where}: map {name}: pyradiomics left voxels of the region "
                f"{list(task.region_index)} to {upper.tolist()} unmapped"
            )
        maps[name] = on_source
    return LesionMaps(lesion.number, lesion.label, task.region_index, maps, computed)


def compute_maps(image: sitk.Image, lesions: Sequence[Segment], preset: Preset, *,
                 features: Sequence[str] | None = None) -> list[LesionMaps]:
    """:func:`maps_plan` run in this process, one task per lesion and feature class.

    Raises:
        MapError: as :func:`maps_plan`.
    """
    return run_tasks(maps_plan(image, lesions, preset, features=features, split=False))


def maps_plan(image: sitk.Image, lesions: Sequence[Segment], preset: Preset, *,
              features: Sequence[str] | None = None, split: bool = True
              ) -> Generator[Tasks[MapTask, MapTaskResult], list[MapTaskResult],
                             list[LesionMaps]]:
    """A plan (``pipelines.plan``) whose result is the maps of ``features`` (every feature of
    ``preset.maps`` when None, else a subset of them, e.g. one of :func:`map_feature_groups`)
    around every lesion (segments on ``image``'s grid), in lesion order. The work is one
    :class:`pipelines.plan.Tasks` step (:class:`MapTask`, :func:`run_map_task`), one task per
    lesion and feature class and, with ``split`` (for tasks that run side by side), per run of
    voxel batches (:func:`lesion_map_tasks`). Every task computes the voxel batches the whole
    extraction computes, so the maps are the same either way.

    Raises:
        MapError: a lesion is empty, pyradiomics refused a region, or left a voxel of a written
            region unmapped.
    """
    names = tuple(preset.maps.features if features is None else features)
    per_lesion = [lesion_map_tasks(image, lesion, preset, names, split=split)
                  for lesion in lesions]
    results = yield Tasks(run_map_task, [task for tasks in per_lesion for task in tasks])
    maps = []
    start = 0
    for lesion, lesion_tasks in zip(lesions, per_lesion, strict=True):
        maps.append(_lesion_maps(lesion, lesion_tasks,
                                 results[start:start + len(lesion_tasks)], names))
        start += len(lesion_tasks)
    return maps


def compute_lesion_maps(image: sitk.Image, lesion: Segment, preset: Preset) -> LesionMaps:
    """The preset's feature maps around ``lesion`` (a segment on ``image``'s grid), computed in
    this process (:func:`compute_maps` of one lesion).

    Raises:
        MapError: as :func:`compute_maps`.
    """
    return compute_maps(image, [lesion], preset)[0]


def _affine(image: sitk.Image) -> np.ndarray:
    """4 x 4 affine from (slice, row, column) indices to patient coordinates (LPS, mm), the index
    order of highdicom's Volume and of ``sitk.GetArrayFromImage``."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing = image.GetSpacing()
    affine = np.eye(4)
    affine[:3, 0] = direction[:, 2] * spacing[2]
    affine[:3, 1] = direction[:, 1] * spacing[1]
    affine[:3, 2] = direction[:, 0] * spacing[0]
    affine[:3, 3] = image.GetOrigin()
    return affine


def slab_geometry(volume: SeriesVolume, z_range: tuple[int, int]) -> hd.VolumeGeometry:
    """Slices ``z_range`` of the source grid, full rows and columns, in the source Frame of
    Reference: where each frame of a derived object lies (PS3.3 C.7.6.16.2.3, C.7.6.16.2.4)."""
    image = volume.image
    affine = _affine(image)
    affine[:3, 3] = affine[:3, 3] + affine[:3, 0] * z_range[0]
    shape = (z_range[1] - z_range[0], image.GetSize()[1], image.GetSize()[0])
    return hd.VolumeGeometry(affine, shape, "PATIENT", volume.frame_of_reference_uid)


def intensity_unit_free(preset: Preset) -> bool:
    """Whether the preset rescales intensities (z-score or pyradiomics ``normalize``), which takes
    intensity features off the modality's scale (e.g. HU)."""
    return preset.preprocessing.zscore is not None or bool(preset.settings.get("normalize"))


def _window(centre: float, width: float) -> hd.VOILUTTransformation:
    """A window over the map's values. LINEAR_EXACT (PS3.3 C.11.2.1.3.2) lets a window be narrower
    than 1, which LINEAR forbids (C.11.2.1.2.1) and small-valued maps such as GLCM contrast need."""
    width = max(width, 1e-6)
    return hd.VOILUTTransformation(
        window_center=centre, window_width=width,
        voi_lut_function="LINEAR_EXACT" if width < 1 else "LINEAR",
        window_explanation="1st to 99th percentile of the mapped voxels",
    )




def map_padding_value(lowest: float) -> np.float32:
    """The Float Pixel Padding Value (0028,0122) of a map whose mapped voxels are all at least
    ``lowest``: one below the smaller of 0 and ``lowest``, rounded down to an integer (a float32
    below ``lowest`` where float32 cannot hold that integer). It is never a mapped value, so a
    mapped voxel whose feature is 0 reads 0 and an unmapped one reads the padding; and it lies
    at most 2 below the smaller of 0 and the mapped range, not at an extreme such as -FLT_MAX,
    so a reader that ignores padding (OHIF windows a map over all its voxels) still spreads its
    window over the mapped values."""
    below = np.nextafter(np.float32(lowest), np.float32(-np.inf))
    return min(np.float32(math.floor(min(lowest, 0.0)) - 1.0), below)


def _frame_anatomy(region: hd.sr.CodedConcept) -> Dataset:
    """A Frame Anatomy Sequence item (PS3.3 C.7.6.16.2.8): ``region`` and Frame Laterality U
    (unpaired)."""
    item = Dataset()
    item.AnatomicRegionSequence = [copy.deepcopy(region)]
    item.FrameLaterality = "U"
    return item


def lesions_anatomic_region(seg: DecodedSegmentation, numbers: Sequence[int]
                            ) -> hd.sr.CodedConcept | None:
    """The Anatomic Region (0008,2218, its first item) that the input SEG's segments ``numbers``
    name, when every one of them that names one names the same (by code value and scheme); None
    when none does, when they differ, or for an RT Structure Set (an RT ROI has no anatomic
    region, PS3.3 C.8.8.5)."""
    if seg.is_rtstruct:
        return None
    regions = [item.AnatomicRegionSequence[0]
               for item in seg.dataset.get("SegmentSequence", [])
               if int(item.SegmentNumber) in numbers and item.get("AnatomicRegionSequence")]
    if not regions or len({(r.CodeValue, r.CodingSchemeDesignator) for r in regions}) > 1:
        return None
    return hd.sr.CodedConcept.from_dataset(regions[0])


def _mapped_values(lesion_maps: Sequence[LesionMaps], values: Sequence[np.ndarray]
                   ) -> np.ndarray:
    """The values the map holds at its mapped voxels, each voxel once: where regions overlap,
    the later lesion's (the one written), without building the map's grid."""
    kept = []
    for number, (lesion, lesion_values) in enumerate(zip(lesion_maps, values, strict=True)):
        shown = np.ones(lesion_values.shape, dtype=bool)
        lower = np.array(lesion.index)
        for later, later_values in zip(lesion_maps[number + 1:], values[number + 1:], strict=True):
            start = np.maximum(np.array(later.index) - lower, 0)
            stop = np.minimum(np.array(later.index) + later_values.shape[::-1] - lower,
                              lesion_values.shape[::-1])
            if (start < stop).all():
                shown[start[2]:stop[2], start[1]:stop[1], start[0]:stop[0]] = False
        kept.append(lesion_values[shown])
    return np.concatenate(kept)


def _pixels_along_normal(pm: hd.pm.ParametricMap, size: Sequence[int], padding: np.float32,
                         lesion_maps: Sequence[LesionMaps], values: Sequence[np.ndarray]
                         ) -> hd.pm.ParametricMap:
    """``pm`` (built by highdicom from a stand-in array of ``size``) with the map's pixels: the
    padding, and each lesion's values in its region (the later lesion's where regions overlap),
    frames in order along the slice normal (row x column cosines, PS3.3 C.7.6.2.1.1).

    highdicom orders the frames along its volume's slice axis (column x row cosines); OHIF fills
    the source's volume with the frames as stored (``@cornerstonejs/adapters``
    ``ParametricMap.generateToolState``), slice by slice in the source's order. The functional
    groups are reversed, their Dimension Index Values (PS3.3 C.7.6.17) numbered again, and the
    object read again (``from_dataset``, not copied) so that highdicom's frame look-ups follow.
    highdicom's frame bytes are freed before the map's are made, so the two are never held
    together (docs/history/performance.md, "Memory")."""
    frames = list(reversed(pm.PerFrameFunctionalGroupsSequence))
    for number, item in enumerate(frames, 1):
        item.FrameContentSequence[0].DimensionIndexValues = number
    pm.PerFrameFunctionalGroupsSequence = frames
    del pm.FloatPixelData
    array = np.full((size[2], size[1], size[0]), padding, dtype=np.float32)
    for lesion, lesion_values in zip(lesion_maps, values, strict=True):
        x, y, z = lesion.index
        nz, ny, nx = lesion_values.shape
        array[z:z + nz, y:y + ny, x:x + nx] = lesion_values
    pm.FloatPixelData = array.tobytes()
    return hd.pm.ParametricMap.from_dataset(pm, copy=False)


def build_parametric_maps(
    volume: SeriesVolume,
    lesion_maps: Sequence[LesionMaps],
    preset: Preset,
    *,
    seg_sop_instance_uid: str,
    anatomic_region: hd.sr.CodedConcept | None = None,
) -> list[hd.pm.ParametricMap]:
    """One Parametric Map per feature of ``lesion_maps`` (all of ``preset.maps`` or a group of
    them, :func:`map_feature_groups`) holding every lesion's map (module docstring), in the
    study of ``volume``, in preset order. UIDs follow ``pipelines.outputs.uids`` with the feature
    name, Series Number the feature's position in the preset, so a map is the same object whether it
    was encoded with the others or on its own.

    Each map has one frame per slice of ``volume``'s grid, in order along the slice normal (the
    source slices' order), with the source's rows and columns; voxels outside every mapped
    region hold the map's :func:`map_padding_value`, declared as Float Pixel Padding Value
    (0028,0122) and Float Pixel Padding Range Limit (0028,0124) (PS3.3 C.7.6.24); the Real
    World Value Mapping's range runs from the padding to the highest mapped value, so that a
    reader that applies the mapping to every stored value (highdicom's ``get_volume``) takes
    the whole map, and the padding is told apart by its declaration; the shared Frame Anatomy
    (PS3.3 C.7.6.16.2.8) names ``anatomic_region`` (SCT Liver when None, the organ of the node's
    lesions), Frame Laterality U. The data set's transfer syntax is :data:`MAP_TRANSFER_SYNTAX`.

    Raises:
        MapError: no lesion map, or the lesions' maps are not of the same features.
    """
    if not lesion_maps:
        raise MapError("no lesion maps to encode")
    computed = set(lesion_maps[0].maps)
    if any(set(m.maps) != computed for m in lesion_maps):
        raise MapError("the lesions' maps are not of the same features")
    size = volume.image.GetSize()
    geometry = slab_geometry(volume, (0, size[2]))
    frame_anatomy = _frame_anatomy(anatomic_region or LIVER)
    unit_free = intensity_unit_free(preset)
    objects = []
    for number, name in enumerate(preset.maps.features):
        if name not in computed:
            continue
        values = [sitk.GetArrayFromImage(lesion.maps[name]) for lesion in lesion_maps]
        mapped = _mapped_values(lesion_maps, values)
        low, high = float(mapped.min()), float(mapped.max())
        padding = map_padding_value(low)
        concept = feature_concept(f"original_{name}", volume.modality)
        unit = ucum_unit("1") if unit_free and concept.unit.value != "1" else concept.unit
        explanation = (f"{concept.name.meaning}, kernel radius {preset.maps.kernel_radius}")[:64]
        mapping = hd.pm.RealWorldValueMapping(
            lut_label=concept.name.value[:16],
            lut_explanation=explanation,
            unit=unit,
            value_range=(float(padding), high),
            slope=1.0,
            intercept=0.0,
            quantity_definition=concept.name,
        )
        centre = float(np.percentile(mapped, 50))
        width = float(np.percentile(mapped, 99) - np.percentile(mapped, 1))
        del mapped
        parts = (seg_sop_instance_uid, preset.hash, "parametric map", name)
        pm = hd.pm.ParametricMap(
            source_images=list(volume.datasets),
            # highdicom's frames and functional groups depend on the geometry alone: it encodes a
            # stand-in whose untouched zero pages cost no memory, and the map's pixels replace it
            pixel_array=geometry.with_array(np.zeros(geometry.spatial_shape, dtype=np.float32)),
            series_instance_uid=result_uid(volume, *parts, "series"),
            series_number=volume.series_number + PM_SERIES_NUMBER_OFFSET + number,
            sop_instance_uid=result_uid(volume, *parts, "instance"),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=MANUFACTURER,
            software_versions=software_version(),
            device_serial_number="0",
            contains_recognizable_visual_features=False,
            real_world_value_mappings=[mapping],
            voi_lut_transformations=[_window(centre, width)],
            content_label="RADIOMICS",
            content_description=f"{name} map"[:64],
            content_creator_name=CONTENT_CREATOR_NAME,
            series_description=f"Radiomics map {name} ({preset.name})"[:64],
        )
        pm = _pixels_along_normal(pm, size, padding, lesion_maps, values)
        del values
        pm.FloatPixelPaddingValue = float(padding)
        pm.FloatPixelPaddingRangeLimit = float(padding)
        pm.SharedFunctionalGroupsSequence[0].FrameAnatomySequence = [copy.deepcopy(frame_anatomy)]
        pm.file_meta.TransferSyntaxUID = MAP_TRANSFER_SYNTAX
        copy_study_attributes(pm, volume.datasets[0])
        fill_unknown_slice_thickness(pm, volume.image.GetSpacing()[2])
        body_part = volume.datasets[0].get("BodyPartExamined")
        if body_part:
            # General Series Laterality (0020,0060) is required for a paired body part (PS3.3
            # C.7.3.1); with the source's Body Part Examined a reader can tell it is not one.
            pm.BodyPartExamined = body_part
        declared = [item for item in coding_schemes()
                    if item.CodingSchemeDesignator == concept.name.scheme_designator]
        if declared:
            # Non-standard designators are declared (PS3.3 C.12.1.1.5)
            pm.CodingSchemeIdentificationSequence = declared
        objects.append(pm)
    return objects


def parametric_maps(
    volume: SeriesVolume,
    image: sitk.Image,
    lesions: Sequence[Segment],
    preset: Preset,
    *,
    seg_sop_instance_uid: str,
) -> list[hd.pm.ParametricMap]:
    """Compute the maps of every lesion on ``image`` (the preprocessed image features were
    extracted from, on ``volume``'s grid) and encode them (:func:`build_parametric_maps`);
    nothing when the preset's maps are disabled or there is no lesion."""
    if not preset.maps.enabled or not lesions:
        return []
    maps = compute_maps(image, lesions, preset)
    return build_parametric_maps(volume, maps, preset, seg_sop_instance_uid=seg_sop_instance_uid)
