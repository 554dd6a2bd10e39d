"""ROI variants of a lesion: the lesion itself, peritumoral rings, erosions, on the source grid.

Distances are Euclidean, in millimetres on the physical grid: a signed Maurer distance map
(Maurer et al., IEEE TPAMI 2003; SimpleITK ``SignedMaurerDistanceMap`` with
``useImageSpacing=True``) gives each voxel the distance from its centre to the nearest voxel
centre of the other region, so anisotropic voxels (0.8 x 0.8 x 2.5 mm) grow a ring of the same
physical width in every direction, which counting voxel iterations of a structuring element does
not (IBSI 1, section 2.5 "Re-segmentation" works on the same physical grid).

* ``intra``: the lesion's voxels.
* ``ring`` of k mm: voxels outside the lesion whose centre lies at most k mm from a lesion voxel
  centre, i.e. the morphological dilation by a ball of radius k minus the lesion.
* ``intra_ring``: the lesion plus that ring.
* ``erosion`` of k mm: lesion voxels more than k mm from every voxel centre outside the lesion.
* Rings may drop voxels whose modality value (HU for CT) lies in named ranges (air, fat, ...)
  and may be clipped to the liver segment; the lesion part of ``intra_ring`` is never changed.

Every mask is computed on a crop of the source grid around the lesion, with a margin of the
largest distance plus one voxel: a crop that holds the lesion and that margin gives every voxel
the distance it has on the whole grid (the nearest voxel of the other region is inside it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from pipelines.io.segmentation import Segment, voxel_box
from pipelines.science.presets import LiverSegmentRule, RoiVariant


class RoiError(ValueError):
    """A ROI variant that cannot be built, e.g. empty after erosion; names lesion and variant."""


@dataclass(frozen=True)
class RoiMask:
    """One ROI variant of one lesion: a 0/1 sitkUInt8 mask on a region of the source grid.

    ``mask`` has the source image's spacing and direction and an origin on its voxel grid; its
    voxels are ``index`` + (0 .. size - 1) of the source image.
    """

    name: str
    mask: sitk.Image
    index: tuple[int, ...]


def is_liver(segment: Segment, rule: LiverSegmentRule) -> bool:
    """Whether the segment's Segmented Property Type (0062,000F) is the rule's code, or its
    Segment Label (0062,0005) matches the rule's regular expression."""
    code = segment.property_type
    if code.value == rule.property_type.value and code.scheme_designator == (
        rule.property_type.scheme
    ):
        return True
    return rule.label_regex is not None and re.search(rule.label_regex, segment.label) is not None


def _crop(image: sitk.Image, index: Sequence[int], size: Sequence[int]) -> sitk.Image:
    return sitk.RegionOfInterest(image, [int(s) for s in size], [int(i) for i in index])


def _distance_outside(region: sitk.Image) -> np.ndarray:
    """Per voxel, the distance (mm) from its centre to the nearest voxel centre of ``region``;
    zero on ``region`` itself."""
    distance = sitk.SignedMaurerDistanceMap(
        region, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
    )
    return np.maximum(sitk.GetArrayFromImage(distance), 0.0)


HuRange = tuple[float | None, float | None]


def _in_ranges(values: np.ndarray, ranges: Sequence[HuRange]) -> np.ndarray:
    """Voxels whose value lies in any of the closed ranges (None: unbounded on that side)."""
    hit = np.zeros(values.shape, dtype=bool)
    for low, high in ranges:
        inside = np.ones(values.shape, dtype=bool)
        if low is not None:
            inside &= values >= low
        if high is not None:
            inside &= values <= high
        hit |= inside
    return hit


def build_variants(
    image: sitk.Image,
    lesion: Segment,
    variants: Sequence[RoiVariant],
    hu_ranges: Mapping[str, HuRange],
    liver: sitk.Image | None = None,
) -> tuple[RoiMask, ...]:
    """The preset's ROI variants of ``lesion`` (module docstring), in the order of ``variants``.

    ``image`` gives the values that rings exclude by range; ``liver`` (a 0/1 mask on the same
    grid) is what ``clip_to_liver`` clips rings to, and clipping is skipped when it is None.

    Raises:
        RoiError: the lesion's mask is empty, or a variant ends up with no voxel.
    """
    found = voxel_box(lesion.region)
    if found is None:
        raise RoiError(f"segment {lesion.number} ({lesion.label}): the mask has no voxel")
    lower = [lo + i for lo, i in zip(found[0], lesion.index, strict=True)]
    size = found[1]
    spacing = np.array(image.GetSpacing())
    reach = max(
        (v.distance_mm or 0.0 for v in variants if v.kind in ("ring", "intra_ring")), default=0.0
    )
    margin = [math.ceil(reach / h) + 1 for h in spacing]
    full = image.GetSize()
    index = [max(0, lo - m) for lo, m in zip(lower, margin, strict=True)]
    upper = [min(n, lo + s + m) for lo, s, m, n in zip(lower, size, margin, full, strict=True)]
    crop_size = [u - i for u, i in zip(upper, index, strict=True)]

    image_crop = _crop(image, index, crop_size)
    lesion_crop = sitk.Image(crop_size, sitk.sitkUInt8)
    lesion_crop.CopyInformation(image_crop)
    lesion_crop[tuple(
        slice(lo - i, lo - i + n) for lo, i, n in zip(lower, index, size, strict=True)
    )] = _crop(lesion.region, found[0], size) > 0
    inside = sitk.GetArrayFromImage(lesion_crop).astype(bool)
    values = sitk.GetArrayFromImage(image_crop)
    liver_voxels = None
    if liver is not None:
        liver_voxels = sitk.GetArrayFromImage(_crop(liver, index, crop_size)) > 0
    outside_distance = (
        _distance_outside(lesion_crop)
        if any(v.kind in ("ring", "intra_ring") for v in variants)
        else None
    )
    inside_distance = (
        _distance_outside(sitk.Cast(lesion_crop == 0, sitk.sitkUInt8))
        if any(v.kind == "erosion" for v in variants)
        else None
    )

    masks = []
    for variant in variants:
        if variant.kind == "intra":
            voxels = inside
        elif variant.kind == "erosion":
            assert inside_distance is not None
            voxels = inside & (inside_distance > variant.distance_mm)
        else:
            assert outside_distance is not None
            ring = ~inside & (outside_distance <= variant.distance_mm)
            if variant.exclude:
                ring &= ~_in_ranges(values, [hu_ranges[name] for name in variant.exclude])
            if variant.clip_to_liver and liver_voxels is not None:
                ring &= liver_voxels
            voxels = ring | inside if variant.kind == "intra_ring" else ring
        if not voxels.any():
            raise RoiError(
                f"segment {lesion.number} ({lesion.label}): ROI variant {variant.name!r} has no "
                "voxel"
            )
        mask = sitk.GetImageFromArray(voxels.astype(np.uint8))
        mask.CopyInformation(lesion_crop)
        masks.append(RoiMask(name=variant.name, mask=mask, index=tuple(index)))
    return tuple(masks)


def roi_from_mask(name: str, mask: sitk.Image) -> RoiMask | None:
    """A full-grid 0/1 mask as a RoiMask cropped to its bounding box; None when it is empty."""
    box = voxel_box(mask)
    if box is None:
        return None
    index, size = box
    return RoiMask(name=name, mask=_crop(sitk.Cast(mask > 0, sitk.sitkUInt8), index, size),
                   index=tuple(index))


def on_full_grid(roi: RoiMask, reference: sitk.Image) -> sitk.Image:
    """The variant's mask as a sitkUInt8 image with the size and geometry of ``reference``."""
    full = sitk.Image(reference.GetSize(), sitk.sitkUInt8)
    full.CopyInformation(reference)
    return sitk.Paste(full, roi.mask, roi.mask.GetSize(), [0] * roi.mask.GetDimension(),
                      list(roi.index))
