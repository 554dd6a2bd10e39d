"""The deployment files: the systemd units (the node's, the Dask scheduler's and workers') pass
``systemd-analyze verify`` and score as well hardened, and the Dask units' command lines run a
task on this package; the configurations shipped for the systemd install and the container
validate (the container's only with the status token from the environment); the compose file
runs Orthanc's official image with the Lua script and health-checks the node on /healthz."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from node.config import ConfigError, load_config
from pipelines.outputs.software import software_version
from tests.conftest import REPO, free_port

DEPLOY = REPO / "deploy"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


HARDENING = ("User=radiomics-node", "ProtectSystem=strict", "NoNewPrivileges=yes",
             "PrivateTmp=yes", "Restart=on-failure")
UNITS = {
    "radiomics-node": ("radiomics-node", ("ReadWritePaths=/var/lib/radiomics-node",
                                          "StateDirectory=radiomics-node")),
    "radiomics-dask-scheduler": ("dask", ("ReadWritePaths=/var/lib/radiomics-dask",
                                          "EnvironmentFile=-/etc/radiomics-node/dask.env")),
    "radiomics-dask-worker": ("dask", ("ReadWritePaths=/var/lib/radiomics-dask",
                                       "EnvironmentFile=-/etc/radiomics-node/dask.env")),
}
"""Each unit in deploy/systemd: the program it starts from the venv, and settings it must have
beyond HARDENING."""


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("name", UNITS)
def test_systemd_units_verify_and_are_hardened(name: str, tmp_path: Path) -> None:
    program, settings = UNITS[name]
    unit = (DEPLOY / "systemd" / f"{name}.service").read_text()
    # verify checks that ExecStart binaries exist: point them at one that does
    local = tmp_path / f"{name}.service"
    local.write_text(unit.replace(f"/opt/radiomics-node/venv/bin/{program}", "/bin/true"))
    verify = subprocess.run([str(SYSTEMD_ANALYZE), "verify", str(local)], capture_output=True,
                            text=True, check=False)
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr
    security = subprocess.run([str(SYSTEMD_ANALYZE), "security", "--offline=yes", str(local)],
                              capture_output=True, text=True, check=False)
    exposure = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
    assert exposure is not None, security.stdout[-2000:] + security.stderr
    assert float(exposure.group(1)) <= 2.0  # "OK" on systemd's 0 (safe) to 10 scale
    for setting in (*HARDENING, *settings):
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


DASK_UNITS = ("radiomics-dask-scheduler", "radiomics-dask-worker")


def _exec_start(name: str, env: dict[str, str], replace: dict[str, str]) -> list[str]:
    """The unit's ExecStart as argv, ${VAR} from its Environment= defaults updated by ``env``,
    and the install paths in ``replace`` swapped for this machine's."""
    unit = (DEPLOY / "systemd" / f"{name}.service").read_text()
    values: dict[str, str] = {}
    for line in unit.splitlines():
        if line.startswith("Environment="):
            values.update(item.split("=", 1) for item in line[len("Environment="):].split())
    values.update(env)
    [command] = [line[len("ExecStart="):] for line in unit.splitlines()
                 if line.startswith("ExecStart=")]
    for old, new in replace.items():
        command = command.replace(old, new)
    return [re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], word) for word in command.split()]


def test_dask_units_command_lines_run_a_task_on_this_package(tmp_path: Path) -> None:
    """The scheduler and worker started with the units' own command lines (on free loopback
    ports, stopped by PID) run a task that imports the pipeline on the worker."""
    from distributed import Client

    port = free_port()
    dask = str(Path(sys.executable).parent / "dask")
    replace = {"/opt/radiomics-node/venv/bin/dask": dask,
               "/var/lib/radiomics-dask": str(tmp_path),
               "127.0.0.1:8787": f"127.0.0.1:{free_port()}"}
    env = {"DASK_HOST": "127.0.0.1", "DASK_PORT": str(port),
           "DASK_SCHEDULER": f"tcp://127.0.0.1:{port}", "DASK_NWORKERS": "1",
           "DASK_MEMORY_LIMIT": "2GiB"}
    # the package as installed on a worker machine (here: this checkout, wherever pytest runs)
    process_env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    processes = [subprocess.Popen(_exec_start(name, env, replace), cwd=tmp_path, env=process_env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for name in DASK_UNITS]
    try:
        with Client(f"tcp://127.0.0.1:{port}", timeout=60) as client:
            client.wait_for_workers(1, timeout=120)
            future = client.submit(software_version, pure=False)  # imports pipelines there
            assert future.result(timeout=120) == software_version()
    finally:
        for process in processes:
            process.terminate()
            process.wait(30)

