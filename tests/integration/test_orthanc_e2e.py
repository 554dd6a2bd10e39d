"""End to end with real parts: DCMTK storescu as the scanner, the node as a service process,
Debian's Orthanc as the PACS. The TID 1500 report must arrive in the source study, be read back by
pydicom and highdicom with the values the pipeline computes offline, and pass dciodvfy."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from demo.synthetic import write_synthetic_study
from node.flow.executor import run_in_process
from pipelines.outputs.codes import feature_concept
from pipelines.process import job_plan
from tests.integration.peers import node_service, orthanc, require_tools

pytestmark = pytest.mark.integration


def dciodvfy_errors(path: Path) -> list[str]:
    """The lines of ``dciodvfy`` (dicom3tools) that report an error."""
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def test_study_in_report_back_in_orthanc(tmp_path: Path) -> None:
    require_tools("storescu", "dciodvfy")
    study = write_synthetic_study(tmp_path / "study")
    with orthanc(tmp_path / "orthanc", {}) as pacs:
        destination = {"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1",
                       "port": pacs.dicom_port,
                       "verify": False}  # Orthanc answers C-FIND only to its DicomModalities
        peers = [{"name": "scanner", "ae_title": "SCANNER", "host": "127.0.0.1"},
                 {"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1",
                  "port": pacs.dicom_port, "send": False, "receive_results": True}]
        with node_service(tmp_path / "node", {"destinations": [destination],
                                              "peers": peers}) as node:
            files = [str(p) for p in (*study.ct_paths, study.seg_path)]
            subprocess.run(
                ["storescu", "--required", "-aet", "SCANNER", "-aec", node.ae_title, "127.0.0.1",
                 str(node.port), *files],
                check=True, capture_output=True, env={**os.environ, "TCP_NODELAY": "1"})
            sent = time.monotonic()
            deadline = sent + 600
            while not (series := pacs.report_series(study.study_instance_uid)):
                assert time.monotonic() < deadline, node.log_path.read_text()[-3000:]
                time.sleep(0.25)
            elapsed = time.monotonic() - sent
            [sr_bytes] = pacs.instance_files(series[0])
            node_log = node.log_path.read_text()
    print(f"\nlast instance sent -> SR stored in Orthanc: {elapsed:.1f} s")

    sr_path = tmp_path / "sr.dcm"
    sr_path.write_bytes(sr_bytes)
    dataset = pydicom.dcmread(io.BytesIO(sr_bytes))
    assert dataset.StudyInstanceUID == study.study_instance_uid
    assert dataset.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert dciodvfy_errors(sr_path) == []

    offline = run_in_process(job_plan(study.ct_paths, study.seg_path, "ct-liver-basic",
                                       tmp_path / "offline"))
    assert offline.report.sop_instance_uid == dataset.SOPInstanceUID  # deterministic UIDs

    seg = pydicom.dcmread(study.seg_path)
    sr = hd.sr.Comprehensive3DSR.from_dataset(dataset)
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert [str(g.tracking_identifier) for g in groups] == [les.label for les in offline.lesions]
    for group, lesion in zip(groups, offline.lesions, strict=True):
        segment = group.referenced_segment
        assert segment.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert segment.referenced_segment_numbers == [lesion.segment_number]
        measured = {(m.name.scheme_designator, m.name.value): m for m in group.get_measurements()}
        assert len(measured) == len(lesion.features)
        for key, value in lesion.features.items():
            concept = feature_concept(key, "CT")
            item = measured[(concept.name.scheme_designator, concept.name.value)]
            assert item.value == pytest.approx(value, rel=1e-6, abs=1e-9), key
            assert item.unit.value == concept.unit.value, key

    # the lesions the phantom was built with are what the report measured
    for lesion, truth in zip(offline.lesions, study.lesions, strict=True):
        sphere = 4 / 3 * 3.141592653589793 * truth.radius_mm**3
        assert lesion.features["original_shape_MeshVolume"] == pytest.approx(sphere, rel=0.1)
        assert lesion.features["original_firstorder_Mean"] == pytest.approx(truth.mean_hu, abs=10)

    # no line the node logged carries the patient's identity
    patient = pydicom.dcmread(study.ct_paths[0], stop_before_pixels=True)
    for line in node_log.splitlines():
        json.loads(line)
        for phi in (str(patient.PatientName), patient.PatientID, patient.PatientBirthDate):
            assert phi not in line
