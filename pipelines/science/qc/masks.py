"""Checks of one ROI mask against its image: grid, size, extent, connectivity, border contact.

A mask is measured as decoded (after any fractional threshold), which is what feature extraction
sees. The grid rule is that of a SEG whose frames lie on the source slices (PS3.3 C.8.20.2,
Spatial Locations Preserved): same size, origin, spacing and direction as the image. Connected
components come from SimpleITK's ConnectedComponent (26-connectivity when ``fully_connected``).
"""

from __future__ import annotations

import itertools

import numpy as np
import SimpleITK as sitk

from pipelines.science.qc.report import QCCheck, Status
from pipelines.science.qc.settings import QCSettings

_SCOPE = "roi"


def grid_difference(image: sitk.Image, mask: sitk.Image, settings: QCSettings) -> str:
    """What differs between the grids of ``image`` and ``mask``; ``""`` when they agree."""
    differences = []
    if image.GetSize() != mask.GetSize():
        differences.append(f"size {mask.GetSize()} vs {image.GetSize()}")
    for what, tolerance in (
        ("origin", settings.grid_tolerance_mm),
        ("spacing", settings.grid_tolerance_mm),
        ("direction", settings.orientation_tolerance),
    ):
        mine = np.array(getattr(mask, f"Get{what.capitalize()}")())
        theirs = np.array(getattr(image, f"Get{what.capitalize()}")())
        if np.max(np.abs(mine - theirs)) > tolerance:
            differences.append(f"{what} {mine.round(4).tolist()} vs {theirs.round(4).tolist()}")
    return "; ".join(differences)


def mask_checks(
    image: sitk.Image,
    mask: sitk.Image,
    settings: QCSettings,
    *,
    label: int = 1,
    outside_value: float | None = None,
) -> list[QCCheck]:
    """Grid, voxel count, inside the image, components and border contact of ``mask == label``.

    ``outside_value`` marks voxels outside the reconstructed field of view (Pixel Padding Value
    through the rescale); for CT, values below ``settings.ct_hu_range`` count as outside too and
    the caller passes that bound here.
    """
    roi = sitk.GetArrayViewFromImage(mask) == label
    count = int(np.count_nonzero(roi))
    voxel_mm3 = float(np.prod(mask.GetSpacing()))
    difference = grid_difference(image, mask, settings)
    checks = [QCCheck(
        "mask.grid", _SCOPE, "fail" if difference else "pass", difference or "same", "",
        "mask grid = image grid",
        f"the mask's grid differs from the image's: {difference}" if difference
        else "the mask lies on the image grid")]
    if count == 0:
        status: Status = "fail"
        text = f"no voxel has label {label}: the ROI is empty"
    elif count < settings.min_roi_voxels:
        status, text = "warn", f"{count} voxels ({count * voxel_mm3:.4g} mm3): too few for texture"
    else:
        status, text = "pass", f"{count} voxels ({count * voxel_mm3:.4g} mm3)"
    checks.append(QCCheck("mask.voxels", _SCOPE, status, count, "",
                          f">= {settings.min_roi_voxels}", text))
    if count == 0:
        return checks
    checks.append(_inside(image, mask, roi, difference, outside_value))
    checks.append(_components(mask, roi, label, settings))
    checks.append(_border(roi))
    return checks


def _inside(image: sitk.Image, mask: sitk.Image, roi: np.ndarray, difference: str,
            outside_value: float | None) -> QCCheck:
    """ROI voxels outside the image: off its extent (other grid) or in its padding (same grid)."""
    name, rule = "mask.inside_image", "0 voxels outside"
    if difference:
        indices = np.argwhere(roi)[:, ::-1]  # (x, y, z) indices of the mask
        corners = [mask.TransformIndexToPhysicalPoint(tuple(int(v) for v in c))
                   for c in itertools.product(*zip(indices.min(0), indices.max(0), strict=True))]
        size = np.array(image.GetSize())
        indices_in_image = [
            np.array(image.TransformPhysicalPointToContinuousIndex(point)) for point in corners
        ]
        outside = sum(
            1 for index in indices_in_image if np.any((index < -0.5) | (index > size - 0.5))
        )
        return QCCheck(name, _SCOPE, "fail" if outside else "pass", outside, "",
                       "0 bounding-box corners outside",
                       f"{outside} of 8 corners of the ROI's bounding box lie outside the image")
    if outside_value is None:
        return QCCheck(name, _SCOPE, "pass", 0, "", rule, "the ROI lies on the image grid")
    values = sitk.GetArrayViewFromImage(image)[roi]
    outside = int(np.count_nonzero(values <= outside_value))
    return QCCheck(name, _SCOPE, "fail" if outside else "pass", outside, "", rule,
                   f"{outside} ROI voxels hold padding (<= {outside_value:g}): outside the "
                   "reconstructed field of view" if outside
                   else "every ROI voxel lies in the reconstructed field of view")


def bounding_box(region: np.ndarray) -> tuple[slice, ...]:
    """The (z, y, x) slices of the bounding box of ``region``'s true voxels (it has one), from
    its projections on each axis: as ``np.argwhere``'s minimum and maximum, without listing the
    voxels."""
    box = []
    for axis in range(region.ndim):
        hits = np.flatnonzero(region.any(axis=tuple(a for a in range(region.ndim) if a != axis)))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def _components(mask: sitk.Image, roi: np.ndarray, label: int, settings: QCSettings) -> QCCheck:
    """Connected components of ``mask == label`` (``roi``, not empty), labelled on its bounding
    box: every ROI voxel and every neighbour of one that is in the ROI lie in it, so the
    components and their sizes are those of the whole mask."""
    z, y, x = bounding_box(roi)
    cropped = sitk.RegionOfInterest(mask, [x.stop - x.start, y.stop - y.start, z.stop - z.start],
                                    [x.start, y.start, z.start])
    components = sitk.ConnectedComponent(cropped == label, settings.fully_connected)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(components)
    sizes = sorted((stats.GetNumberOfPixels(c) for c in stats.GetLabels()), reverse=True)
    connectivity = "26" if settings.fully_connected else "6"
    ok = len(sizes) <= settings.max_components
    return QCCheck("mask.components", _SCOPE, "pass" if ok else "warn", len(sizes), "",
                   f"<= {settings.max_components}",
                   f"{len(sizes)} connected components ({connectivity}-connectivity), voxels: "
                   f"{', '.join(map(str, sizes[:10]))}" + (", ..." if len(sizes) > 10 else ""))


def _border(roi: np.ndarray) -> QCCheck:
    """ROI voxels on the first or last index along an axis: the lesion may be cut off."""
    faces = []
    for axis, name in zip(range(3), ("first/last slice", "first/last row", "first/last column"),
                          strict=True):
        ends = np.take(roi, [0, roi.shape[axis] - 1], axis=axis)
        if ends.any():
            faces.append(name)
    return QCCheck("mask.border", _SCOPE, "warn" if faces else "pass", len(faces), "",
                   "0 image faces touched",
                   f"the ROI touches the image's {', '.join(faces)}: it may extend beyond the "
                   "scanned volume" if faces else "the ROI does not touch the image border")
