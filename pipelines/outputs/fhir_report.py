"""A job's results as a FHIR transaction Bundle for the RIS/EHR: one DiagnosticReport and the
Observations it lists in ``result``, built and validated through the ``fhir.resources.R4B``
models (FHIR 4.3.0; DiagnosticReport, Observation and Bundle are as in R4 4.0.1: FHIR R4B,
https://hl7.org/fhir/R4B/r4b-explanation.html). Pure computation: the node posts the bundle
(``node.flow.fhir``).

The report (https://hl7.org/fhir/R4/diagnosticreport.html) is identified like the TID 1500
feature report it summarises, by that SR's SOP Instance UID, and references the imaging study by
its Study Instance UID, both as FHIR writes DICOM UIDs: system ``urn:dicom:uid``, value
``urn:oid:<UID>`` (https://hl7.org/fhir/R4/imagingstudy.html, ImagingStudy.identifier; PS3.5
section 9 UIDs are ISO 8824 OIDs). The patient and the order are referenced by identifier only:
Patient ID (0010,0020) with its issuer (0010,0021) or (0010,0024), Accession Number (0008,0050)
(PS3.3 C.7.1.1, C.7.2.1). The Observations (https://hl7.org/fhir/R4/observation.html) are, in
this order: each model on each lesion (``pipelines.science.inference``), a few features of each
lesion as drawn (:data:`KEY_FEATURES`), and the quality-control status (``pipelines.science.qc``).

Retries create nothing twice: every ``fullUrl`` is a ``urn:uuid:`` derived (RFC 4122 version 5)
from the SR's SOP Instance UID and a key naming the resource, each resource carries that
identity as an identifier, and each entry is a conditional create (``request.ifNoneExist`` on
the identifier, https://hl7.org/fhir/R4/http.html#ccreate) inside a transaction
(https://hl7.org/fhir/R4/http.html#transaction), whose references to a ``fullUrl`` the server
resolves to the resource it created or found.

Code systems (docs/outputs.md, "FHIR results bundle"): DICOM's ``DCM`` is
``http://dicom.nema.org/resources/ontology/DCM`` and UCUM ``http://unitsofmeasure.org`` (HL7's
URIs for both); the feature codes of ``pipelines.outputs.codes`` keep their values under
:data:`IBSI_SYSTEM` and, for the private ``99RADNODE`` scheme (model, QC and non-IBSI feature
codes), :data:`PRIVATE_SYSTEM`, neither of which HL7 registers.
"""

from __future__ import annotations

import json
import math
import os
import re
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import highdicom as hd
from fhir.resources.R4B.bundle import Bundle
from pydicom.dataset import Dataset

from pipelines.outputs.codes import IBSI_SCHEME, PRIVATE_SCHEME, feature_concept
from pipelines.outputs.evaluations import ROI_QC, SERIES_QC, STATUS, model_line
from pipelines.outputs.result import LesionModelResult, PipelineResult
from pipelines.science.inference import INTRA, ModelOutput, NotApplied

DICOM_UID_SYSTEM = "urn:dicom:uid"
URI_SYSTEM = "urn:ietf:rfc:3986"  # identifier values that are URIs themselves
DCM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
UCUM_SYSTEM = "http://unitsofmeasure.org"
IBSI_SYSTEM = "https://theibsi.github.io"
# the private scheme has no URL of its own: a fixed name-based UUID stands for it
PRIVATE_SYSTEM = f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, 'radiomics-node:99RADNODE')}"
SYSTEMS = {"DCM": DCM_SYSTEM, "UCUM": UCUM_SYSTEM, IBSI_SCHEME: IBSI_SYSTEM,
           PRIVATE_SCHEME: PRIVATE_SYSTEM}
_V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"  # diagnostic service sections
_V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"  # identifier types
_OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
_DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"

# pyradiomics keys of the features each lesion as drawn reports (those its preset computes)
KEY_FEATURES = ("original_shape_MeshVolume", "original_shape_Maximum3DDiameter",
                "original_firstorder_Mean")
QC_STATUS_CODE = hd.sr.CodedConcept("qc.status", PRIVATE_SCHEME, "Quality control status")
_QC_WORDS = {"pass": "pass", "warn": "warning", "fail": "fail"}
_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")


def dicom_uid(uid: str) -> str:
    """A DICOM UID as FHIR writes it in an identifier value: ``urn:oid:<UID>``."""
    return f"urn:oid:{uid}"


def report_identifier(sr_sop_instance_uid: str) -> str:
    """The search token ``system|value`` of the DiagnosticReport of a feature report SR, for
    ``ifNoneExist`` and for reading it back (``node.flow.fhir.FhirClient.has_report``)."""
    return f"{DICOM_UID_SYSTEM}|{dicom_uid(sr_sop_instance_uid)}"


def _coding(concept: hd.sr.CodedConcept) -> dict[str, str]:
    return {"system": SYSTEMS[concept.scheme_designator], "code": concept.value,
            "display": concept.meaning}


def _concept(concept: hd.sr.CodedConcept, text: str | None = None) -> dict[str, Any]:
    return {"coding": [_coding(concept)], "text": text or concept.meaning}


def _quantity(value: float, unit: hd.sr.CodedConcept) -> dict[str, Any]:
    return {"value": value, "unit": "1" if unit.value == "1" else unit.meaning,
            "system": UCUM_SYSTEM, "code": unit.value}


def _patient_identifier(header: Dataset) -> dict[str, Any] | None:
    """Patient ID (0010,0020) as an Identifier: its system the Universal Entity ID of the
    Issuer of Patient ID Qualifiers Sequence (0010,0024) when it is an ISO OID or a URI, else
    the Issuer of Patient ID (0010,0021) when that is an OID or a URI; an issuer that is
    neither (a local name) becomes the identifier's ``assigner.display``, since FHIR's
    ``Identifier.system`` must be an absolute URI. None without a Patient ID."""
    patient_id = str(header.get("PatientID", "") or "").strip()
    if not patient_id:
        return None
    identifier: dict[str, Any] = {"value": patient_id}
    issuer = str(header.get("IssuerOfPatientID", "") or "").strip()
    for item in header.get("IssuerOfPatientIDQualifiersSequence", []):
        entity = str(item.get("UniversalEntityID", "") or "").strip()
        kind = str(item.get("UniversalEntityIDType", "") or "").strip()
        if kind == "ISO" and _OID.fullmatch(entity):
            identifier["system"] = dicom_uid(entity)
        elif kind in ("URI", "URL") and ":" in entity and " " not in entity:
            identifier["system"] = entity
    if "system" not in identifier and issuer:
        if _OID.fullmatch(issuer):
            identifier["system"] = dicom_uid(issuer)
        elif re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*:\S+", issuer):
            identifier["system"] = issuer
        else:
            identifier["assigner"] = {"display": issuer}
    return identifier


def _study_date(header: Dataset) -> str | None:
    """Study Date (0008,0020) as a FHIR date (no time: a dateTime with a time needs a time
    zone, which the header may not record)."""
    date = str(header.get("StudyDate", "") or "").strip()
    if not re.fullmatch(r"\d{8}", date):
        return None
    return f"{date[:4]}-{date[4:6]}-{date[6:]}"


class _Entries:
    """The bundle's entries, each a conditional create of a resource whose identity derives
    from the SR's SOP Instance UID and a key."""

    def __init__(self, sr_uid: str):
        self._namespace = uuid.uuid5(uuid.NAMESPACE_OID, sr_uid)
        self.entries: list[dict[str, Any]] = []

    def full_url(self, key: str) -> str:
        return f"urn:uuid:{uuid.uuid5(self._namespace, key)}"

    def add(self, key: str, resource: dict[str, Any],
            identifier: dict[str, str] | None = None) -> str:
        """Append ``resource`` as a conditional create; its identifier is ``identifier``, or
        its own ``fullUrl`` as a URI. Returns the ``fullUrl``."""
        url = self.full_url(key)
        identifier = identifier or {"system": URI_SYSTEM, "value": url}
        resource = {**resource, "identifier": [identifier]}
        kind = resource["resourceType"]
        self.entries.append({
            "fullUrl": url, "resource": resource,
            "request": {"method": "POST", "url": kind,
                        "ifNoneExist": f"identifier={identifier['system']}|"
                                       f"{identifier['value']}"},
        })
        return url


def _model_observation(lesion: LesionModelResult, label: str,
                       common: Mapping[str, Any]) -> dict[str, Any]:
    """One model's output on one lesion: the probability of the card's outcome as a unitless
    Quantity (UCUM ``1``) and its risk category as the interpretation; when the model did not
    run, status ``cancelled`` with a data-absent reason and every refusal as a note."""
    outcome = lesion.outcome
    model = outcome.model
    resource: dict[str, Any] = {
        "resourceType": "Observation", **common,
        "focus": [{"display": f"segment {lesion.segment_number} ({label})"}],
        "method": {"text": f"{model.name} {model.version} (package sha256 {model.sha256})"},
    }
    notes = [model.disclaimer or "Not for clinical use."] if model.not_for_clinical_use else []
    if isinstance(outcome, ModelOutput):
        concept = hd.sr.CodedConcept("model.prob", PRIVATE_SCHEME,
                                     f"Probability of {outcome.outcome}"[:64])
        resource.update(
            status="final",
            code=_concept(concept, f"{model.name}: probability of {outcome.outcome}"),
            valueQuantity=_quantity(outcome.probability,
                                    hd.sr.CodedConcept("1", "UCUM", "no units")),
            interpretation=[{"text": f"{outcome.category} (threshold {outcome.threshold:g})"}],
        )
    else:
        assert isinstance(outcome, NotApplied)
        resource.update(
            status="cancelled",
            code={"coding": [_coding(hd.sr.CodedConcept("model.notapplied", PRIVATE_SCHEME,
                                                        "Model not applied"))],
                  "text": f"{model.name}: not applied"},
            dataAbsentReason={"coding": [{"system": _DATA_ABSENT, "code": "not-performed",
                                          "display": "Not Performed"}]},
        )
        notes += [reason.message for reason in outcome.reasons]
    if notes:
        resource["note"] = [{"text": note} for note in notes]
    return resource


def _qc_observation(result: PipelineResult, common: Mapping[str, Any]) -> dict[str, Any]:
    """The worst QC status of the series and every lesion, with each report's own status as
    a component (coded as in the SR, ``pipelines.outputs.evaluations``)."""
    worst = result.qc_status
    return {
        "resourceType": "Observation", **common, "status": "final",
        "code": _concept(QC_STATUS_CODE),
        "valueCodeableConcept": {"coding": [_coding(STATUS[worst])], "text": _QC_WORDS[worst]},
        "component": [
            {"code": _concept(SERIES_QC if report.scope == "series" else ROI_QC,
                              report.subject),
             "valueCodeableConcept": {"coding": [_coding(STATUS[report.status])],
                                      "text": _QC_WORDS[report.status]}}
            for report in result.qc
        ],
    }


def _conclusion(result: PipelineResult, labels: Mapping[int, str]) -> str:
    """The report's text: each model on each lesion (as the summary image says it), packages
    that did not load, the QC status, and the disclaimers of models not for clinical use."""
    lines = [f"Radiomics analysis, preset {result.preset} (sha256 {result.preset_hash[:12]})."]
    lines += [model_line(labels.get(r.segment_number, f"segment {r.segment_number}"),
                         r.outcome) + "." for r in result.models]
    lines += [f"{error}." for error in result.model_errors]
    if not result.models and not result.model_errors:
        lines.append(f"No model applied: none is configured for preset {result.preset}.")
    lines.append(f"Quality control: {_QC_WORDS[result.qc_status]}.")
    lines += sorted({r.outcome.model.disclaimer or "Not for clinical use."
                     for r in result.models if r.outcome.model.not_for_clinical_use})
    return "\n".join(lines)


def build_results_bundle(result: PipelineResult, header: Dataset,
                         modality: str) -> dict[str, Any]:
    """The transaction Bundle of one job's results (module docstring), as FHIR JSON.

    ``header`` is the feature report SR's (``result.report``; PS3.3 A.35.13 Comprehensive 3D
    SR: Patient ID, its issuer, Accession Number, Study Instance UID, Study Date);
    ``modality`` the (0008,0060) Modality of the source series, which decides the features'
    units (``pipelines.outputs.codes.feature_concept``). Raises ValueError when ``header`` is not
    that SR's or its study is not the result's, and pydantic's ValidationError when the bundle is
    not valid FHIR R4B (a bug, not an input)."""
    sr_uid = result.report.sop_instance_uid
    if str(header.get("SOPInstanceUID", "")) != sr_uid:
        raise ValueError(f"header of SOP instance {header.get('SOPInstanceUID')!r}, not the "
                         f"feature report {sr_uid}")
    if str(header.get("StudyInstanceUID", "")) != result.study_instance_uid:
        raise ValueError(f"header of study {header.get('StudyInstanceUID')!r}, not the "
                         f"result's {result.study_instance_uid}")
    study = {"type": "ImagingStudy",
             "identifier": {"system": DICOM_UID_SYSTEM,
                            "value": dicom_uid(result.study_instance_uid)}}
    patient = _patient_identifier(header)
    common: dict[str, Any] = {
        "category": [{"coding": [{"system": _OBSERVATION_CATEGORY, "code": "imaging",
                                  "display": "Imaging"}]}],
        "derivedFrom": [study],
    }
    if patient is not None:
        common["subject"] = {"type": "Patient", "identifier": patient}
    date = _study_date(header)
    if date is not None:
        common["effectiveDateTime"] = date
    labels = {lesion.segment_number: lesion.label for lesion in result.lesions}

    entries = _Entries(sr_uid)
    observations: list[str] = []
    for lesion in result.models:
        model = lesion.outcome.model
        observations.append(entries.add(
            f"model/{lesion.segment_number}/{model.name}/{model.version}/{model.sha256}",
            _model_observation(lesion, labels.get(lesion.segment_number, ""), common)))
    for summary in result.lesions:
        if summary.roi_variant != INTRA:
            continue
        for key in KEY_FEATURES:
            value = summary.features.get(key)
            if value is None or not math.isfinite(value):
                continue
            concept = feature_concept(key, modality)
            observations.append(entries.add(f"feature/{summary.segment_number}/{key}", {
                "resourceType": "Observation", **common, "status": "final",
                "code": _concept(concept.name, f"{concept.name.meaning}, as drawn"),
                "focus": [{"display": f"segment {summary.segment_number} ({summary.label})"}],
                "valueQuantity": _quantity(float(value), concept.unit),
            }))
    observations.append(entries.add("qc", _qc_observation(result, common)))

    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport", "status": "final",
        "category": [{"coding": [{"system": _V2_0074, "code": "RAD", "display": "Radiology"}]}],
        "code": {"coding": [{"system": DCM_SYSTEM, "code": "126000",
                             "display": "Imaging Measurement Report"}],
                 "text": f"Radiomics analysis ({result.preset})"},
        **{k: v for k, v in common.items() if k in ("subject", "effectiveDateTime")},
        "imagingStudy": [study],
        "result": [{"reference": url} for url in observations],
        "conclusion": _conclusion(result, labels),
    }
    accession = str(header.get("AccessionNumber", "") or "").strip()
    if accession:
        report["basedOn"] = [{"type": "ServiceRequest", "identifier": {
            "type": {"coding": [{"system": _V2_0203, "code": "ACSN",
                                 "display": "Accession ID"}]},
            "value": accession}}]
    entries.add("DiagnosticReport", report,
                {"system": DICOM_UID_SYSTEM, "value": dicom_uid(sr_uid)})
    # the report first, so that a reader of the bundle meets it before what it lists
    entries.entries.insert(0, entries.entries.pop())
    bundle = Bundle.model_validate({"resourceType": "Bundle", "type": "transaction",
                                    "entry": entries.entries})
    return json.loads(bundle.model_dump_json())


def write_results_bundle(bundle: Mapping[str, Any], path: Path) -> Path:
    """Write ``bundle`` as JSON to ``path`` (atomically: a hidden temporary file renamed into
    place) and return ``path``."""
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(json.dumps(bundle, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
