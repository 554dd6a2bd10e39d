"""``radiomics-node config check``: one line per check; peers answer C-ECHO or fail with the
reason within the timeout; Orthanc REST peers answer /system; presets, model packages and TLS
files load; exit code 1 on any failure."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from node.cli import main
from node.config import NodeConfig
from node.dicom.receiver import Receiver
from node.ops.check import check_config
from node.state import Index
from tests.conftest import free_port


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[int]:
    """A storage SCP answering C-ECHO from the node's AE title; yields its port."""
    config = NodeConfig(state_dir=tmp_path / "peer", listener={"port": free_port(),
                                                               "ae_title": "PACS"},
                        peers=[{"name": "node", "ae_title": "RADIOMICS", "host": "127.0.0.1"}])
    index = Index(config.index_path)
    receiver = Receiver(config, index)
    receiver.start()
    try:
        yield config.listener.port
    finally:
        receiver.stop()
        index.close()


def _write(path: Path, settings: dict) -> Path:
    path.write_text(yaml.safe_dump(settings))
    return path


def test_reachable_and_unreachable_peers(tmp_path: Path, peer: int,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    down = free_port()
    settings = {
        "state_dir": str(tmp_path / "state"),
        "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": peer},
                         {"name": "rest", "kind": "orthanc-rest",
                          "url": f"http://127.0.0.1:{down}"}],
        "peers": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": peer,
                   "receive_results": True},
                  {"name": "archive", "ae_title": "ARCHIVE", "host": "127.0.0.1", "port": down,
                   "query": True}],
    }
    config_file = _write(tmp_path / "node.yaml", settings)
    assert main(["config", "check", "--timeout", "2", str(config_file)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert f"ok    destination pacs: C-ECHO PACS@127.0.0.1:{peer}: success" in lines
    [archive] = [line for line in lines if "peer archive" in line]
    assert archive.startswith("FAIL  peer archive: no association with ARCHIVE@127.0.0.1:")
    [rest] = [line for line in lines if "destination rest" in line]
    assert rest.startswith("FAIL  destination rest: GET http://127.0.0.1:")
    assert "ConnectError" in rest
    # state_dir, the rule's preset, three remotes, the status page
    assert lines[-1] == f"{config_file}: 6 checks, 2 failed"
    # the pacs peer is the pacs destination: asked once
    assert sum("PACS@127.0.0.1" in line for line in lines) == 1

    assert main(["config", "check", "--offline", str(config_file)]) == 0
    assert "not contacted: --offline" in capsys.readouterr().out


def test_presets_models_and_tls_files(tmp_path: Path) -> None:
    package = tmp_path / "model"
    package.mkdir()
    (package / "card.yaml").write_text("name: x\n")
    config = NodeConfig(
        state_dir=tmp_path / "state",
        rules=[{"name": "ok", "preset": "ct-liver-basic"}, {"name": "bad", "preset": "nope"}],
        models=[{"path": str(package), "sha256": "0" * 64}],
        tls={"certificate": str(tmp_path / "missing.pem"),
             "private_key": str(tmp_path / "missing.key")},
    )
    results = {r.name: r for r in check_config(config, offline=True)}
    assert results["state_dir"].ok
    assert results["rules.ok.preset"].ok and "ct-liver-basic" in results["rules.ok.preset"].detail
    assert not results["rules.bad.preset"].ok and "nope" in results["rules.bad.preset"].detail
    model = results[f"models {package}"]
    assert not model.ok and "sha256" in model.detail
    tls = results["tls outbound"]
    assert not tls.ok and "missing.pem" in tls.detail
    assert results["status page"].detail == ("http://127.0.0.1:8080/ (loopback, no "
                                             "authentication; Host 127.0.0.1, ::1, localhost)")


def test_state_dir_not_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    [state] = [r for r in check_config(NodeConfig(state_dir=blocker / "state"), offline=True)
               if r.name == "state_dir"]
    assert not state.ok and "is not a directory" in state.detail


def test_empty_credentials_off_loopback_fail(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    config_file = _write(tmp_path / "node.yaml", {
        "state_dir": str(tmp_path / "state"),
        "status": {"host": "0.0.0.0", "username": "it", "password": " ", "token": "s3cret"}})
    assert main(["config", "check", "--offline", str(config_file)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"FAIL  {config_file}: 1 problem(s)",
        "  - status: Value error, the status page on 0.0.0.0 (not loopback) needs a non-empty "
        "password"]
    config_file = _write(config_file, {"state_dir": str(tmp_path / "state"),
                                       "status": {"host": "0.0.0.0", "token": "s3cret",
                                                  "allowed_hosts": ["node.example.org"]}})
    assert main(["config", "check", "--offline", str(config_file)]) == 0
    assert ("ok    status page: http://0.0.0.0:8080/ (authentication: token; Host 0.0.0.0, "
            "127.0.0.1, ::1, localhost, node.example.org)") in capsys.readouterr().out.splitlines()
