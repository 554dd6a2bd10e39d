"""node.fhir against a recording of HAPI FHIR's answers, not a FHIR server: no FHIR server could
be installed here (HAPI FHIR is on Maven Central, which this machine does not reach; none of the
packages the registries here offer is a server that processes transactions and conditional
creates). The recording answers the requests the node makes with the shapes HAPI FHIR 7's JPA
server answers them with (https://hapifhir.io/hapi-fhir/docs/server_jpa/): a
``transaction-response`` Bundle whose entries have ``response.status`` ``201 Created`` (or
``200 OK`` when a conditional create found its match) and a ``location``, a ``searchset``
Bundle with ``total``, a CapabilityStatement for ``/metadata``, and an OperationOutcome with
HTTP 400 or 401. It validates every posted Bundle with the fhir.resources R4B models (HTTP 400
when invalid), applies its conditional creates, and keeps what it created so that the search
finds it again. ``config check`` is tested against it too."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fhir.resources.R4B.bundle import Bundle
from pydantic import SecretStr, ValidationError

from node.check import _reach
from node.config import NodeConfig, RemotePeer
from node.fhir import FhirClient, FhirError
from node.outbox import Outbox
from node.state import Index
from pipelines.fhir_report import build_results_bundle, report_identifier
from tests.conftest import free_port
from tests.unit.fhir_results import made_result

BASE = "/fhir"


def _outcome(code: str, diagnostics: str) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}]}


def _resolved(value: Any, ids: dict[str, str]) -> Any:
    """``value`` with each ``reference`` to a bundle entry's fullUrl replaced by the entry's
    ``type/id``."""
    if isinstance(value, dict):
        return {k: ids.get(v, v) if k == "reference" else _resolved(v, ids)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_resolved(item, ids) for item in value]
    return value


@dataclass
class Recording:
    """What the recorded server holds: resources by type and id, each posted bundle, and the
    credentials it demands (none, ``user:password`` for basic, or a bearer token)."""

    basic: str | None = None
    token: str | None = None
    resources: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    posted: list[dict[str, Any]] = field(default_factory=list)
    created: int = 0  # the last resource id given

    def find(self, kind: str, query: str) -> list[tuple[str, dict[str, Any]]]:
        """The resources of ``kind`` matching an ``identifier=system|value`` query."""
        token = parse_qs(query)["identifier"][0]
        system, _, value = token.partition("|")
        return [(rid, r) for rid, r in self.resources.get(kind, {}).items()
                if any(i.get("system") == system and i.get("value") == value
                       for i in r.get("identifier", []))]

    def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        """Conditional creates, then references to each entry's fullUrl rewritten to the
        resource created or found (https://hl7.org/fhir/R4/http.html#trules)."""
        answers, ids = [], {}
        for entry in bundle["entry"]:
            kind = entry["request"]["url"]
            matches = self.find(kind, entry["request"]["ifNoneExist"])
            if matches:
                rid, status = matches[0][0], "200 OK"
            else:
                self.created += 1
                rid, status = str(self.created), "201 Created"
            ids[entry["fullUrl"]] = f"{kind}/{rid}"
            answers.append((entry, kind, rid, status))
        response = []
        for entry, kind, rid, status in answers:
            if status.startswith("201"):
                resource = _resolved(entry["resource"], ids)
                self.resources.setdefault(kind, {})[rid] = {**resource, "id": rid}
            response.append({"response": {"status": status,
                                          "location": f"{kind}/{rid}/_history/1",
                                          "etag": 'W/"1"'}})
        return {"resourceType": "Bundle", "id": "response", "type": "transaction-response",
                "entry": response}


class _Handler(BaseHTTPRequestHandler):
    recording: Recording

    def log_message(self, *_: object) -> None:
        pass

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json;charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        header = self.headers.get("Authorization", "")
        if self.recording.basic is not None:
            expected = base64.b64encode(self.recording.basic.encode()).decode()
            return header == f"Basic {expected}"
        if self.recording.token is not None:
            return header == f"Bearer {self.recording.token}"
        return True

    def do_GET(self) -> None:
        if not self._authorised():
            self._answer(401, _outcome("login", "HAPI-0333: Unauthorized"))
            return
        parts = urlsplit(self.path)
        if parts.path == f"{BASE}/metadata":
            self._answer(200, {"resourceType": "CapabilityStatement", "status": "active",
                               "date": "2026-12-07T11:00:00+00:00", "kind": "instance",
                               "software": {"name": "HAPI FHIR Server", "version": "7.6.0"},
                               "fhirVersion": "4.0.1", "format": ["application/fhir+json"]})
            return
        if parts.path == f"{BASE}/DiagnosticReport":
            found = self.recording.find("DiagnosticReport", parts.query)
            self._answer(200, {
                "resourceType": "Bundle", "type": "searchset", "total": len(found),
                "link": [{"relation": "self", "url": f"http://fhir{self.path}"}],
                "entry": [{"fullUrl": f"http://fhir{BASE}/DiagnosticReport/{rid}",
                           "resource": resource, "search": {"mode": "match"}}
                          for rid, resource in found]})
            return
        self._answer(404, _outcome("not-found", f"HAPI-0302: Unknown resource type in "
                                                f"{parts.path}"))

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if not self._authorised():
            self._answer(401, _outcome("login", "HAPI-0333: Unauthorized"))
            return
        if urlsplit(self.path).path != BASE or \
                not self.headers.get("Content-Type", "").startswith("application/fhir+json"):
            self._answer(415, _outcome("not-supported", "HAPI-1857: unsupported request"))
            return
        bundle = json.loads(body)
        self.recording.posted.append(bundle)
        try:
            Bundle.model_validate(bundle)
        except ValidationError as exc:
            self._answer(400, _outcome("processing", "HAPI-0450: Failed to parse request body "
                                                     f"as JSON resource. Error was: {exc}"))
            return
        self._answer(200, self.recording.transaction(bundle))


@pytest.fixture
def server() -> Iterator[tuple[str, Recording]]:
    recording = Recording()
    handler = type("Handler", (_Handler,), {"recording": recording})
    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}{BASE}", recording
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


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
