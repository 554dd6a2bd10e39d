"""The outbox: durable deliveries of result objects to each destination, by C-STORE (PS3.4 B.2),
Orthanc's REST ``POST /instances`` or STOW-RS (PS3.18 10.5), each confirmed at the destination
before it counts; to a FHIR destination, the job's results bundle
(``pipelines.outputs.fhir_report``) by a transaction POST, once every DICOM delivery of its job is
delivered, confirmed by a DiagnosticReport search on its identifier.

Per destination and tick: the due deliveries, in outbox order (a destination never receives a
later result before an earlier one that is still pending), are first looked up at the destination
when they may have been sent before (an object already there, e.g. sent just before the node was
killed, is not sent twice): those queued before this outbox started, and those it tried already;
one queued since and never tried cannot be there yet, and goes without the look-up. They are then
sent (when the destination answered with a success status is kept: ``sent_at``), then looked up
again (``node.dicom.verify``). A delivery is marked delivered only once found there, or on a success
status alone for a destination with ``verify: false``. A failed or unverified attempt is retried
with back-off doubling from ``backoff_initial`` to ``backoff_max``; after ``max_attempts`` it is
dead-lettered, and ``radiomics-node outbox retry`` sends it again.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from node.config import Destination, NodeConfig
from node.dicom.dicomweb import DicomWebError, DicomWebPeer
from node.dicom.orthanc import OrthancClient, OrthancError
from node.dicom.store_scu import AssociationRefused, c_store
from node.dicom.verify import ObjectRef, VerificationError, method_of, present
from node.flow.fhir import FhirClient, FhirError
from node.logs import fields
from node.state import Index
from node.state.outbox import DeliveryRow

log = logging.getLogger(__name__)

STORED_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})
"""C-STORE statuses meaning the peer stored the object: success and the warnings of PS3.4 B.2.3
(coercion of data elements, elements discarded, data set does not match SOP class)."""

UNREACHABLE = (AssociationRefused, OrthancError, DicomWebError, VerificationError)


def next_attempt_delay(attempts_so_far: int, initial: float, maximum: float) -> float:
    """Seconds to wait after the ``attempts_so_far``-th failure: initial, 2x, 4x, ... capped."""
    return min(maximum, initial * 2 ** max(0, attempts_so_far - 1))


HEADER_TAGS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
"""What the outbox reads of a result file before it sends the file itself: the look-ups'
unique keys (``node.dicom.verify``)."""


@dataclass(frozen=True)
class Item:
    """A due delivery with the unique keys read from its file's header."""

    delivery: DeliveryRow
    header: Dataset

    @property
    def path(self) -> Path:
        return Path(self.delivery.path)

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef(str(self.header.StudyInstanceUID), str(self.header.SeriesInstanceUID),
                         self.delivery.sop_instance_uid)


class Outbox:
    """Sends due deliveries: per destination, one association (or HTTP client) per tick."""

    def __init__(self, config: NodeConfig, index: Index):
        self._config = config
        self._index = index
        self._destinations = {d.name: d for d in config.destinations}
        self._new_after = index.outbox.last_id()  # later ones were queued while this ran
        self._tried: set[int] = set()

    def _may_be_there(self, delivery: DeliveryRow) -> bool:
        """Whether an earlier attempt may have sent it: queued before this outbox started (by
        a node that may have been killed as it sent), or tried by this one."""
        return delivery.id <= self._new_after or delivery.id in self._tried \
            or delivery.attempts > 0

    def tick(self) -> None:
        due = self._index.outbox.due_in_order()
        for name, group in groupby(due, key=lambda d: d.destination):
            batch = list(group)
            destination = self._destinations.get(name)
            if destination is None:
                for delivery in batch:
                    self._failed(delivery, f"destination {name!r} is no longer configured")
                continue
            if destination.kind == "fhir":
                self._deliver_bundles(destination, batch)
            else:
                self._deliver(destination, batch)

    def _failed(self, delivery: DeliveryRow, error: str) -> None:
        settings = self._config.outbox
        attempts = delivery.attempts + 1
        if attempts >= settings.max_attempts:
            self._index.outbox.mark_attempt_failed(delivery.id, error, retry_at=None)
            log.error("delivery dead-lettered", extra=fields(
                delivery_id=delivery.id, destination=delivery.destination,
                sop_instance_uid=delivery.sop_instance_uid, attempts=attempts, error=error))
            return
        delay = next_attempt_delay(attempts, settings.backoff_initial, settings.backoff_max)
        self._index.outbox.mark_attempt_failed(delivery.id, error,
                                              retry_at=self._index.clock.time() + delay)
        log.warning("delivery failed, will retry", extra=fields(
            delivery_id=delivery.id, destination=delivery.destination,
            sop_instance_uid=delivery.sop_instance_uid, attempts=attempts, retry_in_s=delay,
            error=error))

    def _delivered(self, delivery: DeliveryRow, method: str, note: str = "delivered") -> None:
        self._index.outbox.mark_verified(delivery.id, method)
        self._tried.discard(delivery.id)  # never due again: the set stays small
        log.info(note, extra=fields(
            delivery_id=delivery.id, destination=delivery.destination,
            sop_instance_uid=delivery.sop_instance_uid, verified_by=method))

    def _deliver_bundles(self, destination: Destination, batch: list[DeliveryRow]) -> None:
        """FHIR results bundles in order, each keyed by its feature report's SOP Instance UID
        (``pipelines.outputs.fhir_report.report_identifier``). One whose job still has a DICOM
        delivery not delivered waits, uncounted, and ends the batch: the RIS/EHR hears of results
        only once the PACS holds them. Looked up first where an earlier attempt may have posted it
        (its entries are conditional creates, so a second POST would create nothing either),
        posted, then looked up again; the first failure ends the batch."""
        from pipelines.outputs.fhir_report import report_identifier

        method = method_of(destination)
        with FhirClient(str(destination.url), destination.username, destination.password,
                        destination.token, self._config.outbox.timeout) as client:
            for delivery in batch:
                if self._index.outbox.undelivered_elsewhere(delivery.job_id, delivery.destination):
                    break
                try:
                    bundle = json.loads(Path(delivery.path).read_text(encoding="utf-8"))
                except (OSError, ValueError) as exc:
                    self._failed(delivery, f"cannot read {delivery.path}: {exc}")
                    break
                identifier = report_identifier(delivery.sop_instance_uid)
                try:
                    if destination.verify and self._may_be_there(delivery) and \
                            client.has_report(identifier):
                        self._delivered(delivery, method, "already at destination, not sent "
                                                          "again")
                        continue
                    self._tried.add(delivery.id)
                    client.post_bundle(bundle)
                    self._index.outbox.mark_sent([delivery.id])
                    if not destination.verify:
                        self._delivered(delivery, "status only")
                    elif client.has_report(identifier):
                        self._delivered(delivery, method)
                    else:
                        self._failed(delivery, f"sent, but no DiagnosticReport {identifier} at "
                                               f"{destination.describe()}")
                        break
                except FhirError as exc:
                    self._failed(delivery, str(exc))
                    break

    def _read(self, batch: list[DeliveryRow]) -> list[Item]:
        """The deliveries' files' headers (``HEADER_TAGS``: the file is sent as it is on disk,
        not decoded, ``node.dicom.store_scu.c_store``); one that cannot be read is a failed attempt,
        except a file missing because its job is running again (a rerun empties the job's
        folder and writes the same objects anew): the batch ends before it, and it is due
        again at the next tick, so no later delivery overtakes it."""
        items = []
        for delivery in batch:
            try:
                header = pydicom.dcmread(delivery.path, stop_before_pixels=True,
                                         specific_tags=list(HEADER_TAGS))
                missing = [keyword for keyword in HEADER_TAGS if keyword not in header]
                if missing:
                    raise pydicom.errors.InvalidDicomError(f"no {', '.join(missing)}")
                items.append(Item(delivery, header))
            except FileNotFoundError as exc:
                if self._index.jobs.get(delivery.job_id).state in ("queued", "running"):
                    log.debug("result not written yet: its job runs again", extra=fields(
                        delivery_id=delivery.id, job_id=delivery.job_id))
                    break
                self._failed(delivery, f"cannot read {delivery.path}: {exc}")
            except (OSError, pydicom.errors.InvalidDicomError) as exc:
                self._failed(delivery, f"cannot read {delivery.path}: {exc}")
        return items

    def _present(self, destination: Destination, items: list[Item]) -> set[str]:
        return present(self._config.listener.ae_title, destination, [i.ref for i in items],
                       self._config.outbox.timeout, self._config.tls)

    def _deliver(self, destination: Destination, batch: list[DeliveryRow]) -> None:
        items = self._read(batch)
        if not items:
            return
        method = method_of(destination)
        if destination.verify:
            try:
                there = self._present(destination,
                                      [i for i in items if self._may_be_there(i.delivery)])
            except UNREACHABLE as exc:
                for item in items:
                    self._failed(item.delivery, f"cannot look up at destination: {exc}")
                return
            for item in items:
                if item.delivery.sop_instance_uid in there:
                    self._delivered(item.delivery, method, "already at destination, not sent again")
            items = [i for i in items if i.delivery.sop_instance_uid not in there]
        self._tried.update(item.delivery.id for item in items)
        sent = self._send(destination, items)
        self._index.outbox.mark_sent([item.delivery.id for item in sent])
        if not destination.verify:
            for item in sent:
                self._delivered(item.delivery, "status only")
            return
        try:
            there = self._present(destination, sent)
        except UNREACHABLE as exc:
            for item in sent:
                self._failed(item.delivery, f"sent, but cannot verify: {exc}")
            return
        for item in sent:
            if item.delivery.sop_instance_uid in there:
                self._delivered(item.delivery, method)
            else:
                self._failed(item.delivery, f"sent, but not found at {destination.describe()} "
                                            f"by {method}")

    def _send(self, destination: Destination, items: list[Item]) -> list[Item]:
        """Send ``items`` in order; record failed attempts; return those the peer took."""
        if not items:
            return []
        if destination.kind in ("orthanc-rest", "dicomweb"):
            return self._upload(destination, items)
        try:
            statuses = c_store(self._config.listener.ae_title, destination,
                               [i.path for i in items], self._config.outbox.timeout,
                               self._config.tls)
        except AssociationRefused as exc:
            for item in items:
                self._failed(item.delivery, str(exc))
            return []
        except (OSError, pydicom.errors.InvalidDicomError) as exc:  # changed since it was read
            for item in items:
                self._failed(item.delivery, f"cannot send from the result file: {exc}")
            return []
        sent = []
        for item, code in zip(items, statuses, strict=True):
            if code in STORED_STATUSES:
                sent.append(item)
            else:
                shown = "no response" if code is None else f"status 0x{code:04X}"
                self._failed(item.delivery, f"C-STORE {shown}")
        return sent

    def _upload(self, destination: Destination, items: list[Item]) -> list[Item]:
        """Over HTTP one by one: REST ``POST /instances`` (orthanc-rest) or STOW-RS (dicomweb);
        the first failure ends the batch so that later results never overtake it (those not
        tried are due again at the next tick)."""
        args = (str(destination.url), destination.username, destination.password,
                self._config.outbox.timeout)
        client = OrthancClient(*args) if destination.kind == "orthanc-rest" \
            else DicomWebPeer(*args)
        upload = client.upload if isinstance(client, OrthancClient) else client.store
        sent = []
        with client:
            for item in items:
                try:
                    data = item.path.read_bytes()
                except OSError as exc:
                    self._failed(item.delivery, f"cannot read {item.path}: {exc}")
                    break
                try:
                    upload(data)
                except (OrthancError, DicomWebError, pydicom.errors.InvalidDicomError) as exc:
                    self._failed(item.delivery, str(exc))
                    break
                sent.append(item)
        return sent
