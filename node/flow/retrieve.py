"""Retrieval of a source series a segmentation references when the node does not have it.

The router records the request (``Index.retrievals.request``) with the exact Study and Series
Instance UIDs, each a valid UID (``node.flow.router.invalid_reference``: an empty or wildcard value
would match every series of the PACS, PS3.4 C.2.2.2); every tick the retriever tries the
configured ``retrieve.sources`` in order, each in its own way:

- ``dicom`` + ``c-get``: C-GET at SERIES level in the Study Root model (PS3.4 C.4.3) on one
  association that also offers the storage SOP classes with SCP role selection (PS3.7 D.3.3.4),
  so the peer's C-STORE sub-operations come back on it; each instance goes through
  ``Ingest.accept`` with what it must hold (``expected``: the request's study and series and the
  segmentation's Patient ID), so an instance of another study, series or patient is refused
  (0xC000) and quarantined, never indexed; stores past ``retrieve.max_instances`` are refused
  with 0xA700.
- ``dicom`` + ``c-move``: C-MOVE (PS3.4 C.4.2) with the node's listener AE title as Move
  Destination; the peer must know that AE (for Orthanc: a DicomModalities entry) and its
  sub-operations arrive at the listener as ordinary C-STOREs on another association, which
  cannot be told from any other store: they are neither checked nor counted per request. The
  identifier holds the exact UIDs; what arrived is checked afterwards, and a series of another
  study or patient fails the request (the router never pairs it:
  ``node.flow.router.foreign_source``).
- ``orthanc-rest``: ``POST /tools/find`` by StudyInstanceUID and SeriesInstanceUID; nothing is
  downloaded when the series lists more than ``retrieve.max_instances`` instances; each instance
  file goes through ``Ingest.accept`` with ``expected`` as for C-GET.
- ``dicomweb``: QIDO-RS lists the series' instances (PS3.18 10.6), capped as for Orthanc, and
  WADO-RS fetches each one the node does not hold (10.4), through ``Ingest.accept`` the same way.

What is fetched is an ordinary series: it becomes stable and the router queues the job. A series
that arrives by itself ends the request as ``received``. A source that offered only instances
the node refused, or more than the cap, fails the request at once with a reason saying so
(asking again would bring the same). When nothing brought the series within ``retrieve.wait``
seconds of the request, the request fails with a reason naming the series and what every source
answered.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pynetdicom import build_role, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from node.config import NodeConfig, RetrieveSource
from node.dicom.dicomweb import DicomWebError, DicomWebPeer
from node.dicom.ingest import OUT_OF_RESOURCES, SUCCESS, Ingest, Outcome, check_expected
from node.dicom.orthanc import OrthancClient, OrthancError
from node.dicom.receiver import STORAGE_CLASSES, TRANSFER_SYNTAXES
from node.dicom.store_scu import AssociationRefused, associate
from node.dicom.validation import Refusal
from node.flow.router import patient_id
from node.logs import fields
from node.state import Index
from node.state.retrievals import RetrievalRow
from node.state.spool import is_uid

log = logging.getLogger(__name__)


class RetrieveError(ConnectionError):
    """A source answered, but could not give the series (a failure status, a refused store)."""


class RetrieveRefused(RetrieveError):
    """A source offered what the node does not take as the series asked for: only instances it
    refused (another study, series or patient, or malformed), more instances than
    ``retrieve.max_instances``, or (C-MOVE) a series of another study or patient. Asking again
    would bring the same, so the request fails at once."""


def _query(study_uid: str, series_uid: str) -> Dataset:
    """The C-GET/C-MOVE identifier for one series: the unique keys down to SERIES level, each a
    single UID (PS3.4 C.4.2.1.4, C.4.3.1.3.1); ValueError for any other value, which a peer
    may take as a wildcard (PS3.4 C.2.2.2.4)."""
    for uid in (study_uid, series_uid):
        if not is_uid(uid):
            raise ValueError(f"not a UID: {uid[:64]!r}")
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = series_uid
    return query


def _last(responses: Iterable[tuple[Dataset, Dataset | None]]) -> Dataset | None:
    """The last status of a C-GET/C-MOVE exchange (consuming it runs the sub-operations)."""
    last: Dataset | None = None
    for status, _identifier in responses:
        last = status
    return last


def _final(last: Dataset | None, peer: RetrieveSource, what: str) -> Dataset:
    """``last``, the final response of a C-GET/C-MOVE; RetrieveError when it is not a success or
    warning (0xB000: some sub-operations failed)."""
    code = getattr(last, "Status", None)
    if code is None:
        raise RetrieveError(f"{what} at {peer.describe()}: no response")
    if code not in (0x0000, 0xB000):
        raise RetrieveError(f"{what} at {peer.describe()}: status 0x{code:04X}")
    return last  # type: ignore[return-value]


@dataclass
class _Tally:
    """What one retrieval did with the instances a source offered: stored (or had already),
    not stored for want of disk, refused by Ingest (counted by the tag at fault), refused past
    the cap."""

    cap: int
    stored: int = 0
    no_room: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    over_cap: int = 0

    @property
    def offered(self) -> int:
        return self.stored + self.no_room + sum(self.refused.values()) + self.over_cap

    def add(self, outcome: Outcome) -> None:
        if outcome.status == SUCCESS:
            self.stored += 1
        elif outcome.no_room:
            self.no_room += 1
        else:
            self.refused[outcome.tag] += 1

    def result(self) -> int:
        """How many instances were stored; RetrieveRefused when the source offered more than
        the cap, or offered instances and the node refused every one; RetrieveError (tried
        again) when the node's disk refused some. The reason names the tags (never the values:
        a Patient ID is patient identity)."""
        refused = sum(self.refused.values())
        tags = ", ".join(f"{tag}: {count}" for tag, count in sorted(self.refused.items()))
        if self.over_cap:
            raise RetrieveRefused(
                f"offered more than retrieve.max_instances ({self.cap}) instances: "
                f"{self.over_cap} refused (0xA700), {self.stored} stored"
                + (f", {refused} refused ({tags})" if refused else ""))
        if self.no_room:
            raise RetrieveError(f"the node's spool refused {self.no_room} instances (disk)")
        if refused and not self.stored:
            raise RetrieveRefused(f"refused all {refused} instances offered, none stored "
                                  f"(quarantined; {tags})")
        if refused:
            log.warning("retrieval: some instances refused", extra=fields(
                stored=self.stored, refused=dict(self.refused)))
        return self.stored


Accept = Callable[[bytes, str, Mapping[str, str], str | None, str | None], Outcome]
"""Where a fetched instance goes: (its Part 10 bytes, who brought it, what it must hold, the
C-STORE's Affected SOP Class and Instance UIDs or None) -> the outcome (``Ingest.accept`` into
the spool for a retrieval; the prior's own folder for ``node.flow.priors``)."""


class SeriesFetcher:
    """Fetches one series from a retrieve source by C-GET, Orthanc REST or QIDO-RS + WADO-RS
    (the module docstring), handing each instance to ``accept``; an instance ``held`` says the
    node has (by SOP Instance UID) is not downloaded again (REST, WADO-RS). C-MOVE is not here:
    its instances arrive at the listener (``Retriever``)."""

    def __init__(self, config: NodeConfig, accept: Accept,
                 held: Callable[[str], bool] = lambda _uid: False):
        self._config = config
        self._accept = accept
        self._held = held

    def fetch(self, source: RetrieveSource, expected: Mapping[str, str]) -> int:
        """Fetch from ``source`` the series whose StudyInstanceUID and SeriesInstanceUID
        ``expected`` gives, each instance checked against every value of ``expected``; returns
        how many instances were stored. Raises RetrieveRefused, RetrieveError, OrthancError,
        DicomWebError or AssociationRefused as ``Retriever.fetch``; ValueError for a source of
        method c-move."""
        if source.kind == "orthanc-rest":
            return self._fetch_rest(source, expected)
        if source.kind == "dicomweb":
            return self._fetch_dicomweb(source, expected)
        if source.method == "c-move":
            raise ValueError(f"{source.name}: C-MOVE instances arrive at the listener")
        return self._get(source, expected)

    def _fetch_rest(self, source: RetrieveSource, expected: Mapping[str, str]) -> int:
        tally = _Tally(self._config.retrieve.max_instances)
        with OrthancClient(str(source.url), source.username, source.password,
                           self._config.retrieve.timeout) as client:
            listed = [instance for series_id in client.find_series(
                          expected["StudyInstanceUID"], expected["SeriesInstanceUID"])
                      for instance in client.series_instances(series_id)]
            if len(listed) > tally.cap:
                raise RetrieveRefused(f"the series lists {len(listed)} instances, more than "
                                      f"retrieve.max_instances ({tally.cap}): none fetched")
            for instance in listed:
                uid = instance.get("MainDicomTags", {}).get("SOPInstanceUID")
                if uid and self._held(uid):
                    continue
                outcome = self._accept(client.instance_file(instance["ID"]),
                                        f"orthanc:{source.name}", expected, None, None)
                if outcome.no_room:
                    raise RetrieveError("the node's spool refused the instance (disk)")
                tally.add(outcome)
        return tally.result()

    def _fetch_dicomweb(self, source: RetrieveSource, expected: Mapping[str, str]) -> int:
        tally = _Tally(self._config.retrieve.max_instances)
        study_uid, series_uid = expected["StudyInstanceUID"], expected["SeriesInstanceUID"]
        with DicomWebPeer(str(source.url), source.username, source.password,
                          self._config.retrieve.timeout) as peer:
            listed = peer.series_instances(study_uid, series_uid)
            if len(listed) > tally.cap:
                raise RetrieveRefused(f"the series lists {len(listed)} instances, more than "
                                      f"retrieve.max_instances ({tally.cap}): none fetched")
            for uid in listed:
                if self._held(uid):
                    continue
                outcome = self._accept(peer.instance_file(study_uid, series_uid, uid),
                                        f"dicomweb:{source.name}", expected, None, None)
                if outcome.no_room:
                    raise RetrieveError("the node's spool refused the instance (disk)")
                tally.add(outcome)
        return tally.result()

    def _get(self, source: RetrieveSource, expected: Mapping[str, str]) -> int:
        tally = _Tally(self._config.retrieve.max_instances)

        def on_store(event: Event) -> Dataset | int:
            if tally.offered >= tally.cap:
                tally.over_cap += 1
                return Outcome(OUT_OF_RESOURCES, "retrieve.max_instances reached").as_dataset()
            outcome = self._accept(event.encoded_dataset(), f"c-get:{source.name}", expected,
                                   event.request.AffectedSOPClassUID,
                                   event.request.AffectedSOPInstanceUID)
            tally.add(outcome)
            return SUCCESS if outcome.status == SUCCESS else outcome.as_dataset()

        roles = [build_role(uid, scp_role=True) for uid in STORAGE_CLASSES]
        assoc = associate(self._config.listener.ae_title, source,
                          [StudyRootQueryRetrieveInformationModelGet, *STORAGE_CLASSES],
                          self._config.retrieve.timeout, TRANSFER_SYNTAXES, tls=self._config.tls,
                          ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        try:
            last = _last(assoc.send_c_get(
                _query(expected["StudyInstanceUID"], expected["SeriesInstanceUID"]),
                StudyRootQueryRetrieveInformationModelGet))
        finally:
            assoc.release()
        stored = tally.result()  # what the node refused says more than the final status
        _final(last, source, "C-GET")
        return stored


class Retriever:
    """Fetches the series of waiting retrieval requests from the configured sources."""

    def __init__(self, config: NodeConfig, index: Index):
        self._config = config
        self._index = index
        self._ingest = Ingest(config, index)
        self._fetcher = SeriesFetcher(config, self._accepted, index.instances.has)

    def tick(self) -> None:
        for row in self._index.retrievals.due():
            self._attempt(row)

    def expected(self, row: RetrievalRow) -> dict[str, str] | None:
        """What every instance retrieved for ``row`` must hold (keyword -> value): the request's
        Study and Series Instance UIDs and the Patient ID (0010,0020) of the segmentation that
        asked, read from its file in the index; None when that segmentation is gone or
        unreadable."""
        segmentation = self._index.instances.get(row.seg_sop_uid)
        if segmentation is None:
            return None
        try:
            header = pydicom.dcmread(segmentation.path, stop_before_pixels=True)
        except (OSError, InvalidDicomError):
            return None
        return {"StudyInstanceUID": row.study_uid, "SeriesInstanceUID": row.series_uid,
                "PatientID": patient_id(header)}

    def _fail(self, row: RetrievalRow, reason: str) -> None:
        self._index.retrievals.finish(row.series_uid, "failed", reason)
        log.error("segmentation without its source series", extra=fields(
            seg_sop_uid=row.seg_sop_uid, series_uid=row.series_uid, reason=reason))

    def _attempt(self, row: RetrievalRow) -> None:
        settings = self._config.retrieve
        if self._index.instances.series(row.series_uid) is not None:
            self._index.retrievals.finish(row.series_uid, "received")
            log.info("source series arrived by itself", extra=fields(series_uid=row.series_uid))
            return
        invalid = [f"{name} {uid[:64]!r}" for name, uid in
                   (("StudyInstanceUID", row.study_uid), ("SeriesInstanceUID", row.series_uid))
                   if not is_uid(uid)]
        if invalid:
            self._fail(row, f"not retrieved: {', '.join(invalid)} is not a UID (PS3.5 9.1)")
            return
        expected = self.expected(row)
        if expected is None:
            self._fail(row, f"not retrieved: segmentation {row.seg_sop_uid} is no longer in the "
                            "node (its Patient ID is what the series must carry)")
            return
        answers = []
        refused = False
        for source in settings.sources:
            try:
                count = self.fetch(source, expected)
            except RetrieveRefused as exc:
                answers.append(f"{source.name}: {exc}")
                refused = True
                continue
            except (AssociationRefused, OrthancError, DicomWebError, RetrieveError) as exc:
                answers.append(f"{source.name}: {exc}")
                continue
            if count:
                self._index.retrievals.finish(row.series_uid, "fetched")
                log.info("source series fetched", extra=fields(
                    series_uid=row.series_uid, seg_sop_uid=row.seg_sop_uid, source=source.name,
                    method=source.method if source.kind == "dicom" else source.kind,
                    instances=count))
                return
            answers.append(f"{source.name}: has no such series")
        why = "; ".join(answers) or "no source configured (retrieve.sources)"
        names = ", ".join(s.name for s in settings.sources) or "any source"
        if refused:
            self._fail(row, f"source series {row.series_uid} not retrieved from {names}: what "
                            f"was offered was refused ({why})")
            return
        now = self._index.clock.time()
        if now >= row.requested_at + settings.wait:
            self._fail(row, f"source series {row.series_uid} not received within "
                            f"{settings.wait:g} s and not retrievable from {names} ({why})")
            return
        self._index.retrievals.tried(row.series_uid, why, now + settings.retry_interval)
        log.warning("source series not fetched yet", extra=fields(
            series_uid=row.series_uid, attempt=row.attempts + 1, answers=why))

    def fetch(self, source: RetrieveSource, expected: Mapping[str, str]) -> int:
        """Fetch from ``source`` the series whose StudyInstanceUID and SeriesInstanceUID
        ``expected`` gives, storing only instances that hold every value of ``expected``;
        returns how many instances it stored (C-MOVE: completed sub-operations, which the
        listener stored). Raises RetrieveRefused as the class says, RetrieveError, OrthancError,
        DicomWebError or AssociationRefused when the source could not give it."""
        if source.kind == "dicom" and source.method == "c-move":
            return self._move(source, expected)
        return self._fetcher.fetch(source, expected)

    def _accepted(self, data: bytes, source: str, expected: Mapping[str, str],
                  expected_class: str | None = None,
                  expected_instance: str | None = None) -> Outcome:
        """Hand one instance to Ingest with what it must hold; the outcome."""
        return self._ingest.accept(data, lambda: pydicom.dcmread(io.BytesIO(data)), source,
                                   expected_class, expected_instance, expected=expected)

    def _move(self, source: RetrieveSource, expected: Mapping[str, str]) -> int:
        listener = self._config.listener.ae_title
        series_uid = expected["SeriesInstanceUID"]
        assoc = associate(listener, source, [StudyRootQueryRetrieveInformationModelMove],
                          self._config.retrieve.timeout, tls=self._config.tls)
        try:
            final = _final(_last(assoc.send_c_move(
                _query(expected["StudyInstanceUID"], series_uid), listener,
                StudyRootQueryRetrieveInformationModelMove)), source, "C-MOVE")
        finally:
            assoc.release()
        completed = int(final.get("NumberOfCompletedSuboperations", 0) or 0)
        arrived = self._index.instances.of_series(series_uid)
        if completed and arrived:
            header = pydicom.dcmread(arrived[0].path, stop_before_pixels=True)
            try:
                check_expected(header, expected)
            except Refusal as refusal:
                raise RetrieveRefused(
                    f"C-MOVE brought {completed} instances of series {series_uid} whose "
                    f"{refusal.tag} differs from the request; the listener stored them (C-MOVE "
                    "sub-operations are ordinary C-STOREs), the router does not pair them"
                ) from None
        return completed
