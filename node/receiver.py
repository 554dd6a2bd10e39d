"""The storage SCP: C-ECHO and C-STORE of CT, MR, their enhanced forms, SEG, RTSTRUCT and SR.

The fast path keeps the bytes as the sender encoded them (``event.encoded_dataset()``), writes
them durably to the spool, records the instance in the index, and only then answers success
(PS3.4 B.2.3 status 0x0000). Whatever the node acknowledged, it has on disk and indexed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)
from pynetdicom import AE, evt, sop_class
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from node.config import NodeConfig
from node.index import Index, InstanceRow
from node.logs import fields
from node.quarantine import quarantine
from node.spool import is_uid, spool_path, write_durably

log = logging.getLogger(__name__)

STORAGE_CLASSES: tuple[str, ...] = (
    sop_class.CTImageStorage,
    sop_class.EnhancedCTImageStorage,
    sop_class.LegacyConvertedEnhancedCTImageStorage,
    sop_class.MRImageStorage,
    sop_class.EnhancedMRImageStorage,
    sop_class.LegacyConvertedEnhancedMRImageStorage,
    sop_class.SegmentationStorage,
    sop_class.RTStructureSetStorage,
    sop_class.Comprehensive3DSRStorage,
)
"""SOP classes accepted as SCP (the node's DICOM Conformance Statement lists the same)."""

TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    RLELossless,
)
"""Transfer syntaxes accepted: those the pipelines decode without extra codecs."""

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000


@dataclass
class Refusal(Exception):
    """Why an instance was not accepted: the status to answer, the tag at fault, the reason."""

    status: int
    tag: str
    reason: str


def _status(code: int, comment: str = "") -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = comment[:64]  # LO, 64 characters at most (PS3.5 Table 6.2-1)
    return status


def _identify(dataset: Dataset, affected_sop_class: str, affected_sop_instance: str) -> InstanceRow:
    """Check the identity attributes of a received dataset; raise Refusal naming the bad tag."""
    required = (
        ("(0008,0016) SOPClassUID", "SOPClassUID"),
        ("(0008,0018) SOPInstanceUID", "SOPInstanceUID"),
        ("(0020,000D) StudyInstanceUID", "StudyInstanceUID"),
        ("(0020,000E) SeriesInstanceUID", "SeriesInstanceUID"),
    )
    values: dict[str, str] = {}
    for tag, keyword in required:
        value = str(dataset.get(keyword, "") or "")
        if not is_uid(value):
            reason = "missing" if not value else f"not a valid UID: {value[:40]!r}"
            raise Refusal(CANNOT_UNDERSTAND, tag, reason)
        values[keyword] = value
    if values["SOPClassUID"] != affected_sop_class:
        raise Refusal(DOES_NOT_MATCH_SOP_CLASS, "(0008,0016) SOPClassUID",
                      f"dataset says {values['SOPClassUID']}, command says {affected_sop_class}")
    if values["SOPInstanceUID"] != affected_sop_instance:
        raise Refusal(DOES_NOT_MATCH_SOP_CLASS, "(0008,0018) SOPInstanceUID",
                      "differs from the command's Affected SOP Instance UID")
    return InstanceRow(values["SOPInstanceUID"], values["SOPClassUID"], values["StudyInstanceUID"],
                       values["SeriesInstanceUID"], path="", size=0, calling_ae="")


class Receiver:
    """Stores what peers send; one instance serves all associations of the listener."""

    def __init__(self, config: NodeConfig, index: Index):
        self._config = config
        self._index = index
        self._server: ThreadedAssociationServer | None = None

    def handle_echo(self, event: Event) -> int:
        """C-ECHO (PS3.7 9.1.5): the node is alive."""
        return SUCCESS

    def handle_store(self, event: Event) -> Dataset | int:
        """C-STORE (PS3.4 B.2): durable spool file, index row, then success."""
        calling_ae = event.assoc.requestor.ae_title
        data = event.encoded_dataset()
        try:
            try:
                dataset = event.dataset
                identity = _identify(dataset, event.request.AffectedSOPClassUID,
                                     event.request.AffectedSOPInstanceUID)
            except Refusal:
                raise
            except Exception as exc:  # pydicom raises many types on malformed input
                raise Refusal(CANNOT_UNDERSTAND, "(dataset)", f"cannot decode: {exc}") from exc
        except Refusal as refusal:
            kept = quarantine(self._config.quarantine_dir, data, source=f"AE {calling_ae}",
                              tag=refusal.tag, reason=refusal.reason)
            log.warning("instance refused", extra=fields(
                calling_ae=calling_ae, status=f"0x{refusal.status:04X}", tag=refusal.tag,
                reason=refusal.reason, quarantined=kept.name))
            return _status(refusal.status, f"{refusal.tag}: {refusal.reason}")
        return self._store(identity, dataset, data, calling_ae)

    def _store(self, identity: InstanceRow, dataset: Dataset, data: bytes,
               calling_ae: str) -> Dataset | int:
        if self._index.has_instance(identity.sop_instance_uid):
            log.info("duplicate instance ignored", extra=fields(
                sop_instance_uid=identity.sop_instance_uid, calling_ae=calling_ae))
            return SUCCESS
        target = spool_path(self._config.spool_dir, identity.study_uid, identity.series_uid,
                            identity.sop_instance_uid)
        try:
            write_durably(target, data)
        except OSError as exc:
            log.error("spool write failed", extra=fields(
                sop_instance_uid=identity.sop_instance_uid, error=exc.strerror))
            return _status(OUT_OF_RESOURCES, f"spool write failed: {exc.strerror}")
        row = InstanceRow(identity.sop_instance_uid, identity.sop_class_uid, identity.study_uid,
                          identity.series_uid, str(target), len(data), calling_ae)
        modality = str(dataset.get("Modality", "") or "")
        self._index.add_instance(row, modality)
        log.info("instance stored", extra=fields(
            sop_instance_uid=row.sop_instance_uid, series_uid=row.series_uid,
            modality=modality, calling_ae=calling_ae, bytes=row.size))
        return SUCCESS

    def start(self) -> tuple[str, int]:
        """Listen in background threads; returns the bound (host, port)."""
        listener = self._config.listener
        ae = AE(ae_title=listener.ae_title)
        ae.maximum_pdu_size = listener.max_pdu
        ae.add_supported_context(sop_class.Verification)
        for uid in STORAGE_CLASSES:
            ae.add_supported_context(uid, list(TRANSFER_SYNTAXES))
        Path(self._config.spool_dir).mkdir(parents=True, exist_ok=True)
        self._server = ae.start_server(
            (listener.host, listener.port),
            block=False,
            evt_handlers=[(evt.EVT_C_ECHO, self.handle_echo), (evt.EVT_C_STORE, self.handle_store)],
        )
        host, port = self._server.server_address[:2]
        log.info("listening", extra=fields(ae_title=listener.ae_title, host=host, port=port))
        return host, port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
