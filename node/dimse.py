"""The C-STORE response the receiver sends for each stored instance, encoded directly.

pynetdicom turns the response primitive into a DIMSE message by building a pydicom ``Dataset``
for the command set, validating and encoding it twice (once to learn the Command Group Length):
on a 512 x 512 CT slice about a sixth of the receiver's interpreter time went to answering
(py-spy, docs/performance.md "Ingest"). A plain response (no Error Comment, Offending Element or
other optional attribute: every success, and a failure whose status says it all) has a fixed
layout, encoded here in Implicit VR Little Endian as PS3.7 6.3.1 requires for command sets, with
the elements of PS3.7 Table 9.3-2 in tag order; it goes to the peer as one PDV, the last fragment
of a command (PS3.8 E.2: control header 0x03). Any other response takes pynetdicom's path. The
bytes equal pynetdicom's (tests/unit/test_dimse.py).
"""

from __future__ import annotations

import struct

from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

C_STORE_RSP = 0x8001
"""Command Field of a C-STORE response (PS3.7 Table E.1-1)."""

NO_DATA_SET = 0x0101
"""Command Data Set Type: no data set follows (PS3.7 Table E.1-1)."""

LAST_COMMAND_FRAGMENT = b"\x03"
"""PDV message control header: command information, last fragment (PS3.8 E.2)."""

_EXTRAS = ("ErrorComment", "OffendingElement")
"""Optional attributes of a C-STORE response (PS3.7 Table 9.3-2) the fast path does not write."""


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
    return all(getattr(primitive, name, None) in (None, "", []) for name in _EXTRAS)


class StoreResponseDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE service provider that encodes plain C-STORE responses itself."""

    def send_msg(self, primitive, context_id: int) -> None:  # type: ignore[no-untyped-def]
        """Send ``primitive`` on ``context_id``: a plain C-STORE response as one PDV, anything
        else through pynetdicom."""
        if not plain_store_response(primitive):
            super().send_msg(primitive, context_id)
            return
        command = encode_store_response(
            primitive.MessageIDBeingRespondedTo, primitive.Status,
            str(primitive.AffectedSOPClassUID), str(primitive.AffectedSOPInstanceUID))
        limit = self.maximum_pdu_size
        if limit and len(command) + 6 > limit:  # the peer's PDUs are smaller than the command
            super().send_msg(primitive, context_id)
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, LAST_COMMAND_FRAGMENT + command))
        self.dul.send_pdu(pdata)
