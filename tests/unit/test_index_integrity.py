"""A damaged index is said in one line and rebuilt from the spool; a tick that keeps failing fails
``/healthz`` (issue: trust under attack and decay)."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pydicom
import pytest
import yaml

from demo.synthetic import write_synthetic_study
from node.config import NodeConfig
from node.dicom.ingest import Ingest
from node.flow.ticks import Tick
from node.ops.health import TICK_FAILURES, check_health
from node.state import Index, IndexDamaged
from tests.conftest import free_port


def _damage(path: Path, table: str) -> None:
    """Overwrite the root page of ``table`` with random bytes, as a failing disk would."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    [(root,)] = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,))
    [(size,)] = db.execute("PRAGMA page_size")
    db.close()
    with path.open("r+b") as handle:
        handle.seek((root - 1) * size)
        handle.write(os.urandom(size))


def _node_with_a_study(tmp_path: Path) -> tuple[Path, NodeConfig, int]:
    """A configuration file, its node's state with a received study, and its instance count."""
    settings = {"state_dir": str(tmp_path / "state"), "listener": {"port": free_port()},
                "status": {"enabled": False}, "log_file": str(tmp_path / "node.log")}
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(settings))
    config = NodeConfig.model_validate(settings)
    config.spool_dir.mkdir(parents=True)
    study = write_synthetic_study(tmp_path / "study", shape=(4, 32, 32))
    index = Index(config.index_path)
    ingest = Ingest(config, index)
    files = [*study.ct_paths, study.seg_path]
    for file in files:
        data = file.read_bytes()
        decode = partial(pydicom.dcmread, io.BytesIO(data))
        assert ingest.accept(data, decode, "SCANNER").status == 0
    index.close()
    return path, config, len(files)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.cli", *args], capture_output=True,
                          text=True, check=False, timeout=300)


@pytest.mark.parametrize("table", ["jobs", "audit", "instances"])
def test_a_damaged_index_stops_serve_in_one_line_and_is_rebuilt_from_the_spool(
        tmp_path: Path, table: str) -> None:
    config_file, config, files = _node_with_a_study(tmp_path)
    _damage(config.index_path, table)

    serve = _cli("serve", "--config", str(config_file))
    assert serve.returncode == 3, serve.stderr
    assert "Traceback" not in serve.stderr
    [line] = [line for line in serve.stderr.splitlines() if "damaged" in line]
    assert line.startswith(f"index {config.index_path} is damaged: ")
    assert "radiomics-node index rebuild --config" in line
    logged = [json.loads(line) for line in (tmp_path / "node.log").read_text().splitlines()]
    assert any(entry.get("event") == "index damaged: not started" for entry in logged)

    check = _cli("index", "check", "--config", str(config_file))
    assert check.returncode == 1 and check.stdout.startswith("DAMAGED"), check.stdout

    rebuild = _cli("index", "rebuild", "--config", str(config_file))
    assert rebuild.returncode == 0, rebuild.stderr
    assert f"{files} instance(s) indexed" in rebuild.stdout
    kept = sorted(config.index_path.parent.glob(f"{config.index_path.name}.damaged-*"))
    assert kept, "the damaged index is kept beside the new one"
    assert _cli("index", "check", "--config", str(config_file)).returncode == 0
    index = Index(config.index_path)
    try:
        assert index.integrity_problems() == []
        assert sum(1 for path in config.spool_dir.glob("*/*/*.dcm")
                   if index.instances.has(path.stem)) == files
    finally:
        index.close()


def test_a_malformed_database_is_refused_at_open(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite3"
    path.write_bytes(b"SQLite format 3\x00" + os.urandom(8192))
    with pytest.raises(IndexDamaged, match=r"is damaged: "):
        Index(path)


class _Failing:
    def __init__(self) -> None:
        self.fail = True

    def __call__(self) -> None:
        if self.fail:
            raise sqlite3.DatabaseError("database disk image is malformed\nsecond line")


def test_a_tick_that_keeps_failing_fails_healthz_and_recovers(tmp_path: Path) -> None:
    config = NodeConfig(state_dir=tmp_path / "state")
    index = Index(config.index_path)
    fn = _Failing()
    tick = Tick(fn, "outbox")
    now = time.time()
    try:
        for run in range(1, TICK_FAILURES + 1):
            tick()  # raises nothing: the failure is logged and counted
            health = check_health(config, index, True, True, now, now, ticks=(tick,))
            [ticks] = [check for check in health.checks if check.name == "ticks"]
            assert ticks.ok == (run < TICK_FAILURES)
        assert ticks.detail == (f"outbox failed {TICK_FAILURES} times in a row, last "
                                "DatabaseError: database disk image is malformed")
        fn.fail = False
        tick()
        assert check_health(config, index, True, True, now, now, ticks=(tick,)).ok
    finally:
        index.close()
