"""pipelines.science.inference.apply_model: the model runs only with the card's preset hash, passing
QC, a series inside the validated domain and every clinical input; otherwise each failed condition
is listed."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pydicom
import pytest

from models.card import ClinicalInput
from models.package import ModelPackage, load_package
from pipelines.science.inference import (
    ModelOutput,
    NotApplied,
    apply_model,
    lesion_features,
    seg_values,
)
from pipelines.science.qc import QCCheck, QCReport
from tests.unit.model_helpers import PRESET_HASH, trained


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> ModelPackage:
    _, path, digest = trained(tmp_path_factory.mktemp("train"))
    return load_package(path, digest)


def header(**changes: object) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.Modality = "CT"
    ds.SeriesDescription = "Portal venous 2.5 mm"
    ds.ConvolutionKernel = "STANDARD"
    ds.SliceThickness = 2.5
    ds.Manufacturer = "radiomics-node"
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def qc(*statuses: str) -> list[QCReport]:
    checks = tuple(QCCheck(f"check.{i}", "series", status, 1.0, "mm", "<= 0.5 mm", "measured")
                   for i, status in enumerate(statuses))
    return [QCReport("1.2.3", "series", checks)]


def inputs(package: ModelPackage) -> tuple[dict[str, float], dict[str, float]]:
    case = package.selftest[0].inputs
    features = {name: case[name] for name in package.card.features}
    return features, {"max_lesion_diameter_mm": case["diameter_mm"]}


def run(package: ModelPackage, **overrides: object) -> ModelOutput | NotApplied:
    features, seg = inputs(package)
    arguments: dict[str, object] = {
        "features": features, "preset_hash": PRESET_HASH, "qc_reports": qc("pass", "info"),
        "headers": [header(), header()], "seg": seg,
    }
    arguments.update(overrides)
    return apply_model(package, **arguments)  # type: ignore[arg-type]


def test_applied(package: ModelPackage) -> None:
    output = run(package)
    assert isinstance(output, ModelOutput)
    assert output.probability == pytest.approx(package.selftest[0].probability, abs=1e-12)
    expected = "high risk" if output.probability >= package.card.decision.threshold else "low risk"
    assert output.category == expected
    assert output.model.sha256 == package.sha256 and output.model.not_for_clinical_use
    assert output.qc_warnings == ()


def test_every_failed_condition_is_listed(package: ModelPackage) -> None:
    features, _ = inputs(package)
    missing_feature = package.card.features[0]
    del features[missing_feature]
    result = run(package, features=features, preset_hash="cd" * 32, qc_reports=qc("fail"),
                 headers=[header(ConvolutionKernel="B70f", SliceThickness=5.0)], seg={})
    assert isinstance(result, NotApplied)
    found = {(r.condition, r.field) for r in result.reasons}
    assert found == {
        ("preset", "preset hash"),
        ("qc", "1.2.3: check.0"),
        ("domain", "(0018,1210) ConvolutionKernel"),
        ("domain", "(0018,0050) SliceThickness"),
        ("features", missing_feature),
        ("clinical_input", "diameter_mm"),
    }
    kernel = next(r for r in result.reasons if r.field.endswith("ConvolutionKernel"))
    assert kernel.message == ("domain: (0018,1210) ConvolutionKernel is 'B70f'; required: one "
                              "of STANDARD, B40f")
    thickness = next(r for r in result.reasons if r.field.endswith("SliceThickness"))
    assert (thickness.value, thickness.expected) == ("5 mm", "1 to 3 mm")


def test_domain_details(package: ModelPackage) -> None:
    outside = run(package, headers=[header(Modality="MR", SeriesDescription="arterial",
                                           Manufacturer=None)])
    assert isinstance(outside, NotApplied)
    reasons = {r.field: r for r in outside.reasons}
    assert reasons["(0008,0060) Modality"].value == "'MR'"
    assert reasons["(0008,103E) SeriesDescription"].expected == "matches /(?i)venous/"
    assert reasons["(0008,0070) Manufacturer"].value == "not recorded"
    # Case and surrounding spaces do not matter for text lists.
    assert isinstance(run(package, headers=[header(ConvolutionKernel=" b40F ")]), ModelOutput)
    assert isinstance(run(package, headers=[]), NotApplied)


def test_qc_warnings_run_unless_the_card_refuses_them(package: ModelPackage) -> None:
    warned = run(package, qc_reports=qc("pass", "warn"))
    assert isinstance(warned, ModelOutput)
    assert warned.qc_warnings == ("1.2.3: check.1: measured",)
    strict = replace(package, card=package.card.model_copy(
        update={"qc": package.card.qc.model_copy(update={"refuse_on": "warn"})}))
    refused = run(strict, qc_reports=qc("pass", "warn"))
    assert isinstance(refused, NotApplied)
    assert refused.reasons[0].value == "1.0 mm (warn)"
    assert isinstance(run(package, qc_reports=[]), NotApplied)


def _with_input(package: ModelPackage, spec: ClinicalInput) -> ModelPackage:
    card = package.card.model_copy(update={"clinical_inputs": (spec,)})
    return replace(package, card=card)


def test_clinical_inputs_from_each_source(package: ModelPackage) -> None:
    dicom = _with_input(package, ClinicalInput(name="diameter_mm", source="dicom",
                                               key="PatientAge"))
    output = run(dicom, headers=[header(PatientAge="063Y")])
    assert isinstance(output, ModelOutput) and output.inputs["diameter_mm"] == 63.0
    months = run(dicom, headers=[header(PatientAge="018M")])
    assert isinstance(months, ModelOutput) and months.inputs["diameter_mm"] == 1.5
    external = _with_input(package, ClinicalInput(name="diameter_mm", source="external",
                                                  key="cea"))
    assert isinstance(run(external, external={"cea": "12.5"}), ModelOutput)
    refused = run(external, external={})
    assert isinstance(refused, NotApplied)
    assert refused.reasons[0].value == "missing (external column cea)"
    imputed = _with_input(package, ClinicalInput(name="diameter_mm", source="external",
                                                 key="cea", impute=5.0))
    output = run(imputed, external={})
    assert isinstance(output, ModelOutput) and output.inputs["diameter_mm"] == 5.0
    assert "imputed 5 as the card allows" in output.qc_warnings[0]
    sex = _with_input(package, ClinicalInput(name="diameter_mm", source="dicom", key="PatientSex",
                                             categories={"M": 1.0, "F": 0.0}))
    assert run(sex, headers=[header(PatientSex="F")]).inputs["diameter_mm"] == 0.0  # type: ignore[union-attr]
    assert isinstance(run(sex, headers=[header(PatientSex="O")]), NotApplied)


@dataclass(frozen=True)
class Lesion:
    segment_number: int
    roi_variant: str
    features: dict[str, float]
    role: str = ""


def test_lesion_features_and_seg_values() -> None:
    lesions = [
        Lesion(1, "intra", {"original_shape_Maximum3DDiameter": 30.0,
                            "original_shape_MeshVolume": 4000.0}),
        Lesion(1, "intra + 2 mm ring, without air/fat", {"original_glcm_Contrast": 2.0}),
        Lesion(2, "intra", {"original_shape_Maximum3DDiameter": 12.0}),
    ]
    by_segment = lesion_features(lesions)
    assert by_segment[1]["intra + 2 mm ring, without air/fat/original_glcm_Contrast"] == 2.0
    assert seg_values(by_segment, 2) == {"lesion_count": 2.0, "lesion_diameter_mm": 12.0,
                                         "max_lesion_diameter_mm": 30.0}
    assert seg_values(by_segment, 1)["lesion_volume_ml"] == 4.0
    partial = {**by_segment, 3: {"intra/original_firstorder_Mean": 1.0}}
    assert "max_lesion_diameter_mm" not in seg_values(partial, 1)


def test_nan_feature_is_refused(package: ModelPackage) -> None:
    features, _ = inputs(package)
    features[package.card.features[1]] = float(np.nan)
    result = run(package, features=features)
    assert isinstance(result, NotApplied) and result.reasons[0].value == "nan"


def test_pure(package: ModelPackage) -> None:
    features, _ = inputs(package)
    before = dict(features)
    first = run(package, features=features)
    second = run(package, features=features)
    assert first == second and features == before
