"""A small client of Orthanc's REST API (https://orthanc.uclouvain.be/book/users/rest.html) over
httpx: the change feed, downloads, uploads, lookups and finds the node needs.

Every call raises OrthancError naming the method, the path and the reason (HTTP status or
transport error), so callers log one clear line and retry later.
"""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import SecretStr

from node.state.spool import is_uid


class OrthancError(ConnectionError):
    """An Orthanc REST call that failed: unreachable, timed out, or answered an error status
    (``status``, None when no answer came)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class OrthancClient:
    """One Orthanc server at ``url``; close it (or use ``with``) to release its connections."""

    def __init__(self, url: str, username: str | None = None,
                 password: SecretStr | None = None, timeout: float = 30.0):
        auth = None
        if username is not None:
            auth = httpx.BasicAuth(username, password.get_secret_value() if password else "")
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, auth=auth, timeout=timeout)

    def __enter__(self) -> OrthancClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise OrthancError(f"{method} {self.url}{path}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 400:
            raise OrthancError(f"{method} {self.url}{path}: HTTP {response.status_code} "
                               f"{response.text[:200]!r}", response.status_code)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise OrthancError(f"{method} {self.url}{path}: answer is not JSON") from exc

    # -- the change feed (GET /changes) ---------------------------------------------------------

    def system(self) -> dict[str, Any]:
        """``GET /system``: Orthanc's version, name and DICOM AE title (a reachability check)."""
        return self._json("GET", "/system")

    def changes(self, since: int, limit: int) -> dict[str, Any]:
        """Changes after sequence number ``since``: ``{"Changes": [...], "Done": bool,
        "Last": seq}``; each change has ``Seq``, ``ChangeType``, ``ResourceType``, ``ID``."""
        return self._json("GET", "/changes", params={"since": since, "limit": limit})

    def last_change(self) -> int:
        """The sequence number of the newest change Orthanc holds (0 when it has none)."""
        return int(self._json("GET", "/changes", params={"last": ""}).get("Last", 0))

    # -- resources ------------------------------------------------------------------------------

    def series(self, series_id: str) -> dict[str, Any]:
        """``GET /series/{id}``: MainDicomTags (Modality, SeriesInstanceUID), ParentStudy."""
        return self._json("GET", f"/series/{series_id}")

    def study_series(self, study_id: str) -> list[str]:
        """Orthanc ids of the series of a study (``GET /studies/{id}`` field ``Series``)."""
        return list(self._json("GET", f"/studies/{study_id}").get("Series", []))

    def series_instances(self, series_id: str) -> list[dict[str, Any]]:
        """``GET /series/{id}/instances``: each with ``ID`` and MainDicomTags.SOPInstanceUID."""
        return self._json("GET", f"/series/{series_id}/instances")

    def instance_file(self, instance_id: str) -> bytes:
        """The Part 10 file of an instance as Orthanc stored it (``GET /instances/{id}/file``)."""
        return self._request("GET", f"/instances/{instance_id}/file").content

    def find_series(self, study_uid: str, series_uid: str) -> list[str]:
        """Orthanc ids of the series with this SeriesInstanceUID in the study with this
        StudyInstanceUID (``POST /tools/find``, both as exact keys).

        Raises ValueError when either is not a UID (``node.state.spool.is_uid``, PS3.5 9.1): Orthanc
        reads an empty value as universal matching and ``*`` or ``?`` as wildcards (PS3.4
        C.2.2.2.3, C.2.2.2.4), so such a value would find every series it holds."""
        for uid in (study_uid, series_uid):
            if not is_uid(uid):
                raise ValueError(f"not a UID: {uid[:64]!r}")
        query = {"Level": "Series",
                 "Query": {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid}}
        return list(self._json("POST", "/tools/find", json=query))

    def find(self, level: str, query: dict[str, str]) -> list[dict[str, Any]]:
        """``POST /tools/find`` at ``level`` (Patient, Study, Series, Instance) with ``query``
        (keyword -> value, matched as C-FIND matches, PS3.4 C.2.2.2: ranges, wildcards),
        expanded: each resource with ``ID``, ``MainDicomTags`` and, at study level,
        ``PatientMainDicomTags``. The caller makes every value exact where it must be."""
        return list(self._json("POST", "/tools/find",
                               json={"Level": level, "Query": query, "Expand": True}))

    def has_instance(self, sop_instance_uid: str) -> bool:
        """True when Orthanc holds an instance with this SOP Instance UID
        (``POST /tools/lookup``, which answers the resources carrying a DICOM UID)."""
        found = self._json("POST", "/tools/lookup", content=sop_instance_uid.encode())
        return any(item.get("Type") == "Instance" for item in found)

    def upload(self, data: bytes) -> dict[str, Any]:
        """Store one Part 10 file (``POST /instances``); the answer has ``ID`` and ``Status``
        (``Success`` or ``AlreadyStored``)."""
        return self._json("POST", "/instances", content=data,
                          headers={"Content-Type": "application/dicom"})
