"""Feature concepts: IBSI codes checked against pyradiomics' own IBSI table, units, private codes.

Oracle: ``pyradiomics/labs/pyradiomics-dcm/resources/featuresDict_IBSIv7.tsv`` (pyradiomics' DICOM
lab). That file has known errors, which this test corrects explicitly instead of reproducing:

* glszm SmallAreaLowGrayLevelEmphasis, SmallAreaHighGrayLevelEmphasis,
  LargeAreaLowGrayLevelEmphasis, LargeAreaHighGrayLevelEmphasis are listed under class "glcm"
  (their rows sit in the GLSZM section and carry the GLSZM codes).
* glszm ZoneVariance and ZoneEntropy are spelled "ZoneSizeVariance" and "ZoneSizeEntropy".
* "LowGreyLevelZoneEmphasis"/"HighGreyLevelZoneEmphasis" (spelled "Grey") are attached to the
  *GLDZM* rows (S1RA, K26C); pyradiomics' glszm Low/HighGrayLevelZoneEmphasis are the GLSZM
  features, whose rows (XMSY, 5GN9) the file leaves unmapped.
* SumVariance, Dissimilarity (glcm) and GrayLevelNonUniformityNormalized, DependencePercentage
  (gldm) are mapped, but pyradiomics 3.1 refuses to compute them (DeprecationWarning: equal to
  another feature or constant), so they have no concept here (nor have glcm Homogeneity1/2).
* glcm Autocorrelation, Imc1 and Imc2 are left unmapped although pyradiomics computes IBSI's
  definitions; the table here maps them to the codes the file gives those IBSI features.

The intensity-volume histogram (class ``ivh``, ``pipelines.science.ivh``) is the node's, not
pyradiomics': the file (IBSI v7) has only the family's generic concepts, so its codes are IBSI 1's
codes of the 10 % and 90 % features (section 3.5), and their meanings are checked against the names
of the IBSI 1 reference values' tags instead.
"""

import csv
from pathlib import Path

import numpy as np
import pytest
import radiomics

from pipelines.outputs.codes import (
    IBSI_SCHEME,
    PRIVATE_SCHEME,
    FeatureCodeError,
    feature_concept,
    image_filter_concept,
    known_features,
)
from pipelines.science import ivh
from pipelines.science.presets import IbsiIvh
from tests.unit.ibsi_ct_phantom import IVH_TAGS

TSV = Path("pyradiomics/labs/pyradiomics-dcm/resources/featuresDict_IBSIv7.tsv")
GLSZM_SECTION = "Grey level size zone based features"
# (class, name) as written in the TSV -> (class, name) of pyradiomics 3.1
TSV_NAME_ERRORS = {
    ("glcm", "SmallAreaLowGrayLevelEmphasis"): ("glszm", "SmallAreaLowGrayLevelEmphasis"),
    ("glcm", "SmallAreaHighGrayLevelEmphasis"): ("glszm", "SmallAreaHighGrayLevelEmphasis"),
    ("glcm", "LargeAreaLowGrayLevelEmphasis"): ("glszm", "LargeAreaLowGrayLevelEmphasis"),
    ("glcm", "LargeAreaHighGrayLevelEmphasis"): ("glszm", "LargeAreaHighGrayLevelEmphasis"),
    ("glszm", "ZoneSizeVariance"): ("glszm", "ZoneVariance"),
    ("glszm", "ZoneSizeEntropy"): ("glszm", "ZoneEntropy"),
}
# TSV rows whose code belongs to another IBSI family: the right code is the TSV's own row of the
# same meaning in the GLSZM section.
TSV_WRONG_SECTION = {
    ("glszm", "LowGreyLevelZoneEmphasis"): ("glszm", "LowGrayLevelZoneEmphasis"),
    ("glszm", "HighGreyLevelZoneEmphasis"): ("glszm", "HighGrayLevelZoneEmphasis"),
}
# TSV rows whose feature pyradiomics computes other than IBSI 1 defines it: the node codes them
# privately, and the meaning names the IBSI code they differ from (IBSI digital phantom:
# tests/unit/test_ibsi.py, DEVIATIONS). pyradiomics divides the covariance of the voxel
# coordinates by N (shape.py), IBSI's consensus values match N - 1.
DEFINED_DIFFERENTLY = {
    ("shape", "MajorAxisLength"): "SH.MajorAxisLen",
    ("shape", "MinorAxisLength"): "SH.MinorAxisLen",
    ("shape", "LeastAxisLength"): "SH.LeastAxisLen",
}
NOT_COMPUTABLE = {
    ("glcm", "SumVariance"),
    ("glcm", "Dissimilarity"),
    ("gldm", "GrayLevelNonUniformityNormalized"),
    ("gldm", "DependencePercentage"),
}
TSV_UNMAPPED_BUT_IBSI = {
    ("glcm", "Autocorrelation"): "Autocorrelation",
    ("glcm", "Imc1"): "First measure of information correlation",
    ("glcm", "Imc2"): "Second measure of information correlation",
}
REFERENCE_VALUES = Path("ibsi1/reference_values/ibsi_1_reference_values_config_A.csv")
# pyradiomics class -> IBSI 1 chapter (section row of the TSV) its codes must come from
IBSI_SECTIONS = {
    "shape": {"Morphological features"},
    "firstorder": {"Intensity-based statistical features", "Intensity histogram features"},
    "glcm": {"Grey level co-occurrence based features"},
    "glrlm": {"Grey level run length based features"},
    "glszm": {GLSZM_SECTION},
    "gldm": {"Neighbouring grey level dependence based features"},
    "ngtdm": {"Neighbourhood grey tone difference based features"},
}


def _tsv_rows(refdata: Path) -> list[dict[str, str]]:
    """TSV rows with the IBSI section (chapter) each belongs to."""
    rows = []
    section = ""
    with (refdata / TSV).open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            is_section = not (row.get("pyradiomics_feature_class") or "").strip()
            if is_section and row["IBSI_meaning"].endswith("features"):
                section = row["IBSI_meaning"]
            rows.append({**row, "section": section})
    return rows


def _computable_features() -> set[tuple[str, str]]:
    return (
        {
            (class_name, feature)
            for class_name, feature_class in radiomics.getFeatureClasses().items()
            for feature in feature_class.getFeatureNames()
        }
        - NOT_COMPUTABLE
        - {("glcm", "Homogeneity1"), ("glcm", "Homogeneity2")}
    ) | {("ivh", name) for name in _ivh_names()}


def _ivh_names() -> set[str]:
    """The feature names ``pipelines.science.ivh`` gives, with every discretisation."""
    values = np.array([0.0, 1.0, 2.0, 2.0, 3.0])
    return {
        name
        for options in (
            IbsiIvh(),
            IbsiIvh(discretisation="fixed_bin_size", bin_width=0.5),
            IbsiIvh(discretisation="fixed_bin_number", bin_count=10),
        )
        for name in ivh.features(values, options)
    }


def test_ibsi_codes_agree_with_pyradiomics_ibsi_table(refdata: Path) -> None:
    rows = _tsv_rows(refdata)
    glszm_codes = {r["IBSI_meaning"]: r["IBSI_code"] for r in rows if r["section"] == GLSZM_SECTION}
    checked = set()
    for row in rows:
        tsv_key = (
            (row["pyradiomics_feature_class"] or "").strip(),
            (row["pyradiomics_feature_name"] or "").strip(),
        )
        if not tsv_key[0]:
            continue
        if tsv_key in NOT_COMPUTABLE:
            with pytest.raises(FeatureCodeError):
                feature_concept(f"original_{tsv_key[0]}_{tsv_key[1]}", "CT")
            continue
        if tsv_key in DEFINED_DIFFERENTLY:
            name = feature_concept(f"original_{tsv_key[0]}_{tsv_key[1]}", "CT").name
            assert (name.scheme_designator, name.value) == (
                PRIVATE_SCHEME, DEFINED_DIFFERENTLY[tsv_key])
            assert f"IBSI {row['IBSI_code']} " in name.meaning
            continue
        if tsv_key in TSV_WRONG_SECTION:
            key, expected = TSV_WRONG_SECTION[tsv_key], glszm_codes[row["IBSI_meaning"]]
            assert expected != row["IBSI_code"]
        else:
            key, expected = TSV_NAME_ERRORS.get(tsv_key, tsv_key), row["IBSI_code"]
        concept = feature_concept(f"original_{key[0]}_{key[1]}", "CT")
        assert (concept.name.scheme_designator, concept.name.value) == (IBSI_SCHEME, expected), key
        checked.add(key)
    ibsi_coded = {
        (class_name, feature)
        for class_name, feature in known_features()
        if feature_concept(f"original_{class_name}_{feature}", "CT").name.scheme_designator
        == IBSI_SCHEME
    }
    assert checked == ibsi_coded - set(TSV_UNMAPPED_BUT_IBSI) - {("ivh", n) for n in IVH_TAGS}


def test_features_the_table_leaves_unmapped_get_the_tables_ibsi_code(refdata: Path) -> None:
    rows = _tsv_rows(refdata)
    glcm_codes = {
        r["IBSI_meaning"]: r["IBSI_code"]
        for r in rows
        if r["section"] == "Grey level co-occurrence based features"
    }
    for (class_name, feature), meaning in TSV_UNMAPPED_BUT_IBSI.items():
        concept = feature_concept(f"original_{class_name}_{feature}", "CT")
        assert concept.name.value == glcm_codes[meaning]


def test_ivh_meanings_are_the_names_of_the_ibsi_reference_tags(refdata: Path) -> None:
    with (refdata / REFERENCE_VALUES).open(encoding="utf-8-sig", newline="") as handle:
        names = {row["tag"]: row["feature"] for row in csv.DictReader(handle)}
    for feature, tag in IVH_TAGS.items():
        name = feature_concept(f"original_ivh_{feature}", "CT").name
        assert (name.scheme_designator, name.meaning) == (IBSI_SCHEME, names[tag])
    for feature in ("I10Bin", "I90Bin", "I10I90BinDifference"):
        binned = feature_concept(f"original_ivh_{feature}", "CT")
        assert binned.name.scheme_designator == PRIVATE_SCHEME
        assert binned.unit.value == "1"


def test_every_ibsi_code_comes_from_the_ibsi_chapter_of_its_class(refdata: Path) -> None:
    section_of_code = {r["IBSI_code"]: r["section"] for r in _tsv_rows(refdata)}
    for class_name, feature in known_features():
        name = feature_concept(f"original_{class_name}_{feature}", "CT").name
        if name.scheme_designator == IBSI_SCHEME and class_name != "ivh":
            assert section_of_code[name.value] in IBSI_SECTIONS[class_name], (class_name, feature)


def test_table_covers_exactly_the_computable_pyradiomics_features() -> None:
    assert set(known_features()) == _computable_features()
    assert len(known_features()) == len(set(known_features()))


def test_codes_are_unique_fit_code_value_and_meanings_fit_lo() -> None:
    kurtosis = feature_concept("original_firstorder_Kurtosis", "CT").name
    assert (kurtosis.scheme_designator, kurtosis.value) == (PRIVATE_SCHEME, "FO.Kurtosis")
    names = [feature_concept(f"original_{c}_{f}", "MR").name for c, f in known_features()]
    assert len({(n.scheme_designator, n.value) for n in names}) == len(names)
    for name in names:
        assert len(name.meaning) <= 64  # LO
        assert "CodeValue" in name  # SH, at most 16 characters: not Long Code Value
        assert name.scheme_designator in {IBSI_SCHEME, PRIVATE_SCHEME}
        if name.scheme_designator == IBSI_SCHEME:
            assert len(name.value) == 4


@pytest.mark.parametrize(
    ("key", "modality", "unit"),
    [
        ("original_firstorder_Mean", "CT", "[hnsf'U]"),
        ("original_firstorder_90Percentile", "CT", "[hnsf'U]"),
        ("original_firstorder_RobustMeanAbsoluteDeviation", "CT", "[hnsf'U]"),
        ("original_firstorder_RootMeanSquared", "CT", "[hnsf'U]"),
        ("original_firstorder_Variance", "CT", "[hnsf'U]2"),
        ("original_firstorder_Energy", "CT", "[hnsf'U]2"),
        ("original_firstorder_TotalEnergy", "CT", "[hnsf'U]2.mm3"),
        ("original_firstorder_Skewness", "CT", "1"),
        ("original_firstorder_Entropy", "CT", "1"),
        ("original_firstorder_Mean", "MR", "1"),
        ("original_firstorder_Variance", "MR", "1"),
        ("log-sigma-3-0-mm-3D_firstorder_Mean", "CT", "[hnsf'U]"),
        ("wavelet-LLH_firstorder_Median", "CT", "[hnsf'U]"),
        ("square_firstorder_Mean", "CT", "1"),
        ("original_shape_MeshVolume", "CT", "mm3"),
        ("original_shape_SurfaceArea", "MR", "mm2"),
        ("original_shape_SurfaceVolumeRatio", "CT", "/mm"),
        ("original_shape_Maximum3DDiameter", "CT", "mm"),
        ("original_shape_Sphericity", "CT", "1"),
        ("original_glcm_Contrast", "CT", "1"),
        ("original_ngtdm_Coarseness", "CT", "1"),
        ("original_ivh_I10", "CT", "[hnsf'U]"),
        ("original_ivh_I10I90Difference", "CT", "[hnsf'U]"),
        ("original_ivh_I10Bin", "CT", "1"),
        ("original_ivh_V10", "CT", "1"),
        ("original_ivh_I90", "MR", "1"),
    ],
)
def test_units(key: str, modality: str, unit: str) -> None:
    concept = feature_concept(key, modality)
    assert (concept.unit.scheme_designator, concept.unit.value) == ("UCUM", unit)


def test_image_filter_is_the_key_prefix_and_has_a_private_concept() -> None:
    assert feature_concept("log-sigma-3-0-mm-3D_glcm_Idm", "CT").image_filter == (
        "log-sigma-3-0-mm-3D"
    )
    assert image_filter_concept("original").value == "filter.original"
    assert image_filter_concept("wavelet-LLH").scheme_designator == PRIVATE_SCHEME
    assert image_filter_concept("wavelet-LLH") != image_filter_concept("wavelet-HLL")


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("original_firstorder", "not a pyradiomics key"),
        ("original_glcm_SumVariance", "no concept for feature class 'glcm', feature 'SumVariance'"),
        ("original_glmc_Contrast", "no concept for feature class 'glmc'"),
    ],
)
def test_unknown_keys_are_refused(key: str, reason: str) -> None:
    with pytest.raises(FeatureCodeError, match=reason):
        feature_concept(key, "CT")
