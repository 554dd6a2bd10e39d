"""The storage SCP: C-ECHO and C-STORE of CT, MR, their enhanced forms, SEG, RTSTRUCT and SR.

The fast path keeps the bytes as the sender encoded them (``event.encoded_dataset()``) and hands
them to ``node.ingest``, which writes them durably to the spool and indexes the instance before
the handler answers success (PS3.4 B.2.3 status 0x0000).
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE, evt, sop_class
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from node.config import NodeConfig
from node.index import Index
from node.ingest import SUCCESS, Ingest
from node.logs import fields
from node.peers import PeerPolicy
from node.tls import server_context
from node.validation import STORAGE_CLASSES, TRANSFER_SYNTAXES

log = logging.getLogger(__name__)


class Receiver:
    """Stores what peers send; one instance serves all associations of the listener."""

    def __init__(self, config: NodeConfig, index: Index):
        self._config = config
        self._ingest = Ingest(config, index)
        self._policy = PeerPolicy(config, STORAGE_CLASSES)
        self._server: ThreadedAssociationServer | None = None

    def handle_echo(self, event: Event) -> int:
        """C-ECHO (PS3.7 9.1.5): the node is alive."""
        return SUCCESS

    def handle_store(self, event: Event) -> Dataset | int:
        """C-STORE (PS3.4 B.2): durable spool file, index row, then success."""
        outcome = self._ingest.accept(
            event.encoded_dataset(), lambda: event.dataset, event.assoc.requestor.ae_title,
            event.request.AffectedSOPClassUID, event.request.AffectedSOPInstanceUID,
            host=event.assoc.requestor.address)
        return outcome.as_dataset() if outcome.status else SUCCESS

    def start(self) -> tuple[str, int]:
        """Listen in background threads; returns the bound (host, port).

        Only known peers are admitted (``node.peers``); ``limits`` sets the association limits
        and timeouts; with ``tls.listener`` the port speaks DICOM TLS only (``node.tls``).
        """
        listener, limits = self._config.listener, self._config.limits
        ae = AE(ae_title=listener.ae_title)
        ae.maximum_pdu_size = listener.max_pdu
        ae.maximum_associations = limits.max_associations
        ae.acse_timeout = limits.acse_timeout
        ae.dimse_timeout = limits.dimse_timeout
        ae.network_timeout = limits.network_timeout
        ae.add_supported_context(sop_class.Verification)
        for uid in STORAGE_CLASSES:
            ae.add_supported_context(uid, list(TRANSFER_SYNTAXES))
        Path(self._config.spool_dir).mkdir(parents=True, exist_ok=True)
        tls = self._config.tls.listener
        self._server = ae.start_server(
            (listener.host, listener.port),
            block=False,
            ssl_context=server_context(self._config.tls) if tls else None,
            evt_handlers=[(evt.EVT_REQUESTED, self._policy.on_requested),
                          (evt.EVT_C_ECHO, self.handle_echo), (evt.EVT_C_STORE, self.handle_store)],
        )
        host, port = self._server.server_address[:2]
        log.info("listening", extra=fields(ae_title=listener.ae_title, host=host, port=port,
                                           tls=tls, peers=len(self._config.peers)))
        return host, port

    @property
    def listening(self) -> bool:
        """True while the listener's socket is open (for ``/healthz``)."""
        return self._server is not None and self._server.socket.fileno() >= 0

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
