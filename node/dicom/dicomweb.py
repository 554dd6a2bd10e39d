"""A DICOMweb peer (PS3.18): results stored by STOW-RS (10.5), found by QIDO-RS (10.6), source
series fetched by QIDO-RS and WADO-RS (10.4), through the maintained ``dicomweb-client`` (its
public ``DICOMwebClient`` API over a ``requests`` session with HTTP basic authentication).

Every call raises DicomWebError naming the service, the URL and the reason (HTTP status, a STOW-RS
failure reason, or a transport error), so callers log one clear line and retry later.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any, TypeVar

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import create_session, create_session_from_user_pass
from pydantic import SecretStr

from node.state.spool import is_uid

T = TypeVar("T")


class DicomWebError(ConnectionError):
    """A DICOMweb request that failed: unreachable, timed out, an error status (``status``, None
    when no answer came) or a STOW-RS answer listing the instance as failed."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def _checked_uids(*uids: str) -> None:
    """Refuse a value that is not a UID (``node.state.spool.is_uid``): an empty or wildcard value
    would ask for more than one series (PS3.18 8.3.4 matching)."""
    for uid in uids:
        if not is_uid(uid):
            raise ValueError(f"not a UID: {uid[:64]!r}")


class DicomWebPeer:
    """One DICOMweb service at ``url`` (its base, e.g. Orthanc's ``.../dicom-web``); close it (or
    use ``with``) to release its connections."""

    def __init__(self, url: str, username: str | None = None,
                 password: SecretStr | None = None, timeout: float = 30.0):
        self.url = url.rstrip("/")
        session = (create_session_from_user_pass(
            username, password.get_secret_value() if password else "")
            if username is not None else create_session())
        self._session = session
        self._client = DICOMwebClient(self.url, session=session, timeout=timeout)

    def __enter__(self) -> DicomWebPeer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    def _call(self, service: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return call(*args, **kwargs)
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            raise DicomWebError(f"{service} {self.url}: HTTP {status}", status) from exc
        except (requests.RequestException, ValueError) as exc:
            raise DicomWebError(f"{service} {self.url}: {type(exc).__name__}: {exc}") from exc

    def reachable(self) -> None:
        """One QIDO-RS study search with limit 1: the service answers and accepts the
        credentials."""
        self._call("QIDO-RS", self._client.search_for_studies, limit=1)

    def store(self, data: bytes) -> None:
        """Store one Part 10 file by STOW-RS; an answer whose Failed SOP Sequence (0008,1198)
        lists it raises with its Failure Reason (0008,1197)."""
        dataset = pydicom.dcmread(io.BytesIO(data))
        answer = self._call("STOW-RS", self._client.store_instances, [dataset])
        for failed in answer.get("FailedSOPSequence", []):
            reason = failed.get("FailureReason")
            shown = "no reason given" if reason is None else f"reason 0x{int(reason):04X}"
            raise DicomWebError(f"STOW-RS {self.url}: instance "
                                f"{failed.get('ReferencedSOPInstanceUID', '?')} failed, {shown}")

    def has_instance(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> bool:
        """True when a QIDO-RS search of the series for this SOP Instance UID finds it."""
        _checked_uids(study_uid, series_uid, sop_instance_uid)
        found = self._call("QIDO-RS", self._client.search_for_instances,
                           study_instance_uid=study_uid, series_instance_uid=series_uid,
                           search_filters={"SOPInstanceUID": sop_instance_uid})
        return any(_uid(item, "00080018") == sop_instance_uid for item in found)

    def series_instances(self, study_uid: str, series_uid: str) -> list[str]:
        """The SOP Instance UIDs of one series (QIDO-RS, every page)."""
        _checked_uids(study_uid, series_uid)
        found = self._call("QIDO-RS", self._client.search_for_instances,
                           study_instance_uid=study_uid, series_instance_uid=series_uid,
                           fields=["SOPInstanceUID"], get_remaining=True)
        return [uid for item in found if (uid := _uid(item, "00080018"))]

    def search_studies(self, filters: dict[str, str]) -> list[dict[str, Any]]:
        """QIDO-RS study search (PS3.18 10.6.1) with ``filters`` (keyword -> value, e.g. a
        StudyDate range), every page; DICOM JSON objects (PS3.18 F.2) with the Study Instance
        UID, Study Date and Patient ID among their attributes."""
        return self._call("QIDO-RS", self._client.search_for_studies, search_filters=filters,
                          fields=["StudyInstanceUID", "StudyDate", "PatientID"],
                          get_remaining=True)

    def study_series(self, study_uid: str, modality: str) -> list[str]:
        """The Series Instance UIDs of the series of one study with this Modality (QIDO-RS)."""
        _checked_uids(study_uid)
        found = self._call("QIDO-RS", self._client.search_for_series,
                           study_instance_uid=study_uid, search_filters={"Modality": modality},
                           get_remaining=True)
        return [uid for item in found if (uid := _uid(item, "0020000E"))]

    def instance_file(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> bytes:
        """One instance by WADO-RS (``application/dicom``), as a Part 10 file."""
        _checked_uids(study_uid, series_uid, sop_instance_uid)
        dataset = self._call("WADO-RS", self._client.retrieve_instance, study_uid, series_uid,
                             sop_instance_uid)
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()


def _uid(item: dict[str, Any], tag: str) -> str | None:
    """The first value of ``tag`` in a DICOM JSON object (PS3.18 F.2), or None."""
    values = item.get(tag, {}).get("Value") or []
    return str(values[0]) if values else None
