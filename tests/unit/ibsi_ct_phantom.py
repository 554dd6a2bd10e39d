"""The IBSI 1 CT radiomics phantom through ``radiomics-node process`` and its reference values:
which IBSI tag each reported value answers (from the preset's texture aggregation), the
conformance check (strict |value - reference| <= tolerance) and the docs/presets.md table made
from it. Shared by tests/unit/test_ibsi_ct_phantom.py and bench/ibsi_mirp.py.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pipelines.science.presets import Preset, load_preset
from tests.unit.test_ibsi import IBSI_TAGS, TRANSFORMS

PHANTOM = Path("ibsi1/ibsi_1_ct_radiomics_phantom")
REFERENCES = Path("ibsi1/reference_values")
CONFIGURATIONS = ("A", "B", "C", "D", "E")
WITH_REFERENCES = ("A", "B")  # C, D and E are checked with values the project has not seen

# ibsi.texture_aggregation -> suffix of the IBSI reference tags (IBSI 1, section 3.6.2; the
# reference files call merged matrices "comb")
_TAG_SUFFIX = {
    "3D_avg": "3D_avg", "3D_mrg": "3D_comb", "2.5D_d_mrg": "2_5D_avg", "2.5D_v_mrg": "2_5D_comb",
    "3D": "3D", "2.5D": "2_5D", "2D_avg": "2D_avg", "2D_s_mrg": "2D_comb", "2D": "2D",
}
_DEFAULT_AGGREGATION = {"glcm": "3D_avg", "glrlm": "3D_avg", "glszm": "3D", "gldm": "3D",
                        "ngtdm": "3D"}


# the node's IVH features (pipelines.science.ivh) -> the IBSI tag each answers; with a fixed bin
# number the intensities are bin numbers under names of their own
IVH_TAGS = {
    "V10": "ivh_v10",
    "V90": "ivh_v90",
    "I10": "ivh_i10",
    "I90": "ivh_i90",
    "V10V90Difference": "ivh_diff_v10_v90",
    "I10I90Difference": "ivh_diff_i10_i90",
    "AreaUnderCurve": "ivh_auc",
}
IVH_BINNED = {"I10": "I10Bin", "I90": "I90Bin", "I10I90Difference": "I10I90BinDifference"}


def preset_of(configuration: str) -> Preset:
    """The shipped preset of an IBSI 1 CT phantom configuration."""
    return load_preset(f"ibsi-ct-phantom-{configuration}")


def tags_for(preset: Preset) -> dict[str, tuple[str, ...]]:
    """pyradiomics ``<class>_<feature>`` -> the IBSI tags its value answers under ``preset``: the
    digital phantom's mapping (3D, averaged) with each texture family's tag suffix replaced by
    the preset's aggregation."""
    aggregation = {**_DEFAULT_AGGREGATION, **(preset.ibsi.texture_aggregation
                                             if preset.ibsi is not None else {})}
    tags = {}
    for feature, names in IBSI_TAGS.items():
        family = feature.split("_")[0]
        if family in aggregation:
            suffix = _TAG_SUFFIX[aggregation[family]]
            names = tuple(name.removesuffix("_3D_avg").removesuffix("_3D") + f"_{suffix}"
                          for name in names)
        tags[feature] = names
    if preset.ibsi is not None and preset.ibsi.ivh is not None:
        binned = preset.ibsi.ivh.discretisation == "fixed_bin_number"
        for name, tag in IVH_TAGS.items():
            tags[f"ivh_{IVH_BINNED.get(name, name) if binned else name}"] = (tag,)
    return tags


def references(refdata: Path, configuration: str) -> dict[str, tuple[float, float]]:
    """IBSI tag -> (consensus value, tolerance) of a configuration."""
    path = refdata / REFERENCES / f"ibsi_1_reference_values_config_{configuration}.csv"
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return {row["tag"]: (float(row["reference value"]), float(row["tolerance"] or 0))
                for row in csv.DictReader(handle) if row["reference value"]}


def process_phantom(refdata: Path, configuration: str, out: Path, dicom: Path | None = None,
                    preset: Path | None = None) -> dict[str, float]:
    """``radiomics-node process`` on the phantom's DICOM (``dicom``: another folder of it, e.g.
    with a SEG) with the configuration's preset (or the YAML ``preset``); the features CSV's
    values by pyradiomics key."""
    source = dicom if dicom is not None else refdata / PHANTOM / "dicom"
    subprocess.run([sys.executable, "-m", "node.cli", "process", str(source), "--preset",
                    str(preset or f"ibsi-ct-phantom-{configuration}"), "--out", str(out)],
                   check=True, capture_output=True)
    [features] = out.glob("*/features.csv")
    with features.open(encoding="utf-8", newline="") as handle:
        return {row["feature"]: float(row["value"]) for row in csv.DictReader(handle)}


@dataclass(frozen=True)
class Comparison:
    """One reported value against one IBSI reference."""

    feature: str  # pyradiomics <class>_<feature>
    tag: str
    value: float  # after TRANSFORMS (kurtosis: excess)
    reference: float
    tolerance: float

    @property
    def within(self) -> bool:
        """Strictly within tolerance."""
        return abs(self.value - self.reference) <= self.tolerance


def compare(values: dict[str, float], preset: Preset,
            reference: dict[str, tuple[float, float]]) -> list[Comparison]:
    """Every mapped feature's value against the reference of each tag it answers."""
    rows = []
    for feature, tags in tags_for(preset).items():
        value = TRANSFORMS.get(feature, lambda v: v)(values[f"original_{feature}"])
        for tag in tags:
            if tag in reference:  # not ivh_auc: IBSI 1 did not standardise it
                rows.append(Comparison(feature, tag, value, *reference[tag]))
    return rows
