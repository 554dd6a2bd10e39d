"""DICOM round trip through the node: pyradiomics' breast1 as an MR series + SEG sent with DCMTK
``storescu --required`` to the node running as a service process; the TID 1500 SR the node delivers
to Orthanc carries the values extract_features gives on the NRRD files."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
import SimpleITK as sitk
import yaml

from pipelines.outputs.codes import feature_concept
from pipelines.science.features import extract_features
from tests.integration.peers import node_service, orthanc, require_tools
from tests.nrrd_dicom import baseline_preset, convert_case, sr_values

pytestmark = pytest.mark.integration
CASE = "breast1"  # right-handed grid: every feature is comparable (see test_dicom_round_trip)


def test_mr_series_and_seg_through_the_node(refdata: Path, tmp_path: Path) -> None:
    require_tools("storescu")
    data_dir = refdata / "pyradiomics" / "data"
    preset = baseline_preset(data_dir, CASE)
    preset_path = tmp_path / "baseline.yaml"
    preset_path.write_text(
        yaml.safe_dump(
            {"name": preset.name, "description": preset.description, "radiomics": preset.radiomics}
        )
    )
    converted = convert_case(data_dir, CASE, tmp_path / "dicom")
    expected = extract_features(
        sitk.ReadImage(str(data_dir / f"{CASE}_image.nrrd")),
        sitk.ReadImage(str(data_dir / f"{CASE}_label.nrrd")),
        preset,
    ).values

    # Orthanc answers C-FIND (the outbox looks the result up before sending) to known modalities.
    with orthanc(tmp_path / "orthanc", {"node": ["RADIOMICS", "127.0.0.1", 104]}) as pacs:
        settings = {
            "rules": [{"name": "mr-roundtrip", "preset": str(preset_path), "modality": ["MR"]}],
            "destinations": [
                {"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port,
                 "verify": False}  # Orthanc answers C-FIND only to its DicomModalities
            ],
            "peers": [
                {"name": "scanner", "ae_title": "SCANNER", "host": "127.0.0.1"},
                {
                    "name": "pacs",
                    "ae_title": pacs.aet,
                    "host": "127.0.0.1",
                    "port": pacs.dicom_port,
                    "send": False,
                    "receive_results": True,
                },
            ],
        }
        with node_service(tmp_path / "node", settings) as node:
            files = [str(p) for p in (*converted.mr_paths, converted.seg_path)]
            sent = subprocess.run(
                [
                    "storescu",
                    "--required",
                    "-aet",
                    "SCANNER",
                    "-aec",
                    node.ae_title,
                    "127.0.0.1",
                    str(node.port),
                    *files,
                ],
                check=False,
                capture_output=True,
                text=True,
                env={**os.environ, "TCP_NODELAY": "1"},
            )
            assert sent.returncode == 0, sent.stderr + sent.stdout
            deadline = time.monotonic() + 300
            while not (series := pacs.report_series(converted.study_instance_uid)):
                assert time.monotonic() < deadline, node.log_path.read_text()[-3000:]
                time.sleep(0.25)
            [sr_bytes] = pacs.instance_files(series[0])
    sr_path = tmp_path / "sr.dcm"
    sr_path.write_bytes(sr_bytes)

    assert pydicom.dcmread(sr_path).StudyInstanceUID == converted.study_instance_uid
    values = sr_values(sr_path)
    assert len(values) == len(expected) > 100
    for key, want in expected.items():
        concept = feature_concept(key, "MR")
        got = values[(concept.name.scheme_designator, concept.name.value)]
        assert got == pytest.approx(want, rel=1e-6, abs=1e-12), key
