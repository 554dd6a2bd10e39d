"""Real peers for integration tests: Debian's Orthanc as the PACS, the node as a service process.

Each is started on 127.0.0.1 with free high ports and its own directories, and stopped by PID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from tests.conftest import REPO, free_port

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"

NODE_LOGS: list[Path] = []
"""The log files (JSON log and stderr) of every NodeService made in this process, in order: the
integration conftest scans those of each test for patient identity."""


def phi_leaks(paths: list[Path], values: list[str]) -> list[str]:
    """``file:line: value`` for each line of ``paths`` that contains one of ``values``."""
    leaks = []
    for path in paths:
        if not path.exists():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            leaks += [f"{path}:{number}: {value!r}" for value in values if value in line]
    return leaks


def require_tools(*names: str) -> None:
    """Fail (not skip) when a tool the integration tests rely on is missing."""
    missing = [n for n in names if shutil.which(n) is None and not Path(n).is_file()]
    if missing:
        raise RuntimeError(f"missing tools {missing}: run scripts/setup.sh --system-tools")


@dataclass(frozen=True)
class OrthancServer:
    aet: str
    dicom_port: int
    http: httpx.Client
    http_port: int

    @property
    def url(self) -> str:
        """Base URL of the REST API."""
        return f"http://127.0.0.1:{self.http_port}"

    def find_series(self, study_uid: str, modality: str) -> list[str]:
        """Orthanc ids of the series of ``study_uid`` with ``modality`` (REST /tools/find)."""
        query = {"Level": "Series", "Query": {"StudyInstanceUID": study_uid, "Modality": modality}}
        return self.http.post("/tools/find", json=query).raise_for_status().json()

    def report_series(self, study_uid: str, report: str = "features") -> list[str]:
        """Orthanc ids of the node's reports of ``study_uid``: its feature reports
        (``report="features"``, Series Description "Radiomics features (<preset>)") or its reading
        reports (``"reading report"``)."""
        query = {"Level": "Series", "Query": {"StudyInstanceUID": study_uid, "Modality": "SR",
                                              "SeriesDescription": f"Radiomics {report} (*"}}
        return self.http.post("/tools/find", json=query).raise_for_status().json()

    def instance_files(self, series_id: str) -> list[bytes]:
        instances = self.http.get(f"/series/{series_id}/instances").raise_for_status().json()
        return [self.http.get(f"/instances/{i['ID']}/file").raise_for_status().content
                for i in instances]


def _stop(process: subprocess.Popen, timeout: float = 20.0) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


@contextmanager
def orthanc(workdir: Path, modalities: dict[str, list],
            ports: tuple[int, int] | None = None,
            settings: dict | None = None,
            auth: tuple[str, str] | None = None) -> Iterator[OrthancServer]:
    """Run Orthanc with its own storage in ``workdir`` on free ports, or on ``ports`` (DICOM,
    HTTP) to start it again where it was; ``modalities`` as in DicomModalities; ``settings``
    added to its configuration (e.g. LuaScripts); ``auth`` (user, password): HTTP basic
    authentication required, the only registered user, and the one the test's client uses."""
    require_tools(ORTHANC)
    workdir.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = ports or (free_port(), free_port())
    config = {
        "Name": "radiomics-node-test",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "storage"),
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": auth is not None,
        "RegisteredUsers": dict([auth]) if auth else {},
        "Plugins": [],
        "DicomModalities": modalities,
        "StableAge": 2,
        **(settings or {}),
    }
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log = (workdir / "orthanc.log").open("a")
    process = subprocess.Popen([ORTHANC, str(config_path)], stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "TCP_NODELAY": "1"})
    http = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=30, auth=auth)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(workdir / 'orthanc.log').read_text()}")
            try:
                if http.get("/system").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("Orthanc did not answer within 60 s")
            time.sleep(0.2)
        yield OrthancServer("ORTHANC", dicom_port, http, http_port)
    finally:
        http.close()
        _stop(process)
        log.close()


class NodeService:
    """``radiomics-node serve`` as its own process, with ``settings`` as its YAML configuration;
    it can be killed with SIGKILL and started again on the same state and port. ``repo`` is the
    source tree it runs from (another checkout, to compare with the code before a change)."""

    def __init__(self, workdir: Path, settings: dict, repo: Path = REPO):
        self._repo = repo
        workdir.mkdir(parents=True, exist_ok=True)
        self.ae_title = "RADIOMICS"
        self.port = free_port()
        self.status_port = free_port()
        self.state_dir = workdir / "state"
        self.log_path = workdir / "node.log"
        NODE_LOGS.extend([self.log_path, workdir / "stderr.log"])
        config = {"state_dir": str(self.state_dir), "listener": {"port": self.port},
                  "stable_after": 2, "scan_interval": 0.5, "log_file": str(self.log_path),
                  "status": {"port": self.status_port},
                  # loopback test bench: any AE title from 127.0.0.1 unless a test lists peers
                  "accept_unknown_peers": "peers" not in settings,
                  **settings}
        self.config_path = workdir / "node.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self._workdir = workdir
        self._process: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> None:
        """Start and return once the listener is up (a new "listening" line in the log)."""
        before = self.log_path.read_text().count('"event": "listening"') \
            if self.log_path.exists() else 0
        env = {**os.environ, "PYTHONPATH": str(self._repo)}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "serve", "--config", str(self.config_path)],
            stdout=subprocess.DEVNULL, stderr=(self._workdir / "stderr.log").open("a"),
            env=env, cwd=self._workdir)
        deadline = time.monotonic() + timeout
        while not self.log_path.exists() or \
                self.log_path.read_text().count('"event": "listening"') <= before:
            if self._process.poll() is not None:
                raise RuntimeError(f"node exited: {(self._workdir / 'stderr.log').read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"node did not listen within {timeout:.0f} s")
            time.sleep(0.05)

    @property
    def status_url(self) -> str:
        """Base URL of the node's status page, /healthz and /metrics."""
        return f"http://127.0.0.1:{self.status_port}"

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as a power cut or the OOM killer would do."""
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGKILL)
        self._process.wait()

    def stop(self) -> None:
        if self._process is not None:
            _stop(self._process)

    def events(self) -> list[dict]:
        """The node's JSON log lines, parsed."""
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line]

    def events_named(self, event: str) -> list[dict]:
        """The node's log lines whose event is ``event``."""
        return [e for e in self.events() if e["event"] == event]


@contextmanager
def node_service(workdir: Path, settings: dict) -> Iterator[NodeService]:
    """A started NodeService, stopped by PID at the end."""
    node = NodeService(workdir, settings)
    node.start()
    try:
        yield node
    finally:
        node.stop()
