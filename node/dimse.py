"""The receiver's DIMSE layer: incoming messages assembled from P-DATA fragments without copying
them into a growing buffer, and C-STORE responses encoded directly.

**Incoming messages.** pynetdicom's ``DIMSEMessage.decode_msg`` writes every data set fragment,
after slicing off its control header (a copy), into a ``BytesIO`` that grows as they come (more
copies, and fresh pages of memory for each instance): on a 512 x 512 CT slice about a seventh
of the receiver's interpreter time (py-spy, docs/performance.md "Ingest"). Here the fragments are
kept as views of the received PDUs (``node.reactor`` reads each P-DATA-TF PDU into one buffer and
does not copy its PDVs) and joined once when the last one arrives; the data set is a ``BytesIO``
over those bytes, which Python shares without copying. Command fragments, the command set's
decoding, the message class, the primitive and the queueing are pynetdicom's own, in the same
order with the same outcomes (tests/unit/test_dimse.py assembles the same messages both ways).
A plain C-STORE request's command set (``PlainStoreRequest``: the elements of PS3.7 Table
9.3-1, one value each, in tag order) is read directly rather than decoded into a pydicom dataset
and copied field by field into the primitive by ``message_to_primitive`` (together about a tenth
of the interpreter time per CT slice); the same values go through the same primitive setters.

**Responses.** pynetdicom turns the response primitive into a DIMSE message by building a pydicom
``Dataset`` for the command set, validating and encoding it twice (once to learn the Command
Group Length): on a 512 x 512 CT slice about a sixth of the receiver's interpreter time went to
answering (py-spy, docs/performance.md "Ingest"). A plain response (no Error Comment, Offending
Element or other optional attribute: every success, and a failure whose status says it all) has
a fixed layout, encoded here in Implicit VR Little Endian as PS3.7 6.3.1 requires for command
sets, with the elements of PS3.7 Table 9.3-2 in tag order; it goes to the peer as one PDV, the
last fragment of a command (PS3.8 E.2: control header 0x03). Any other response takes
pynetdicom's path. The bytes equal pynetdicom's (tests/unit/test_dimse.py).
"""

from __future__ import annotations

import logging
import re
import struct
import threading
from dataclasses import dataclass
from io import BytesIO
from typing import cast

from pydicom import config as pydicom_config
from pydicom.uid import RE_VALID_UID, UID
from pynetdicom import _config, evt
from pynetdicom._validators import validate_ui
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import _MESSAGE_TYPES, C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_CANCEL, C_STORE, N_EVENT_REPORT
from pynetdicom.dsutils import decode
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.utils import make_target, set_uid

PYNETDICOM_LOG = logging.getLogger("pynetdicom.dimse")
"""pynetdicom's DIMSE logger: the messages it would log, it logs here in the same words."""

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


NO_DATA_SET_TYPE = 0x0101
"""Command Data Set Type (0000,0800) saying that no data set follows (PS3.7 Table E.1-1)."""


C_STORE_RQ_FIELD = 0x0001
"""Command Field of a C-STORE request (PS3.7 Table E.1-1)."""

_STORE_REQUIRED = frozenset({0x0002, 0x0100, 0x0110, 0x0700, 0x0800, 0x1000})
"""Command elements of a C-STORE request (PS3.7 Table 9.3-1): Affected SOP Class UID, Command
Field, Message ID, Priority, Command Data Set Type, Affected SOP Instance UID."""

_STORE_OPTIONAL = frozenset({0x0000, 0x1030, 0x1031})
"""Command Group Length and the Move Originator AE title and Message ID (C-MOVE sub-operations)."""


_UIDS: dict[tuple, UID] = {}
"""``checked_uid``'s conformant values seen last, by value, parameter and validation settings."""

_UIDS_KEPT = 256
"""At most this many: the class UIDs of an association's contexts, and each SOP instance UID
from the request to its response."""


def checked_uid(value: str | UID, name: str) -> UID | None:
    """``pynetdicom.utils.set_uid(value, name) or None``, what a DIMSE primitive's UID setter
    stores for ``value`` (PS3.7 9.3: the Affected SOP Class and Instance UIDs of C-STORE).

    ``set_uid`` checks the value three times (pydicom's ``UID``, pynetdicom's UI validator, UID
    conformance) and each C-STORE sets each of its two UIDs twice, in the request and in the
    response: a sixth of the receiver's interpreter time per CT slice (py-spy). A value that
    conforms as it is (``UID.is_valid``, PS3.5 9.1, and no padding to strip: then none of the
    checks logs, warns or raises) is
    remembered with the settings the checks read, and given again without them; any other value
    goes through ``set_uid`` every time, with its log messages and errors."""
    text = str(value)
    key = (text, name, _config.ENFORCE_UID_CONFORMANCE, _config.VALIDATORS["UI"],
           pydicom_config.settings.reading_validation_mode)
    uid = _UIDS.get(key)
    if uid is not None:
        return uid
    if _config.VALIDATORS["UI"] is validate_ui and _conformant(text):
        uid = _unchecked_uid(text)  # what set_uid makes of it, silently
    else:
        uid = set_uid(value, name) or None
    if uid is not None and uid.is_valid and uid == text:  # not padded: nothing to warn of
        if len(_UIDS) >= _UIDS_KEPT:
            _UIDS.clear()
        _UIDS[key] = uid
    return uid


_VALID_UID = re.compile(RE_VALID_UID)


def _conformant(text: str) -> bool:
    """``UID(text).is_valid`` without making the UID: digits and dots, no leading zero, at most
    64 characters (PS3.5 9.1)."""
    return len(text) <= 64 and _VALID_UID.match(text) is not None


def _unchecked_uid(text: str) -> UID:
    """``UID(text)`` for a conformant ``text``, which pydicom's validation of UI values (in
    any validation mode) lets through silently: the same value without checking it again."""
    return UID(text, pydicom_config.IGNORE)


def _command_uid(text: str) -> UID:
    """``UID(text)`` as pydicom decodes it from a command set, checked only where it may
    warn."""
    return _unchecked_uid(text) if _conformant(text) else UID(text)


_SETS_PRIVATELY = all(hasattr(C_STORE(), attribute) for attribute in (
    "_affected_sop_class_uid", "_affected_sop_instance_uid"))
"""Whether pynetdicom's C_STORE keeps its UIDs where ``set_uids`` writes them (else: setters)."""


def set_uids(primitive: C_STORE, sop_class_uid: str | UID, sop_instance_uid: str | UID) -> None:
    """Set the Affected SOP Class and Instance UIDs of ``primitive`` to what its setters store,
    through ``checked_uid``."""
    if not _SETS_PRIVATELY:
        primitive.AffectedSOPClassUID = sop_class_uid
        primitive.AffectedSOPInstanceUID = sop_instance_uid
        return
    primitive._affected_sop_class_uid = checked_uid(sop_class_uid, "Affected SOP Class UID")
    primitive._affected_sop_instance_uid = checked_uid(sop_instance_uid,
                                                       "Affected SOP Instance UID")


@dataclass(frozen=True)
class PlainStoreRequest:
    """A C-STORE request's command set read directly, with the values pydicom would decode:
    UIDs as ``UID`` without trailing NUL or space padding, the AE title stripped, US numbers."""

    message_id: int
    priority: int
    sop_class_uid: UID
    sop_instance_uid: UID
    data_set_type: int
    move_originator_ae: str | None
    move_originator_id: int | None

    def primitive(self, data_set: BytesIO, context_id: int) -> C_STORE:
        """The C-STORE indication ``message_to_primitive`` makes: the same values, set through
        the same setters (the UIDs through ``set_uids``)."""
        primitive = C_STORE()
        primitive.MessageID = self.message_id
        primitive.Priority = self.priority
        set_uids(primitive, self.sop_class_uid, self.sop_instance_uid)
        if self.move_originator_ae is not None:
            primitive.MoveOriginatorApplicationEntityTitle = self.move_originator_ae
        if self.move_originator_id is not None:
            primitive.MoveOriginatorMessageID = self.move_originator_id
        primitive.DataSet = data_set
        primitive._context_id = context_id
        primitive._dataset_path = None
        primitive._dataset_file = None
        return primitive


def plain_store_request(command: bytes) -> PlainStoreRequest | None:
    """``command`` (an Implicit VR Little Endian command set, PS3.7 6.3.1) as a C-STORE request,
    or None unless it is a plain one: group 0000 elements in ascending tag order, each once,
    exactly those of a C-STORE request (``_STORE_REQUIRED``, ``_STORE_OPTIONAL``), US of two
    bytes, UL of four, non-empty single UI and AE values. Anything else is for pynetdicom."""
    values: dict[int, bytes] = {}
    offset, end, last = 0, len(command), -1
    while offset < end:
        if end - offset < 8:
            return None
        group, element, length = struct.unpack_from("<HHI", command, offset)
        offset += 8
        if group != 0 or element <= last or length > end - offset:
            return None
        values[element] = bytes(command[offset:offset + length])
        offset += length
        last = element
    if not _STORE_REQUIRED <= values.keys() <= _STORE_REQUIRED | _STORE_OPTIONAL:
        return None
    if 0x0000 in values and len(values[0x0000]) != 4:
        return None
    numbers = {e: v for e, v in values.items() if e in (0x0100, 0x0110, 0x0700, 0x0800, 0x1031)}
    if any(len(v) != 2 for v in numbers.values()):
        return None
    texts = [values[e] for e in (0x0002, 0x1000, 0x1030) if e in values]
    if any(not v or b"\\" in v for v in texts):
        return None
    us = {e: struct.unpack("<H", v)[0] for e, v in numbers.items()}
    if us[0x0100] != C_STORE_RQ_FIELD:
        return None
    return PlainStoreRequest(
        message_id=us[0x0110], priority=us[0x0700],
        sop_class_uid=_command_uid(values[0x0002].decode("latin-1").rstrip("\0 ")),
        sop_instance_uid=_command_uid(values[0x1000].decode("latin-1").rstrip("\0 ")),
        data_set_type=us[0x0800],
        move_originator_ae=values[0x1030].decode("latin-1").strip() if 0x1030 in values
        else None,
        move_originator_id=us.get(0x1031))


def assemble(message: DIMSEMessage, fragments: list, primitive: P_DATA,
             plain: bool = False) -> bool:
    """Add the PDVs of ``primitive`` to ``message``, as ``DIMSEMessage.decode_msg`` does with
    STORE_RECV_CHUNKED_DATASET off, except that data set fragments are appended to ``fragments``
    (views, not copies) and become ``message.data_set`` only when the message is complete.
    True when it is. With ``plain``, a plain C-STORE request's command set is read by
    ``plain_store_request`` into ``message.plain_request`` instead of being decoded by pydicom
    into ``message.command_set``.

    As pynetdicom does (PS3.8 E.2: bit 0 of the control header says command, bit 1 last
    fragment): command fragments are written to ``encoded_command_set``; the last one is decoded
    (Implicit VR Little Endian, PS3.7 6.3.1), sets ``context_id`` and the message's class from
    its Command Field, and completes the message when the Command Data Set Type says no data set
    follows; the last data set fragment completes it otherwise. PDVs after the one that completes
    the message are ignored, as there.
    """
    if primitive.__class__ != P_DATA:
        return False
    for context_id, data in primitive.presentation_data_value_list:
        control = data[0]
        if control & 1:
            message.encoded_command_set.write(data[1:])
            if control & 2:
                message.context_id = context_id
                request = plain_store_request(message.encoded_command_set.getvalue()) \
                    if plain else None
                if request is not None:
                    message.__class__ = C_STORE_RQ
                    message.plain_request = request  # type: ignore[attr-defined]
                    if request.data_set_type == NO_DATA_SET_TYPE:
                        _join(message, fragments)
                        return True
                    continue
                message.command_set = decode(message.encoded_command_set, True, True)
                message.__class__ = _MESSAGE_TYPES[cast(int, message.command_set.CommandField)][1]
                if message.command_set.CommandDataSetType == NO_DATA_SET_TYPE:
                    _join(message, fragments)
                    return True
        else:
            fragments.append(data[1:])
            if control & 2:
                _join(message, fragments)
                return True
    return False


def _join(message: DIMSEMessage, fragments: list) -> None:
    """The data set fragments received so far as ``message.data_set`` (positioned at its end, as
    pynetdicom leaves it after writing); an empty ``BytesIO`` stays when there were none."""
    if fragments:
        data_set = BytesIO(b"".join(fragments))  # the one copy; BytesIO shares these bytes
        data_set.seek(0, 2)
        message.data_set = data_set
        fragments.clear()


class AcceptorDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE service provider that assembles incoming messages without growing a
    buffer (``assemble``) and encodes plain C-STORE responses itself."""

    _fragments: list

    def receive_primitive(self, primitive: P_DATA) -> None:
        """``DIMSEServiceProvider.receive_primitive`` with ``assemble`` in place of
        ``DIMSEMessage.decode_msg``; the rest is pynetdicom's, step for step. With
        ``STORE_RECV_CHUNKED_DATASET`` (data sets spooled to a temporary file) pynetdicom's."""
        if _config.STORE_RECV_CHUNKED_DATASET:
            super().receive_primitive(primitive)
            return
        if self.message is None:
            self.message = DIMSEMessage()
            self._fragments = []
        # a handler of EVT_DIMSE_RECV may read the command set as pydicom decodes it
        plain = not self.assoc.get_handlers(evt.EVT_DIMSE_RECV)
        if not assemble(self.message, self._fragments, primitive, plain):
            return
        evt.trigger(self.assoc, evt.EVT_DIMSE_RECV, {"message": self.message})
        context_id = cast(int, self.message.context_id)
        request: PlainStoreRequest | None = getattr(self.message, "plain_request", None)
        try:
            d_primitive = request.primitive(self.message.data_set, context_id) \
                if request is not None else self.message.message_to_primitive()
        except Exception as exc:
            PYNETDICOM_LOG.error("Received an invalid DIMSE message")
            PYNETDICOM_LOG.exception(exc)
            self.dul.event_queue.put("Evt19")
            return
        inline = False
        if isinstance(d_primitive, C_CANCEL) and len(self.cancel_req) < 10:
            self.cancel_req[cast(int, d_primitive.MessageIDBeingRespondedTo)] = d_primitive
        elif isinstance(d_primitive, N_EVENT_REPORT) and d_primitive.is_valid_request:
            threading.Thread(target=make_target(self.assoc._serve_request),
                             args=(d_primitive, context_id)).start()
        elif request is not None and hasattr(self.assoc, "serve_inline"):
            inline = True  # served below, by this thread, when the message is let go
        else:
            self.msg_queue.put((context_id, d_primitive))
        # as pynetdicom: the message lets go of its buffers (pynetdicom issue #41)
        self.message.encoded_command_set = BytesIO()
        self.message.data_set = BytesIO()
        self.message._data_set_file = None
        self.message._data_set_path = None
        self.message = None
        if inline and not self.assoc.serve_inline(d_primitive, context_id):
            self.msg_queue.put((context_id, d_primitive))

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
