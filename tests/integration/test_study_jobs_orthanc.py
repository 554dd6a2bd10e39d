"""Study jobs end to end with real parts: DCMTK storescu sends a multi-phase CT study (arterial,
portal venous, delayed; one SEG on the portal venous series) and a multi-sequence MR study (T1,
T2, DWI of three b-values, hepatobiliary phase; one SEG on T2) to the node as a service; Debian's
Orthanc, the PACS, holds the CT patient's prior study. The node measures every role, registering
the SEG onto each other series (demo.study's known misregistrations), runs a model that needs
two roles, fetches the prior from Orthanc and reports the change since it; the results arrive in
Orthanc, where dciodvfy finds no error in them, and dcmqi and PixelMed read the reports."""

from __future__ import annotations

import io
import os
import subprocess
import time
from pathlib import Path

import pydicom
import pytest

from demo.study import write_multiphase_ct, write_multisequence_mr, write_prior_study
from pipelines.outputs.report_parts import measurement_groups
from tests.conftest import free_port
from tests.integration import readers
from tests.integration.peers import OrthancServer, node_service, orthanc, require_tools
from tests.integration.test_orthanc_e2e import dciodvfy_errors
from tests.integration.test_pacs import upload
from tests.unit.model_helpers import two_role_model

pytestmark = pytest.mark.integration

MEAN = "intra/original_firstorder_Mean"


def _send(node_port: int, files: list[Path]) -> None:
    subprocess.run(["storescu", "--required", "-aet", "SCANNER", "-aec", "RADIOMICS",
                    "127.0.0.1", str(node_port), *map(str, files)],
                   check=True, capture_output=True, env={**os.environ, "TCP_NODELAY": "1"})


def _report(pacs: OrthancServer, study_uid: str, log: Path, timeout: float = 900
            ) -> pydicom.Dataset:
    deadline = time.monotonic() + timeout
    while not (series := pacs.report_series(study_uid)):
        assert time.monotonic() < deadline, log.read_text()[-4000:]
        time.sleep(0.5)
    [data] = pacs.instance_files(series[0])
    return pydicom.dcmread(io.BytesIO(data))


def _items(group: pydicom.Dataset, meaning: str) -> list[pydicom.Dataset]:
    return [item for item in group.ContentSequence
            if item.ConceptNameCodeSequence[0].CodeMeaning == meaning]


def _text(group: pydicom.Dataset, meaning: str) -> list[str]:
    return [str(item.TextValue) for item in _items(group, meaning)]


def test_multi_phase_ct_with_prior_and_multi_sequence_mr(tmp_path: Path) -> None:
    require_tools("storescu", "dciodvfy")
    ct = write_multiphase_ct(tmp_path / "ct")
    prior = write_prior_study(tmp_path / "prior")
    mr = write_multisequence_mr(tmp_path / "mr")
    package, digest = two_role_model(tmp_path / "model", "ct-liver-basic",
                                     (MEAN, f"arterial:{MEAN}"))
    with orthanc(tmp_path / "orthanc", {"node": ["RADIOMICS", "127.0.0.1", free_port()]}) as pacs:
        upload(pacs, [*prior.study.portal_venous.paths, prior.study.seg_path])
        source = {"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1",
                  "port": pacs.dicom_port}
        settings = {
            "rules": [],
            "study_rules": [
                {"name": "liver-phases", "preset": "ct-liver-basic",
                 "segmented_on": ["portal_venous"], "study_stable_after": 60,
                 "roles": {"portal_venous": {"series_description": r"\bPV\b"},
                           "arterial": {"series_description": "ARTERIAL"},
                           "delayed": {"series_description": "DELAYED", "required": False}},
                 "prior": {"source": "pacs", "window_days": 365}},
                {"name": "liver-mr", "preset": "mr-liver-hcc", "segmented_on": ["t2"],
                 "study_stable_after": 60,
                 "roles": {"t2": {"modality": ["MR"], "series_description": "T2"},
                           "t1_pre": {"modality": ["MR"], "series_description": "T1 .*pre"},
                           "dwi": {"modality": ["MR"], "b_values": [0, 400, 800],
                                   "preset": "mr-liver-adc"},
                           "hbp": {"modality": ["MR"], "series_description": "HBP"}}},
            ],
            "retrieve": {"sources": [source]},
            "destinations": [{**source, "verify": False}],
            "models": [{"path": str(package), "sha256": digest}],
        }
        with node_service(tmp_path / "node", settings) as node:
            _send(node.port, [path for series in ct.series.values() for path in series.paths]
                  + [ct.seg_path])
            _send(node.port, [path for series in mr.series.values() for path in series.paths]
                  + [mr.seg_path])
            ct_report = _report(pacs, ct.study_instance_uid, node.log_path)
            mr_report = _report(pacs, mr.study_instance_uid, node.log_path)
            derived = {study: [pydicom.dcmread(io.BytesIO(data))
                               for series in pacs.find_series(study, "SEG")
                               for data in pacs.instance_files(series)]
                       for study in (ct.study_instance_uid, mr.study_instance_uid)}
    for name, dataset in (("ct", ct_report), ("mr", mr_report),
                          *((f"seg {d.SeriesDescription}", d)
                            for segs in derived.values() for d in segs
                            if d.SeriesDescription.startswith("Radiomics"))):
        path = tmp_path / f"{name}.dcm"
        dataset.save_as(path)
        assert dciodvfy_errors(path) == [], name
    # dcmqi and PixelMed read the reports of several series and of the change since a prior
    factory = readers.caching_factory(tmp_path / "java")
    for name, expected in (("ct", {"portal_venous", "arterial", "delayed"}),
                           ("mr", {"t2", "t1_pre", "dwi", "hbp"})):
        run, document = readers.tid1500reader(tmp_path / f"{name}.dcm", tmp_path)
        assert run.completed and not run.errors, run.describe()
        assert {g.get("activitySession") for g in document["Measurements"]} == expected
        validated = readers.sr_validator(tmp_path / f"{name}.dcm", factory)
        assert validated.completed and not validated.errors, validated.describe()
        assert "Root Template Validation Complete" in validated.lines, validated.describe()

    # every role measured, each group saying its role; one Tracking UID per lesion across roles
    groups = measurement_groups(ct_report)
    now = [g for g in groups if not _items(g, "Time Point")]
    assert {tuple(_text(g, "Activity Session")) for g in now} == \
        {("portal_venous",), ("arterial",), ("delayed",)}
    uids = {role: [str(_items(g, "Tracking Unique Identifier")[0].UID) for g in now
                   if _text(g, "Activity Session") == [role]]
            for role in ("portal_venous", "arterial", "delayed")}
    assert uids["arterial"] == uids["portal_venous"] == uids["delayed"]
    # the registration's checks are in the report, on each lesion's first group of the role
    arterial_findings = [text for g in now if _text(g, "Activity Session") == ["arterial"]
                         for text in _text(g, "Quality control finding")]
    assert any(t.startswith("propagation method: info, rigid") for t in arterial_findings)
    assert any(t.startswith("round-trip overlap segment 1 (Lesion 1): pass")
               for t in arterial_findings)
    assert {d.SeriesDescription for d in derived[ct.study_instance_uid]} >= {
        "Radiomics ROIs arterial (ct-liver-basic)", "Radiomics ROIs delayed (ct-liver-basic)"}

    # the model of two roles ran on each lesion, and says so in its group
    models = [g for g in now if _items(g, "Model")]
    assert len(models) == 2 and not any(_items(g, "Model not applied") for g in now)

    # the change since the prior study fetched from Orthanc, which the report references
    changes = [g for g in groups if _text(g, "Time Point")
               == ["change since prior study of 2024-01-03"]]
    assert len(changes) == 2
    volume = {str(_items(g, "Tracking Identifier")[0].TextValue): next(
        float(num.MeasuredValueSequence[0].NumericValue) for num in g.ContentSequence
        if num.ValueType == "NUM" and num.ConceptNameCodeSequence[0].CodeMeaning == "Volume")
        for g in changes}
    # each lesion grew by the volume the studies were drawn with (voxelised spheres)
    for growth in prior.growth:
        assert volume[growth.label] == pytest.approx(
            growth.follow_up_volume_mm3 - growth.prior_volume_mm3, rel=0.15), growth.label
    referenced = {str(item.StudyInstanceUID) for item in ct_report.PertinentOtherEvidenceSequence}
    assert prior.study.study_instance_uid in referenced

    # the MR study: T2 as drawn, T1, the ADC computed from the DWI, and the HBP
    mr_groups = measurement_groups(mr_report)
    assert {tuple(_text(g, "Activity Session")) for g in mr_groups} == \
        {("t2",), ("t1_pre",), ("dwi",), ("hbp",)}
    dwi_findings = [text for g in mr_groups if _text(g, "Activity Session") == ["dwi"]
                    for text in _text(g, "Quality control finding")]
    assert any(t.startswith("ADC: info, mono-exponential") for t in dwi_findings)
