"""Feature robustness to the contour: erode and dilate the ROI by one voxel and re-extract.

This is the volume-adaptation perturbation of Zwanenburg et al. (Sci Rep 2019;9:614, "Assessing
robustness of radiomic features by image perturbation"), applied to one case: the ROI is eroded and
dilated with a ball of ``robustness_radius_voxels`` (SimpleITK BinaryErode/BinaryDilate,
``sitkBall``), every feature of the preset is extracted again through
:func:`pipelines.science.features.extract_lesions` on the same (normalised) image as the ROI itself,
and a feature whose value moves by more than ``robustness_max_relative_change`` (15 %, issue 4) of
its value on the original ROI is flagged. A feature that is 0 on the original ROI counts as moved
without limit when a perturbed ROI gives anything else.

Cost: two extractions more than the plain one, each at the preset's full settings;
``QCSettings.feature_robustness`` turns it off. :func:`perturbed_plan` plans them for every
lesion of a study as extraction tasks (``pipelines.process`` does so in its extraction stage,
run where the node runs the job's tasks), :func:`feature_robustness` compares.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from pipelines.io.segmentation import voxel_box
from pipelines.plan import Tasks, run_tasks
from pipelines.science.features import (
    FeatureError,
    RoiFeatures,
    TaskResult,
    extract_features,
    features_plan,
)
from pipelines.science.presets import Preset
from pipelines.science.qc.report import QCCheck, QCReport
from pipelines.science.qc.settings import QCSettings
from pipelines.science.rois import RoiMask, roi_from_mask

_SCOPE = "roi"


def _relative_change(original: float, perturbed: float) -> float:
    if original == 0.0:
        return 0.0 if perturbed == 0.0 else math.inf
    return abs(perturbed - original) / abs(original)


def perturbed_rois(region: sitk.Image, index: Sequence[int], grid_size: Sequence[int],
                   settings: QCSettings) -> dict[str, RoiMask | None]:
    """``{"erosion": ..., "dilation": ...}``: the ROI whose 0/1 mask ``region`` starts at voxel
    ``index`` of a grid of ``grid_size``, eroded and dilated, each cropped to its voxels (None
    when none is left).

    The region is padded by the radius, within the grid, so the result is the full-grid
    operation's: the grid's border counts as foreground for erosion (SimpleITK's default), so a
    ROI cut by the border is not eaten from that side."""
    radius = settings.robustness_radius_voxels
    size = region.GetSize()
    lower = [max(0, i - radius) for i in index]
    upper = [min(n, i + s + radius) for i, s, n in zip(index, size, grid_size, strict=True)]
    padded = sitk.ConstantPad(
        sitk.Cast(region > 0, sitk.sitkUInt8),
        [i - lo for i, lo in zip(index, lower, strict=True)],
        [up - i - s for up, i, s in zip(upper, index, size, strict=True)], 0)
    kernel = [radius] * padded.GetDimension()
    rois: dict[str, RoiMask | None] = {}
    for name, perturbed in (
        ("erosion", sitk.BinaryErode(padded, kernel, sitk.sitkBall, 0.0, 1.0)),
        ("dilation", sitk.BinaryDilate(padded, kernel, sitk.sitkBall, 0.0, 1.0)),
    ):
        roi = roi_from_mask(name, perturbed)
        rois[name] = None if roi is None else RoiMask(
            name, roi.mask, tuple(lo + i for lo, i in zip(lower, roi.index, strict=True)))
    return rois


@dataclass(frozen=True)
class Perturbation:
    """One perturbed ROI: its voxel count and features, or why there are none."""

    voxels: int
    features: RoiFeatures | None
    reason: str = ""


Perturbed = dict[str, Perturbation]  # "erosion" / "dilation" -> the perturbed ROI


def _voxels(roi: RoiMask | None) -> int:
    return 0 if roi is None else int(np.count_nonzero(sitk.GetArrayViewFromImage(roi.mask)))


def perturbed_features(
    image: sitk.Image,
    lesions: Sequence[tuple[sitk.Image, Sequence[int]]],
    preset: Preset,
    settings: QCSettings,
    *,
    zscore: Sequence[tuple[float, float] | None] | None = None,
    names: Sequence[str] | None = None,
) -> list[Perturbed]:
    """:func:`perturbed_plan` run in this process."""
    return run_tasks(perturbed_plan(image, lesions, preset, settings, zscore=zscore, names=names))


def perturbed_plan(
    image: sitk.Image,
    lesions: Sequence[tuple[sitk.Image, Sequence[int]]],
    preset: Preset,
    settings: QCSettings,
    *,
    zscore: Sequence[tuple[float, float] | None] | None = None,
    names: Sequence[str] | None = None,
) -> Generator[Tasks[Any, TaskResult], list[TaskResult], list[Perturbed]]:
    """A plan (``pipelines.plan``) whose result is the eroded and dilated ROI of each lesion,
    given as (0/1 mask region, its index on the grid of ``image``), with their features: one
    :func:`pipelines.science.features.features_plan` plan, with the image and z-scores the lesions'
    own features were extracted with. When pyradiomics refuses one of them, each is extracted
    on its own to tell which, and the refused ones carry the reason.
    """
    names = list(names) if names is not None else [f"lesion {n}" for n in range(len(lesions))]
    zscore = list(zscore) if zscore is not None else [None] * len(lesions)
    grid_size = image.GetSize()
    rois = [perturbed_rois(region, index, grid_size, settings) for region, index in lesions]
    present = [[roi for roi in by_name.values() if roi is not None] for by_name in rois]
    todo = [n for n, lesion_rois in enumerate(present) if lesion_rois]

    def extract(numbers: Sequence[int], chosen: Sequence[Sequence[RoiMask]]
                ) -> Generator[Tasks[Any, TaskResult], list[TaskResult],
                               list[dict[str, RoiFeatures]]]:
        return features_plan(image, chosen, preset, zscore=[zscore[n] for n in numbers],
                               names=[names[n] for n in numbers])

    found: dict[tuple[int, str], RoiFeatures | str] = {}
    try:
        extracted = yield from extract(todo, [present[n] for n in todo])
        for n, by_name in zip(todo, extracted, strict=True):
            found.update(((n, name), features) for name, features in by_name.items())
    except FeatureError:
        for n in todo:
            for roi in present[n]:
                try:
                    found[(n, roi.name)] = (yield from extract([n], [[roi]]))[0][roi.name]
                except FeatureError as error:
                    found[(n, roi.name)] = str(error)
    results: list[Perturbed] = []
    for n, by_name in enumerate(rois):
        perturbed: Perturbed = {}
        for name, roi in by_name.items():
            value = found.get((n, name), "no voxel is left")
            perturbed[name] = Perturbation(_voxels(roi), value, "") if isinstance(
                value, RoiFeatures) else Perturbation(_voxels(roi), None, value)
        results.append(perturbed)
    return results


def feature_robustness(
    image: sitk.Image,
    mask: sitk.Image,
    preset: Preset,
    settings: QCSettings | None = None,
    *,
    label: int = 1,
    original: RoiFeatures | None = None,
    subject: str | None = None,
    perturbed: Mapping[str, Perturbation] | None = None,
) -> QCReport:
    """Relative change of each feature of ``preset`` when the ROI ``mask == label`` is eroded or
    dilated by one voxel: one check ``robustness.<feature>`` per feature (value in %, the larger of
    the two changes; ``warn`` above the threshold) and a summary ``robustness.unstable`` (count).

    ``original`` is the result of ``extract_features(image, mask, preset, label)`` when the caller
    has it already, ``perturbed`` the :func:`perturbed_features` of the ROI (otherwise both are
    extracted here, from ``image``). A perturbed ROI that pyradiomics refuses (e.g. eroded away)
    gives a ``warn`` check ``robustness.erosion`` or ``robustness.dilation`` naming the reason.
    """
    settings = settings or QCSettings()
    subject = subject or f"label {label}"
    limit = settings.robustness_max_relative_change
    rule = f"<= {100 * limit:g} %"
    checks: list[QCCheck] = []
    if original is None:
        try:
            original = extract_features(image, mask, preset, label=label)
        except FeatureError as error:
            return QCReport(subject, _SCOPE, (QCCheck(
                "robustness.original", _SCOPE, "warn", None, "", "features extracted",
                f"features of the ROI itself cannot be extracted, so robustness is unknown: "
                f"{error}"),))
    if perturbed is None:
        binary = sitk.Cast(mask == label, sitk.sitkUInt8)
        box = voxel_box(binary)
        perturbed = {name: Perturbation(0, None, "no voxel is left")
                     for name in ("erosion", "dilation")} if box is None else perturbed_features(
            image, [(sitk.RegionOfInterest(binary, box[1], box[0]), box[0])], preset, settings,
            names=[subject])[0]
    for name, perturbation in perturbed.items():
        if perturbation.features is None:
            checks.append(QCCheck(
                f"robustness.{name}", _SCOPE, "warn", perturbation.voxels, "",
                "features extracted",
                f"{name} by {settings.robustness_radius_voxels} voxel leaves "
                f"{perturbation.voxels} voxels and features cannot be extracted: "
                f"{perturbation.reason}"))
    extracted = {name: p.features for name, p in perturbed.items() if p.features is not None}
    unstable = 0
    if extracted:
        for feature, value in original.values.items():
            changes = {name: _relative_change(value, result.values[feature])
                       for name, result in extracted.items() if feature in result.values}
            if not changes:
                continue
            worst_name = max(changes, key=lambda n: changes[n])
            worst = changes[worst_name]
            moved = worst > limit
            unstable += int(moved)
            details = ", ".join(f"{n} {100 * c:.3g} %" for n, c in changes.items())
            checks.append(QCCheck(
                f"robustness.{feature}", _SCOPE, "warn" if moved else "pass", 100 * worst, "%",
                rule, f"relative change: {details}" + (
                    f"; moves more than {100 * limit:g} % with a one-voxel {worst_name}"
                    if moved else "")))
    total = len(original.values)
    checks.append(QCCheck(
        "robustness.unstable", _SCOPE, "info", unstable, "", "",
        f"{unstable} of {total} features move more than {100 * limit:g} % when the ROI is "
        f"eroded or dilated by {settings.robustness_radius_voxels} voxel"))
    return QCReport(subject, _SCOPE, tuple(checks))
