"""The audit trail: who sent what (AE title and address, kept in the index even after retention),
which job processed it with which preset and models, what went where and when, who retried."""

from __future__ import annotations

import getpass
import re
import sqlite3
import time
from pathlib import Path

import pytest

from node.cli import main
from node.config import NodeConfig
from node.state import Index
from node.state.instances import InstanceRow
from node.state.retention import DAY, Retention

STUDY = "1.2.826.0.1.3680043.8.498.20"
CT = "1.2.826.0.1.3680043.8.498.21"
SEG = "1.2.826.0.1.3680043.8.498.22"


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, NodeConfig]:
    config_file = tmp_path / "node.yaml"
    config_file.write_text(f"state_dir: {tmp_path / 'state'}\n")
    config = NodeConfig(state_dir=tmp_path / "state")
    index = Index(config.index_path)
    old = time.time() - 30 * DAY
    for series, sop, modality in ((CT, f"{CT}.1", "CT"), (SEG, f"{SEG}.1", "SEG")):
        path = config.spool_dir / f"{sop}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"dicom")
        index.instances.add(InstanceRow(sop, "1.2.840.10008.5.1.4.1.1.2", STUDY, series,
                                       str(path), 5, "CT_SCANNER", "10.1.2.3"), modality, now=old)
    index.instances.mark_stable(old + 1, now=old + 1)
    job = index.jobs.add(CT, f"{SEG}.1", "ct-liver", "ct-liver-crlm", "digest")
    index.jobs.claim()
    index.jobs.finish(job, [("pacs", "/results/sr.dcm", "1.2.3.9")], preset_hash="c0ffee",
                     models={"crlm-recurrence": "2.1.0"})
    [delivery] = index.outbox.all(job)
    index.outbox.mark_attempt_failed(delivery["id"], "association refused", retry_at=None)
    index.close()
    return config_file, config


def test_trail_names_senders_job_deliveries_and_who_retried(
        site: tuple[Path, NodeConfig], capsys: pytest.CaptureFixture[str]) -> None:
    config_file, config = site
    assert main(["outbox", "retry", "--all-dead", "--config", str(config_file)]) == 0
    index = Index(config.index_path)
    [delivery] = index.outbox.all()
    index.outbox.mark_verified(delivery["id"], "c-find")
    index.close()
    capsys.readouterr()
    assert main(["audit", STUDY, "--config", str(config_file)]) == 0
    out = capsys.readouterr().out
    assert f"series {CT}  1 instance(s), 5 B" in out
    assert "from CT_SCANNER@10.1.2.3" in out
    assert "preset ct-liver-crlm (hash c0ffee)  models crlm-recurrence 2.1.0" in out
    assert "delivered" in out and "to pacs  1.2.3.9" in out and "verified by c-find" in out
    events = [list(re.match(r"\s+\S+ \S+  (.+?)  (by \S+)", line).groups())
              for line in out.split("events:\n")[1].splitlines()]
    assert events == [["job started", "by node"], ["job done", "by node"],
                      ["delivery dead-lettered", "by node"],
                      ["delivery retry requested", f"by cli:{getpass.getuser()}"],
                      ["delivered", "by node"]]


def test_trail_outlives_retention(site: tuple[Path, NodeConfig],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    config_file, config = site
    index = Index(config.index_path)
    index.outbox.retry(None, actor="cli:it")
    index.outbox.mark_verified(index.outbox.all()[0]["id"], "c-find")
    assert Retention(config, index).tick() == (2, 0)
    index.close()
    capsys.readouterr()
    assert main(["audit", STUDY, "--config", str(config_file)]) == 0
    out = capsys.readouterr().out
    assert "no instance in the spool now" in out
    assert 'spool removed  by node  series ' + CT in out
    assert 'senders=["CT_SCANNER@10.1.2.3"]' in out
    assert main(["audit", "1.2.3.4.5", "--config", str(config_file)]) == 1


def test_index_made_before_the_audit_columns_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite3"
    db = sqlite3.connect(path)
    db.executescript("""CREATE TABLE instances (sop_instance_uid TEXT PRIMARY KEY,
        sop_class_uid TEXT NOT NULL, study_uid TEXT NOT NULL, series_uid TEXT NOT NULL,
        path TEXT NOT NULL, size INTEGER NOT NULL, calling_ae TEXT NOT NULL,
        received_at REAL NOT NULL);
        INSERT INTO instances VALUES ('1.2.3', '1.2', '1.2.4', '1.2.5', '/x', 1, 'OLD', 0);""")
    db.commit()
    db.close()
    index = Index(path)
    assert index.instances.get("1.2.3").peer_host is None
    index.instances.add(InstanceRow("1.2.6", "1.2", "1.2.4", "1.2.5", "/y", 1, "NEW", "::1"), "CT")
    assert index.instances.get("1.2.6").peer_host == "::1"
