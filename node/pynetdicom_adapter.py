"""The one place where the node relies on pynetdicom beyond its documented API
(docs/dependencies.md): C-STORE responses encoded directly, on the pynetdicom minor version it
was tested with.

pynetdicom answers a C-STORE (PS3.4 B.2.3) by building a pydicom ``Dataset`` for the response's
command set, validating it and encoding it twice (once to learn the Command Group Length): on a
512 x 512 CT slice a sixth of the receiver's interpreter time, measured again on pynetdicom 3.0.4
(docs/performance.md, "Ingest"). A plain response (no Error Comment, Offending Element or other
optional attribute: every success, and a failure whose status says it all) has a fixed layout,
encoded here in Implicit VR Little Endian as PS3.7 6.3.1 requires for command sets, with the
elements of PS3.7 Table 9.3-2 in tag order, and sent as one PDV, the last fragment of a command
(PS3.8 E.2: control header 0x03). The bytes equal pynetdicom's
(tests/unit/test_pynetdicom_adapter.py).

What it relies on, beyond names pynetdicom documents: that its Storage Service Class sends the
response through the association's ``DIMSEServiceProvider.send_msg`` (a public method, replaced
here on the one association's provider, not on the class). Only on ``TESTED_MINOR``; on any
other version ``install`` does nothing and pynetdicom encodes every response itself. Anything
other than a plain C-STORE response, a peer whose PDUs are too small for it, or a handler bound
to ``EVT_DIMSE_SENT`` (which is handed pynetdicom's message) goes through pynetdicom too.
"""

from __future__ import annotations

import struct

import pynetdicom
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

TESTED_MINOR = "3.0"
"""The pynetdicom minor version this module was written and tested against (pyproject.toml pins
``pynetdicom>=3.0,<3.1``)."""

ACTIVE = ".".join(pynetdicom.__version__.split(".")[:2]) == TESTED_MINOR
"""Whether the installed pynetdicom is that minor version."""

C_STORE_RSP = 0x8001
"""Command Field of a C-STORE response (PS3.7 Table E.1-1)."""

NO_DATA_SET = 0x0101
"""Command Data Set Type: no data set follows (PS3.7 Table E.1-1)."""

LAST_COMMAND_FRAGMENT = b"\x03"
"""PDV message control header: command information, last fragment (PS3.8 E.2)."""

OPTIONAL = ("ErrorComment", "OffendingElement")
"""Optional attributes of a C-STORE response (PS3.7 Table 9.3-2) that ``encode_store_response``
does not write."""


def _uid(element: int, value: str) -> bytes:
    """A UI element of group 0000 (implicit VR: tag, 32-bit length, value padded with NUL)."""
    raw = value.encode("ascii")
    if len(raw) % 2:
        raw += b"\0"
    return struct.pack("<HHI", 0x0000, element, len(raw)) + raw


def _us(element: int, value: int) -> bytes:
    """A US element of group 0000."""
    return struct.pack("<HHIH", 0x0000, element, 2, value)


def encode_store_response(message_id: int, status: int, sop_class_uid: str,
                          sop_instance_uid: str) -> bytes:
    """The command set of a C-STORE response (PS3.7 9.3.1.2) with Affected SOP Class and
    Instance UIDs, Message ID Being Responded To and Status, Implicit VR Little Endian."""
    elements = b"".join((
        _uid(0x0002, sop_class_uid),
        _us(0x0100, C_STORE_RSP),
        _us(0x0120, message_id),
        _us(0x0800, NO_DATA_SET),
        _us(0x0900, status),
        _uid(0x1000, sop_instance_uid),
    ))
    return struct.pack("<HHII", 0x0000, 0x0000, 4, len(elements)) + elements


def plain_store_response(primitive: object) -> bool:
    """Whether ``primitive`` is a C-STORE response with exactly the attributes
    ``encode_store_response`` writes."""
    if not isinstance(primitive, C_STORE) or primitive.MessageIDBeingRespondedTo is None:
        return False
    if primitive.AffectedSOPClassUID is None or primitive.AffectedSOPInstanceUID is None:
        return False
    return all(getattr(primitive, name, None) in (None, "", []) for name in OPTIONAL)


def install(assoc: Association) -> bool:
    """From an ``EVT_CONN_OPEN`` handler: plain C-STORE responses of ``assoc`` encoded directly
    (each sent as pynetdicom would send its own encoding: one P-DATA primitive to the DUL),
    everything else by pynetdicom. False, and nothing changed, unless pynetdicom is
    ``TESTED_MINOR``."""
    if not ACTIVE:
        return False
    dimse = assoc.dimse
    pynetdicom_send = dimse.send_msg

    def send_msg(primitive: object, context_id: int) -> None:
        if not plain_store_response(primitive) or assoc.get_handlers(evt.EVT_DIMSE_SENT):
            pynetdicom_send(primitive, context_id)  # type: ignore[arg-type]
            return
        assert isinstance(primitive, C_STORE)
        command = encode_store_response(
            primitive.MessageIDBeingRespondedTo, primitive.Status,  # type: ignore[arg-type]
            str(primitive.AffectedSOPClassUID), str(primitive.AffectedSOPInstanceUID))
        limit = dimse.maximum_pdu_size
        if limit and len(command) + 6 > limit:  # the peer's PDUs are smaller than the command
            pynetdicom_send(primitive, context_id)
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, LAST_COMMAND_FRAGMENT + command))
        dimse.dul.send_pdu(pdata)

    dimse.send_msg = send_msg  # type: ignore[method-assign]
    return True
