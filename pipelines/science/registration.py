"""Lesion masks drawn on one series of a study carried onto another series of the same study.

A study job measures the lesions segmented on one series (the *segmented* series, e.g. portal
venous CT or T2 MR) on the study's other series (arterial, delayed; DWI, hepatobiliary...).
:func:`propagate` puts each lesion's mask on the other series' (the *target's*) grid, one of three
ways:

* ``identical-grid``: same Frame of Reference (PS3.3 C.7.4.1: same patient coordinate system) and
  the same grid, every voxel centre within ``same_frame_tolerance_mm``: the masks are copied;
* ``resampled``: same Frame of Reference, another grid: the identity transform, each mask
  resampled as a float with linear interpolation and thresholded at 0.5, so that a target voxel is
  in the lesion when its interpolated value is at least 0.5 (the partial-volume threshold with
  which IBSI 1, Zwanenburg et al., arXiv:1612.07003, section 2.4, interpolates masks);
* ``rigid`` (or ``affine``): otherwise, intensity-based registration with SimpleITK's
  ``ImageRegistrationMethod`` (Lowekamp et al., Front. Neuroinform. 2013;7:45; Yaniv et al.,
  J. Digit. Imaging 2018;31:290): an ``Euler3DTransform`` started by
  ``CenteredTransformInitializer`` (GEOMETRY, image centres), Mattes mutual information
  (Mattes et al., IEEE TMI 2003;22:120; mutual information works across phases and modalities,
  Maes et al., IEEE TMI 1997;16:187), random sampling with a fixed seed, regular-step gradient
  descent with scales from physical shifts, a multi-resolution pyramid (shrink 4/2/1, Gaussian
  smoothing); optionally an ``AffineTransform`` after the rigid one. The metric sees the target
  only inside the lesions' bounding box, widened by ``roi_margin_mm`` and mapped through the
  initial transform: the alignment that matters is the liver's around the lesions, not the whole
  abdomen's.

The transform maps target physical points (LPS, mm) to segmented physical points, the direction
``sitk.Resample`` takes to bring a segmented-grid image onto the target grid.

Quality control (:class:`RegistrationQC`) never raises: a poor registration fails the target
series, which is the caller's decision. It records the final metric, the transform's displacement
at the lesions' centre and its rotation, and each lesion's round-trip Dice: a second, independent
registration the other way (segmented grid as fixed, target as moving; not the analytic inverse)
brings each propagated mask back onto the segmented grid, where it is compared with the lesion as
drawn (inverse-consistency, Christensen & Johnson, IEEE TMI 2001;20:568). Because a registration
that fails the same way in both directions is still consistent, the normalised mutual information
(Studholme et al., Pattern Recognit. 1999;32:71) of the aligned images around the lesions is
checked too: unrelated images score near 1. Neither check sees a registration that settles on
the same wrong alignment both ways with images that still match elsewhere (e.g. anatomy mirrored
left to right): the QC catches inconsistent and unrelated alignments, not every wrong one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import SimpleITK as sitk

Method = Literal["identical-grid", "resampled", "rigid", "affine"]


class RegistrationError(ValueError):
    """Inputs :func:`propagate` cannot handle; the message is one line saying why."""


@dataclass(frozen=True)
class RegistrationSettings:
    """How the masks are propagated and when the result passes quality control.

    ``transform``: ``rigid`` (Euler 3D) or ``affine`` (rigid first, then a 12-parameter affine).
    ``shrink_factors`` and ``smoothing_sigmas_mm`` give the pyramid's levels, coarse to fine.
    ``sampling_fraction`` of the target voxels in the region, drawn with ``seed``, sample the
    metric. The optimiser, gradient descent with a golden-section line search along each
    gradient (``learning_rate`` the search's upper step, in units of the physical shift
    scales), stops when the metric has changed by less than ``convergence`` over its last 10
    iterations, or after ``iterations`` per level. ``threads``: ITK's global default thread
    count while the registrations run (restored after): with more than one, ITK's multi-threaded
    sums make the same inputs give transforms that may differ in their last digits from run to
    run; with 1 they are bit-identical.
    ``coarse_margin_mm`` widens the lesions' bounding box into the region of the first stage,
    ``roi_margin_mm`` into the region of the second.
    ``trust_frame_of_reference``: resample a series of the same frame of reference without
    registering it (off: series of one session are registered too, the patient having breathed
    and moved between them; only an identical grid is copied as is).
    ``min_round_trip_dice``: each lesion's round-trip Dice must reach it.
    ``min_normalised_mutual_information``: the aligned images' NMI, (H(A) + H(B)) / H(A, B) in
    [1, 2], over the region, must reach it (registered series only).
    ``same_frame_tolerance_mm``: two grids whose voxel centres all lie within this distance of each
    other are the same grid.
    """

    transform: Literal["rigid", "affine"] = "rigid"
    histogram_bins: int = 100
    sampling_fraction: float = 0.25
    seed: int = 20240607
    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_sigmas_mm: tuple[float, ...] = (2.0, 1.0, 0.0)
    iterations: int = 100
    learning_rate: float = 1.0
    convergence: float = 1e-6
    roi_margin_mm: float = 30.0
    coarse_margin_mm: float = 80.0
    trust_frame_of_reference: bool = False
    threads: int = 1
    min_round_trip_dice: float = 0.8
    min_normalised_mutual_information: float = 1.02
    same_frame_tolerance_mm: float = 0.01

    def __post_init__(self) -> None:
        problems = []
        if self.transform not in ("rigid", "affine"):
            problems.append(f"transform is {self.transform!r}, not rigid or affine")
        if not self.shrink_factors or len(self.shrink_factors) != len(self.smoothing_sigmas_mm):
            problems.append("shrink_factors and smoothing_sigmas_mm need one value per level")
        if not 0.0 < self.sampling_fraction <= 1.0:
            problems.append(f"sampling_fraction is {self.sampling_fraction}, not in (0, 1]")
        if self.threads < 1:
            problems.append(f"threads is {self.threads}, not at least 1")
        if problems:
            raise RegistrationError("registration settings: " + "; ".join(problems))


@dataclass(frozen=True)
class RegistrationQC:
    """How well the masks were propagated.

    ``metric`` is the final Mattes mutual information (SimpleITK's sign: lower is better) and
    ``normalised_mutual_information`` the NMI around the lesions, both None when nothing was
    registered. ``translation_mm`` is the transform's displacement at the lesions' centre,
    ``rotation_degrees`` the angle of its (nearest) rotation. ``round_trip_dice`` holds one value
    per mask, in the order given. ``reasons`` has one line per failed check.
    """

    method: Method
    metric: float | None
    normalised_mutual_information: float | None
    translation_mm: float
    rotation_degrees: float
    round_trip_dice: tuple[float, ...]
    passed: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Propagation:
    """The masks on the target's grid (uint8, in the order given), the transform used (target
    points to segmented points) and the quality control."""

    masks: tuple[sitk.Image, ...]
    transform: sitk.Transform
    qc: RegistrationQC


def propagate(
    segmented: sitk.Image,
    target: sitk.Image,
    masks: Sequence[sitk.Image],
    *,
    same_frame_of_reference: bool,
    settings: RegistrationSettings = RegistrationSettings(),
) -> Propagation:
    """Carry ``masks`` (binary uint8 on ``segmented``'s grid) onto ``target``'s grid.

    ``same_frame_of_reference`` says whether both series share one Frame of Reference UID
    (0020,0052). The method follows from it and the grids (module docstring). The same inputs and
    settings give the same result.

    Raises:
        RegistrationError: a mask that is not uint8, not on the segmented grid or empty; images
            that are not 3D scalar; a lesion region that does not overlap the target.
    """
    _check_inputs(segmented, target, masks, settings)
    if same_frame_of_reference and _same_grid(segmented, target,
                                              settings.same_frame_tolerance_mm):
        copies = []
        for mask in masks:
            copy = sitk.Image(mask)
            copy.CopyInformation(target)
            copies.append(copy)
        dice = tuple(1.0 for _ in masks)
        qc = _qc("identical-grid", None, None, 0.0, 0.0, dice, copies, settings)
        return Propagation(tuple(copies), sitk.Transform(3, sitk.sitkIdentity), qc)
    if same_frame_of_reference and settings.trust_frame_of_reference:
        identity = sitk.Transform(3, sitk.sitkIdentity)
        moved = tuple(resample_mask(mask, target, identity) for mask in masks)
        back = tuple(resample_mask(mask, segmented, identity) for mask in moved)
        dice = tuple(dice_coefficient(a, b) for a, b in zip(masks, back, strict=True))
        qc = _qc("resampled", None, None, 0.0, 0.0, dice, moved, settings)
        return Propagation(moved, identity, qc)

    previous_threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(settings.threads)
    try:
        forward, metric, nmi = _register(target, segmented, masks, settings,
                                         region_on_fixed=False,
                                         same_frame=same_frame_of_reference)
        moved = tuple(resample_mask(mask, target, forward) for mask in masks)
        # The way back: an independent registration, segmented grid fixed, around the lesions.
        backward, _, _ = _register(segmented, target, masks, settings, region_on_fixed=True,
                                   same_frame=same_frame_of_reference)
    except RuntimeError as error:  # ITK's metric: the optimiser left the images' overlap
        blank = sitk.Image(target.GetSize(), sitk.sitkUInt8)
        blank.CopyInformation(target)
        qc = RegistrationQC(settings.transform, None, None, 0.0, 0.0,
                            tuple(0.0 for _ in masks), False,
                            (f"the registration failed: {_itk_reason(error)}",))
        return Propagation(tuple(blank for _ in masks), sitk.Transform(3, sitk.sitkIdentity),
                           qc)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous_threads)
    back = tuple(resample_mask(mask, segmented, backward) for mask in moved)
    dice = tuple(dice_coefficient(a, b) for a, b in zip(masks, back, strict=True))
    # Displacement of the target point that lands on the lesions' centre.
    centre = _centre(masks, segmented)
    shift = float(np.linalg.norm(np.subtract(centre, forward.GetInverse().TransformPoint(centre))))
    qc = _qc(settings.transform, metric, nmi, shift, rotation_degrees(forward), dice, moved,
             settings)
    return Propagation(moved, forward, qc)


def _itk_reason(error: RuntimeError) -> str:
    """The sentence of an ITK exception that says what went wrong, without its source file and
    object address (e.g. "All samples map outside moving image buffer")."""
    text = str(error)
    found = re.search(r"ITK ERROR: [^:]*: ([^.\n]*)", text)
    return found.group(1) if found else text.splitlines()[-1][:200]


def resample_mask(mask: sitk.Image, reference: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    """``mask`` on ``reference``'s grid through ``transform`` (reference points to mask points):
    resampled as float with linear interpolation, 0 outside, a voxel in where the value >= 0.5."""
    values = sitk.Resample(sitk.Cast(mask > 0, sitk.sitkFloat32), reference, transform,
                           sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.Cast(values >= 0.5, sitk.sitkUInt8)


def dice_coefficient(a: sitk.Image, b: sitk.Image) -> float:
    """2 |A ∩ B| / (|A| + |B|) of two masks on one grid (nonzero is in); 1 when both are empty."""
    left = sitk.GetArrayViewFromImage(a) > 0
    right = sitk.GetArrayViewFromImage(b) > 0
    total = int(left.sum()) + int(right.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(left, right).sum()) / total


def rotation_degrees(transform: sitk.Transform) -> float:
    """The angle of the rotation nearest to ``transform``'s linear part (polar decomposition);
    0 for a transform without one (identity, translation)."""
    matrix = _matrix(transform)
    u, _, vt = np.linalg.svd(matrix)
    rotation = u @ vt
    cosine = (float(np.trace(rotation)) - 1.0) / 2.0
    return math.degrees(math.acos(min(1.0, max(-1.0, cosine))))


def _matrix(transform: sitk.Transform) -> np.ndarray:
    """The 3x3 linear part of a (composite of) matrix-offset transform(s), by finite mapping."""
    origin = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)))
    columns = [np.asarray(transform.TransformPoint(tuple(axis))) - origin for axis in np.eye(3)]
    return np.column_stack(columns)


def _check_inputs(segmented: sitk.Image, target: sitk.Image, masks: Sequence[sitk.Image],
                  settings: RegistrationSettings) -> None:
    for name, image in (("segmented", segmented), ("target", target)):
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise RegistrationError(f"the {name} image is not a 3D scalar image")
    if not masks:
        raise RegistrationError("no masks given: nothing to propagate")
    for k, mask in enumerate(masks, start=1):
        if mask.GetPixelID() != sitk.sitkUInt8:
            raise RegistrationError(
                f"mask {k} is {mask.GetPixelIDTypeAsString()}; masks are binary uint8")
        if not _same_grid(mask, segmented, settings.same_frame_tolerance_mm):
            raise RegistrationError(f"mask {k} is not on the segmented image's grid")
        if not sitk.GetArrayViewFromImage(mask).any():
            raise RegistrationError(f"mask {k} is empty: a lesion needs at least one voxel")


def _corners(image: sitk.Image) -> np.ndarray:
    size = image.GetSize()
    return np.array([image.TransformIndexToPhysicalPoint((i, j, k))
                     for i in (0, size[0] - 1) for j in (0, size[1] - 1)
                     for k in (0, size[2] - 1)])


def _same_grid(a: sitk.Image, b: sitk.Image, tolerance_mm: float) -> bool:
    """Same size, and each corner voxel centre of one within ``tolerance_mm`` of the other's
    (origin, spacing and direction all move a corner)."""
    if a.GetSize() != b.GetSize():
        return False
    return float(np.max(np.linalg.norm(_corners(a) - _corners(b), axis=1))) <= tolerance_mm


def _box(masks: Sequence[sitk.Image]) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest (x, y, z) index of the union of ``masks``."""
    union = np.logical_or.reduce([sitk.GetArrayViewFromImage(m) > 0 for m in masks])
    zyx = np.argwhere(union)
    return zyx.min(axis=0)[::-1], zyx.max(axis=0)[::-1]


def _box_corners_mm(masks: Sequence[sitk.Image], image: sitk.Image,
                    margin_mm: float) -> np.ndarray:
    """The 8 corners (mm) of the masks' physical bounding box, widened by ``margin_mm``, in the
    frame of ``image``'s axes."""
    low, high = _box(masks)
    spacing = np.asarray(image.GetSpacing())
    low = low - 0.5 - margin_mm / spacing
    high = high + 0.5 + margin_mm / spacing
    return np.array([image.TransformContinuousIndexToPhysicalPoint((x, y, z))
                     for x in (low[0], high[0]) for y in (low[1], high[1])
                     for z in (low[2], high[2])])


def _centre(masks: Sequence[sitk.Image], image: sitk.Image) -> tuple[float, float, float]:
    """Physical centre (mm) of the masks' bounding box."""
    low, high = _box(masks)
    centre = image.TransformContinuousIndexToPhysicalPoint(
        tuple(float(v) for v in (low + high) / 2.0))
    return (float(centre[0]), float(centre[1]), float(centre[2]))


def _crop(image: sitk.Image, corners_mm: np.ndarray) -> sitk.Image:
    """``image`` cut to the index box holding ``corners_mm``; refused when they miss it."""
    indices = np.array([image.TransformPhysicalPointToContinuousIndex(tuple(map(float, c)))
                        for c in corners_mm])
    size = np.asarray(image.GetSize())
    low = np.maximum(np.floor(indices.min(axis=0)).astype(int), 0)
    high = np.minimum(np.ceil(indices.max(axis=0)).astype(int), size - 1)
    if np.any(high - low < 1):
        raise RegistrationError(
            "the region around the lesions does not overlap the other image: nothing to register")
    return sitk.RegionOfInterest(image, [int(v) for v in high - low + 1], [int(v) for v in low])


def _region(fixed: sitk.Image, moving: sitk.Image, masks: Sequence[sitk.Image], margin_mm: float,
            initial: sitk.Transform, region_on_fixed: bool) -> sitk.Image:
    """``fixed`` cropped to the lesions' bounding box widened by ``margin_mm``; the box of masks
    on the moving grid is put on the fixed image through ``initial``."""
    if region_on_fixed:
        return _crop(fixed, _box_corners_mm(masks, fixed, margin_mm))
    inverse = initial.GetInverse()
    return _crop(fixed, np.array([inverse.TransformPoint(tuple(map(float, c)))
                                  for c in _box_corners_mm(masks, moving, margin_mm)]))


def _register(fixed: sitk.Image, moving: sitk.Image, masks: Sequence[sitk.Image],
              settings: RegistrationSettings, *, region_on_fixed: bool, same_frame: bool,
              ) -> tuple[sitk.Transform, float, float]:
    """A transform (fixed points to moving points), its final metric value and the NMI.

    ``masks`` lie on the fixed grid when ``region_on_fixed``, else on the moving grid. The
    start: the identity where both images share a frame of reference (``same_frame``), else the
    images' centres aligned (GEOMETRY). Two stages: over the lesions' bounding box widened by
    ``coarse_margin_mm`` with the pyramid but its finest level (the patient's position, within
    the capture range of the coarse levels), then over the box widened by ``roi_margin_mm`` with
    the finest two levels (the liver around the lesions).
    """
    fixed = sitk.Cast(fixed, sitk.sitkFloat32)
    moving = sitk.Cast(moving, sitk.sitkFloat32)
    initial = sitk.Euler3DTransform() if same_frame else sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(),
        sitk.CenteredTransformInitializerFilter.GEOMETRY)
    coarse = _region(fixed, moving, masks, settings.coarse_margin_mm, initial, region_on_fixed)
    # Rotate about the region's centre: rotations then barely move its voxels' translation.
    centre = coarse.TransformContinuousIndexToPhysicalPoint(
        tuple((s - 1) / 2.0 for s in coarse.GetSize()))
    rigid = sitk.Euler3DTransform()
    rigid.SetCenter(centre)
    rigid.SetTranslation(np.subtract(initial.TransformPoint(centre), centre).tolist())
    levels = max(len(settings.shrink_factors) - 1, 1)  # the finest level is the second stage's
    rigid, metric = _run(coarse, moving, rigid, settings, settings.shrink_factors[:levels],
                         settings.smoothing_sigmas_mm[:levels])
    region = _region(fixed, moving, masks, settings.roi_margin_mm, rigid, region_on_fixed)
    rigid, metric = _run(region, moving, rigid, settings, settings.shrink_factors[-2:],
                         settings.smoothing_sigmas_mm[-2:])
    transform: sitk.Transform = rigid
    if settings.transform == "affine":
        affine = sitk.AffineTransform(3)
        affine.SetCenter(rigid.GetCenter())
        affine.SetMatrix(rigid.GetMatrix())
        affine.SetTranslation(rigid.GetTranslation())
        transform, metric = _run(region, moving, affine, settings, settings.shrink_factors[-2:],
                                 settings.smoothing_sigmas_mm[-2:])
    return transform, metric, normalised_mutual_information(region, moving, transform,
                                                            settings.histogram_bins)


def _run(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform,
         settings: RegistrationSettings, shrink: Sequence[int],
         sigmas: Sequence[float]) -> tuple[sitk.Transform, float]:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.histogram_bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(settings.sampling_fraction, settings.seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsGradientDescentLineSearch(
        learningRate=settings.learning_rate, numberOfIterations=settings.iterations,
        convergenceMinimumValue=settings.convergence, convergenceWindowSize=10)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(shrink))
    method.SetSmoothingSigmasPerLevel(list(sigmas))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(transform, inPlace=False)
    # Execute returns a composite whose one member is the optimised copy of ``transform``.
    found = sitk.CompositeTransform(method.Execute(fixed, moving)).GetBackTransform()
    typed = (sitk.Euler3DTransform(found) if found.GetTransformEnum() == sitk.sitkEuler
             else sitk.AffineTransform(found))
    return typed, float(method.GetMetricValue())


def normalised_mutual_information(fixed: sitk.Image, moving: sitk.Image,
                                  transform: sitk.Transform, bins: int) -> float:
    """(H(F) + H(M)) / H(F, M) over the fixed voxels that ``transform`` maps inside ``moving``
    (Studholme et al. 1999), each image's intensities in ``bins`` equal bins between its 1st and
    99th percentile (outside values clipped into the end bins); 1 for independent images, 2 for
    images that determine each other."""
    warped = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, math.nan, sitk.sitkFloat32)
    m = sitk.GetArrayViewFromImage(warped).ravel()
    f = sitk.GetArrayViewFromImage(fixed).ravel()
    inside = ~np.isnan(m)
    f, m = f[inside], m[inside]
    if f.size == 0:
        return 1.0

    def binned(values: np.ndarray) -> np.ndarray:
        low, high = np.percentile(values, [1.0, 99.0])
        scale = bins / (high - low) if high > low else 0.0
        return np.clip(((values - low) * scale).astype(int), 0, bins - 1)

    joint = np.bincount(binned(f) * bins + binned(m), minlength=bins * bins).astype(float)
    joint /= joint.sum()

    def entropy(p: np.ndarray) -> float:
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    table = joint.reshape(bins, bins)
    joint_entropy = entropy(joint)
    if joint_entropy == 0.0:
        return 1.0
    return (entropy(table.sum(axis=1)) + entropy(table.sum(axis=0))) / joint_entropy


def _qc(method: Method, metric: float | None, nmi: float | None, shift: float, rotation: float,
        dice: tuple[float, ...], moved: Sequence[sitk.Image],
        settings: RegistrationSettings) -> RegistrationQC:
    reasons = []
    if nmi is not None and nmi < settings.min_normalised_mutual_information:
        reasons.append(f"normalised mutual information around the lesions {nmi:.3f} < "
                       f"{settings.min_normalised_mutual_information:.3f}: the images do not match")
    for k, (value, mask) in enumerate(zip(dice, moved, strict=True), start=1):
        if not sitk.GetArrayViewFromImage(mask).any():
            reasons.append(f"lesion {k}: nothing of it lies on the target grid")
        elif value < settings.min_round_trip_dice:
            reasons.append(f"lesion {k}: round-trip Dice {value:.3f} < "
                           f"{settings.min_round_trip_dice:.2f}")
    return RegistrationQC(method, metric, nmi, shift, rotation, dice, not reasons, tuple(reasons))
