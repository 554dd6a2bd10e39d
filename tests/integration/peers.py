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

    def find_series(self, study_uid: str, modality: str) -> list[str]:
        """Orthanc ids of the series of ``study_uid`` with ``modality`` (REST /tools/find)."""
        query = {"Level": "Series", "Query": {"StudyInstanceUID": study_uid, "Modality": modality}}
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
def orthanc(workdir: Path, modalities: dict[str, list]) -> Iterator[OrthancServer]:
    """Run Orthanc with its own storage on free ports; ``modalities`` as in DicomModalities."""
    require_tools(ORTHANC)
    workdir.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = free_port(), free_port()
    config = {
        "Name": "radiomics-node-test",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "storage"),
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
        "DicomModalities": modalities,
        "StableAge": 2,
    }
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log = (workdir / "orthanc.log").open("w")
    process = subprocess.Popen([ORTHANC, str(config_path)], stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "TCP_NODELAY": "1"})
    http = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=30)
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
        yield OrthancServer("ORTHANC", dicom_port, http)
    finally:
        http.close()
        _stop(process)
        log.close()


@dataclass(frozen=True)
class NodeProcess:
    ae_title: str
    port: int
    log_path: Path
    state_dir: Path


@contextmanager
def node_service(workdir: Path, settings: dict) -> Iterator[NodeProcess]:
    """Run ``radiomics-node serve`` as its own process with ``settings`` as its YAML config."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {"state_dir": str(workdir / "state"), "listener": {"port": port},
              "stable_after": 2, "scan_interval": 0.5, **settings}
    config_path = workdir / "node.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = workdir / "node.log"
    log = log_path.open("w")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "node.cli", "serve", "--config", str(config_path)],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir)
    try:
        deadline = time.monotonic() + 60
        while '"event": "listening"' not in log_path.read_text():
            if process.poll() is not None:
                raise RuntimeError(f"node exited: {log_path.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError("node did not listen within 60 s")
            time.sleep(0.1)
        yield NodeProcess("RADIOMICS", port, log_path, workdir / "state")
    finally:
        _stop(process)
        log.close()
