"""DICOM client side: associations with a configured peer and C-STORE as SCU (PS3.4 B.2).

The outbox (results), delivery verification (C-FIND) and retrieval (C-GET, C-MOVE) all open their
associations through ``associate`` so timeouts and failures read the same everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association

from node.config import RemotePeer, TLSConfig
from node.tls import client_context


class AssociationRefused(ConnectionError):
    """No association could be established with a peer."""


def associate(calling_ae: str, peer: RemotePeer, contexts: Iterable[str], timeout: float,
              transfer_syntaxes: Sequence[str] | None = None, tls: TLSConfig | None = None,
              **kwargs: Any) -> Association:
    """An established association with ``peer`` proposing one presentation context per
    abstract syntax in ``contexts``; ``kwargs`` go to ``AE.associate`` (ext_neg, evt_handlers).
    A peer with ``tls: true`` is reached over DICOM TLS (``node.tls.client_context``) with the
    node's ``tls`` settings (the system's CAs and no client certificate when None).

    Raises AssociationRefused when the peer cannot be reached, rejects or aborts.
    """
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for uid in contexts:
        if transfer_syntaxes is None:
            ae.add_requested_context(uid)
        else:
            ae.add_requested_context(uid, list(transfer_syntaxes))
    tls_args = (client_context(tls or TLSConfig()), str(peer.host)) if peer.tls else None
    assoc = ae.associate(str(peer.host), int(peer.port or 0), ae_title=str(peer.ae_title),
                         tls_args=tls_args, **kwargs)
    if not assoc.is_established:
        raise AssociationRefused(f"no association with {peer.describe()}")
    return assoc


def c_store(calling_ae: str, destination: RemotePeer, datasets: Sequence[Dataset],
            timeout: float = 30.0, tls: TLSConfig | None = None) -> list[int | None]:
    """Send ``datasets`` to ``destination`` over one association, in the order given.

    Returns the Status (0000,0900) of each C-STORE response, None where no response came.
    Raises AssociationRefused when the peer cannot be reached or rejects the association.
    """
    contexts = sorted({str(ds.SOPClassUID) for ds in datasets})
    assoc = associate(calling_ae, destination, contexts, timeout, tls=tls)
    try:
        return [getattr(assoc.send_c_store(ds), "Status", None) for ds in datasets]
    finally:
        assoc.release()
