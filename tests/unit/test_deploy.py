"""The deployment files: the systemd unit passes ``systemd-analyze verify`` and scores as well
hardened; the configurations shipped for the systemd install and the container validate (the
container's only with the status token from the environment); the compose file runs Orthanc's
official image with the Lua script and health-checks the node on /healthz."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from node.config import ConfigError, load_config
from tests.conftest import REPO

DEPLOY = REPO / "deploy"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    unit = (DEPLOY / "systemd" / "radiomics-node.service").read_text()
    # verify checks that ExecStart binaries exist: point them at one that does
    local = tmp_path / "radiomics-node.service"
    local.write_text(unit.replace("/opt/radiomics-node/venv/bin/radiomics-node", "/bin/true"))
    verify = subprocess.run([str(SYSTEMD_ANALYZE), "verify", str(local)], capture_output=True,
                            text=True, check=False)
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr
    security = subprocess.run([str(SYSTEMD_ANALYZE), "security", "--offline=yes", str(local)],
                              capture_output=True, text=True, check=False)
    exposure = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
    assert exposure is not None, security.stdout[-2000:] + security.stderr
    assert float(exposure.group(1)) <= 2.0  # "OK" on systemd's 0 (safe) to 10 scale
    for setting in ("User=radiomics-node", "ProtectSystem=strict",
                    "ReadWritePaths=/var/lib/radiomics-node", "NoNewPrivileges=yes",
                    "PrivateTmp=yes", "Restart=on-failure", "StateDirectory=radiomics-node"):
        assert setting in unit.splitlines(), setting


def test_shipped_configurations_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    example = load_config(DEPLOY / "radiomics-node.example.yaml")
    assert str(example.state_dir) == "/var/lib/radiomics-node"
    container = DEPLOY / "container" / "node.yaml"
    monkeypatch.delenv("RADIOMICS_NODE_STATUS__TOKEN", raising=False)
    with pytest.raises(ConfigError, match="needs username and password or token"):
        load_config(container)  # bound to 0.0.0.0 without credentials: refused
    monkeypatch.setenv("RADIOMICS_NODE_STATUS__TOKEN", "from-the-environment")
    config = load_config(container)
    assert config.status.token.get_secret_value() == "from-the-environment"
    assert config.status.host == "0.0.0.0" and config.status.port == 8080


def test_compose_runs_orthanc_with_the_lua_script_and_checks_health() -> None:
    compose = yaml.safe_load((DEPLOY / "container" / "compose.yaml").read_text())
    orthanc, node = compose["services"]["orthanc"], compose["services"]["radiomics-node"]
    assert orthanc["image"].startswith("orthancteam/orthanc:")
    lua = [v.split(":")[0] for v in orthanc["volumes"] if v.endswith(".lua:ro")]
    assert [(DEPLOY / "container" / path).resolve() for path in lua] == \
        [DEPLOY / "orthanc" / "radiomics-forward.lua"]
    assert "/healthz" in " ".join(node["healthcheck"]["test"])
    dockerfile = (DEPLOY / "container" / "Dockerfile").read_text()
    assert dockerfile.startswith("# radiomics-node image") and "FROM python:3.11-slim" in dockerfile
    assert (REPO / node["build"]["dockerfile"]).resolve() == DEPLOY / "container" / "Dockerfile"
