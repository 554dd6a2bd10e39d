"""The PHI scan the integration tests run on every node log: it finds a planted name, ID or birth
date with file and line, and finds none in what the node logs while storing and refusing
instances of a patient."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pydicom

from demo.synthetic import write_synthetic_study
from node import logs
from node.config import NodeConfig
from node.dicom.ingest import Ingest
from node.state import Index
from tests.integration.conftest import PHI
from tests.integration.peers import phi_leaks


def test_planted_identity_is_found(tmp_path: Path) -> None:
    log = tmp_path / "node.log"
    log.write_text('{"event": "instance stored"}\n{"event": "x", "name": "Synthetic^Liver"}\n')
    assert phi_leaks([log, tmp_path / "absent.log"], PHI) == [f"{log}:2: 'Synthetic^Liver'"]


def test_node_logs_no_identity_while_storing_and_refusing(tmp_path: Path) -> None:
    study = write_synthetic_study(tmp_path / "study", shape=(4, 32, 32))
    log_path = tmp_path / "node.log"
    config = NodeConfig(state_dir=tmp_path / "state", log_level="DEBUG")
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logs.configure("DEBUG", log_path)
    try:
        ingest = Ingest(config, Index(config.index_path))
        for path in [*study.ct_paths, study.seg_path]:
            data = path.read_bytes()
            assert ingest.accept(data, lambda data=data: pydicom.dcmread(io.BytesIO(data)),
                                 "SCANNER", host="10.0.0.1").status == 0
        broken = study.ct_paths[0].read_bytes()[:-100]  # truncated Pixel Data: refused
        assert ingest.accept(broken, lambda: pydicom.dcmread(io.BytesIO(broken)),
                             "SCANNER").status != 0
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    text = log_path.read_text()
    assert "instance stored" in text and "instance refused" in text
    assert phi_leaks([log_path], PHI) == []
