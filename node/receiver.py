"""The storage SCP: C-ECHO and C-STORE of CT, MR, their enhanced forms, SEG, RTSTRUCT and SR.

The fast path keeps the bytes as the sender encoded them (``event.encoded_dataset()``) and hands
them to ``node.ingest``, which writes them durably to the spool and indexes the instance before
the handler answers success (PS3.4 B.2.3 status 0x0000).
"""

from __future__ import annotations

import logging
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
from node.index import Index
from node.ingest import SUCCESS, Ingest
from node.logs import fields

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

class Receiver:
    """Stores what peers send; one instance serves all associations of the listener."""

    def __init__(self, config: NodeConfig, index: Index):
        self._config = config
        self._ingest = Ingest(config, index)
        self._server: ThreadedAssociationServer | None = None

    def handle_echo(self, event: Event) -> int:
        """C-ECHO (PS3.7 9.1.5): the node is alive."""
        return SUCCESS

    def handle_store(self, event: Event) -> Dataset | int:
        """C-STORE (PS3.4 B.2): durable spool file, index row, then success."""
        outcome = self._ingest.accept(
            event.encoded_dataset(), lambda: event.dataset, event.assoc.requestor.ae_title,
            event.request.AffectedSOPClassUID, event.request.AffectedSOPInstanceUID)
        return outcome.as_dataset() if outcome.status else SUCCESS

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
