"""node.flow.fhir, and the outbox's FHIR deliveries, against a recording of HAPI FHIR's answers
(tests/fhir_recording.py), not a FHIR server: no FHIR server could be installed here. It
validates every posted Bundle with the fhir.resources R4B models. ``config check`` is tested
against it too."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from node.config import NodeConfig, RemotePeer
from node.flow.fhir import FhirClient, FhirError
from node.flow.outbox import Outbox
from node.ops.check import _reach
from node.state import Index
from pipelines.outputs.fhir_report import build_results_bundle, report_identifier
from tests.conftest import free_port
from tests.fhir_recording import Recording, recorded_fhir_server
from tests.unit.fhir_results import made_result


@pytest.fixture
def server() -> Iterator[tuple[str, Recording]]:
    recording = Recording()
    with recorded_fhir_server(recording) as url:
        yield url, recording


@pytest.fixture
def bundle(tmp_path: Path) -> tuple[dict[str, Any], str]:
    result, header = made_result(tmp_path)
    return build_results_bundle(result, header, "CT"), \
        report_identifier(result.report.sop_instance_uid)


def test_posted_then_read_back(server: tuple[str, Recording],
                               bundle: tuple[dict[str, Any], str]) -> None:
    url, recording = server
    posted, identifier = bundle
    with FhirClient(url) as client:
        assert not client.has_report(identifier)
        answer = client.post_bundle(posted)
        assert client.has_report(identifier)
    assert [e["response"]["status"] for e in answer["entry"]] == \
        ["201 Created"] * len(posted["entry"])
    [report] = recording.resources["DiagnosticReport"].values()
    # the report's results are the observations the same transaction created
    assert sorted(r["reference"] for r in report["result"]) == \
        sorted(f"Observation/{rid}" for rid in recording.resources["Observation"])


def test_a_second_post_creates_nothing(server: tuple[str, Recording],
                                       bundle: tuple[dict[str, Any], str]) -> None:
    """A retried delivery: each conditional create finds what the first created."""
    url, recording = server
    posted, _ = bundle
    with FhirClient(url) as client:
        client.post_bundle(posted)
        held = {kind: dict(found) for kind, found in recording.resources.items()}
        again = client.post_bundle(posted)
    assert recording.resources == held
    assert [e["response"]["status"] for e in again["entry"]] == \
        ["200 OK"] * len(posted["entry"])
    assert len(recording.posted) == 2


def test_unauthorised_is_named(server: tuple[str, Recording],
                               bundle: tuple[dict[str, Any], str]) -> None:
    url, recording = server
    recording.basic = "node:secret"
    with FhirClient(url, "node", SecretStr("wrong")) as client, \
            pytest.raises(FhirError) as caught:
        client.post_bundle(bundle[0])
    assert caught.value.status == 401
    assert str(caught.value) == f"POST {url}: HTTP 401: error: HAPI-0333: Unauthorized"
    with FhirClient(url, "node", SecretStr("secret")) as client:
        client.post_bundle(bundle[0])
    assert recording.resources


def test_bearer_token(server: tuple[str, Recording],
                      bundle: tuple[dict[str, Any], str]) -> None:
    url, recording = server
    recording.token = "t0ken"
    with FhirClient(url, token=SecretStr("t0ken")) as client:
        client.post_bundle(bundle[0])
        assert client.has_report(bundle[1])
    with FhirClient(url, token=SecretStr("other")) as client, \
            pytest.raises(FhirError, match=r"GET .*/DiagnosticReport: HTTP 401"):
        client.has_report(bundle[1])


def test_invalid_bundle_is_named_with_the_diagnostics(
        server: tuple[str, Recording], bundle: tuple[dict[str, Any], str]) -> None:
    url, recording = server
    posted = json.loads(json.dumps(bundle[0]))
    posted["entry"][1]["resource"]["valueQuantity"]["value"] = "high"
    with FhirClient(url) as client, pytest.raises(FhirError) as caught:
        client.post_bundle(posted)
    assert caught.value.status == 400
    message = str(caught.value)
    assert message.startswith(f"POST {url}: HTTP 400: error: HAPI-0450: Failed to parse")
    assert "entry.1.resource.valueQuantity.value" in message
    assert not recording.resources


def test_connection_refused_is_named(bundle: tuple[dict[str, Any], str]) -> None:
    url = f"http://127.0.0.1:{free_port()}/fhir"
    with FhirClient(url, timeout=5) as client, pytest.raises(FhirError) as caught:
        client.post_bundle(bundle[0])
    assert caught.value.status is None
    assert str(caught.value).startswith(f"POST {url}: ConnectError")


def test_config_check_reads_the_capability_statement(server: tuple[str, Recording],
                                                     tmp_path: Path) -> None:
    url, recording = server
    config = NodeConfig(state_dir=tmp_path)
    peer = RemotePeer(name="ris", kind="fhir", url=url)
    assert _reach(config, peer, 5) == (True, f"{url}: FHIR 4.0.1 (HAPI FHIR Server 7.6.0)")
    recording.basic = "node:secret"
    ok, detail = _reach(config, peer, 5)
    assert not ok and detail == f"GET {url}/metadata: HTTP 401: error: HAPI-0333: Unauthorized"


def test_fhir_destination_configuration() -> None:
    config = NodeConfig(destinations=[
        {"name": "ris", "kind": "fhir", "url": "https://ris.example/fhir", "token": "t"}])
    assert config.destinations[0].token == SecretStr("t")
    for wrong, problem in (
        ({"kind": "fhir"}, "a fhir peer needs url"),
        ({"kind": "fhir", "url": "https://x/fhir", "username": "u", "token": "t"}, "not both"),
        ({"kind": "dicomweb", "url": "https://x/dicom-web", "token": "t"},
         "token is for fhir peers"),
    ):
        with pytest.raises(ValidationError, match=problem):
            NodeConfig(destinations=[{"name": "d", **wrong}])
    with pytest.raises(ValidationError, match=r"retrieve\.sources\.0\.kind"):
        NodeConfig(retrieve={"sources": [{"name": "s", "kind": "fhir", "url": "https://x/f"}]})


def test_outbox_posts_the_bundle_once_the_jobs_dicom_results_are_delivered(
        tmp_path: Path, server: tuple[str, Recording],
        bundle: tuple[dict[str, Any], str]) -> None:
    url, recording = server
    posted, identifier = bundle
    sr_uid = identifier.rpartition(":")[2]
    path = tmp_path / "fhir-report.json"
    path.write_text(json.dumps(posted), encoding="utf-8")
    config = NodeConfig(state_dir=tmp_path / "node", destinations=[
        {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": free_port()},
        {"name": "ehr", "kind": "fhir", "url": url}])
    index = Index(config.index_path)
    job_id = index.jobs.add("1.2.3", "1.2.3.4", "rule", "preset", "digest")
    assert job_id is not None and index.jobs.claim() is not None
    index.jobs.finish(job_id, [("pacs", str(tmp_path / "sr.dcm"), sr_uid),
                               ("ehr", str(path), sr_uid)])
    [pacs, ehr] = index.outbox.all()
    outbox = Outbox(config, index)
    outbox.tick()  # the PACS is unreachable: the bundle waits, uncounted, and is not posted
    assert recording.posted == []
    assert index.outbox.all()[1]["attempts"] == 0
    index.outbox.mark_verified(pacs["id"], "c-find")
    outbox.tick()
    [row] = [r for r in index.outbox.with_checks() if r["id"] == ehr["id"]]
    assert (row["state"], row["attempts"], row["verified_by"]) == ("delivered", 1, "fhir-search")
    assert len(recording.posted) == 1 and len(recording.resources["DiagnosticReport"]) == 1
    index.close()
