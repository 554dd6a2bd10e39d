"""The model card (``model.yaml``): what a model is for, what it needs and how it was validated.

The card is plain data validated by pydantic; it knows no DICOM. Where it names a DICOM attribute
(a clinical input read from a header, the acquisition domain) it names the PS3.6 keyword, and
``pipelines.science.inference`` reads the header. docs/model-card.md describes every field.

Feature names are ``"<roi_variant>/<pyradiomics key>"``, e.g.
``"intra + 4 mm ring, without air/fat/wavelet-LLH_glcm_Contrast"``: the ROI variant is the
preset's variant name (``pipelines.science.presets.RoiVariant.name``, the ``roi_variant`` column of
a result's features.csv) and the key is pyradiomics' feature key. A variant name may itself contain
``/``; a pyradiomics key never does, so the key is what follows the last ``/``
(:func:`split_feature_name`).

A model of a study job (several series of one study by role, e.g. arterial and portal-venous CT)
lists the ``roles`` it needs, and names a feature measured on a role's series
``"<role>:<roi_variant>/<pyradiomics key>"``; an unprefixed name is the series the lesions were
drawn on (:func:`role_of`).

The card follows the headings of Model Cards (Mitchell et al., FAT* 2019) and the reporting items
of TRIPOD (Collins et al., Ann Intern Med 2015): intended use, outcome, predictors, validation
cohorts and performance with confidence intervals.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CARD_FORMAT = 1
_SHA256 = r"^[0-9a-f]{64}$"


def split_feature_name(name: str) -> tuple[str, str]:
    """``(roi_variant, pyradiomics key)`` of a card feature name; ValueError without a ``/``."""
    variant, sep, key = name.rpartition("/")
    if not sep or not variant or not key:
        raise ValueError(f"feature {name!r}: expected '<roi_variant>/<pyradiomics key>'")
    return variant, key


def feature_name(roi_variant: str, key: str, role: str = "") -> str:
    """The card's name of pyradiomics feature ``key`` of ROI variant ``roi_variant``, measured
    on the series of ``role`` (``""``: the series the lesions were drawn on)."""
    if "/" in key:
        raise ValueError(f"pyradiomics key {key!r} contains '/'")
    return f"{role}:{roi_variant}/{key}" if role else f"{roi_variant}/{key}"


_ROLE = re.compile(r"^([a-z][a-z0-9_]*):")


def role_of(name: str) -> str:
    """The role a feature name is measured on (``""``: the series the lesions were drawn on)."""
    match = _ROLE.match(name)
    return match.group(1) if match else ""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Range(_Section):
    """A closed interval; either end may be open (null)."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min is None and self.max is None:
            raise ValueError("a range needs min or max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"range min {self.min} above max {self.max}")
        return self

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in the interval, ends included."""
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def describe(self) -> str:
        """``"1 to 2.5"``, ``">= 1"`` or ``"<= 2.5"``."""
        if self.min is not None and self.max is not None:
            return f"{self.min:g} to {self.max:g}"
        return f">= {self.min:g}" if self.min is not None else f"<= {self.max:g}"


class Outcome(_Section):
    """What the model predicts: the probability that ``name`` is positive."""

    name: str = Field(min_length=1)
    definition: str = Field(min_length=1)
    positive: str = Field(default="1", description="What the positive class means, in words.")


class PresetRef(_Section):
    """The extraction preset the features must come from, by name and sha256
    (``pipelines.science.presets.Preset.hash``)."""

    name: str = Field(min_length=1)
    hash: str = Field(pattern=_SHA256)


SegValue = Literal["lesion_count", "max_lesion_diameter_mm", "lesion_diameter_mm",
                   "lesion_volume_ml"]


class ClinicalInput(_Section):
    """A non-radiomic predictor and where its value comes from.

    ``source``: ``dicom`` reads the header attribute ``key`` (a PS3.6 keyword, e.g. PatientAge,
    PatientSex); ``seg`` a value derived from the segmentation (``key`` one of
    :data:`SegValue`); ``external`` a value the site supplies from a CSV or FHIR export under
    column ``key``. ``impute`` is the value used when it is missing; null (the default) means a
    missing value refuses the model, never a guess. ``categories`` maps text values (e.g. the
    Patient's Sex M/F) to numbers.
    """

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    source: Literal["dicom", "seg", "external"]
    key: str = Field(min_length=1)
    unit: str = ""
    description: str = ""
    impute: float | None = None
    categories: dict[str, float] | None = None

    @model_validator(mode="after")
    def _known_seg_value(self) -> ClinicalInput:
        if self.source == "seg" and self.key not in SegValue.__args__:  # type: ignore[attr-defined]
            raise ValueError(
                f"clinical input {self.name}: seg value {self.key!r} unknown; known: "
                f"{list(SegValue.__args__)}"  # type: ignore[attr-defined]
            )
        return self


class Decision(_Section):
    """The decision rule: probability >= ``threshold`` is ``categories[1]``, else
    ``categories[0]``; ``threshold_method`` says how it was chosen."""

    threshold: float = Field(ge=0.0, le=1.0)
    threshold_method: str
    categories: tuple[str, str] = ("low risk", "high risk")

    def category(self, probability: float) -> str:
        """The risk category of ``probability``."""
        return self.categories[1] if probability >= self.threshold else self.categories[0]


class AcquisitionDomain(_Section):
    """The acquisitions the model was validated on; a series outside any given field is refused.

    Text lists match case-insensitively after trimming spaces; ``series_description`` is a
    regular expression searched in Series Description (0008,103E), e.g. the contrast phase.
    Attributes are PS3.3: Modality (C.7.3.1), Convolution Kernel (C.8.2.1), Slice Thickness
    (C.7.6.2), Manufacturer (C.7.5.1), Magnetic Field Strength (C.8.3.1), KVP (C.8.2.1),
    Pixel Spacing (C.7.6.2).
    """

    modality: tuple[str, ...] = Field(min_length=1)
    series_description: str | None = None
    convolution_kernels: tuple[str, ...] | None = None
    slice_thickness_mm: Range | None = None
    pixel_spacing_mm: Range | None = None
    manufacturers: tuple[str, ...] | None = None
    magnetic_field_strength_t: Range | None = None
    kvp: Range | None = None
    contrast: bool | None = Field(
        default=None,
        description="true: Contrast/Bolus Agent (0018,0010) must be recorded; false: absent.",
    )

    @field_validator("series_description")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"domain.series_description: {exc}") from None
        return value


class QCRule(_Section):
    """Which QC status refuses the model: ``fail`` only (default), or ``warn`` and ``fail``."""

    refuse_on: Literal["fail", "warn"] = "fail"


class Cohort(_Section):
    """One cohort the model was developed or validated on."""

    name: str
    role: Literal["development", "internal", "external"]
    description: str = ""
    cases: int = Field(ge=1)
    positives: int = Field(ge=0)

    @model_validator(mode="after")
    def _positives(self) -> Cohort:
        if self.positives > self.cases:
            raise ValueError(f"cohort {self.name}: {self.positives} positives of {self.cases}")
        return self


class Metric(_Section):
    """A performance measure on a cohort, with its confidence interval and how that was got."""

    cohort: str
    name: str
    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    ci_method: str = ""


class Training(_Section):
    """How the model was built: the steps and their parameters, in words and numbers."""

    algorithm: str
    steps: tuple[str, ...] = ()
    parameters: dict[str, str | float | int | bool | None] = Field(default_factory=dict)
    software: dict[str, str] = Field(default_factory=dict)


class ModelCard(_Section):
    """``model.yaml`` of a model package; see the module docstring."""

    format: Literal[1] = CARD_FORMAT
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    version: str = Field(min_length=1)
    description: str
    intended_use: str = Field(min_length=1)
    not_for_clinical_use: bool
    disclaimer: str = ""
    outcome: Outcome
    preset: PresetRef
    features: tuple[str, ...] = Field(min_length=1)
    roles: tuple[str, ...] = ()
    clinical_inputs: tuple[ClinicalInput, ...] = ()
    decision: Decision
    domain: AcquisitionDomain
    qc: QCRule = QCRule()
    training: Training
    cohorts: tuple[Cohort, ...] = Field(min_length=1)
    metrics: tuple[Metric, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        for name in self.features:
            split_feature_name(name)
            if role_of(name) and role_of(name) not in self.roles:
                raise ValueError(f"features: {name!r} is measured on role {role_of(name)!r}, "
                                 f"not among roles {list(self.roles)}")
        duplicates = sorted({f for f in self.features if self.features.count(f) > 1})
        if duplicates:
            raise ValueError(f"features: duplicates {duplicates}")
        inputs = [c.name for c in self.clinical_inputs]
        if len(set(inputs)) != len(inputs):
            raise ValueError(f"clinical_inputs: duplicate names {inputs}")
        if self.not_for_clinical_use and not self.disclaimer:
            raise ValueError("not_for_clinical_use is true: give the disclaimer text")
        cohorts = {c.name for c in self.cohorts}
        unknown = sorted({m.cohort for m in self.metrics} - cohorts)
        if unknown:
            raise ValueError(f"metrics name cohorts {unknown} not in cohorts {sorted(cohorts)}")
        return self

    @property
    def input_names(self) -> tuple[str, ...]:
        """Columns of the fitted estimator's input, in order: features, then clinical inputs."""
        return (*self.features, *(c.name for c in self.clinical_inputs))
