"""Retrieval of a source series a segmentation references when the node does not have it.

The router records the request (``Index.request_retrieval``); every tick the retriever tries the
configured ``retrieve.sources`` in order, each in its own way:

- ``dicom`` + ``c-get``: C-GET at SERIES level in the Study Root model (PS3.4 C.4.3) on one
  association that also offers the storage SOP classes with SCP role selection (PS3.7 D.3.3.4),
  so the peer's C-STORE sub-operations come back on it; each instance goes through
  ``Ingest.accept``.
- ``dicom`` + ``c-move``: C-MOVE (PS3.4 C.4.2) with the node's listener AE title as Move
  Destination; the peer must know that AE (for Orthanc: a DicomModalities entry) and its
  sub-operations arrive at the listener like any C-STORE.
- ``orthanc-rest``: ``POST /tools/find`` by SeriesInstanceUID, then each instance file.

What is fetched is an ordinary series: it becomes stable and the router queues the job. A series
that arrives by itself ends the request as ``received``. When nothing brought the series within
``retrieve.wait`` seconds of the request, the request fails with a reason naming the series and
what every source answered.
"""

from __future__ import annotations

import io
import logging
import time

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import build_role, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from node.config import NodeConfig, RetrieveSource
from node.index import Index, RetrievalRow
from node.ingest import OUT_OF_RESOURCES, SUCCESS, Ingest
from node.logs import fields
from node.orthanc import OrthancClient, OrthancError
from node.receiver import STORAGE_CLASSES, TRANSFER_SYNTAXES
from node.store_scu import AssociationRefused, associate

log = logging.getLogger(__name__)

class RetrieveError(ConnectionError):
    """A source answered, but could not give the series (a failure status, a refused store)."""


def _query(study_uid: str, series_uid: str) -> Dataset:
    """The C-GET/C-MOVE identifier for one series: the unique keys down to SERIES level."""
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = series_uid
    return query


def _final(responses: object, peer: RetrieveSource, what: str) -> Dataset:
    """The last response of a C-GET/C-MOVE exchange; RetrieveError when it is not a success or
    warning (0xB000: some sub-operations failed)."""
    last: Dataset | None = None
    for status, _identifier in responses:  # type: ignore[attr-defined]
        last = status
    code = getattr(last, "Status", None)
    if code is None:
        raise RetrieveError(f"{what} at {peer.describe()}: no response")
    if code not in (0x0000, 0xB000):
        raise RetrieveError(f"{what} at {peer.describe()}: status 0x{code:04X}")
    return last  # type: ignore[return-value]


class Retriever:
    """Fetches the series of waiting retrieval requests from the configured sources."""

    def __init__(self, config: NodeConfig, index: Index):
        self._config = config
        self._index = index
        self._ingest = Ingest(config, index)

    def tick(self) -> None:
        for row in self._index.due_retrievals():
            self._attempt(row)

    def _attempt(self, row: RetrievalRow) -> None:
        settings = self._config.retrieve
        if self._index.series(row.series_uid) is not None:
            self._index.finish_retrieval(row.series_uid, "received")
            log.info("source series arrived by itself", extra=fields(series_uid=row.series_uid))
            return
        answers = []
        for source in settings.sources:
            try:
                count = self.fetch(source, row.study_uid, row.series_uid)
            except (AssociationRefused, OrthancError, RetrieveError) as exc:
                answers.append(f"{source.name}: {exc}")
                continue
            if count:
                self._index.finish_retrieval(row.series_uid, "fetched")
                log.info("source series fetched", extra=fields(
                    series_uid=row.series_uid, seg_sop_uid=row.seg_sop_uid, source=source.name,
                    method=source.method if source.kind == "dicom" else source.kind,
                    instances=count))
                return
            answers.append(f"{source.name}: has no such series")
        why = "; ".join(answers) or "no source configured (retrieve.sources)"
        if time.time() >= row.requested_at + settings.wait:
            names = ", ".join(s.name for s in settings.sources) or "any source"
            reason = (f"source series {row.series_uid} not received within {settings.wait:g} s "
                      f"and not retrievable from {names} ({why})")
            self._index.finish_retrieval(row.series_uid, "failed", reason)
            log.error("segmentation without its source series", extra=fields(
                seg_sop_uid=row.seg_sop_uid, series_uid=row.series_uid, reason=reason))
            return
        self._index.retrieval_tried(row.series_uid, why, time.time() + settings.retry_interval)
        log.warning("source series not fetched yet", extra=fields(
            series_uid=row.series_uid, attempt=row.attempts + 1, answers=why))

    def fetch(self, source: RetrieveSource, study_uid: str, series_uid: str) -> int:
        """Fetch one series from ``source`` into the node; returns how many instances it stored
        (C-MOVE: completed sub-operations, which the listener stored)."""
        if source.kind == "orthanc-rest":
            return self._fetch_rest(source, series_uid)
        if source.method == "c-move":
            return self._move(source, study_uid, series_uid)
        return self._get(source, study_uid, series_uid)

    def _accepted(self, data: bytes, source: str, expected_class: str | None = None,
                  expected_instance: str | None = None) -> int:
        """Hand one instance to Ingest; the outcome's status (0x0000 when stored)."""
        outcome = self._ingest.accept(data, lambda: pydicom.dcmread(io.BytesIO(data)), source,
                                      expected_class, expected_instance)
        return outcome.status

    def _fetch_rest(self, source: RetrieveSource, series_uid: str) -> int:
        stored = 0
        with OrthancClient(str(source.url), source.username, source.password,
                           self._config.retrieve.timeout) as client:
            for series_id in client.find_series(series_uid):
                for instance in client.series_instances(series_id):
                    uid = instance.get("MainDicomTags", {}).get("SOPInstanceUID")
                    if uid and self._index.has_instance(uid):
                        continue
                    status = self._accepted(client.instance_file(instance["ID"]),
                                            f"orthanc:{source.name}")
                    if status == OUT_OF_RESOURCES:
                        raise RetrieveError("the node's spool refused the instance (disk)")
                    stored += status == SUCCESS
        return stored

    def _get(self, source: RetrieveSource, study_uid: str, series_uid: str) -> int:
        stored = 0

        def on_store(event: Event) -> Dataset | int:
            nonlocal stored
            status = self._accepted(event.encoded_dataset(), f"c-get:{source.name}",
                                    event.request.AffectedSOPClassUID,
                                    event.request.AffectedSOPInstanceUID)
            stored += status == SUCCESS
            if status == SUCCESS:
                return SUCCESS
            failure = Dataset()
            failure.Status = status
            return failure

        roles = [build_role(uid, scp_role=True) for uid in STORAGE_CLASSES]
        assoc = associate(self._config.listener.ae_title, source,
                          [StudyRootQueryRetrieveInformationModelGet, *STORAGE_CLASSES],
                          self._config.retrieve.timeout, TRANSFER_SYNTAXES, tls=self._config.tls,
                          ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        try:
            _final(assoc.send_c_get(_query(study_uid, series_uid),
                                    StudyRootQueryRetrieveInformationModelGet), source, "C-GET")
        finally:
            assoc.release()
        return stored

    def _move(self, source: RetrieveSource, study_uid: str, series_uid: str) -> int:
        listener = self._config.listener.ae_title
        assoc = associate(listener, source, [StudyRootQueryRetrieveInformationModelMove],
                          self._config.retrieve.timeout, tls=self._config.tls)
        try:
            final = _final(assoc.send_c_move(_query(study_uid, series_uid), listener,
                                             StudyRootQueryRetrieveInformationModelMove),
                           source, "C-MOVE")
        finally:
            assoc.release()
        return int(final.get("NumberOfCompletedSuboperations", 0) or 0)
