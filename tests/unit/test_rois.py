"""ROI variants: ring and erosion volumes of voxelised spheres against 4/3 pi r^3 geometry."""

import math

import highdicom as hd
import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.sr.codedict import codes

from pipelines.io.segmentation import Segment
from pipelines.science.presets import LiverSegmentRule, RoiVariant
from pipelines.science.rois import RoiError, build_variants, is_liver, on_full_grid

SPACING = (0.5, 0.5, 0.8)  # anisotropic on purpose: distances must be in mm, not voxels
RADIUS = 8.0


def _grid(spacing=SPACING, half_mm=18.0):
    sizes = [2 * math.ceil(half_mm / h) + 1 for h in spacing]
    axes = [(np.arange(n) - (n - 1) / 2) * h for n, h in zip(sizes, spacing, strict=True)]
    z, y, x = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    return x, y, z


def _image(array, spacing=SPACING):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((-3.0, 7.0, 11.0))
    return image


def _segment(mask, label="Lesion 1", property_type=codes.SCT.Neoplasm):
    return Segment(
        number=1,
        label=label,
        region=mask,
        category=hd.sr.CodedConcept("49755003", "SCT", "Morphologically Altered Structure"),
        property_type=property_type,
        algorithm_type="MANUAL",
    )


@pytest.fixture(scope="module")
def sphere():
    x, y, z = _grid()
    radius2 = x**2 + y**2 + z**2
    ball = (radius2 <= RADIUS**2).astype(np.uint8)
    # CT values: lesion 40 HU, fat shell (-100 HU) between 10 and 11 mm, air beyond 13 mm
    values = np.full(ball.shape, 40.0, dtype=np.float32)
    values[(radius2 > 10.0**2) & (radius2 <= 11.0**2)] = -100.0
    values[radius2 > 13.0**2] = -1000.0
    return _image(values), _segment(_image(ball)), np.sqrt(radius2)


def _volume(roi) -> float:
    mask = roi.mask if hasattr(roi, "mask") else roi
    return float(sitk.GetArrayViewFromImage(mask).sum()) * math.prod(mask.GetSpacing())


def _shell(inner: float, outer: float) -> float:
    return 4 / 3 * math.pi * (outer**3 - inner**3)


@pytest.mark.parametrize("k", [2.0, 4.0])
def test_ring_intra_ring_and_erosion_volumes_match_sphere_geometry(sphere, k: float) -> None:
    image, lesion, _ = sphere
    variants = [
        RoiVariant(kind="intra"),
        RoiVariant(kind="ring", distance_mm=k),
        RoiVariant(kind="intra_ring", distance_mm=k),
        RoiVariant(kind="erosion", distance_mm=k),
    ]
    intra, ring, both, eroded = build_variants(image, lesion, variants, {})
    assert [r.name for r in (intra, ring, both, eroded)] == [
        "intra", f"{k:g} mm ring", f"intra + {k:g} mm ring", f"eroded {k:g} mm"]
    # The voxel-centre discretisation moves a boundary by less than a quarter of the largest
    # voxel side; allow that much times the boundary's area.
    slack = max(SPACING) / 4
    assert _volume(intra) == pytest.approx(_shell(0, RADIUS), abs=4 * math.pi * RADIUS**2 * slack)
    assert _volume(ring) == pytest.approx(
        _shell(RADIUS, RADIUS + k), abs=4 * math.pi * (RADIUS + k) ** 2 * slack)
    assert _volume(both) == pytest.approx(_volume(intra) + _volume(ring))
    assert _volume(eroded) == pytest.approx(
        _shell(0, RADIUS - k), abs=4 * math.pi * (RADIUS - k) ** 2 * slack)
    full = sitk.GetArrayFromImage(on_full_grid(ring, image))
    assert full.shape == sitk.GetArrayViewFromImage(image).shape
    assert full.sum() == sitk.GetArrayViewFromImage(ring.mask).sum()
    assert not (full & sitk.GetArrayViewFromImage(lesion.mask)).any()


def test_rings_drop_excluded_hu_ranges_and_keep_the_lesion(sphere) -> None:
    image, lesion, radius = sphere
    variants = [RoiVariant(kind="intra_ring", distance_mm=6.0, exclude=("air", "fat"))]
    hu_ranges = {"air": (None, -500.0), "fat": (-190.0, -30.0)}
    (roi,) = build_variants(image, lesion, variants, hu_ranges)
    assert roi.name == "intra + 6 mm ring, without air/fat"
    full = sitk.GetArrayFromImage(on_full_grid(roi, image)).astype(bool)
    values = sitk.GetArrayViewFromImage(image)
    assert full[radius <= RADIUS].all()
    assert not full[(values < -30) & (radius > RADIUS)].any()
    # what is left of the ring: 8..10 mm and 11..14 mm minus air beyond 13 mm
    kept = _shell(RADIUS, 10.0) + _shell(11.0, 13.0) + _shell(0, RADIUS)
    assert _volume(roi.mask) == pytest.approx(kept, rel=0.06)


def test_rings_are_clipped_to_the_liver(sphere) -> None:
    image, lesion, _ = sphere
    x, _, _ = _grid()
    liver = _image((x <= 0).astype(np.uint8))
    ring = RoiVariant(kind="ring", distance_mm=4.0, clip_to_liver=True)
    (clipped,) = build_variants(image, lesion, [ring], {}, liver=liver)
    (whole,) = build_variants(image, lesion, [RoiVariant(kind="ring", distance_mm=4.0)], {})
    assert clipped.name == "4 mm ring, liver only"
    assert _volume(clipped.mask) == pytest.approx(_volume(whole.mask) / 2, rel=0.05)
    (unclipped,) = build_variants(image, lesion, [ring], {}, liver=None)
    assert _volume(unclipped.mask) == _volume(whole.mask)


def test_empty_variant_and_empty_lesion_are_refused(sphere) -> None:
    image, lesion, _ = sphere
    with pytest.raises(RoiError, match=r"segment 1 \(Lesion 1\): ROI variant 'eroded 9 mm' has no"):
        build_variants(image, lesion, [RoiVariant(kind="erosion", distance_mm=9.0)], {})
    empty = _segment(sitk.Image(image.GetSize(), sitk.sitkUInt8))
    with pytest.raises(RoiError, match=r"the mask has no voxel"):
        build_variants(image, empty, [RoiVariant(kind="intra")], {})


def test_liver_is_found_by_code_or_label() -> None:
    mask = sitk.Image(2, 2, 2, sitk.sitkUInt8)
    rule = LiverSegmentRule()
    assert is_liver(_segment(mask, "Segment 3", codes.SCT.Liver), rule)
    assert is_liver(_segment(mask, " Liver "), rule)
    assert not is_liver(_segment(mask, "Liver lesion"), rule)
    assert is_liver(_segment(mask, "Leber"), LiverSegmentRule(label_regex="(?i)leber"))
