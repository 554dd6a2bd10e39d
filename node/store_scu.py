"""C-STORE as SCU (PS3.4 B.2): one association, many datasets, a status per dataset."""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataset import Dataset
from pynetdicom import AE

from node.config import Destination


class AssociationRefused(ConnectionError):
    """No association could be established with a peer."""


def c_store(calling_ae: str, destination: Destination, datasets: Sequence[Dataset],
            timeout: float = 30.0) -> list[int | None]:
    """Send ``datasets`` to ``destination`` over one association.

    Returns the Status (0000,0900) of each C-STORE response, None where no response came.
    Raises AssociationRefused when the peer cannot be reached or rejects the association.
    """
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for uid in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(uid)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        raise AssociationRefused(
            f"no association with {destination.ae_title}@{destination.host}:{destination.port}"
        )
    try:
        return [getattr(assoc.send_c_store(ds), "Status", None) for ds in datasets]
    finally:
        assoc.release()
