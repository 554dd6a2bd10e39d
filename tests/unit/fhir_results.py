"""A PipelineResult made by hand, without running the pipeline: two lesions, one model that ran
on the first and was refused on the second, series and lesion QC, and the header of its feature
report SR. For the FHIR tests that need a bundle, not features (tests/unit/test_fhir_report.py
builds one from a real run too)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import Comprehensive3DSRStorage, generate_uid

from pipelines.outputs.result import (
    LesionModelResult,
    LesionSummary,
    OutputObject,
    PipelineResult,
    StageTimes,
)
from pipelines.science.inference import ModelIdentity, ModelOutput, NotApplied, Refusal
from pipelines.science.qc import QCCheck, QCReport

MODEL = ModelIdentity("test-model", "2.0.0", "ab" * 32, "tests only", True,
                      "Test model, not for clinical use.")
PROBABILITY = 0.25


def made_result(directory: Path, seed: str = "made") -> tuple[PipelineResult, Dataset]:
    """The result and its SR header (Patient ID with an issuer, Accession Number, Study Date);
    ``seed`` makes the UIDs."""
    study_uid = generate_uid(entropy_srcs=[seed, "study"])
    sr_uid = generate_uid(entropy_srcs=[seed, "sr"])
    features = {"original_shape_MeshVolume": 1234.5, "original_shape_Maximum3DDiameter": 21.0,
                "original_firstorder_Mean": 41.5, "original_glcm_Contrast": 3.0}
    lesions = (
        LesionSummary(1, "Lesion 1", "intra", dict(features)),
        LesionSummary(1, "Lesion 1", "intra + 2 mm ring", dict(features)),
        LesionSummary(2, "Lesion 2", "intra", {**features, "original_firstorder_Mean": 80.0}),
    )
    models = (
        LesionModelResult(1, ModelOutput(MODEL, "recurrence", PROBABILITY, "low risk", 0.5,
                                         {"x": 1.0})),
        LesionModelResult(2, NotApplied(MODEL, (
            Refusal("qc", "segment 2 (Lesion 2): mask.volume", "20 mm3 (fail)", ">= 100 mm3"),
            Refusal("domain", "(0018,0050) SliceThickness", "7 mm", "<= 5 mm")))),
    )
    qc = (
        QCReport("1.2.3.4", "series", (QCCheck("slices", "series", "pass", 40, "", ">= 10", ""),)),
        QCReport("segment 1 (Lesion 1)", "roi",
                 (QCCheck("mask.volume", "roi", "pass", 1234.5, "mm3", ">= 100 mm3", ""),)),
        QCReport("segment 2 (Lesion 2)", "roi",
                 (QCCheck("mask.volume", "roi", "fail", 20.0, "mm3", ">= 100 mm3", "small"),)),
    )
    result = PipelineResult(
        source_series_uid="1.2.3.4", seg_sop_instance_uid="1.2.3.5", study_instance_uid=study_uid,
        preset="ct-test", preset_hash="c" * 64, lesions=lesions,
        objects=(OutputObject(directory / f"{sr_uid}.dcm", str(Comprehensive3DSRStorage),
                              sr_uid),),
        features_csv=directory / "features.csv", qc=qc, qc_csv=directory / "qc.csv",
        timings=StageTimes(**{f.name: 0.0 for f in fields(StageTimes)
                              if f.name != "early_objects"}),
        models=models,
    )
    header = Dataset()
    header.SOPClassUID = Comprehensive3DSRStorage
    header.SOPInstanceUID = sr_uid
    header.StudyInstanceUID = study_uid
    header.PatientID = "PAT-0042"
    header.IssuerOfPatientID = "2.16.840.1.113883.3.9999"
    header.AccessionNumber = "ACC-7"
    header.StudyDate = "20250314"
    return result, header
