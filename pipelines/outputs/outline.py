"""The outline of a segment on the slice where it is largest, in the pixel coordinates of the
acquired image that holds that slice: what a 2D SCOORD image region of a TID 1410 group needs
(PS3.3 C.18.6: Graphic Data as column\\row pairs, the top left corner of the top left pixel at
0.0\\0.0, so a pixel's centre is at +0.5; a closed POLYLINE repeats its first point last).

The contour is the 0.5 iso-line of the 0/1 mask (contourpy, marching squares): it runs along the
pixel edges between a voxel inside and one outside, cutting each convex corner diagonally. Of the
closed lines on the slice, the one enclosing the largest area is kept: the outer boundary of the
largest connected part (a hole's line lies inside it, a smaller part's encloses less).

The contour is found on the volume's regular grid and taken through patient coordinates into the
acquired slice nearest to it along the normal, so that it also holds for a volume resampled from
an irregular stack (``pipelines.io.series``), whose slices are not the acquired ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import contourpy
import numpy as np
import SimpleITK as sitk

from pipelines.io.segmentation import Segment
from pipelines.io.series import SeriesVolume, SliceSource


@dataclass(frozen=True)
class Outline:
    """A closed polygon on one acquired slice: ``points`` (n, 2) as (column, row) in the image's
    pixel coordinates (module docstring), first point repeated last; ``source`` the slice
    (instance and, for a multi-frame image, frame), ``sop_class_uid`` its instance's."""

    source: SliceSource
    sop_class_uid: str
    points: np.ndarray
    slice_index: int  # the volume's slice (index along the normal) the contour was found on


def _area(line: np.ndarray) -> float:
    """Area enclosed by a closed polyline (shoelace formula)."""
    x, y = line[:, 0], line[:, 1]
    return 0.5 * abs(float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])))


def largest_slice_outline(volume: SeriesVolume, segment: Segment) -> Outline | None:
    """The outline of ``segment`` on the volume slice holding most of its voxels (the first such
    slice on a tie), in the pixel coordinates of the acquired slice nearest to it; None for an
    empty segment."""
    region = sitk.GetArrayViewFromImage(segment.region)  # (z, y, x) from segment.index
    counts = region.reshape(region.shape[0], -1).sum(axis=1)
    if counts.max() == 0:
        return None
    k = int(np.argmax(counts))
    # a border of background so that every line closes inside the array
    plane = np.pad(region[k].astype(np.float64), 1)
    lines = [np.asarray(line) for line in contourpy.contour_generator(
        z=plane, line_type=contourpy.LineType.Separate).lines(0.5)]
    closed = [line for line in lines if len(line) >= 4 and np.allclose(line[0], line[-1])]
    line = max(closed, key=_area)
    ix, iy, iz = segment.index
    z = iz + k
    physical = np.array([
        volume.image.TransformContinuousIndexToPhysicalPoint(
            (float(x) - 1 + ix, float(y) - 1 + iy, float(z)))
        for x, y in line
    ])
    source = _nearest_acquired_slice(volume, z)
    direction = np.array(volume.image.GetDirection()).reshape(3, 3)
    spacing = volume.image.GetSpacing()
    offset = physical - np.array(source.position)
    points = np.column_stack([offset @ direction[:, 0] / spacing[0] + 0.5,
                              offset @ direction[:, 1] / spacing[1] + 0.5])
    points[-1] = points[0]
    [sop_class] = {str(ds.SOPClassUID) for ds in volume.datasets
                   if str(ds.SOPInstanceUID) == source.sop_instance_uid}
    return Outline(source, sop_class, points, z)


def _nearest_acquired_slice(volume: SeriesVolume, z: int) -> SliceSource:
    """The acquired slice of volume slice ``z``: the same one when the volume was not resampled,
    else the one whose position along the normal is nearest to the slice's."""
    slices = volume.slices
    if not volume.resampled:
        return slices[z]
    normal = np.array(volume.image.GetDirection()).reshape(3, 3)[:, 2]
    along = float(np.dot(volume.image.TransformIndexToPhysicalPoint((0, 0, z)), normal))
    return min(slices, key=lambda s: abs(float(np.dot(s.position, normal)) - along))
