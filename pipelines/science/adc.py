"""Apparent diffusion coefficient (ADC) map of a DWI series.

The mono-exponential model S(b) = S0 · exp(-b · ADC) (Stejskal & Tanner, J. Chem. Phys.
1965;42:288; Le Bihan et al., Radiology 1986;161:401) is fitted in each voxel by linear least
squares on ln S against b, over every b-value the series holds that is at least ``min_b_value``:
ADC = -slope of the regression line. b-values are in s/mm² (DiffusionBValue (0018,9087),
PS3.3 C.8.13.5.9), so the slope is in mm²/s; the map holds ADC in 10⁻⁶ mm²/s (µm²/s), the unit of
scanners' DICOM ADC maps (UCUM ``um2/s``).

By default every b-value is used. Raising ``min_b_value`` to 100-200 s/mm² leaves out the
low-b signal in which perfusion (pseudo-diffusion) adds to diffusion (intravoxel incoherent
motion, Le Bihan et al., Radiology 1988;168:497; in the liver, Luciani et al., Radiology
2008;249:891), at the cost of fewer points in the fit.

A voxel where any used S ≤ 0 has no logarithm: its ADC is 0 and it is outside ``fitted``. Fitted
values are not clipped: in noise (air, background) the ADC may be negative or implausibly large;
a caller measures within a lesion's mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from pipelines.io.dwi import DiffusionSeries

# mm²/s to the map's unit, 10⁻⁶ mm²/s.
UNIT_SCALE = 1e6
UNIT = "10^-6 mm2/s"


class AdcError(ValueError):
    """A DWI series from which no ADC can be fitted; the message says why in one line."""


@dataclass(frozen=True)
class AdcMethod:
    """How an ADC map was computed: model, fit and the b-values (s/mm²) used."""

    model: str
    fit: str
    b_values: tuple[float, ...]

    def describe(self) -> str:
        """One line for a report, e.g. ``ADC (10^-6 mm2/s): mono-exponential, log-linear least
        squares, b = 0, 400, 800 s/mm2``."""
        b = ", ".join(f"{value:g}" for value in self.b_values)
        return f"ADC ({UNIT}): {self.model}, {self.fit}, b = {b} s/mm2"


@dataclass(frozen=True)
class AdcResult:
    """The ADC map (float32, 10⁻⁶ mm²/s, on the DWI grid), the voxels fitted (uint8, 1 where
    every used S > 0) and the method."""

    image: sitk.Image
    fitted: sitk.Image
    method: AdcMethod


def adc_map(series: DiffusionSeries, *, min_b_value: float = 0.0) -> AdcResult:
    """Fit the mono-exponential ADC in every voxel over the b-values >= ``min_b_value``.

    Raises:
        AdcError: fewer than two b-values left to fit.
    """
    used = tuple(b for b in series.b_values if b >= min_b_value)
    if len(used) < 2:
        raise AdcError(f"b-values {', '.join(f'{b:g}' for b in series.b_values)} s/mm² leave "
                       f"{len(used)} at or above {min_b_value:g}: an ADC needs at least two")
    signals = np.stack([sitk.GetArrayViewFromImage(series.volumes[b].image) for b in used])
    fitted = np.all(signals > 0, axis=0)
    logs = np.log(np.where(fitted, signals, 1.0).astype(np.float64))
    b = np.asarray(used, dtype=np.float64)
    centred = b - b.mean()
    # Least-squares slope of ln S on b: sum((b - mean b) ln S) / sum((b - mean b)^2).
    slope = np.tensordot(centred, logs, axes=1) / float(np.dot(centred, centred))
    adc = np.where(fitted, -slope * UNIT_SCALE, 0.0).astype(np.float32)
    reference = series.volumes[used[0]].image
    image = sitk.GetImageFromArray(adc)
    image.CopyInformation(reference)
    mask = sitk.GetImageFromArray(fitted.astype(np.uint8))
    mask.CopyInformation(reference)
    method = AdcMethod(model="mono-exponential S(b) = S0 exp(-b ADC)",
                       fit="log-linear least squares", b_values=used)
    return AdcResult(image=image, fitted=mask, method=method)
