"""DICOM client side: associations with a configured peer and C-STORE as SCU (PS3.4 B.2).

The outbox (results), delivery verification (C-FIND) and retrieval (C-GET, C-MOVE) all open their
associations through ``associate`` so timeouts and failures read the same everywhere.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.events import Event

from node.config import RemotePeer, TLSConfig
from node.dicom.tls import client_context

# pynetdicom sends a dataset given as a file path from the file, in chunks, undecoded; it only
# concerns sends given a path (``c_store``), the node's own, for every thread
_config.STORE_SEND_CHUNKED_DATASET = True


class AssociationRefused(ConnectionError):
    """No association could be established with a peer."""


def set_nodelay(sock: socket.socket) -> None:
    """Turn off Nagle's algorithm (RFC 896) on a TCP socket.

    A DIMSE exchange is small writes answered by the peer: a C-STORE response, or the last
    P-DATA-TF of a request, waits for the peer's delayed ACK (about 40 ms on Linux) when Nagle
    holds it back, which makes a 300-slice series take 17-20 s instead of under 2 s.
    """
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _nodelay_on_open(event: Event) -> None:
    """``EVT_CONN_OPEN`` handler: TCP_NODELAY on the association's socket as soon as it is
    connected, before the A-ASSOCIATE-RQ is sent."""
    transport = event.assoc.dul.socket
    if transport is not None and transport.socket is not None:
        set_nodelay(transport.socket)


def associate(calling_ae: str, peer: RemotePeer,
              contexts: Iterable[str | tuple[str, Sequence[str]]], timeout: float,
              transfer_syntaxes: Sequence[str] | None = None, tls: TLSConfig | None = None,
              **kwargs: Any) -> Association:
    """An established association with ``peer`` proposing one presentation context per item of
    ``contexts``: an abstract syntax with ``transfer_syntaxes`` (pynetdicom's defaults when
    None), or an (abstract syntax, transfer syntaxes) pair; ``kwargs`` go to ``AE.associate``
    (ext_neg, evt_handlers).
    A peer with ``tls: true`` is reached over DICOM TLS (``node.dicom.tls.client_context``) with the
    node's ``tls`` settings (the system's CAs and no client certificate when None). The socket
    has TCP_NODELAY (``set_nodelay``).

    Raises AssociationRefused when the peer cannot be reached, rejects or aborts.
    """
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for context in contexts:
        uid, syntaxes = (context, transfer_syntaxes) if isinstance(context, str) else context
        if syntaxes is None:
            ae.add_requested_context(uid)
        else:
            ae.add_requested_context(uid, list(syntaxes))
    tls_args = (client_context(tls or TLSConfig()), str(peer.host)) if peer.tls else None
    handlers = [*(kwargs.pop("evt_handlers", None) or []), (evt.EVT_CONN_OPEN, _nodelay_on_open)]
    assoc = ae.associate(str(peer.host), int(peer.port or 0), ae_title=str(peer.ae_title),
                         tls_args=tls_args, evt_handlers=handlers, **kwargs)
    if not assoc.is_established:
        raise AssociationRefused(f"no association with {peer.describe()}")
    return assoc


def c_store(calling_ae: str, destination: RemotePeer, objects: Sequence[Dataset | Path],
            timeout: float = 30.0, tls: TLSConfig | None = None) -> list[int | None]:
    """Send ``objects`` (datasets, or Part 10 files) to ``destination`` over one association, in
    the order given.

    A file is sent as its bytes are on disk, read in chunks as the PDUs go out, without
    decoding and encoding it again (pynetdicom's ``STORE_SEND_CHUNKED_DATASET``): on a 27 MB
    parametric map that is 0.19 to 0.21 s into Orthanc instead of 0.24 to 0.34 s
    (docs/history/performance.md, "End to end", ninth round). That needs a presentation context
    in the file's own
    transfer syntax: each file's SOP class is proposed in the file's transfer syntax alone
    and, in another presentation context, in pynetdicom's default ones (an abstract syntax may
    be proposed in several presentation contexts, PS3.8 7.1.1.13); where the peer accepted
    only another syntax, the file is read and the dataset sent in the accepted one.

    Returns the Status (0000,0900) of each C-STORE response; None where no response came or
    the peer accepted no presentation context for the object's SOP class and transfer syntax.
    Raises AssociationRefused when the peer cannot be reached or rejects the association.
    """
    as_stored = {o: _context(o) for o in objects if isinstance(o, Path)}
    classes = {str(o.SOPClassUID) for o in objects if isinstance(o, Dataset)} \
        | {uid for uid, _ in as_stored.values()}
    contexts = [*((uid, [syntax]) for uid, syntax in sorted(set(as_stored.values()))),
                *sorted(classes)]
    assoc = associate(calling_ae, destination, contexts, timeout, tls=tls)
    try:
        accepted = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
                    for cx in assoc.accepted_contexts}
        return [_store_one(assoc, o if isinstance(o, Dataset) or as_stored[o] in accepted
                           else dcmread(o))  # decoded, it may go in another accepted syntax
                for o in objects]
    finally:
        assoc.release()


def _context(path: Path) -> tuple[str, str]:
    """The SOP class and transfer syntax of a Part 10 file, from its meta information."""
    meta = read_file_meta_info(path)
    return str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)


def _store_one(assoc: Association, obj: Dataset | Path) -> int | None:
    try:
        return getattr(assoc.send_c_store(obj), "Status", None)
    except ValueError:  # pynetdicom: no accepted presentation context for it
        return None
