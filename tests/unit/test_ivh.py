"""Intensity-volume histogram features (``pipelines.science.ivh``, IBSI 1 section 3.5): the IBSI 1
digital phantom's consensus values exactly, each discretisation on values worked by hand, the
preset's ``ibsi.ivh`` checks. The CT phantom's configurations (A and B against IBSI, C with MIRP)
are in tests/unit/test_ibsi_ct_phantom.py."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from pydantic import ValidationError

from pipelines.science import ivh
from pipelines.science.presets import IbsiIvh, IbsiOptions
from tests.unit.ibsi_ct_phantom import IVH_TAGS

PHANTOM = Path("ibsi1/ibsi_1_digital_phantom/nifti")
CONSENSUS = Path("ibsi1/reference_values/ibsi_1_reference_values_digital_phantom.csv")


def test_digital_phantom_matches_the_ibsi_consensus(refdata: Path) -> None:
    folder = refdata / PHANTOM
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "image" / "phantom.nii.gz")))
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "mask" / "mask.nii.gz")))
    with (refdata / CONSENSUS).open(encoding="utf-8-sig", newline="") as handle:
        reference = {row["tag"]: (float(row["reference value"]), float(row["tolerance"] or 0))
                     for row in csv.DictReader(handle) if row["reference value"]}
    values = ivh.features(image[mask > 0], IbsiIvh())
    for name, tag in IVH_TAGS.items():
        if name == "AreaUnderCurve":  # not standardised: no consensus value
            continue
        expected, tolerance = reference[tag]
        # the consensus is given to three significant digits
        assert values[name] == pytest.approx(expected, abs=max(tolerance, 5e-4)), name


def test_no_discretisation_counts_every_integer_of_the_range() -> None:
    # levels -2 .. 2 of the range; voxels at -1, 0, 0, 2: nu = 1, 1, 0.75, 0.25, 0.25
    hist = ivh.histogram(np.array([-1.0, 0.0, 0.0, 2.0]), IbsiIvh(), bounds=(-2, 2))
    assert hist.levels.tolist() == [-2, -1, 0, 1, 2]
    assert hist.gamma.tolist() == [0, 0.25, 0.5, 0.75, 1]
    assert hist.nu.tolist() == [1, 1, 0.75, 0.25, 0.25]
    assert hist.beyond == 3
    assert ivh.volume_at(hist, 10) == 1  # first level at gamma >= 0.1: -1
    assert ivh.volume_at(hist, 90) == 0.25
    assert ivh.intensity_at(hist, 10) == 3  # no level has nu <= 0.1: the level after the last
    assert ivh.intensity_at(hist, 90) == 0  # nu 0.75 at 0
    features = ivh.features(np.array([-1.0, 0.0, 0.0, 2.0]), IbsiIvh(), bounds=(-2, 2))
    assert features["AreaUnderCurve"] == pytest.approx(
        0.25 * ((1 + 1) + (1 + 0.75) + (0.75 + 0.25) + (0.25 + 0.25)) / 2)


def test_fixed_bin_size_uses_bin_centres_from_the_lower_bound() -> None:
    # width 10 from -20 to 20: ceil(40 / 10) + 1 = 5 bins centred at -15, -5, 5, 15, 25
    hist = ivh.histogram(np.array([-20.0, -11.0, 4.0, 20.0]),
                         IbsiIvh(discretisation="fixed_bin_size", bin_width=10), bounds=(-20, 20))
    assert hist.levels.tolist() == [-15, -5, 5, 15, 25]
    assert hist.nu.tolist() == [1, 0.5, 0.5, 0.25, 0.25]
    assert hist.beyond == 35
    features = ivh.features(np.array([-20.0, -11.0, 4.0, 20.0]),
                            IbsiIvh(discretisation="fixed_bin_size", bin_width=10),
                            bounds=(-20, 20))
    assert features["I90"] == -5 and features["I10"] == 35


def test_fixed_bin_number_reports_bin_numbers() -> None:
    values = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    features = ivh.features(values, IbsiIvh(discretisation="fixed_bin_number", bin_count=4))
    hist = ivh.histogram(values, IbsiIvh(discretisation="fixed_bin_number", bin_count=4))
    assert hist.levels.tolist() == [1, 2, 3, 4]  # the maximum falls in the last bin
    assert hist.nu.tolist() == [1, 0.8, 0.6, 0.4]
    assert set(features) == {"V10", "V90", "I10Bin", "I90Bin", "V10V90Difference",
                             "I10I90BinDifference", "AreaUnderCurve"}
    assert features["I90Bin"] == 2 and features["I10Bin"] == 5


def test_no_discretisation_refuses_fractional_intensities() -> None:
    with pytest.raises(ivh.IvhError, match="needs integer intensities"):
        ivh.features(np.array([0.5, 1.0]), IbsiIvh())


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"discretisation": "fixed_bin_size"}, "bin_width: needed"),
        ({"discretisation": "fixed_bin_number", "bin_count": 10, "bin_width": 2.5},
         "bin_width: not used"),
        ({"bin_count": 10}, "bin_count: not used"),
        ({"discretisation": "fixed_bin_number", "bin_count": 1}, "greater than or equal to 2"),
    ],
)
def test_preset_refuses_inconsistent_ivh_settings(settings: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        IbsiOptions(ivh=settings)
