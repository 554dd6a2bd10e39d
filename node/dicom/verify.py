"""Delivery verification: does the destination hold an object now?

A success status to C-STORE (PS3.4 B.2.3) or to REST ``POST /instances`` says the peer took the
object; the node asks again before it marks a delivery delivered. DICOM destinations are asked
with C-FIND at IMAGE level in the Study Root model (PS3.4 C.4.1, C.6.2), the unique keys of
every level given (a hierarchical query, PS3.4 C.4.1.2.2); Orthanc destinations with
``POST /tools/lookup``; DICOMweb destinations with a QIDO-RS search of the object's series for
its SOP Instance UID (PS3.18 10.6).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from node.config import Destination, TLSConfig
from node.dicom.dicomweb import DicomWebPeer
from node.dicom.orthanc import OrthancClient
from node.dicom.store_scu import associate

PENDING = frozenset({0xFF00, 0xFF01})
"""C-FIND statuses that carry a matching identifier (PS3.4 C.4.1.1.4)."""


class VerificationError(ConnectionError):
    """The destination could not be asked (query refused, failed or timed out)."""


@dataclass(frozen=True)
class ObjectRef:
    """The unique keys of one stored object at each level of the Study Root model."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str


def method_of(destination: Destination) -> str:
    """How presence at ``destination`` is established, as recorded in the index."""
    return {"dicom": "c-find", "orthanc-rest": "orthanc-lookup",
            "dicomweb": "qido-rs", "fhir": "fhir-search"}[destination.kind]


def present(calling_ae: str, destination: Destination, objects: Sequence[ObjectRef],
            timeout: float, tls: TLSConfig | None = None) -> set[str]:
    """The SOP Instance UIDs among ``objects`` that ``destination`` holds (asked over DICOM TLS
    with ``tls`` when the destination has ``tls: true``).

    Raises AssociationRefused (DICOM peer unreachable), OrthancError (REST call failed),
    DicomWebError (QIDO-RS failed) or VerificationError (the C-FIND itself failed).
    """
    if not objects:
        return set()
    if destination.kind == "dicomweb":
        with DicomWebPeer(str(destination.url), destination.username, destination.password,
                          timeout) as peer:
            return {o.sop_instance_uid for o in objects
                    if peer.has_instance(o.study_uid, o.series_uid, o.sop_instance_uid)}
    if destination.kind == "orthanc-rest":
        with OrthancClient(str(destination.url), destination.username, destination.password,
                           timeout) as client:
            return {o.sop_instance_uid for o in objects if client.has_instance(o.sop_instance_uid)}
    assoc = associate(calling_ae, destination, [StudyRootQueryRetrieveInformationModelFind],
                      timeout, tls=tls)
    found: set[str] = set()
    try:
        for ref in objects:
            query = Dataset()
            query.QueryRetrieveLevel = "IMAGE"
            query.StudyInstanceUID = ref.study_uid
            query.SeriesInstanceUID = ref.series_uid
            query.SOPInstanceUID = ref.sop_instance_uid
            for status, identifier in assoc.send_c_find(
                    query, StudyRootQueryRetrieveInformationModelFind):
                code = getattr(status, "Status", None)
                if code in PENDING:
                    if identifier is not None and \
                            identifier.get("SOPInstanceUID") == ref.sop_instance_uid:
                        found.add(ref.sop_instance_uid)
                elif code != 0x0000:
                    shown = "no response" if code is None else f"status 0x{code:04X}"
                    raise VerificationError(f"C-FIND at {destination.describe()}: {shown}")
    finally:
        assoc.release()
    return found
