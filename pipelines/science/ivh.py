"""Intensity-volume histogram (IVH) features of the IBSI 1 reference manual (Zwanenburg et al.,
arXiv:1612.07003, section 3.5), which pyradiomics does not compute; used by
``pipelines.science.ibsi`` for presets whose ``ibsi.ivh`` asks for them
(``pipelines.science.presets.IbsiIvh``).

The IVH is computed on the intensity mask's voxels (after re-segmentation, section 2.5) of the
image as interpolated and rounded, with its own discretisation (section 2.7 applied to the IVH,
section 3.5 "Discretisation"):

* ``none``: integer intensities (CT in HU) are their own levels, from the re-segmentation
  range's lower to its upper bound (the ROI's minimum or maximum where the range gives none);
* ``fixed_bin_size`` w: bins counted from that lower bound, each level the centre of its bin,
  X_min + (k - 0.5) w, k = 1 .. ceil((X_max - X_min) / w) + 1;
* ``fixed_bin_number`` N: levels 1 .. N from the ROI's minimum to its maximum; the intensities
  the features report are then bin numbers, named ``...Bin`` (unit 1, not the modality's).

Over the levels i, the intensity fraction is gamma_i = (i - i_min) / (i_max - i_min) and the
volume fraction nu_i the fraction of voxels whose level is at least i. V_x is the largest nu at
gamma >= x, I_x the lowest level with nu <= x (the level after the last where none is), and the
area under the curve integrates nu over gamma by the trapezoidal rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipelines.science.presets import IbsiIvh

FRACTIONS = (10, 90)  # the percentages IBSI 1 names with codes of their own


class IvhError(ValueError):
    """Intensities the IVH's discretisation cannot take (``none`` on non-integer values)."""


@dataclass(frozen=True)
class Histogram:
    """An IVH: ascending ``levels`` with their intensity fractions ``gamma`` and volume
    fractions ``nu``; ``beyond`` is the level after the last."""

    levels: np.ndarray
    gamma: np.ndarray
    nu: np.ndarray
    beyond: float


def _bounds(values: np.ndarray, bounds: tuple[float | None, float | None] | None
            ) -> tuple[float, float]:
    low, high = bounds if bounds is not None else (None, None)
    return (float(values.min()) if low is None else float(low),
            float(values.max()) if high is None else float(high))


def _volume_fractions(counts: np.ndarray) -> np.ndarray:
    """nu_i: the fraction of voxels at level i or above, for per-level ``counts``."""
    below = np.concatenate(([0.0], np.cumsum(counts)[:-1]))
    return 1.0 - below / counts.sum()


def histogram(values: np.ndarray, ivh: IbsiIvh,
              bounds: tuple[float | None, float | None] | None = None) -> Histogram:
    """The IVH of the intensity mask's ``values`` with the discretisation ``ivh``; ``bounds``
    is the re-segmentation range (IBSI 1, section 3.5).

    Raises:
        IvhError: ``none`` with values that are not integers.
    """
    values = np.asarray(values, dtype=float).ravel()
    if ivh.discretisation == "fixed_bin_number":
        count = int(ivh.bin_count or 0)
        low, high = float(values.min()), float(values.max())
        spread = high - low
        bins = (np.ones(values.shape, dtype=int) if spread == 0
                else np.floor(count * (values - low) / spread).astype(int) + 1)
        bins = np.clip(bins, 1, count)
        levels = np.arange(1, count + 1, dtype=float)
        counts = np.bincount(bins - 1, minlength=count).astype(float)
        beyond = count + 1.0
    elif ivh.discretisation == "fixed_bin_size":
        width = float(ivh.bin_width or 0)
        low, high = _bounds(values, bounds)
        count = math.ceil((high - low) / width) + 1
        bins = np.clip(np.floor((values - low) / width).astype(int) + 1, 1, count)
        levels = low + (np.arange(1, count + 1) - 0.5) * width
        counts = np.bincount(bins - 1, minlength=count)[:count].astype(float)
        beyond = float(levels[-1]) + width
    else:
        if not np.array_equal(values, np.round(values)):
            raise IvhError("ibsi.ivh.discretisation none needs integer intensities (CT with "
                           "ibsi.round_intensities or without interpolation); give a bin size")
        low, high = _bounds(values, bounds)
        low, high = math.ceil(low), math.floor(high)
        levels = np.arange(low, high + 1, dtype=float)
        counts = np.bincount((values - low).astype(int), minlength=levels.size)
        counts = counts[:levels.size].astype(float)
        beyond = high + 1.0
    spread = float(levels[-1] - levels[0])
    gamma = (levels - levels[0]) / spread if spread else np.zeros(levels.shape)
    return Histogram(levels, gamma, _volume_fractions(counts), beyond)


def volume_at(hist: Histogram, percent: float) -> float:
    """V_x: the volume fraction at intensity fraction ``percent`` / 100."""
    return float(hist.nu[hist.gamma >= percent / 100.0].max())


def intensity_at(hist: Histogram, percent: float) -> float:
    """I_x: the lowest level whose volume fraction is at most ``percent`` / 100."""
    levels = hist.levels[hist.nu <= percent / 100.0]
    return float(levels.min()) if levels.size else hist.beyond


def features(values: np.ndarray, ivh: IbsiIvh,
             bounds: tuple[float | None, float | None] | None = None) -> dict[str, float]:
    """The IVH features of the intensity mask's ``values`` by feature name of the node's ``ivh``
    class (pipelines/codes/features.csv): ``V10``, ``V90``, ``I10``, ``I90``,
    ``V10V90Difference``, ``I10I90Difference`` and ``AreaUnderCurve``; with a fixed bin number
    the intensities are bin numbers and their names end in ``Bin``."""
    hist = histogram(values, ivh, bounds)
    unit = "Bin" if ivh.discretisation == "fixed_bin_number" else ""
    low, high = FRACTIONS
    return {
        f"V{low}": volume_at(hist, low),
        f"V{high}": volume_at(hist, high),
        f"I{low}{unit}": intensity_at(hist, low),
        f"I{high}{unit}": intensity_at(hist, high),
        f"V{low}V{high}Difference": volume_at(hist, low) - volume_at(hist, high),
        f"I{low}I{high}{unit}Difference": intensity_at(hist, low) - intensity_at(hist, high),
        "AreaUnderCurve": float(np.trapezoid(hist.nu, hist.gamma)),
    }
