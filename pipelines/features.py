"""Radiomics features of one ROI, computed by pyradiomics with a preset's parameter set.

The extractor is configured from ``Preset.radiomics`` exactly as pyradiomics reads a parameter
file (``RadiomicsFeatureExtractor(dict)``), so a preset and a pyradiomics parameter file with the
same content give the same values. Feature definitions follow IBSI 1 (Zwanenburg et al.,
Radiology 2020) where pyradiomics does; ``pipelines.codes`` records where it does not.

Logging: pyradiomics installs its own stderr handler on the ``radiomics`` logger and logs every
extraction step at INFO. On import this module silences that handler and raises the logger to
WARNING; warnings and errors still propagate to the application's handlers.
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass

import radiomics
import SimpleITK as sitk
from radiomics.featureextractor import RadiomicsFeatureExtractor

from pipelines.presets import Preset

radiomics.setVerbosity(60)  # 60: pyradiomics' "quiet" level for its own stderr handler
logging.getLogger("radiomics").setLevel(logging.WARNING)

_DIAGNOSTICS_PREFIX = "diagnostics_"


class FeatureError(ValueError):
    """pyradiomics refused the image/mask pair, or returned a value that is not a number."""


@dataclass(frozen=True)
class RoiFeatures:
    """Feature values of one ROI and pyradiomics' diagnostics of the extraction."""

    values: dict[str, float]  # pyradiomics keys, e.g. "original_glcm_Contrast"
    diagnostics: dict[str, str]  # "diagnostics_*" keys, values as text


def extract_features(
    image: sitk.Image, mask: sitk.Image, preset: Preset, label: int = 1
) -> RoiFeatures:
    """Compute the preset's features of the voxels of ``mask`` equal to ``label``.

    ``label`` overrides any ``setting.label`` of the preset: the ROI is chosen by the caller.
    Raises :class:`FeatureError` naming the preset and label when pyradiomics refuses the ROI
    (e.g. too few voxels, mask and image geometry differ) or a value cannot be read as a float.
    """
    with warnings.catch_warnings():
        # pykwalify loads pyradiomics' schema functions with the deprecated load_module().
        warnings.simplefilter("ignore", DeprecationWarning)
        extractor = RadiomicsFeatureExtractor(copy.deepcopy(preset.radiomics))
    try:
        result = extractor.execute(image, mask, label=label)
    except (ValueError, RuntimeError, IndexError) as exc:
        raise FeatureError(f"preset {preset.name}, label {label}: pyradiomics: {exc}") from exc
    values: dict[str, float] = {}
    diagnostics: dict[str, str] = {}
    for key, value in result.items():
        if key.startswith(_DIAGNOSTICS_PREFIX):
            diagnostics[key] = str(value)
            continue
        try:
            values[key] = float(value)
        except (TypeError, ValueError) as exc:
            raise FeatureError(
                f"preset {preset.name}, label {label}: {key}: not a number ({value!r})"
            ) from exc
    return RoiFeatures(values=values, diagnostics=diagnostics)
