"""Running a validated model on one lesion, or saying exactly why it was not run.

:func:`apply_model` is a pure function: given a loaded :class:`models.package.ModelPackage`, one
lesion's features and the preset hash they were computed with, the QC reports, the series
headers and the clinical inputs, it returns a :class:`ModelOutput` or a :class:`NotApplied`
listing every failed condition (issue 6, "Running models in the node"):

* ``preset``: the features' preset hash differs from the card's (a value from other settings is
  another quantity, IBSI 1 section 2 "reporting");
* ``qc``: a QC check failed (or warned, when the card's ``qc.refuse_on`` is ``warn``), or no QC
  report was given;
* ``domain``: the series is outside the card's validated acquisition domain: each attribute
  outside, its value and the domain (PS3.3 attributes as named in :class:`AcquisitionDomain`);
  an attribute the header does not record cannot be shown to be inside and refuses too;
* ``clinical_input``: a clinical input is missing and the card gives no value to impute;
* ``features``: a feature the model needs is missing or not a number.

Feature names are the card's ``"<roi_variant>/<pyradiomics key>"``; :func:`lesion_features`
makes them from a :class:`pipelines.outputs.result.PipelineResult`'s lesions, :func:`seg_values` the
SEG-derived clinical values (lesion count, diameters, volume) from the ``intra`` ROI's shape
features.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import pydicom
from pydicom.multival import MultiValue

from models.card import AcquisitionDomain, ClinicalInput, Range, feature_name
from models.package import ModelPackage
from pipelines.science.qc import QCReport

Condition = Literal["preset", "qc", "domain", "clinical_input", "features"]
INTRA = "intra"  # the preset's name of the lesion-only ROI variant (RoiVariant.name, kind intra)


class LesionLike(Protocol):
    """What :func:`lesion_features` reads of ``pipelines.outputs.result.LesionSummary``."""

    segment_number: int
    roi_variant: str
    features: dict[str, float]
    role: str


@dataclass(frozen=True)
class Refusal:
    """One condition that kept the model from running: which kind, the field, the value found
    and what the card or QC required."""

    condition: Condition
    field: str
    value: str
    expected: str

    @property
    def message(self) -> str:
        """One readable sentence, e.g. ``"domain: (0018,1210) ConvolutionKernel is 'B70f';
        validated: one of STANDARD, B40f"``."""
        return f"{self.condition}: {self.field} is {self.value}; required: {self.expected}"


@dataclass(frozen=True)
class ModelIdentity:
    """Which model, so every output and refusal names it."""

    name: str
    version: str
    sha256: str
    intended_use: str
    not_for_clinical_use: bool
    disclaimer: str

    @classmethod
    def of(cls, package: ModelPackage) -> ModelIdentity:
        card = package.card
        return cls(card.name, card.version, package.sha256, card.intended_use,
                   card.not_for_clinical_use, card.disclaimer)


@dataclass(frozen=True)
class ModelOutput:
    """The model ran: probability of the card's outcome, its risk category at the threshold,
    and the QC warnings it ran despite (the card allows warnings unless ``refuse_on: warn``)."""

    model: ModelIdentity
    outcome: str
    probability: float
    category: str
    threshold: float
    inputs: dict[str, float]
    qc_warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class NotApplied:
    """The model did not run; ``reasons`` holds every failed condition."""

    model: ModelIdentity
    reasons: tuple[Refusal, ...]


def lesion_features(lesions: Iterable[LesionLike]) -> dict[int, dict[str, float]]:
    """Segment number -> ``"<roi_variant>/<pyradiomics key>"`` -> value, over all ROI variants
    of each lesion (``PipelineResult.lesions``); a study job's lesions measured on another
    series as ``"<role>:<roi_variant>/<pyradiomics key>"`` (``models.card.feature_name``)."""
    by_segment: dict[int, dict[str, float]] = {}
    for lesion in lesions:
        target = by_segment.setdefault(lesion.segment_number, {})
        for key, value in lesion.features.items():
            target[feature_name(lesion.roi_variant, key, lesion.role)] = value
    return by_segment


def seg_values(by_segment: Mapping[int, Mapping[str, float]],
               segment_number: int) -> dict[str, float]:
    """The SEG-derived clinical values of one lesion in its study: ``lesion_count`` (lesion
    segments of the SEG), ``lesion_diameter_mm`` (its ``intra`` maximum 3D diameter, pyradiomics
    ``original_shape_Maximum3DDiameter``), ``max_lesion_diameter_mm`` (the largest of the
    study's lesions; absent unless every lesion has one), ``lesion_volume_ml`` (mesh volume,
    mm^3 / 1000). A value whose feature was not computed is absent."""
    diameter = feature_name(INTRA, "original_shape_Maximum3DDiameter")
    volume = feature_name(INTRA, "original_shape_MeshVolume")
    values: dict[str, float] = {"lesion_count": float(len(by_segment))}
    own = by_segment.get(segment_number, {})
    if diameter in own:
        values["lesion_diameter_mm"] = float(own[diameter])
    if volume in own:
        values["lesion_volume_ml"] = float(own[volume]) / 1000.0
    diameters = [f[diameter] for f in by_segment.values() if diameter in f]
    if diameters and len(diameters) == len(by_segment):
        values["max_lesion_diameter_mm"] = float(max(diameters))
    return values


def _keyword_label(keyword: str) -> str:
    tag = pydicom.datadict.tag_for_keyword(keyword)
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword}" if tag is not None else keyword


def _distinct(headers: Sequence[pydicom.Dataset], keyword: str) -> list[object]:
    values: list[object] = []
    for ds in headers:
        value = ds.get(keyword)
        if value in (None, ""):
            continue
        items = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
        for item in items:
            if item not in values:
                values.append(item)
    return values


def _text_in(headers: Sequence[pydicom.Dataset], keyword: str,
             allowed: Sequence[str]) -> list[Refusal]:
    wanted = {a.strip().casefold() for a in allowed}
    values = [str(v) for v in _distinct(headers, keyword)]
    expected = f"one of {', '.join(allowed)}"
    if not values:
        return [Refusal("domain", _keyword_label(keyword), "not recorded", expected)]
    return [Refusal("domain", _keyword_label(keyword), repr(v), expected)
            for v in values if v.strip().casefold() not in wanted]


def _number_in(headers: Sequence[pydicom.Dataset], keyword: str, bounds: Range,
               unit: str) -> list[Refusal]:
    values = _distinct(headers, keyword)
    expected = f"{bounds.describe()} {unit}".strip()
    if not values:
        return [Refusal("domain", _keyword_label(keyword), "not recorded", expected)]
    refusals = []
    for value in values:
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            refusals.append(Refusal("domain", _keyword_label(keyword), repr(value), expected))
            continue
        if not bounds.contains(number):
            refusals.append(Refusal("domain", _keyword_label(keyword), f"{number:g} {unit}".strip(),
                                    expected))
    return refusals


def domain_refusals(domain: AcquisitionDomain,
                    headers: Sequence[pydicom.Dataset]) -> list[Refusal]:
    """Every way the series ``headers`` lie outside ``domain``; empty when inside."""
    if not headers:
        return [Refusal("domain", "series headers", "none given", "the source series' headers")]
    refusals = _text_in(headers, "Modality", domain.modality)
    if domain.series_description is not None:
        description = str(headers[0].get("SeriesDescription", "") or "")
        if not re.search(domain.series_description, description):
            refusals.append(Refusal("domain", _keyword_label("SeriesDescription"),
                                    repr(description),
                                    f"matches /{domain.series_description}/"))
    if domain.convolution_kernels is not None:
        refusals += _text_in(headers, "ConvolutionKernel", domain.convolution_kernels)
    if domain.manufacturers is not None:
        refusals += _text_in(headers, "Manufacturer", domain.manufacturers)
    for keyword, bounds, unit in (
        ("SliceThickness", domain.slice_thickness_mm, "mm"),
        ("PixelSpacing", domain.pixel_spacing_mm, "mm"),
        ("MagneticFieldStrength", domain.magnetic_field_strength_t, "T"),
        ("KVP", domain.kvp, "kV"),
    ):
        if bounds is not None:
            refusals += _number_in(headers, keyword, bounds, unit)
    if domain.contrast is not None:
        recorded = bool(_distinct(headers, "ContrastBolusAgent"))
        if recorded != domain.contrast:
            refusals.append(Refusal(
                "domain", _keyword_label("ContrastBolusAgent"),
                "recorded" if recorded else "not recorded",
                "recorded (contrast-enhanced)" if domain.contrast else "absent (no contrast)"))
    return refusals


def _age_years(text: str) -> float:
    """Patient's Age (0010,1010), VR AS ``nnnD|W|M|Y`` (PS3.5 Table 6.2-1), in years."""
    match = re.fullmatch(r"(\d{3})([DWMY])", text.strip())
    if not match:
        raise ValueError(f"{text!r} is not an Age String (nnnD, nnnW, nnnM or nnnY)")
    per_year = {"D": 365.25, "W": 365.25 / 7, "M": 12.0, "Y": 1.0}[match.group(2)]
    return int(match.group(1)) / per_year


def _clinical_value(spec: ClinicalInput, headers: Sequence[pydicom.Dataset],
                    seg: Mapping[str, float], external: Mapping[str, float | str | None]
                    ) -> tuple[float | None, str]:
    """(value or None, where it was looked for)."""
    raw: object
    if spec.source == "dicom":
        where = _keyword_label(spec.key)
        raw = headers[0].get(spec.key) if headers else None
        if spec.key == "PatientAge" and raw not in (None, ""):
            try:
                return _age_years(str(raw)), where
            except ValueError:
                return None, where
    elif spec.source == "seg":
        where, raw = f"SEG-derived {spec.key}", seg.get(spec.key)
    else:
        where, raw = f"external column {spec.key}", external.get(spec.key)
    if raw in (None, ""):
        return None, where
    if spec.categories is not None:
        return spec.categories.get(str(raw).strip()), where
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None, where
    return (value if math.isfinite(value) else None), where


def apply_model(
    package: ModelPackage,
    *,
    features: Mapping[str, float],
    preset_hash: str,
    qc_reports: Sequence[QCReport],
    headers: Sequence[pydicom.Dataset],
    seg: Mapping[str, float] | None = None,
    external: Mapping[str, float | str | None] | None = None,
) -> ModelOutput | NotApplied:
    """Run ``package`` on one lesion, or refuse with every failed condition (module docstring).

    ``features``: the lesion's features by card name (:func:`lesion_features`); ``preset_hash``:
    ``PipelineResult.preset_hash``; ``qc_reports``: the series report and the lesion's ROI
    reports (``pipelines.science.qc``); ``headers``: the source series' datasets
    (``SeriesVolume.datasets``); ``seg``: :func:`seg_values` of the lesion; ``external``: values
    the site supplies, by the card's ``key`` of each ``external`` clinical input.
    """
    card = package.card
    identity = ModelIdentity.of(package)
    reasons: list[Refusal] = []
    if preset_hash != card.preset.hash:
        reasons.append(Refusal("preset", "preset hash", preset_hash,
                               f"{card.preset.hash} ({card.preset.name})"))
    warnings: list[str] = []
    if not qc_reports:
        reasons.append(Refusal("qc", "QC report", "none given", "the series' QC report"))
    refused_statuses = {"fail", "warn"} if card.qc.refuse_on == "warn" else {"fail"}
    for report in qc_reports:
        for check in report.checks:
            label = f"{report.subject}: {check.name}"
            value = "not recorded" if check.value is None else f"{check.value} {check.unit}".strip()
            if check.status in refused_statuses:
                reasons.append(Refusal("qc", label, f"{value} ({check.status})",
                                       check.threshold or check.message))
            elif check.status == "warn":
                warnings.append(f"{label}: {check.message}")
    reasons += domain_refusals(card.domain, headers)

    inputs: dict[str, float] = {}
    for name in card.features:
        value = features.get(name)
        if value is None or not math.isfinite(float(value)):
            reasons.append(Refusal("features", name, "missing" if value is None else str(value),
                                   f"a number from preset {card.preset.name}"))
        else:
            inputs[name] = float(value)
    for spec in card.clinical_inputs:
        value, where = _clinical_value(spec, headers, seg or {}, external or {})
        if value is None and spec.impute is not None:
            value = spec.impute
            warnings.append(f"clinical input {spec.name}: missing ({where}); imputed "
                            f"{spec.impute:g} as the card allows")
        if value is None:
            reasons.append(Refusal("clinical_input", spec.name, f"missing ({where})",
                                   f"a value{f' in {spec.unit}' if spec.unit else ''}; the card "
                                   "allows no imputation"))
        else:
            inputs[spec.name] = value
    if reasons:
        return NotApplied(identity, tuple(reasons))
    probability = float(package.predict_proba([inputs])[0])
    return ModelOutput(identity, card.outcome.name, probability,
                       card.decision.category(probability), card.decision.threshold, inputs,
                       tuple(warnings))
