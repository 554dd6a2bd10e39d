"""Lesion masks carried from one series onto another (pipelines.science.registration).

A synthetic abdomen (body, liver, spine, two lesions) is drawn in two phases whose contrasts
differ (lesion 1 darker than liver in the first, brighter in the second; lesion 2 the reverse),
the second displaced by a known rigid transform and on another grid. The truth is known
analytically: the target registration error (TRE) at the lesion centres and the masks drawn on
the target grid directly.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import numpy as np
import pytest
import SimpleITK as sitk

from pipelines.science.qc.registration import registration_report
from pipelines.science.registration import (
    Propagation,
    RegistrationError,
    RegistrationSettings,
    dice_coefficient,
    normalised_mutual_information,
    propagate,
    rotation_degrees,
)

# Phantom coordinates are the segmented series' patient coordinates (LPS, mm).
LESIONS = (((8.0, -6.0, 10.0), 8.0), ((-6.0, 10.0, -12.0), 6.0))
# The target's displacement: target point x lies at phantom point R (x - c) + c + t.
TRUE_ROTATION_DEGREES = 3.0
TRUE_TRANSLATION = (3.0, -2.0, 1.5)
TRUE_CENTRE = (0.0, 0.0, 0.0)
# Values (HU-like) of background, body, spine, liver, lesion 1, lesion 2 per phase.
PORTAL = (-1000.0, 40.0, 400.0, 110.0, 60.0, 170.0)
ARTERIAL = (-1000.0, 35.0, 400.0, 70.0, 140.0, 30.0)
# Sub-voxel: under half of either series' slice spacing (2.5 and 3 mm) and under 1 mm.
TRE_TOLERANCE_MM = 1.0
# At the lesions' 15-20 mm from the rotation centre, 0.5 degrees moves a point by under 0.2 mm.
ROTATION_TOLERANCE_DEGREES = 0.5
NMI_THRESHOLD = RegistrationSettings().min_normalised_mutual_information


@dataclass(frozen=True)
class Grid:
    size: tuple[int, int, int]
    spacing: tuple[float, float, float]

    def image(self) -> sitk.Image:
        image = sitk.Image(list(self.size), sitk.sitkFloat32)
        image.SetSpacing(self.spacing)
        # Centred on the phantom's origin.
        image.SetOrigin(tuple(-(n - 1) * s / 2.0 for n, s in zip(self.size, self.spacing,
                                                                  strict=True)))
        return image


SEGMENTED = Grid((96, 96, 40), (0.8, 0.8, 2.5))
TARGET = Grid((104, 104, 34), (0.7, 0.7, 3.0))


def true_transform() -> sitk.Euler3DTransform:
    transform = sitk.Euler3DTransform()
    transform.SetCenter(TRUE_CENTRE)
    transform.SetRotation(0.0, 0.0, math.radians(TRUE_ROTATION_DEGREES))
    transform.SetTranslation(TRUE_TRANSLATION)
    return transform


def _phantom_points(reference: sitk.Image, transform: sitk.Transform | None) -> np.ndarray:
    """Phantom coordinates (z, y, x, 3) of each voxel centre of ``reference``."""
    size = reference.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n, dtype=float) for n in size[::-1]), indexing="ij")
    index = np.stack([i, j, k], axis=-1) * np.asarray(reference.GetSpacing())
    direction = np.asarray(reference.GetDirection()).reshape(3, 3)
    points = index @ direction.T + np.asarray(reference.GetOrigin())
    if transform is None:
        return points
    matrix = np.asarray(true_transform().GetMatrix()).reshape(3, 3)
    centre = np.asarray(TRUE_CENTRE)
    return (points - centre) @ matrix.T + centre + np.asarray(TRUE_TRANSLATION)


def _inside_lesion(points: np.ndarray, lesion: int) -> np.ndarray:
    centre, radius = LESIONS[lesion]
    return np.linalg.norm(points - np.asarray(centre), axis=-1) <= radius


def draw(grid: Grid, values: tuple[float, ...], *, displaced: bool, seed: int) -> sitk.Image:
    """The phantom on ``grid`` (displaced by the true transform for the target), blurred by a
    1 mm Gaussian point spread and with Gaussian noise of SD 10."""
    reference = grid.image()
    p = _phantom_points(reference, true_transform() if displaced else None)
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    image = np.full(p.shape[:3], values[0], dtype=np.float32)
    image[(x / 34.0) ** 2 + (y / 28.0) ** 2 <= 1.0] = values[1]
    image[((x + 2.0) / 5.0) ** 2 + ((y - 20.0) / 5.0) ** 2 <= 1.0] = values[2]
    image[((x - 2.0) / 24.0) ** 2 + ((y + 1.0) / 17.0) ** 2 + (z / 40.0) ** 2 <= 1.0] = values[3]
    for lesion in range(len(LESIONS)):
        image[_inside_lesion(p, lesion)] = values[4 + lesion]
    result = sitk.GetImageFromArray(image)
    result.CopyInformation(reference)
    result = sitk.SmoothingRecursiveGaussian(result, 1.0)
    noise = np.random.default_rng(seed).normal(0.0, 10.0, image.shape).astype(np.float32)
    noisy = sitk.GetImageFromArray(sitk.GetArrayFromImage(result) + noise)
    noisy.CopyInformation(reference)
    return noisy


def truth_masks(grid: Grid, *, displaced: bool) -> tuple[sitk.Image, ...]:
    """Each lesion drawn directly on ``grid``: the voxel centres inside its sphere."""
    reference = grid.image()
    points = _phantom_points(reference, true_transform() if displaced else None)
    masks = []
    for lesion in range(len(LESIONS)):
        mask = sitk.GetImageFromArray(_inside_lesion(points, lesion).astype(np.uint8))
        mask.CopyInformation(reference)
        masks.append(mask)
    return tuple(masks)


@pytest.fixture(scope="module")
def phases() -> tuple[sitk.Image, sitk.Image, tuple[sitk.Image, ...]]:
    return (draw(SEGMENTED, PORTAL, displaced=False, seed=1),
            draw(TARGET, ARTERIAL, displaced=True, seed=2),
            truth_masks(SEGMENTED, displaced=False))


@pytest.fixture(scope="module")
def registered(phases: tuple[sitk.Image, sitk.Image, tuple[sitk.Image, ...]]
               ) -> tuple[Propagation, float]:
    segmented, target, masks = phases
    start = time.perf_counter()
    result = propagate(segmented, target, masks, same_frame_of_reference=False)
    return result, time.perf_counter() - start


def tre_mm(transform: sitk.Transform) -> list[float]:
    """At each lesion centre: the distance between where ``transform`` and the truth send the
    target point that truly lies on it."""
    inverse = true_transform().GetInverse()
    return [float(np.linalg.norm(np.subtract(transform.TransformPoint(inverse.TransformPoint(c)),
                                             c)))
            for c, _ in LESIONS]


def test_rigid_registration_recovers_the_displacement(
        phases: tuple[sitk.Image, sitk.Image, tuple[sitk.Image, ...]],
        registered: tuple[Propagation, float]) -> None:
    _, target, _ = phases
    result, seconds = registered
    errors = tre_mm(result.transform)
    rotation_error = abs(rotation_degrees(result.transform) - TRUE_ROTATION_DEGREES)
    dice = [dice_coefficient(a, b) for a, b in
            zip(result.masks, truth_masks(TARGET, displaced=True), strict=True)]
    print(f"\nrigid: TRE {[round(e, 3) for e in errors]} mm, rotation error "
          f"{rotation_error:.3f} deg, Dice vs truth {[round(d, 3) for d in dice]}, round-trip "
          f"Dice {[round(d, 3) for d in result.qc.round_trip_dice]}, NMI "
          f"{result.qc.normalised_mutual_information:.3f}, metric {result.qc.metric:.3f}, "
          f"{seconds:.1f} s")
    assert max(errors) < TRE_TOLERANCE_MM
    assert rotation_error < ROTATION_TOLERANCE_DEGREES
    assert min(dice) > 0.85
    assert result.qc.method == "rigid"
    assert result.qc.passed, result.qc.reasons
    assert result.qc.normalised_mutual_information > NMI_THRESHOLD + 0.3
    assert min(result.qc.round_trip_dice) > 0.85
    assert result.qc.translation_mm == pytest.approx(
        float(np.linalg.norm(tre_offset())), abs=TRE_TOLERANCE_MM)
    for mask in result.masks:
        assert mask.GetPixelID() == sitk.sitkUInt8
        assert mask.GetSize() == target.GetSize()
        assert mask.GetOrigin() == target.GetOrigin()
        assert mask.GetSpacing() == target.GetSpacing()
        assert mask.GetDirection() == target.GetDirection()


def tre_offset() -> np.ndarray:
    """The true displacement at the lesions' bounding-box centre."""
    low = np.min([np.subtract(c, r) for c, r in LESIONS], axis=0)
    high = np.max([np.add(c, r) for c, r in LESIONS], axis=0)
    centre = (low + high) / 2.0
    return centre - np.asarray(true_transform().GetInverse().TransformPoint(centre.tolist()))


def test_the_same_inputs_give_the_same_result(
        phases: tuple[sitk.Image, sitk.Image, tuple[sitk.Image, ...]],
        registered: tuple[Propagation, float]) -> None:
    segmented, target, masks = phases
    again = propagate(segmented, target, masks, same_frame_of_reference=False)
    first, _ = registered
    assert again.transform.GetParameters() == first.transform.GetParameters()
    assert again.qc == first.qc
    for a, b in zip(again.masks, first.masks, strict=True):
        assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))


def test_affine_after_rigid_recovers_the_displacement(
        phases: tuple[sitk.Image, sitk.Image, tuple[sitk.Image, ...]]) -> None:
    segmented, target, masks = phases
    result = propagate(segmented, target, masks, same_frame_of_reference=False,
                       settings=RegistrationSettings(transform="affine"))
    errors = tre_mm(result.transform)
    print(f"\naffine: TRE {[round(e, 3) for e in errors]} mm, round-trip Dice "
          f"{[round(d, 3) for d in result.qc.round_trip_dice]}")
    assert result.qc.method == "affine"
    assert isinstance(result.transform, sitk.AffineTransform)
    assert max(errors) < TRE_TOLERANCE_MM
    assert result.qc.passed, result.qc.reasons


def test_an_unrelated_target_fails_qc_naming_each_lesion(
        phases: tuple[sitk.Image, sitk.Image, tuple[sitk.Image, ...]]) -> None:
    segmented, target, masks = phases
    # The target's voxels shuffled: the same histogram, no anatomy.
    values = sitk.GetArrayFromImage(target)
    shuffled = sitk.GetImageFromArray(
        np.random.default_rng(3).permutation(values.ravel()).reshape(values.shape))
    shuffled.CopyInformation(target)
    result = propagate(segmented, shuffled, masks, same_frame_of_reference=False)
    print(f"\nunrelated: round-trip Dice {[round(d, 3) for d in result.qc.round_trip_dice]}, "
          f"reasons {result.qc.reasons}")
    assert not result.qc.passed
    # nothing to align: the optimiser leaves the images' overlap, which fails the series
    assert result.qc.reasons[0] == \
        "the registration failed: All samples map outside moving image buffer"
    assert result.qc.round_trip_dice == (0.0, 0.0)
    assert [sitk.GetArrayViewFromImage(mask).any() for mask in result.masks] == [False, False]
    # The threshold lies between unrelated images' NMI and the matched phases' (rigid test).
    assert normalised_mutual_information(target, shuffled, sitk.Euler3DTransform(),
                                         100) < NMI_THRESHOLD
    report = registration_report("arterial", "1.2.3", result.qc, ["lesion 1", "lesion 2"],
                                 RegistrationSettings())
    assert [(c.name, c.value) for c in report.checks if c.status == "fail"] == [
        ("registration", "the registration failed: All samples map outside moving image buffer"),
        ("round-trip overlap lesion 1", 0.0), ("round-trip overlap lesion 2", 0.0)]


def test_an_identical_grid_copies_the_masks(
        phases: tuple[sitk.Image, sitk.Image, tuple[sitk.Image, ...]]) -> None:
    segmented, _, masks = phases
    other_phase = draw(SEGMENTED, ARTERIAL, displaced=False, seed=4)
    # Rounding in a header moves the origin a little, within the tolerance.
    other_phase.SetOrigin(np.add(other_phase.GetOrigin(), (0.001, 0.0, -0.002)).tolist())
    result = propagate(segmented, other_phase, masks, same_frame_of_reference=True)
    assert result.qc.method == "identical-grid"
    assert result.qc.passed
    assert result.qc.round_trip_dice == (1.0, 1.0)
    assert result.transform.GetTransformEnum() == sitk.sitkIdentity
    for copy, mask in zip(result.masks, masks, strict=True):
        assert np.array_equal(sitk.GetArrayFromImage(copy), sitk.GetArrayFromImage(mask))
        assert copy.GetOrigin() == other_phase.GetOrigin()


def test_another_grid_in_the_same_frame_is_registered_unless_the_frame_is_trusted(
        phases: tuple[sitk.Image, sitk.Image, tuple[sitk.Image, ...]]) -> None:
    """Series of one session share a frame of reference, and the patient still breathes and
    moves between them: by default only an identical grid is copied, another one registered."""
    segmented, _, masks = phases
    target = draw(TARGET, ARTERIAL, displaced=False, seed=2)
    result = propagate(segmented, target, masks, same_frame_of_reference=True)
    assert result.qc.method == "rigid"
    assert result.qc.passed
    assert min(dice_coefficient(a, b) for a, b in zip(
        result.masks, truth_masks(TARGET, displaced=False), strict=True)) > 0.85


def test_another_grid_in_the_same_frame_is_resampled(
        phases: tuple[sitk.Image, sitk.Image, tuple[sitk.Image, ...]]) -> None:
    segmented, _, masks = phases
    target = TARGET.image()
    trusted = RegistrationSettings(trust_frame_of_reference=True)
    result = propagate(segmented, target, masks, same_frame_of_reference=True, settings=trusted)
    dice = [dice_coefficient(a, b)
            for a, b in zip(result.masks, truth_masks(TARGET, displaced=False), strict=True)]
    print(f"\nresampled: Dice vs truth {[round(d, 3) for d in dice]}, round-trip "
          f"{[round(d, 3) for d in result.qc.round_trip_dice]}")
    assert result.qc.method == "resampled"
    assert result.qc.passed
    assert result.transform.GetTransformEnum() == sitk.sitkIdentity
    assert min(dice) > 0.9
    assert result.masks[0].GetSize() == target.GetSize()
    # A lesion thinner than half a target slice disappears: the reason names it.
    sliver = sitk.Image(masks[0])
    sliver[:, :, :] = 0
    sliver[40:44, 40:44, 20] = 1
    thick = replace(TARGET, spacing=(0.7, 0.7, 6.0))
    shifted = thick.image()
    shifted.SetOrigin(np.add(shifted.GetOrigin(), (0.0, 0.0, 2.0)).tolist())
    lost = propagate(segmented, shifted, [masks[0], sliver], same_frame_of_reference=True,
                     settings=trusted)
    assert not lost.qc.passed
    assert lost.qc.reasons == ("lesion 2: nothing of it lies on the target grid",)


def test_inputs_it_cannot_handle_are_refused(
        phases: tuple[sitk.Image, sitk.Image, tuple[sitk.Image, ...]]) -> None:
    segmented, target, masks = phases
    empty = sitk.Image(masks[0])
    empty[:, :, :] = 0
    with pytest.raises(RegistrationError, match="mask 2 is empty"):
        propagate(segmented, target, [masks[0], empty], same_frame_of_reference=False)
    with pytest.raises(RegistrationError, match="mask 1 is 32-bit float"):
        propagate(segmented, target, [sitk.Cast(masks[0], sitk.sitkFloat32)],
                  same_frame_of_reference=False)
    with pytest.raises(RegistrationError, match="not on the segmented image's grid"):
        propagate(segmented, target, [truth_masks(TARGET, displaced=True)[0]],
                  same_frame_of_reference=False)
    # Centred on each other first (GEOMETRY), the images overlap whatever their origins: a
    # lesion region outside the target is one at the segmented image's corner, far from a small
    # target's extent.
    corner = sitk.Image(masks[0])
    corner[:, :, :] = 0
    corner[0, 0, 0] = 1
    small_target = sitk.RegionOfInterest(target, [8, 8, 4], [48, 48, 15])
    with pytest.raises(RegistrationError, match="does not overlap"):
        propagate(segmented, small_target, [corner], same_frame_of_reference=False,
                  settings=RegistrationSettings(roi_margin_mm=1.0, coarse_margin_mm=1.0))


def test_settings_it_cannot_use_are_refused() -> None:
    with pytest.raises(RegistrationError, match=r"transform is 'bspline'.*one value per level"):
        RegistrationSettings(transform="bspline", shrink_factors=(4, 2))  # type: ignore[arg-type]
