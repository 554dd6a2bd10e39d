"""Delta radiomics' pairing and changes (pipelines.science.delta): by Tracking UID first, else by
the overlap of the prior lesion carried onto the current grid; no relative change from 0."""

from __future__ import annotations

import SimpleITK as sitk

from pipelines.science.delta import change, changes_by_roi, pair_lesions


def _sphere(centre: tuple[int, int, int], radius: int) -> sitk.Image:
    image = sitk.Image(40, 40, 40, sitk.sitkUInt8)
    for z in range(40):
        for y in range(40):
            for x in range(40):
                if sum((a - c) ** 2 for a, c in zip((x, y, z), centre, strict=True)) <= radius**2:
                    image[x, y, z] = 1
    return image


def test_lesions_pair_by_tracking_uid_then_by_overlap() -> None:
    current = {1: frozenset({"uid-a"}), 2: frozenset(), 3: frozenset()}
    prior = {7: frozenset({"uid-a"}), 8: frozenset({"node-uid-8"}), 9: frozenset()}
    masks = {1: _sphere((10, 10, 10), 5), 2: _sphere((28, 28, 28), 6), 3: _sphere((10, 30, 30), 4)}
    # prior 8 grew into current 2 (it overlaps); prior 9 lies far from current 3
    carried = {7: _sphere((10, 10, 10), 4), 8: _sphere((28, 28, 28), 4),
               9: _sphere((30, 8, 8), 4)}
    pairs, unpaired = pair_lesions(current, prior, masks, carried)
    assert [(p.current, p.prior, p.by) for p in pairs] == [
        (1, 7, "tracking uid"), (2, 8, "position")]
    assert 0.2 <= pairs[1].overlap < 1
    assert list(unpaired) == [3] and "Dice >= 0.2" in unpaired[3]
    # a failed registration pairs nothing by position, and says so
    pairs, unpaired = pair_lesions(current, prior, masks, None)
    assert [(p.current, p.prior) for p in pairs] == [(1, 7)]
    assert "registration failed" in unpaired[2]


def test_changes_are_absolute_and_relative_and_none_from_zero() -> None:
    assert change(10.0, 15.0, "k").absolute == 5.0
    assert change(-10.0, -15.0, "k").relative_percent == -50.0
    assert change(0.0, 3.0, "k").relative_percent is None
    [pair], _ = pair_lesions({1: frozenset({"u"})}, {4: frozenset({"u"})}, {}, None)
    found = changes_by_roi([pair], {(4, "intra"): {"a": 2.0, "b": float("nan")}},
                           {(1, "intra"): {"a": 3.0, "b": 1.0, "c": 1.0}})
    assert [(c.key, c.relative_percent) for c in found[(1, "intra")]] == [("a", 50.0)]
