"""The shipped Orthanc Lua script (deploy/orthanc/radiomics-forward.lua) in Debian's Orthanc: a
study uploaded to Orthanc by REST is forwarded, series by series once stable, to a node service;
the node's SR comes back into the same study in Orthanc, and is not forwarded again. The node's
index records who sent the study (Orthanc's AE title and address) in its audit trail."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from demo.synthetic import write_synthetic_study
from tests.conftest import REPO, free_port
from tests.integration.peers import NodeService, orthanc

pytestmark = pytest.mark.integration

LUA = REPO / "deploy" / "orthanc" / "radiomics-forward.lua"


def test_lua_forwards_stable_series_and_the_report_comes_back(tmp_path: Path) -> None:
    study = write_synthetic_study(tmp_path / "study", shape=(12, 64, 64))
    dicom_port, http_port = free_port(), free_port()
    node = NodeService(tmp_path / "node", {
        "destinations": [{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1",
                          "port": dicom_port}],  # verified by C-FIND: the node is a modality
        "peers": [{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1",
                   "port": dicom_port, "receive_results": True}],
    })
    with orthanc(tmp_path / "orthanc", {"radiomics": ["RADIOMICS", "127.0.0.1", node.port]},
                 ports=(dicom_port, http_port), settings={"LuaScripts": [str(LUA)]}) as pacs:
        node.start()
        try:
            for path in [*study.ct_paths, study.seg_path]:
                pacs.http.post("/instances", content=path.read_bytes()).raise_for_status()
            deadline = time.monotonic() + 300
            while not (reports := pacs.report_series(study.study_instance_uid)):
                assert time.monotonic() < deadline, node.log_path.read_text()[-3000:]
                time.sleep(0.5)
            [sr] = pacs.http.get(f"/series/{reports[0]}/instances").raise_for_status().json()
            sr_uid = sr["MainDicomTags"]["SOPInstanceUID"]
            # "delivered", or on a retry after a C-FIND that did not find it yet "already at
            # destination, not sent again": both verified at Orthanc
            while not (delivered := [e for e in node.events()
                                     if e.get("event") in ("delivered", "already at "
                                                           "destination, not sent again")
                                     and e.get("sop_instance_uid") == sr_uid]):
                assert time.monotonic() < deadline, node.log_path.read_text()[-3000:]
                time.sleep(0.2)  # Orthanc holds it; the node is asking it by C-FIND
            assert delivered[0]["verified_by"] == "c-find"
            time.sleep(4)  # StableAge 2 s: the SR series is stable in Orthanc by now
            stored = node.events_named("association ended")
            audit = subprocess.run(
                [sys.executable, "-m", "node.cli", "audit", study.study_instance_uid,
                 "--config", str(node.config_path)],
                capture_output=True, text=True, check=True, cwd=REPO).stdout
        finally:
            node.stop()
        assert len(reports) == 1
    # everything the node stored came from Orthanc: 12 CT slices and the SEG, the SR not again
    assert sum(e["stored"] for e in stored) == 13 and not any(e["refused"] for e in stored)
    assert {(e["calling_ae"], e["host"]) for e in stored} == {("ORTHANC", "127.0.0.1")}
    assert "from ORTHANC@127.0.0.1" in audit
    assert "delivered  by node" in audit and "job done  by node" in audit
