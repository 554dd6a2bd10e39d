"""Entry points: the QC report of a series and of one ROI on it."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import SimpleITK as sitk

from pipelines.io.series import SeriesVolume
from pipelines.science.features import RoiFeatures
from pipelines.science.presets import Preset
from pipelines.science.qc.acquisition import acquisition_checks
from pipelines.science.qc.image import (
    bias_field_check,
    crop_box,
    distance_outside,
    metal_check,
    noise_check,
    reference_region,
)
from pipelines.science.qc.integrity import hu_range_check, integrity_checks
from pipelines.science.qc.masks import grid_difference, mask_checks
from pipelines.science.qc.plausibility import plausibility_checks
from pipelines.science.qc.report import QCCheck, QCReport
from pipelines.science.qc.robustness import Perturbation, feature_robustness
from pipelines.science.qc.settings import QCSettings


def assess_series(volume: SeriesVolume, settings: QCSettings | None = None) -> QCReport:
    """Acquisition record, integrity of the slice headers and, for CT, the HU range."""
    settings = settings or QCSettings()
    checks = [
        *acquisition_checks(volume, settings),
        *integrity_checks(volume.datasets, settings),
        *hu_range_check(volume, settings),
    ]
    return QCReport(volume.series_instance_uid, "series", tuple(checks))


def _padding(volume: SeriesVolume) -> float | None:
    """Pixel Padding Value (0028,0120) through Rescale Slope and Intercept (PS3.3 C.7.5.1.1.2)."""
    first = volume.datasets[0]
    if first.get("PixelPaddingValue") is None:
        return None
    slope = float(first.get("RescaleSlope", 1) or 1)
    return float(first.PixelPaddingValue) * slope + float(first.get("RescaleIntercept", 0) or 0)


def _field_strength(volume: SeriesVolume) -> float | None:
    value = volume.datasets[0].get("MagneticFieldStrength")
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def _volume_limit(settings: QCSettings, preset: Preset | None) -> tuple[float | None, str]:
    """The largest plausible lesion volume (mL) and where it is set: the preset's limit when it
    sets one, else the QC settings'."""
    if preset is not None and preset.rois.max_lesion_volume_ml is not None:
        return preset.rois.max_lesion_volume_ml, f"preset {preset.name} rois.max_lesion_volume_ml"
    return settings.max_lesion_volume_ml, "QCSettings max_lesion_volume_ml"


def assess_roi(
    volume: SeriesVolume,
    mask: sitk.Image,
    settings: QCSettings | None = None,
    *,
    label: int = 1,
    reference_mask: sitk.Image | None = None,
    preset: Preset | None = None,
    features: RoiFeatures | None = None,
    subject: str | None = None,
    perturbed: Mapping[str, Perturbation] | None = None,
    organ: bool = False,
) -> QCReport:
    """Mask checks, lesion plausibility, image checks and (with ``preset``) feature robustness of
    ``mask == label``.

    ``organ`` says the ROI is an organ measured as such (a liver segment the preset measures,
    ``rois.liver.measure``), not a lesion: the plausibility checks of a lesion
    (:mod:`pipelines.science.qc.plausibility`: volume, CT air and fat fractions) are then left out.
    The volume limit is ``preset.rois.max_lesion_volume_ml`` when the preset sets one, else
    ``settings.max_lesion_volume_ml``.

    ``reference_mask`` (non-zero voxels, on the image grid) is the homogeneous tissue to measure
    noise and bias field in, e.g. a liver segment; without it a shell around the ROI is used.
    ``preset`` turns on the robustness checks when ``settings.feature_robustness`` is set;
    ``features`` is the plain extraction of this ROI with that preset and ``perturbed`` the
    features of its eroded and dilated versions
    (:func:`pipelines.science.qc.robustness.perturbed_features`), if the caller has them.
    Plausibility, image and robustness checks are skipped when the mask is empty or off the
    image grid.

    Raises:
        ValueError: when ``reference_mask`` is not on the image grid.
    """
    settings = settings or QCSettings()
    subject = subject or f"label {label}"
    image = volume.image
    modality = volume.modality
    outside = settings.ct_hu_range[0] if modality == "CT" else _padding(volume)
    checks: list[QCCheck] = mask_checks(image, mask, settings, label=label, outside_value=outside)
    report = QCReport(subject, "roi", tuple(checks))
    if report.check("mask.grid").status == "fail" or report.check("mask.voxels").value == 0:
        return report

    reference = None
    if reference_mask is not None:
        difference = grid_difference(image, reference_mask, settings)
        if difference:
            raise ValueError(f"{subject}: reference_mask is not on the image grid: {difference}")
        reference = sitk.GetArrayViewFromImage(reference_mask) != 0
    roi = sitk.GetArrayViewFromImage(mask) == label
    spacing = tuple(float(s) for s in reversed(image.GetSpacing()))
    margin = max(settings.noise_ring_mm[1],
                 settings.metal_distance_mm if modality == "CT" else settings.bias_ring_mm[1])
    box = crop_box([roi] if reference is None else [roi, reference], spacing, margin)
    values = sitk.GetArrayViewFromImage(image)[box]
    roi = roi[box]
    reference = None if reference is None else reference[box]
    if not organ:
        limit, source = _volume_limit(settings, preset)
        report = report.extended(plausibility_checks(
            values[roi], float(np.prod(spacing)), modality, settings,
            max_volume_ml=limit, limit_source=source))
    distance = distance_outside(roi, spacing)

    region, where = reference_region(values, roi, distance, settings.noise_ring_mm, reference,
                                     modality, settings)
    image_checks = [noise_check(values, region, where, modality, settings)]
    if modality == "CT":
        image_checks.append(metal_check(values, distance, settings))
    elif modality == "MR":
        region, where = reference_region(values, roi, distance, settings.bias_ring_mm, reference,
                                         modality, settings)
        image_checks.append(bias_field_check(values, region, where, spacing,
                                             _field_strength(volume), settings))
    report = report.extended(image_checks)
    if preset is not None and settings.feature_robustness:
        robustness = feature_robustness(image, mask, preset, settings, label=label,
                                        original=features, subject=subject,
                                        perturbed=perturbed)
        report = report.extended(robustness.checks)
    return report

