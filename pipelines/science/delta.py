"""Delta radiomics: each lesion's features against the same lesion in the patient's prior study.

Seeds 000 and 002 describe delta radiomics, the change of features between examinations. The
node measures the prior study's segmentation with the preset of the current job (so both sets
of values come from the same code and settings), pairs each current lesion with a prior one and
reports, per ROI variant and feature, the absolute change (current - prior, in the feature's
unit) and the relative change (100 * (current - prior) / |prior|, in percent; none where the
prior value is 0).

Pairing, in order (:func:`pair_lesions`):

1. *by Tracking UID*: a current segment whose Tracking UID (0062,0021, PS3.3 C.8.20.2: the
   identifier a SEG gives a finding across studies) equals the prior segment's, or the Tracking
   Unique Identifier the node wrote for the prior lesion when it processed the prior study
   (``pipelines.outputs.report_parts.tracking_identifier``: derived from the prior's inputs, so
   it is computed again here);
2. *by position*: the prior lesions carried onto the current series
   (``pipelines.science.registration.propagate``), each current lesion paired with the prior
   lesion that overlaps it most, when that overlap (Dice) reaches ``min_overlap``; a prior
   lesion pairs once. A registration that fails its checks pairs nothing by position.

A current lesion without a pair has no change reported, and says why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import SimpleITK as sitk

from pipelines.science.registration import dice_coefficient

MIN_OVERLAP = 0.2
"""Least Dice of a current lesion and a prior lesion carried onto its series for a pair by
position: growth halves the Dice of a lesion whose volume doubles (2/3) at worst, a neighbour
barely touches it."""


@dataclass(frozen=True)
class LesionPair:
    """A current segment number paired with a prior one, and how."""

    current: int
    prior: int
    by: Literal["tracking uid", "position"]
    overlap: float | None = None  # Dice, for a pair by position


@dataclass(frozen=True)
class FeatureChange:
    """One feature of one ROI variant of a paired lesion: the prior and current values, their
    difference and the relative change in percent (None where the prior value is 0)."""

    key: str
    prior: float
    current: float
    absolute: float
    relative_percent: float | None


def change(prior: float, current: float, key: str) -> FeatureChange:
    """The change of feature ``key`` from ``prior`` to ``current``."""
    relative = 100.0 * (current - prior) / abs(prior) if prior != 0 else None
    return FeatureChange(key, prior, current, current - prior,
                         relative if relative is None or math.isfinite(relative) else None)


def feature_changes(prior: Mapping[str, float], current: Mapping[str, float]
                    ) -> list[FeatureChange]:
    """Every feature both value sets hold, in ``current``'s order, with finite values."""
    return [change(prior[key], value, key) for key, value in current.items()
            if key in prior and math.isfinite(prior[key]) and math.isfinite(value)]


def pair_lesions(current: Mapping[int, frozenset[str]], prior: Mapping[int, frozenset[str]],
                 current_masks: Mapping[int, sitk.Image],
                 carried: Mapping[int, sitk.Image] | None,
                 min_overlap: float = MIN_OVERLAP) -> tuple[list[LesionPair], dict[int, str]]:
    """Pairs of current and prior segment numbers (module docstring), and for each current
    lesion left without a pair the reason.

    ``current`` and ``prior``: each lesion's Tracking UIDs (its SEG segment's, and for the prior
    the one the node wrote); ``current_masks``: the current lesions on the current grid;
    ``carried``: the prior lesions carried onto that grid, None when the registration failed.
    """
    pairs: list[LesionPair] = []
    taken: set[int] = set()
    for number, uids in current.items():
        match = next((p for p, prior_uids in prior.items()
                      if p not in taken and uids & prior_uids), None)
        if match is not None:
            pairs.append(LesionPair(number, match, "tracking uid"))
            taken.add(match)
    unpaired: dict[int, str] = {}
    paired = {pair.current for pair in pairs}
    for number in current:
        if number in paired:
            continue
        if carried is None:
            unpaired[number] = ("no prior lesion with its Tracking UID, and the prior study's "
                                "registration failed its checks")
            continue
        overlaps = {p: dice_coefficient(current_masks[number], mask) for p, mask in carried.items()
                    if p not in taken}
        best = max(overlaps, key=lambda p: overlaps[p], default=None)
        if best is None or overlaps[best] < min_overlap:
            unpaired[number] = (f"no prior lesion with its Tracking UID, and none overlaps it by "
                                f"Dice >= {min_overlap} after registration")
            continue
        pairs.append(LesionPair(number, best, "position", overlaps[best]))
        taken.add(best)
    return sorted(pairs, key=lambda pair: pair.current), unpaired


def segment_tracking_uids(dataset: object) -> dict[int, str]:
    """Segment Number -> Tracking UID (0062,0021) of a SEG's segments that have one (PS3.3
    C.8.20.2); none for an RT Structure Set."""
    return {int(item.SegmentNumber): str(item.TrackingUID)
            for item in getattr(dataset, "SegmentSequence", [])
            if "TrackingUID" in item}


def changes_by_roi(pairs: Sequence[LesionPair],
                   prior: Mapping[tuple[int, str], Mapping[str, float]],
                   current: Mapping[tuple[int, str], Mapping[str, float]]
                   ) -> dict[tuple[int, str], list[FeatureChange]]:
    """(current segment number, ROI variant) -> its feature changes, for every paired lesion's
    ROI variants measured in both studies."""
    found: dict[tuple[int, str], list[FeatureChange]] = {}
    for pair in pairs:
        for (number, variant), values in current.items():
            if number == pair.current and (pair.prior, variant) in prior:
                found[(number, variant)] = feature_changes(prior[(pair.prior, variant)], values)
    return found
