"""Coded concept name and UCUM unit of each pyradiomics feature, for TID 1500 measurements.

Concept names: the IBSI 1 reference manual (Zwanenburg et al., arXiv:1612.07003, "Image biomarker
standardisation initiative") gives each feature a four-character permanent identifier; where
pyradiomics computes the IBSI feature, the concept is that identifier with coding scheme
designator ``IBSI``. Features IBSI does not define (or defines differently, e.g. pyradiomics
Kurtosis is IBSI's excess kurtosis IPH6 plus 3) get the private scheme ``99RADNODE`` (PS3.16
section 8.1 "Private coding schemes": designators starting with "99") with a short code value of
at most 16 characters, ``<class abbreviation>.<feature>``, e.g. ``FO.Kurtosis``, so it fits Code
Value (0008,0100). The table is ``pipelines/codes/features.csv``; docs/feature-codes.md describes
both schemes and the unit rules.

Units are UCUM (PS3.16 CID 7181 "Abstract Multi-dimensional Image Model Component Units").
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from importlib import resources

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import CodedConcept

IBSI_SCHEME = "IBSI"
PRIVATE_SCHEME = "99RADNODE"


def coding_schemes() -> list[CodingSchemeIdentificationItem]:
    """Items of the Coding Scheme Identification Sequence (0008,0110) (PS3.3 C.12.1.1.5) that
    declare the two non-standard designators used by :func:`feature_concept`."""
    return [
        CodingSchemeIdentificationItem(
            designator=IBSI_SCHEME,
            name="Image Biomarker Standardisation Initiative",
            responsible_organization="IBSI, https://theibsi.github.io",
        ),
        CodingSchemeIdentificationItem(
            designator=PRIVATE_SCHEME,
            name="radiomics-node private feature codes",
            responsible_organization="radiomics-node, docs/feature-codes.md",
        ),
    ]


# Image types whose response keeps the unit of the input intensities: the identity and linear
# filters with dimensionless kernels (pyradiomics' LoG is scale-normalised by sigma squared).
_INTENSITY_PRESERVING_FILTERS = ("original", "log-sigma-", "wavelet-")

_UCUM = {
    "[hnsf'U]": "Hounsfield unit",
    "[hnsf'U]2": "Hounsfield unit squared",
    "[hnsf'U]2.mm3": "Hounsfield unit squared cubic millimeter",
    "mm": "millimeter",
    "mm2": "square millimeter",
    "mm3": "cubic millimeter",
    "/mm": "per millimeter",
    "1": "no units",
}
_GEOMETRIC_UNITS = {"mm": "mm", "mm2": "mm2", "mm3": "mm3", "per_mm": "/mm", "1": "1"}
_CT_INTENSITY_UNITS = {
    "intensity": "[hnsf'U]",
    "intensity2": "[hnsf'U]2",
    "intensity2_volume": "[hnsf'U]2.mm3",
}


class FeatureCodeError(KeyError):
    """A feature key that is not ``<image type>_<class>_<feature>`` of a known feature."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class _TableRow:
    feature_class: str
    feature: str
    scheme: str
    code: str
    meaning: str
    unit_kind: str


@dataclass(frozen=True)
class FeatureConcept:
    """Concept name, unit and image filter of one feature value."""

    name: CodedConcept
    unit: CodedConcept
    image_filter: str  # pyradiomics image type prefix: "original", "wavelet-LLH", ...


@cache
def _table() -> dict[tuple[str, str], _TableRow]:
    path = resources.files("pipelines") / "codes" / "features.csv"
    with path.open(encoding="utf-8", newline="") as handle:
        rows = [
            _TableRow(
                feature_class=r["class"],
                feature=r["feature"],
                scheme=r["scheme"],
                code=r["code"],
                meaning=r["meaning"],
                unit_kind=r["unit_kind"],
            )
            for r in csv.DictReader(handle)
        ]
    return {(row.feature_class, row.feature): row for row in rows}


def known_features() -> list[tuple[str, str]]:
    """Every (pyradiomics class, feature name) that has a concept, in table order."""
    return list(_table())


def ucum_unit(code: str) -> CodedConcept:
    """The UCUM unit concept for a code of the table above (CID 7181 meanings)."""
    return CodedConcept(value=code, scheme_designator="UCUM", meaning=_UCUM[code])


def _unit_code(unit_kind: str, modality: str, image_filter: str) -> str:
    if unit_kind in _GEOMETRIC_UNITS:
        return _GEOMETRIC_UNITS[unit_kind]
    if modality == "CT" and image_filter.startswith(_INTENSITY_PRESERVING_FILTERS):
        return _CT_INTENSITY_UNITS[unit_kind]
    # MR and other modalities have no absolute intensity unit, and nonlinear filters of CT
    # (square, logarithm, gradient, LBP, ...) leave the Hounsfield scale: reported unitless.
    return "1"


def feature_concept(key: str, modality: str) -> FeatureConcept:
    """Concept, unit and image filter of a pyradiomics feature key such as
    ``original_firstorder_Mean`` measured on an image of ``modality`` ((0008,0060) Modality)."""
    parts = key.split("_")
    if len(parts) != 3:
        raise FeatureCodeError(f"{key}: not a pyradiomics key <image type>_<class>_<feature>")
    image_filter, feature_class, feature = parts
    row = _table().get((feature_class, feature))
    if row is None:
        raise FeatureCodeError(
            f"{key}: no concept for feature class {feature_class!r}, feature {feature!r} "
            "in pipelines/codes/features.csv"
        )
    name = CodedConcept(value=row.code, scheme_designator=row.scheme, meaning=row.meaning)
    unit = ucum_unit(_unit_code(row.unit_kind, modality, image_filter))
    return FeatureConcept(name=name, unit=unit, image_filter=image_filter)


def image_filter_concept(image_filter: str) -> CodedConcept:
    """Private concept for a pyradiomics image type, code value ``filter.<image type>``
    (in Long Code Value (0008,0119) when longer than 16 characters, PS3.3 section 8.9)."""
    meaning = (
        "Original image, no filter"
        if image_filter == "original"
        else f"pyradiomics image type {image_filter}"
    )
    return CodedConcept(
        value=f"filter.{image_filter}", scheme_designator=PRIVATE_SCHEME, meaning=meaning
    )
