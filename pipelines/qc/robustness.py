"""Feature robustness to the contour: erode and dilate the ROI by one voxel and re-extract.

This is the volume-adaptation perturbation of Zwanenburg et al. (Sci Rep 2019;9:614, "Assessing
robustness of radiomic features by image perturbation"), applied to one case: the ROI is eroded and
dilated with a ball of ``robustness_radius_voxels`` (SimpleITK BinaryErode/BinaryDilate,
``sitkBall``), every feature of the preset is extracted again through
:func:`pipelines.features.extract_features`, and a feature whose value moves by more than
``robustness_max_relative_change`` (15 %, issue 4) of its value on the original ROI is flagged.
A feature that is 0 on the original ROI counts as moved without limit when a perturbed ROI gives
anything else.

Cost: two extractions more than the plain one (pass the plain one's result as ``original`` to save
the third), each at the preset's full settings; ``QCSettings.feature_robustness`` turns it off.
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

from pipelines.features import FeatureError, RoiFeatures, extract_features, extract_lesions
from pipelines.presets import Preset
from pipelines.qc.report import QCCheck, QCReport
from pipelines.qc.settings import QCSettings
from pipelines.rois import roi_from_mask

_SCOPE = "roi"


def _relative_change(original: float, perturbed: float) -> float:
    if original == 0.0:
        return 0.0 if perturbed == 0.0 else math.inf
    return abs(perturbed - original) / abs(original)


def perturbed_masks(mask: sitk.Image, settings: QCSettings,
                    label: int = 1) -> dict[str, sitk.Image]:
    """``{"erosion": ..., "dilation": ...}``: 0/1 masks of ``mask == label`` eroded and dilated.

    The image border counts as foreground for erosion (SimpleITK's default), so a ROI cut by the
    border is not eaten from that side.
    """
    binary = sitk.Cast(mask == label, sitk.sitkUInt8)
    radius = [settings.robustness_radius_voxels] * binary.GetDimension()
    return {
        "erosion": sitk.BinaryErode(binary, radius, sitk.sitkBall, 0.0, 1.0),
        "dilation": sitk.BinaryDilate(binary, radius, sitk.sitkBall, 0.0, 1.0),
    }


def feature_robustness(
    image: sitk.Image,
    mask: sitk.Image,
    preset: Preset,
    settings: QCSettings | None = None,
    *,
    label: int = 1,
    original: RoiFeatures | None = None,
    subject: str | None = None,
) -> QCReport:
    """Relative change of each feature of ``preset`` when the ROI ``mask == label`` is eroded or
    dilated by one voxel: one check ``robustness.<feature>`` per feature (value in %, the larger of
    the two changes; ``warn`` above the threshold) and a summary ``robustness.unstable`` (count).

    ``original`` is the result of ``extract_features(image, mask, preset, label)`` when the caller
    has it already. A perturbed ROI that pyradiomics refuses (e.g. eroded away) gives a ``warn``
    check ``robustness.erosion`` or ``robustness.dilation`` naming the reason.
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
    perturbed: dict[str, RoiFeatures] = {}
    for name, variant in perturbed_masks(mask, settings, label).items():
        voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(variant)))
        reason = "no voxel is left"
        roi = roi_from_mask(name, variant)
        if roi is not None:
            try:
                # the cropped path: the values of extract_features(image, variant, preset)
                perturbed[name] = extract_lesions(image, [[roi]], preset, names=[subject])[0][name]
                continue
            except FeatureError as error:
                reason = str(error)
        checks.append(QCCheck(
            f"robustness.{name}", _SCOPE, "warn", voxels, "", "features extracted",
            f"{name} by {settings.robustness_radius_voxels} voxel leaves {voxels} voxels and "
            f"features cannot be extracted: {reason}"))
    unstable = 0
    if perturbed:
        for feature, value in original.values.items():
            changes = {name: _relative_change(value, result.values[feature])
                       for name, result in perturbed.items() if feature in result.values}
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
