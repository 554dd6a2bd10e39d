"""Durability under SIGKILL, with DCMTK storescu as the sender and the node as its own process.

Whatever got a success status is on disk and indexed after a restart; no half-written spool
file is visible; the job runs once for the completed series; a job or a delivery interrupted by a
kill is resumed, and each result object reaches the destination exactly once with the same SOP
Instance UID.
"""

from __future__ import annotations

import json
import os
import random
import re
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from demo.synthetic import SyntheticStudy, write_synthetic_study
from node.flow.executor import run_in_process
from pipelines.process import job_plan
from tests.conftest import free_port
from tests.integration.peers import NodeService, require_tools

pytestmark = pytest.mark.integration

RECORD = Path(os.environ.get("RELIABILITY_RECORD", "")) if os.environ.get(
    "RELIABILITY_RECORD") else None
"""Where to append the measured counts (JSON lines) for docs/reliability.md, when set."""


def _record(**values: object) -> None:
    if RECORD is not None:
        with RECORD.open("a") as handle:
            handle.write(json.dumps(values) + "\n")


class SlowDestination:
    """A storage SCP that holds each C-STORE response for ``delay`` seconds and counts every
    request by SOP Instance UID, so a test can kill the sender mid-delivery."""

    def __init__(self, delay: float):
        self.port = free_port()
        self.received: Counter[str] = Counter()
        self.first_request = threading.Event()
        self._delay = delay
        ae = AE(ae_title="DEST")
        for uid in (ComprehensiveSRStorage, Comprehensive3DSRStorage,
                    SecondaryCaptureImageStorage, SegmentationStorage):
            ae.add_supported_context(uid)
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event: evt.Event) -> int:
        self.first_request.set()
        time.sleep(self._delay)
        self.received[event.request.AffectedSOPInstanceUID] += 1
        return 0x0000

    def settings(self) -> dict:
        return {"name": "dest", "ae_title": "DEST", "host": "127.0.0.1", "port": self.port,
                "verify": False}  # a C-STORE SCP only: no C-FIND to verify with

    def close(self) -> None:
        self._server.shutdown()


@pytest.fixture
def destination() -> Iterator[SlowDestination]:
    dest = SlowDestination(delay=0.0)
    yield dest
    dest.close()


class Sender:
    """DCMTK storescu (-v) sending ``files`` to the node; its log goes to a file, not a pipe,
    so that a long verbose log can never block it."""

    def __init__(self, node: NodeService, files: list[Path], log: Path):
        self._log = log
        with log.open("w") as handle:
            self._process = subprocess.Popen(
                ["storescu", "-v", "--required", "-aet", "SCANNER", "-aec", node.ae_title,
                 "127.0.0.1", str(node.port), *map(str, files)],
                stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, "TCP_NODELAY": "1"})

    def finish(self, timeout: float) -> tuple[int, str]:
        """Wait for storescu to end; its exit code and log."""
        code = self._process.wait(timeout)
        return code, self._log.read_text()


def _acknowledged(output: str) -> set[str]:
    """Files for which storescu logged a Success response (storescu -v)."""
    done: set[str] = set()
    current = None
    for line in output.splitlines():
        sending = re.match(r"I: Sending file: (.+)$", line)
        if sending:
            current = sending.group(1).strip()
        elif "Received Store Response (Success)" in line and current is not None:
            done.add(current)
            current = None
    return done


def _db(node: NodeService) -> sqlite3.Connection:
    return sqlite3.connect(node.state_dir / "index.sqlite3")


def _indexed(node: NodeService) -> dict[str, str]:
    with _db(node) as db:
        return dict(db.execute("SELECT sop_instance_uid, path FROM instances"))


def _wait(predicate, timeout: float, node: NodeService, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            tail = node.log_path.read_text()[-3000:] if node.log_path.exists() else ""
            raise AssertionError(f"timed out waiting for {what}\n{tail}")
        time.sleep(0.1)


def _count(node: NodeService) -> int:
    with _db(node) as db:
        return db.execute("SELECT count(*) FROM instances").fetchone()[0]


def _jobs(node: NodeService) -> list[tuple]:
    with _db(node) as db:
        return db.execute("SELECT id, state, attempts FROM jobs ORDER BY id").fetchall()


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    return write_synthetic_study(tmp_path_factory.mktemp("study"), shape=(300, 64, 64))


def test_sigkill_while_receiving_loses_nothing_acknowledged(
        tmp_path: Path, study: SyntheticStudy, destination: SlowDestination) -> None:
    require_tools("storescu")
    files = [*study.ct_paths, study.seg_path]
    uid_of = {str(p): pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in files}
    node = NodeService(tmp_path / "node", {"destinations": [destination.settings()],
                                           "stable_after": 3})
    node.start()
    acknowledged: set[str] = set()
    rng = random.Random(20261122)
    kills = 0
    acknowledged_at_kill: list[int] = []
    try:
        # kill when the index holds a random number of instances: mid-transfer, every time
        for low, high in ((20, 90), (100, 180), (190, 280)):
            target = rng.randint(low, high)
            sender = Sender(node, files, tmp_path / f"storescu-{kills}.log")
            _wait(lambda target=target: _count(node) >= target, 60, node, f"{target} instances")
            node.kill()
            kills += 1
            _, output = sender.finish(timeout=60)
            acknowledged |= {uid_of[f] for f in _acknowledged(output)}
            acknowledged_at_kill.append(len(acknowledged))
            node.start()
            indexed = _indexed(node)
            missing = acknowledged - indexed.keys()
            assert not missing, f"{len(missing)} acknowledged instances lost"
            assert not list(node.state_dir.rglob("*.part")), "a partial spool file is visible"
        code, output = Sender(node, files, tmp_path / "storescu-final.log").finish(timeout=120)
        assert code == 0, output[-2000:]
        acknowledged |= {uid_of[f] for f in _acknowledged(output)}
        assert acknowledged == set(uid_of.values())
        indexed = _indexed(node)
        assert indexed.keys() == acknowledged
        for path in indexed.values():
            pydicom.dcmread(path)  # every stored file is complete and parses
        _wait(lambda: _delivered(node), 180, node, "the results")
        time.sleep(3 * 0.5 + 1)  # a few more ticks: nothing else may be queued or sent
        assert [(state, attempts) for _, state, attempts in _jobs(node)] == [("done", 1)]
        # the two reports and the summary, once each
        assert list(destination.received.values()) == [1, 1, 1]
    finally:
        node.stop()
    assert acknowledged_at_kill[-1] < len(files), "the last kill came after the transfer"
    _record(test="sigkill while receiving", kills=kills, instances=len(files),
            acknowledged_at_each_kill=acknowledged_at_kill,
            acknowledged=len(acknowledged), indexed=len(indexed), jobs=1)


def test_sigkill_during_job_and_delivery_gives_each_result_once(
        tmp_path: Path, study: SyntheticStudy) -> None:
    require_tools("storescu")
    slow = SlowDestination(delay=4.0)
    node = NodeService(tmp_path / "node", {"destinations": [slow.settings()], "stable_after": 1})
    node.start()
    try:
        sender = Sender(node, [*study.ct_paths, study.seg_path], tmp_path / "storescu.log")
        code, output = sender.finish(timeout=120)
        assert code == 0, output[-2000:]
        _wait(lambda: any(e["event"] == "job started" for e in node.events()), 60, node,
              "the job to start")
        node.kill()  # while the pipeline runs
        assert [state for _, state, _ in _jobs(node)] == ["running"]
        node.start()
        assert slow.first_request.wait(180), "no delivery attempt after the restart"
        node.kill()  # while the destination holds the C-STORE response
        node.start()
        _wait(lambda: _delivered(node), 120, node, "the delivery to be confirmed")
    finally:
        node.stop()
        slow.close()
    [(_, state, attempts)] = _jobs(node)
    assert state == "done" and attempts == 2
    offline = run_in_process(job_plan(study.ct_paths, study.seg_path, "ct-liver-basic",
                                       tmp_path / "offline"))
    expected = {obj.sop_instance_uid for obj in offline.objects}
    assert set(slow.received) == expected  # the same UIDs, whichever run made them
    _record(test="sigkill during job and delivery", kills=2, job_attempts=attempts,
            store_requests=sum(slow.received.values()), distinct_objects=len(slow.received))


def _delivered(node: NodeService) -> bool:
    with _db(node) as db:
        states = [s for (s,) in db.execute("SELECT state FROM outbox")]
    return bool(states) and all(s == "delivered" for s in states)
