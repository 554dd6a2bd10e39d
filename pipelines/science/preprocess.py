"""Image preprocessing before feature extraction: bias field, z-score, and pyradiomics' grid.

* N4 bias field correction (Tustison et al., "N4ITK: improved N3 bias correction", IEEE TMI
  2010), SimpleITK ``N4BiasFieldCorrectionImageFilter`` on a shrunken copy; the log bias field is
  then evaluated on the full grid and divided out.
* z-score normalisation inside a reference region (IBSI 1, section 2.3: intensity
  normalisation), (I - mean) / SD with the mean and population SD of the region's voxels.
* The resampled grid pyradiomics builds for one ROI (``radiomics.imageoperations.resampleImage``,
  pyradiomics 3.1): aligned to the input origin, new spacing, covering the ROI's bounding box
  plus ``padDistance`` voxels. :func:`pyradiomics_grid` reproduces it from the full image's
  geometry and the ROI's bounding box, so the pipeline can crop the source around a lesion,
  resample only the crop onto exactly that grid, and obtain the values pyradiomics gets from the
  whole image. A crop onto a grid shifted by a fraction of a voxel would change every
  interpolated value and move texture features by up to 100 % (issue 4, "Speed of extraction").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from pipelines.io.series import Grid
from pipelines.science.presets import IMAGE_INTERPOLATORS, N4Options


class PreprocessError(ValueError):
    """A reference region that cannot normalise, or a grid that does not fit the image."""


@dataclass(frozen=True)
class Window:
    """Where pyradiomics computes one ROI: ``grid``, and whether it interpolates onto it
    (False: ``grid`` is a region of the source grid, or the whole of it)."""

    grid: Grid
    interpolated: bool


def resampling_enabled(settings: dict[str, Any]) -> bool:
    """pyradiomics resamples when both ``interpolator`` and ``resampledPixelSpacing`` are set."""
    return (
        settings.get("interpolator", "sitkBSpline") is not None
        and settings.get("resampledPixelSpacing") is not None
    )


def _geometry_image(grid: Grid) -> sitk.Image:
    """A one-voxel image carrying the grid's origin, spacing and direction, for SimpleITK's
    index/point transforms (they do not depend on the size)."""
    return Grid(grid.origin, grid.spacing, grid.direction, (1,) * len(grid.size)).blank()


def _source_region(source: Grid, lower: Sequence[int], size: Sequence[int]) -> Grid:
    geometry = _geometry_image(source)
    origin = geometry.TransformIndexToPhysicalPoint([int(i) for i in lower])
    return Grid(origin, source.spacing, source.direction, tuple(int(s) for s in size))


def pyradiomics_grid(
    source: Grid, box_lower: Sequence[int], box_size: Sequence[int], settings: dict[str, Any]
) -> Window:
    """The grid pyradiomics 3.1 ``execute`` computes a ROI on, for a ROI whose bounding box on the
    ``source`` grid is ``box_lower`` (index) and ``box_size``.

    Without resampling that is the whole source image. With resampling it follows
    ``imageoperations.resampleImage`` step by step, with the same floating point operations:
    spacings of 0, and directions in which the ROI spans one voxel, keep the source spacing; a new
    spacing equal to the source's (numpy.allclose) crops the source to the box plus
    ``padDistance`` instead of interpolating.
    """
    if not resampling_enabled(settings):
        return Window(grid=source, interpolated=False)
    pad = settings.get("padDistance", 5)
    dimension = len(source.size)
    mask_spacing = np.array(source.spacing)
    spacing = np.array(settings["resampledPixelSpacing"], dtype=float)
    if len(spacing) != dimension:
        raise PreprocessError(
            f"resampledPixelSpacing {list(spacing)} has {len(spacing)} values; the image has "
            f"{dimension} dimensions"
        )
    spacing = np.where(spacing == 0, mask_spacing, spacing)
    bb = np.array([*box_lower, *box_size])
    spacing = np.where(bb[dimension:] != 1, spacing, mask_spacing)
    if np.allclose(mask_spacing, spacing):
        lower = np.maximum(bb[:dimension] - pad, 0)
        upper = np.minimum(bb[:dimension] + bb[dimension:] - 1 + pad, np.array(source.size) - 1)
        return Window(_source_region(source, lower, upper - lower + 1), interpolated=False)

    ratio = mask_spacing / spacing
    new_lower = np.floor((bb[:dimension] - 0.5) * ratio - pad)
    new_upper = np.ceil((bb[:dimension] + bb[dimension:] - 0.5) * ratio + pad)
    max_upper = np.ceil(np.array(source.size) * ratio) - 1
    new_lower = np.where(new_lower < 0, 0, new_lower)
    new_upper = np.where(new_upper > max_upper, max_upper, new_upper)
    size = np.array(new_upper - new_lower + 1, dtype="int").tolist()
    original_lower = new_lower / ratio
    origin_index = np.array(0.5 * (spacing - mask_spacing) / mask_spacing)
    origin = _geometry_image(source).TransformContinuousIndexToPhysicalPoint(
        origin_index + original_lower
    )
    return Window(
        Grid(tuple(origin), tuple(float(s) for s in spacing), source.direction, tuple(size)),
        interpolated=True,
    )


def _lattice_offset(reference: Grid, grid: Grid) -> np.ndarray:
    """Integer offset, in voxels of ``reference``, of ``grid``'s origin on the same lattice."""
    direction = np.array(reference.direction).reshape(len(reference.size), -1)
    delta = direction.T @ (np.array(grid.origin) - np.array(reference.origin))
    steps = delta / np.array(reference.spacing)
    offset = np.rint(steps)
    if not np.allclose(steps, offset, atol=1e-6) or grid.spacing != reference.spacing:
        raise PreprocessError(f"grid {grid} is not on the lattice of {reference}")
    return offset.astype(int)


def union_grid(grids: Sequence[Grid]) -> tuple[Grid, list[tuple[int, ...]]]:
    """The smallest grid on the common lattice of ``grids`` (same spacing and direction, origins
    whole voxels apart) that holds them all, and each grid's index in it."""
    reference = grids[0]
    offsets = np.array([_lattice_offset(reference, grid) for grid in grids])
    lower = offsets.min(axis=0)
    upper = (offsets + np.array([grid.size for grid in grids])).max(axis=0)
    origin = _geometry_image(reference).TransformIndexToPhysicalPoint(
        [int(i) for i in lower]
    )
    union = Grid(tuple(origin), reference.spacing, reference.direction, tuple(upper - lower))
    return union, [tuple(int(v) for v in row) for row in offsets - lower]


def source_region_for(source: Grid, target: Grid, interpolator: str) -> tuple[list[int], list[int]]:
    """(index, size) of the region of ``source`` that interpolation onto ``target`` reads, with
    the interpolator's margin (presets.IMAGE_INTERPOLATORS), clamped to the source."""
    margin = IMAGE_INTERPOLATORS[interpolator]
    geometry = _geometry_image(target)
    corners = [
        geometry.TransformContinuousIndexToPhysicalPoint(
            [(n - 1) * bit for n, bit in zip(target.size, bits, strict=True)]
        )
        for bits in np.ndindex(*(2,) * len(target.size))
    ]
    source_geometry = _geometry_image(source)
    indices = np.array(
        [source_geometry.TransformPhysicalPointToContinuousIndex(c) for c in corners]
    )
    lower = np.maximum(np.floor(indices.min(axis=0)).astype(int) - margin, 0)
    upper = np.minimum(
        np.ceil(indices.max(axis=0)).astype(int) + margin, np.array(source.size) - 1
    )
    return lower.tolist(), (upper - lower + 1).tolist()


def crop(image: sitk.Image, index: Sequence[int], size: Sequence[int]) -> sitk.Image:
    """The region ``index`` .. ``index + size - 1`` of ``image``, keeping its physical place."""
    return sitk.RegionOfInterest(image, [int(s) for s in size], [int(i) for i in index])


def resample(image: sitk.Image, target: Grid, interpolator: int | str) -> sitk.Image:
    """``image`` sampled on ``target`` with the identity transform, outside points 0, keeping the
    pixel type, as pyradiomics' ``resampleImage`` does."""
    method = getattr(sitk, interpolator) if isinstance(interpolator, str) else interpolator
    return sitk.Resample(
        image,
        [int(n) for n in target.size],
        sitk.Transform(),
        method,
        target.origin,
        target.spacing,
        target.direction,
        0.0,
        image.GetPixelID(),
    )


def zscore_parameters(image: sitk.Image, region: sitk.Image) -> tuple[float, float]:
    """Mean and population SD of ``image`` over the nonzero voxels of ``region`` (same grid).

    Raises:
        PreprocessError: the region has fewer than two voxels or constant intensity.
    """
    values = sitk.GetArrayFromImage(image)[sitk.GetArrayFromImage(region) > 0]
    if values.size < 2:
        raise PreprocessError(f"z-score reference region has {values.size} voxel(s); needs 2")
    mean, sd = float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64))
    if not sd > 0:
        raise PreprocessError("z-score reference region has constant intensity (SD 0)")
    return mean, sd


def apply_zscore(image: sitk.Image, mean: float, sd: float) -> sitk.Image:
    """(image - mean) / sd, as sitkFloat32; element-wise, so a crop gives the whole's values."""
    return sitk.ShiftScale(sitk.Cast(image, sitk.sitkFloat32), -mean, 1.0 / sd)


def n4_correct(image: sitk.Image, options: N4Options) -> sitk.Image:
    """Divide out the N4 bias field of ``image`` (sitkFloat32 result).

    The field is fitted on a copy shrunk by ``shrink_factor`` inside an Otsu foreground mask
    (as the SimpleITK N4 example does) and evaluated at full resolution with
    ``GetLogBiasFieldAsImage``.
    """
    floating = sitk.Cast(image, sitk.sitkFloat32)
    foreground = sitk.OtsuThreshold(floating, 0, 1, 200)
    shrink = [options.shrink_factor] * image.GetDimension()
    small = sitk.Shrink(floating, shrink)
    small_mask = sitk.Shrink(foreground, shrink)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations(list(options.iterations))
    corrector.Execute(small, small_mask)
    log_bias = corrector.GetLogBiasFieldAsImage(floating)
    return sitk.Cast(floating / sitk.Exp(log_bias), sitk.sitkFloat32)
