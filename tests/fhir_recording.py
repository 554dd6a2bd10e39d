"""A recording of HAPI FHIR's answers, not a FHIR server: no FHIR server could be installed here
(HAPI FHIR is on Maven Central, which this machine does not reach; none of the packages the
registries here offer is a server that processes transactions and conditional creates). It
answers the requests the node makes with the shapes HAPI FHIR 7's JPA server answers them with
(https://hapifhir.io/hapi-fhir/docs/server_jpa/): a ``transaction-response`` Bundle whose entries
have ``response.status`` ``201 Created`` (or ``200 OK`` when a conditional create found its
match) and a ``location``, a ``searchset`` Bundle with ``total``, a CapabilityStatement for
``/metadata``, and an OperationOutcome with HTTP 400 or 401. It validates every posted Bundle
with the fhir.resources R4B models (HTTP 400 when invalid), applies its conditional creates, and
keeps what it created so that the search finds it again. Used by tests/unit/test_fhir_client.py
and tests/integration/test_dicomweb.py."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

from tests.conftest import free_port

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


@contextmanager
def recorded_fhir_server(recording: Recording) -> Iterator[str]:
    """The recording served on 127.0.0.1 in a thread; its FHIR base URL."""
    handler = type("Handler", (_Handler,), {"recording": recording})
    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}{BASE}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
