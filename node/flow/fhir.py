"""A small client of a FHIR server's RESTful API (https://hl7.org/fhir/R4/http.html) over httpx:
the results bundle posted as a transaction, the report found again by a search on its
identifier, and the capability statement for ``config check``.

Every call raises FhirError naming the method, the URL and the reason (HTTP status with the
OperationOutcome's diagnostics when the server sends one, or the transport error), so callers log
one clear line and retry later. Authentication is HTTP basic or a bearer token (e.g. one a
site's SMART backend service issued), never both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
from pydantic import SecretStr

FHIR_JSON = "application/fhir+json"


class FhirError(ConnectionError):
    """A FHIR request that failed: unreachable, timed out, an error status (``status``, None
    when no answer came), an answer that is not the resource asked for, or a transaction entry
    the server did not process."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def _diagnostics(response: httpx.Response) -> str:
    """The issues of an OperationOutcome answer (https://hl7.org/fhir/R4/operationoutcome.html)
    as ``severity: diagnostics`` lines joined by ``; ``; the start of any other body."""
    try:
        body = response.json()
    except ValueError:
        return repr(response.text[:200]) if response.text else ""
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return repr(response.text[:200])
    lines = []
    for issue in body.get("issue", []):
        text = issue.get("diagnostics") or issue.get("details", {}).get("text") \
            or issue.get("code", "?")
        lines.append(f"{issue.get('severity', '?')}: {text}")
    return "; ".join(lines)


class FhirClient:
    """One FHIR server at ``url`` (its base, e.g. HAPI's ``.../fhir``); close it (or use
    ``with``) to release its connections."""

    def __init__(self, url: str, username: str | None = None,
                 password: SecretStr | None = None, token: SecretStr | None = None,
                 timeout: float = 30.0):
        if username is not None and token is not None:
            raise ValueError("HTTP basic authentication or a bearer token, not both")
        auth = None
        headers = {"Accept": FHIR_JSON}
        if username is not None:
            auth = httpx.BasicAuth(username, password.get_secret_value() if password else "")
        if token is not None:
            headers["Authorization"] = f"Bearer {token.get_secret_value()}"
        self.url = url.rstrip("/")
        self._http = httpx.Client(auth=auth, headers=headers, timeout=timeout)

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _json(self, method: str, path: str, expected: str, **kwargs: Any) -> dict[str, Any]:
        """The answer of one request, a resource of type ``expected``."""
        where = f"{method} {self.url}{path}"
        try:  # the whole URL: a base URL joined with "" would gain a trailing slash
            response = self._http.request(method, f"{self.url}{path}", **kwargs)
        except httpx.HTTPError as exc:
            raise FhirError(f"{where}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 400:
            detail = _diagnostics(response)
            raise FhirError(f"{where}: HTTP {response.status_code}"
                            + (f": {detail}" if detail else ""), response.status_code)
        try:
            body = response.json()
        except ValueError as exc:
            raise FhirError(f"{where}: answer is not JSON", response.status_code) from exc
        kind = body.get("resourceType") if isinstance(body, dict) else None
        if kind != expected:
            raise FhirError(f"{where}: answer is a {kind or 'JSON value'}, not a {expected}",
                            response.status_code)
        return body

    def capabilities(self) -> dict[str, Any]:
        """``GET [base]/metadata``: the server's CapabilityStatement (its ``fhirVersion``, its
        ``software``), which also shows the credentials are accepted where the server guards
        it."""
        return self._json("GET", "/metadata", "CapabilityStatement")

    def post_bundle(self, bundle: Mapping[str, Any]) -> dict[str, Any]:
        """``POST [base]`` of a transaction Bundle as ``application/fhir+json``; returns the
        transaction-response Bundle. Raises FhirError when the server refused the transaction
        or an entry's ``response.status`` is not 2xx (a transaction is all or nothing,
        https://hl7.org/fhir/R4/http.html#trules)."""
        answer = self._json("POST", "", "Bundle", json=dict(bundle),
                            headers={"Content-Type": FHIR_JSON})
        entries = answer.get("entry", [])
        if answer.get("type") != "transaction-response" or \
                len(entries) != len(bundle.get("entry", [])):
            raise FhirError(f"POST {self.url}: answer is a {answer.get('type')} Bundle of "
                            f"{len(entries)} entries, not the transaction-response of "
                            f"{len(bundle.get('entry', []))}")
        for number, entry in enumerate(entries):
            status = str(entry.get("response", {}).get("status", ""))
            if not status.startswith("2"):
                raise FhirError(f"POST {self.url}: entry {number} answered "
                                f"{status or 'no status'}")
        return answer

    def has_report(self, identifier: str) -> bool:
        """Whether the server holds a DiagnosticReport with ``identifier``, a search token
        ``system|value`` (``pipelines.outputs.fhir_report.report_identifier``):
        ``GET [base]/DiagnosticReport?identifier=...``. A searchset with entries has it when
        one of them carries that identifier (a server that ignored the parameter lists
        others); one without entries when its ``total`` counts a match."""
        system, _, value = identifier.partition("|")
        found = self._json("GET", "/DiagnosticReport", "Bundle",
                           params={"identifier": identifier})
        entries = found.get("entry", [])
        if not entries:
            return int(found.get("total") or 0) > 0
        return any(
            {"system": system, "value": value} in [
                {"system": i.get("system"), "value": i.get("value")}
                for i in entry.get("resource", {}).get("identifier", [])]
            for entry in entries
            if entry.get("resource", {}).get("resourceType") == "DiagnosticReport")
