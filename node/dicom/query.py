"""Queries for a patient's earlier studies and their segmentations at a retrieve source
(``node.flow.priors``), one way per kind of source:

- ``dicom``: C-FIND in the Study Root Query/Retrieve Information Model (PS3.4 C.4.1, C.6.2) at
  STUDY level (Patient ID, Issuer of Patient ID, a Study Date range, PS3.4 C.2.2.2.5) and at
  SERIES level (Study Instance UID and Modality), on one association per query;
- ``orthanc-rest``: Orthanc's ``POST /tools/find`` with the same keys;
- ``dicomweb``: QIDO-RS study and series searches (PS3.18 10.6).

Patient ID and Issuer of Patient ID are sent only as exact values: an empty value is universal
matching and ``*``, ``?`` or a backslash a wildcard or a list (PS3.4 C.2.2.2.1-4), which would
find other patients' studies. Every failure raises QueryError, OrthancError, DicomWebError or
AssociationRefused with a one-line message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pydicom.dataset import Dataset
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from node.config import RetrieveSource, TLSConfig
from node.dicom.dicomweb import DicomWebPeer
from node.dicom.orthanc import OrthancClient
from node.dicom.store_scu import associate
from node.state.spool import is_uid

SEGMENTATION_MODALITIES = ("SEG", "RTSTRUCT")
"""Modality (0008,0060) of the segmentation series looked for in a study: SEG (PS3.3 C.8.20.1)
and RTSTRUCT (PS3.3 C.8.8.1), one query each (a list of values is not a match key of Modality
in every peer)."""


class QueryError(ConnectionError):
    """A C-FIND that ended without a response or with a failure status."""


@dataclass(frozen=True)
class StudyFound:
    """One study a query answered: its Study Instance UID, Study Date (YYYYMMDD, empty when the
    peer gave none) and the Patient ID it holds (empty when not returned)."""

    study_uid: str
    study_date: str
    patient_id: str


def exact(value: str) -> bool:
    """Whether ``value`` can be sent as a single-value match key that matches only itself: not
    empty, no wildcard (``*``, ``?``) and no value separator (``\\``), PS3.4 C.2.2.2."""
    return bool(value) and not any(c in value for c in "*?\\")


class StudyQuery(Protocol):
    """A source's answers to the two questions a prior lookup asks."""

    def studies(self, patient_id: str, issuer: str | None, dates: tuple[str, str],
                modality: str | None) -> list[StudyFound]:
        """The studies of the patient (exact ``patient_id``, and ``issuer`` when given) dated
        within ``dates`` (YYYYMMDD, both included) that include ``modality`` when given."""
        ...

    def segmentation_series(self, study_uid: str) -> list[str]:
        """The Series Instance UIDs of the study's SEG and RTSTRUCT series."""
        ...


def _patient_keys(patient_id: str, issuer: str | None) -> dict[str, str]:
    """The patient's match keys; ValueError when one is not exact (:func:`exact`)."""
    keys = {"PatientID": patient_id}
    if issuer:
        keys["IssuerOfPatientID"] = issuer
    for keyword, value in keys.items():
        if not exact(value):
            raise ValueError(f"{keyword} is empty or holds a wildcard: not queried")
    return keys


class DicomQuery:
    """C-FIND (Study Root, PS3.4 C.4.1) at a ``dicom`` source."""

    def __init__(self, calling_ae: str, source: RetrieveSource, timeout: float,
                 tls: TLSConfig | None = None):
        self._calling_ae = calling_ae
        self._source = source
        self._timeout = timeout
        self._tls = tls

    def find(self, identifier: Dataset) -> list[Dataset]:
        """The identifiers of every pending response (0xFF00, 0xFF01) to one C-FIND; QueryError
        when the exchange ends without a response or with another status than success."""
        assoc = associate(self._calling_ae, self._source,
                          [StudyRootQueryRetrieveInformationModelFind], self._timeout,
                          tls=self._tls)
        answers: list[Dataset] = []
        try:
            for status, answer in assoc.send_c_find(identifier,
                                                    StudyRootQueryRetrieveInformationModelFind):
                code = getattr(status, "Status", None)
                if code is None:
                    raise QueryError(f"C-FIND at {self._source.describe()}: no response")
                if code in (0xFF00, 0xFF01):
                    if answer is not None:
                        answers.append(answer)
                elif code != 0x0000:
                    raise QueryError(f"C-FIND at {self._source.describe()}: status "
                                     f"0x{code:04X}")
        finally:
            assoc.release()
        return answers

    def studies(self, patient_id: str, issuer: str | None, dates: tuple[str, str],
                modality: str | None) -> list[StudyFound]:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        for keyword, value in _patient_keys(patient_id, issuer).items():
            setattr(query, keyword, value)
        query.StudyDate = f"{dates[0]}-{dates[1]}"
        query.StudyInstanceUID = ""
        query.ModalitiesInStudy = modality or ""
        return [StudyFound(str(a.get("StudyInstanceUID", "")), str(a.get("StudyDate", "")),
                           str(a.get("PatientID", ""))) for a in self.find(query)]

    def segmentation_series(self, study_uid: str) -> list[str]:
        if not is_uid(study_uid):
            raise ValueError(f"not a UID: {study_uid[:64]!r}")
        found = []
        for modality in SEGMENTATION_MODALITIES:
            query = Dataset()
            query.QueryRetrieveLevel = "SERIES"
            query.StudyInstanceUID = study_uid
            query.Modality = modality
            query.SeriesInstanceUID = ""
            found += [str(a.get("SeriesInstanceUID", "")) for a in self.find(query)]
        return found


class OrthancQuery:
    """``POST /tools/find`` at an ``orthanc-rest`` source."""

    def __init__(self, client: OrthancClient):
        self._client = client

    def studies(self, patient_id: str, issuer: str | None, dates: tuple[str, str],
                modality: str | None) -> list[StudyFound]:
        query = {**_patient_keys(patient_id, issuer), "StudyDate": f"{dates[0]}-{dates[1]}"}
        if modality:
            query["ModalitiesInStudy"] = modality
        return [StudyFound(str(r.get("MainDicomTags", {}).get("StudyInstanceUID", "")),
                           str(r.get("MainDicomTags", {}).get("StudyDate", "")),
                           str(r.get("PatientMainDicomTags", {}).get("PatientID", "")))
                for r in self._client.find("Study", query)]

    def segmentation_series(self, study_uid: str) -> list[str]:
        if not is_uid(study_uid):
            raise ValueError(f"not a UID: {study_uid[:64]!r}")
        return [str(r.get("MainDicomTags", {}).get("SeriesInstanceUID", ""))
                for modality in SEGMENTATION_MODALITIES
                for r in self._client.find("Series", {"StudyInstanceUID": study_uid,
                                                      "Modality": modality})]


class DicomWebQuery:
    """QIDO-RS searches at a ``dicomweb`` source."""

    def __init__(self, peer: DicomWebPeer):
        self._peer = peer

    def studies(self, patient_id: str, issuer: str | None, dates: tuple[str, str],
                modality: str | None) -> list[StudyFound]:
        filters = {**_patient_keys(patient_id, issuer), "StudyDate": f"{dates[0]}-{dates[1]}"}
        if modality:
            filters["ModalitiesInStudy"] = modality
        return [StudyFound(_first(item, "0020000D"), _first(item, "00080020"),
                           _first(item, "00100020"))
                for item in self._peer.search_studies(filters)]

    def segmentation_series(self, study_uid: str) -> list[str]:
        return [uid for modality in SEGMENTATION_MODALITIES
                for uid in self._peer.study_series(study_uid, modality)]


def _first(item: dict, tag: str) -> str:
    """The first value of ``tag`` in a DICOM JSON object (PS3.18 F.2) as text; empty when none
    (a Person Name or other object value is not asked for here)."""
    values = item.get(tag, {}).get("Value") or []
    return str(values[0]) if values else ""
