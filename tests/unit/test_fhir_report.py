"""The FHIR results bundle (pipelines.outputs.fhir_report): built from a real run of the pipeline on
a small synthetic study with the shipped demonstration model, it parses back through the
fhir.resources R4B models, references the study by its UID, holds one Observation per lesion and
model with the model's probability, the key features of each lesion as drawn and the QC status,
and is the same JSON each time it is built; the validation refuses what FHIR does not allow."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from demo.synthetic import write_synthetic_study
from models.shipped import DEMO_PACKAGE, DEMO_SHA256
from node.flow.executor import run_in_process
from pipelines.outputs.codes import feature_concept
from pipelines.outputs.fhir_report import (
    DICOM_UID_SYSTEM,
    KEY_FEATURES,
    PRIVATE_SYSTEM,
    UCUM_SYSTEM,
    build_results_bundle,
    report_identifier,
    write_results_bundle,
)
from pipelines.outputs.result import PipelineResult
from pipelines.process import job_plan
from pipelines.science.inference import ModelOutput
from pipelines.science.qc import QCSettings
from tests.unit.fhir_results import PROBABILITY, made_result


@pytest.fixture(scope="module")
def processed(tmp_path_factory: pytest.TempPathFactory) -> tuple[PipelineResult, Dataset]:
    directory = tmp_path_factory.mktemp("study")
    study = write_synthetic_study(directory, shape=(16, 64, 64), seed=0)
    result = run_in_process(job_plan(study.ct_paths, study.seg_path, "ct-liver-crlm",
                                     directory / "out", models=[(DEMO_PACKAGE, DEMO_SHA256)],
                                     qc_settings=QCSettings(feature_robustness=False)))
    return result, pydicom.dcmread(result.report.path)


def _resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def _by_url(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["fullUrl"]: e["resource"] for e in bundle["entry"]}


def test_bundle_of_a_real_run(processed: tuple[PipelineResult, Dataset], tmp_path: Path) -> None:
    result, header = processed
    bundle = build_results_bundle(result, header, "CT")
    parsed = Bundle.model_validate(bundle)  # the R4B models accept it as it is
    assert parsed.type == "transaction"
    assert json.loads(parsed.model_dump_json()) == bundle

    [report] = _resources(bundle, "DiagnosticReport")
    assert report["status"] == "final"
    assert report["imagingStudy"] == [{"type": "ImagingStudy", "identifier": {
        "system": DICOM_UID_SYSTEM, "value": f"urn:oid:{result.study_instance_uid}"}}]
    assert report["identifier"] == [{"system": DICOM_UID_SYSTEM,
                                     "value": f"urn:oid:{result.report.sop_instance_uid}"}]
    assert report["subject"]["identifier"] == {"value": str(header.PatientID)}
    assert report["basedOn"][0]["identifier"]["value"] == str(header.AccessionNumber)
    assert bundle["entry"][0]["request"]["ifNoneExist"] == \
        f"identifier={report_identifier(result.report.sop_instance_uid)}"

    by_url = _by_url(bundle)
    listed = [by_url[ref["reference"]] for ref in report["result"]]
    assert sorted(map(id, listed)) == sorted(map(id, _resources(bundle, "Observation")))

    # one Observation per lesion and model, with the model's probability
    models = [o for o in listed if o["code"]["coding"][0]["code"] == "model.prob"]
    assert len(models) == len(result.models) == 2
    for lesion, observation in zip(result.models, models, strict=True):
        assert isinstance(lesion.outcome, ModelOutput)
        assert observation["focus"][0]["display"].startswith(
            f"segment {lesion.segment_number} ")
        assert observation["valueQuantity"] == {
            "value": lesion.outcome.probability, "unit": "1", "system": UCUM_SYSTEM,
            "code": "1"}
        assert observation["interpretation"][0]["text"].startswith(lesion.outcome.category)
        assert observation["code"]["coding"][0]["system"] == PRIVATE_SYSTEM

    # the key features of each lesion as drawn, with their units
    features = [o for o in listed if "as drawn" in o["code"]["text"]]
    drawn = [s for s in result.lesions if s.roi_variant == "intra"]
    assert len(features) == len(drawn) * len(KEY_FEATURES)
    values = iter(features)
    for summary in drawn:
        for key in KEY_FEATURES:
            observation = next(values)
            concept = feature_concept(key, "CT")
            assert observation["code"]["coding"][0]["code"] == concept.name.value
            assert observation["valueQuantity"]["value"] == summary.features[key]
            assert observation["valueQuantity"]["code"] == concept.unit.value
    assert [o["valueQuantity"]["code"] for o in features[:3]] == ["mm3", "mm", "[hnsf'U]"]

    # the QC status: the worst, and each report's own
    [qc] = [o for o in listed if o["code"]["coding"][0]["code"] == "qc.status"]
    words = {"pass": "pass", "warn": "warning", "fail": "fail"}
    assert qc["valueCodeableConcept"]["text"] == words[result.qc_status]
    assert [c["valueCodeableConcept"]["text"] for c in qc["component"]] == \
        [words[r.status] for r in result.qc]

    # every entry a conditional create on its own identifier, each fullUrl once
    urls = [e["fullUrl"] for e in bundle["entry"]]
    assert len(set(urls)) == len(urls) and all(u.startswith("urn:uuid:") for u in urls)
    for entry in bundle["entry"]:
        identifier = entry["resource"]["identifier"][0]
        assert entry["request"] == {
            "method": "POST", "url": entry["resource"]["resourceType"],
            "ifNoneExist": f"identifier={identifier['system']}|{identifier['value']}"}

    # the same JSON each time, in memory and written
    again = build_results_bundle(result, pydicom.dcmread(result.report.path), "CT")
    assert json.dumps(again) == json.dumps(bundle)
    path = write_results_bundle(bundle, tmp_path / "fhir.json")
    assert json.loads(path.read_text(encoding="utf-8")) == bundle
    assert "Demonstration model" in report["conclusion"]


def test_refused_model_and_issuer(tmp_path: Path) -> None:
    result, header = made_result(tmp_path)
    bundle = build_results_bundle(result, header, "CT")
    Bundle.model_validate(bundle)
    [report] = _resources(bundle, "DiagnosticReport")
    assert report["subject"]["identifier"] == {"system": "urn:oid:2.16.840.1.113883.3.9999",
                                               "value": "PAT-0042"}
    assert report["effectiveDateTime"] == "2025-03-14"
    observations = _resources(bundle, "Observation")
    ran, refused = observations[:2]
    assert ran["valueQuantity"]["value"] == PROBABILITY
    assert refused["status"] == "cancelled" and "valueQuantity" not in refused
    assert refused["dataAbsentReason"]["coding"][0]["code"] == "not-performed"
    assert [n["text"] for n in refused["note"]][1:] == [
        "qc: segment 2 (Lesion 2): mask.volume is 20 mm3 (fail); required: >= 100 mm3",
        "domain: (0018,0050) SliceThickness is 7 mm; required: <= 5 mm"]
    assert "Lesion 2: test-model 2.0.0 not applied" in report["conclusion"]
    assert "Quality control: fail." in report["conclusion"]
    # features of the ring variant are not reported, only the lesions as drawn
    assert len([o for o in observations if "as drawn" in o["code"]["text"]]) == 6


@pytest.mark.parametrize(("issuer", "qualifier", "expected"), [
    ("HOSPITAL A", None, {"value": "PAT-0042", "assigner": {"display": "HOSPITAL A"}}),
    ("https://hospital.example/patients", None,
     {"value": "PAT-0042", "system": "https://hospital.example/patients"}),
    ("HOSPITAL A", ("1.2.3.4.5", "ISO"), {"value": "PAT-0042", "system": "urn:oid:1.2.3.4.5"}),
])
def test_patient_identifier_system(tmp_path: Path, issuer: str,
                                   qualifier: tuple[str, str] | None,
                                   expected: dict[str, Any]) -> None:
    """Identifier.system is an absolute URI (an OID as urn:oid:); a local issuer name is the
    assigner's display instead."""
    result, header = made_result(tmp_path)
    header.IssuerOfPatientID = issuer
    if qualifier is not None:
        item = Dataset()
        item.UniversalEntityID, item.UniversalEntityIDType = qualifier
        header.IssuerOfPatientIDQualifiersSequence = Sequence([item])
    [report] = _resources(build_results_bundle(result, header, "CT"), "DiagnosticReport")
    assert report["subject"]["identifier"] == expected


def test_header_of_another_object_is_refused(tmp_path: Path) -> None:
    result, header = made_result(tmp_path)
    other = copy.deepcopy(header)
    other.SOPInstanceUID = "1.2.3"
    with pytest.raises(ValueError, match="not the feature report"):
        build_results_bundle(result, other, "CT")
    other = copy.deepcopy(header)
    other.StudyInstanceUID = "1.2.3"
    with pytest.raises(ValueError, match="not the result's"):
        build_results_bundle(result, other, "CT")


@pytest.mark.parametrize(("change", "where"), [
    (lambda b: b["entry"][1]["resource"]["valueQuantity"].update(value="high"),
     "valueQuantity.value"),
    (lambda b: b["entry"][1]["resource"].pop("status"), "resource.status"),
    (lambda b: b["entry"][0]["resource"].update(effectiveDateTime="20250314"),
     "effectiveDateTime"),
    # R5 renamed imagingStudy to study: not an element of R4 or R4B
    (lambda b: b["entry"][0]["resource"].update(study=[]), "resource.study"),
])
def test_invalid_values_are_refused(tmp_path: Path, change: Any, where: str) -> None:
    result, header = made_result(tmp_path)
    bundle = build_results_bundle(result, header, "CT")
    change(bundle)
    with pytest.raises(ValidationError, match=where):
        Bundle.model_validate(bundle)
