"""node.dimse: incoming messages assembled from fragment views are what pynetdicom's decode_msg
assembles from the same P-DATA primitives; the C-STORE responses the receiver encodes itself are
byte for byte what pynetdicom encodes, and responses with optional attributes still go through
pynetdicom."""

from __future__ import annotations

import struct
import warnings
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ, C_STORE_RSP, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.utils import set_uid

from node.dimse import (
    LAST_COMMAND_FRAGMENT,
    assemble,
    checked_uid,
    encode_store_response,
    plain_store_request,
    plain_store_response,
)

CT = "1.2.840.10008.5.1.4.1.1.2"


def _response(message_id: int, status: int, instance: str) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = CT
    rsp.AffectedSOPInstanceUID = instance
    rsp.Status = status
    return rsp


@pytest.mark.parametrize("instance", ["1.2.3.4", "1.2.3.45", "1.2.826.0.1." + "7" * 50])
@pytest.mark.parametrize(("message_id", "status"), [(1, 0x0000), (65535, 0xA700),
                                                    (300, 0xC000)])
def test_plain_response_is_what_pynetdicom_encodes(instance: str, message_id: int,
                                                   status: int) -> None:
    rsp = _response(message_id, status, instance)
    assert plain_store_response(rsp)
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    [pdata] = list(message.encode_msg(1, 16384))
    [(context_id, pdv)] = pdata.presentation_data_value_list
    assert context_id == 1
    assert pdv == LAST_COMMAND_FRAGMENT + encode_store_response(message_id, status, CT, instance)


def test_responses_with_an_error_comment_or_of_other_services_are_not_plain() -> None:
    commented = _response(7, 0xA900, "1.2.3")
    commented.ErrorComment = "(7FE0,0010) PixelData: missing"
    assert not plain_store_response(commented)
    request = C_STORE()
    request.MessageID = 7
    request.AffectedSOPClassUID = CT
    request.AffectedSOPInstanceUID = "1.2.3"
    assert not plain_store_response(request)
    assert not plain_store_response(object())


def _store_request(refdata: Path) -> C_STORE:
    ct = pydicom.dcmread(refdata / "pydicom" / "test_files" / "CT_small.dcm")
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ct)
    request = C_STORE()
    request.MessageID = 7
    request.AffectedSOPClassUID = CT
    request.AffectedSOPInstanceUID = ct.SOPInstanceUID
    request.Priority = 0
    request.DataSet = BytesIO(body.getvalue())
    return request


def _echo_request() -> C_ECHO:
    request = C_ECHO()
    request.MessageID = 3
    request.AffectedSOPClassUID = "1.2.840.10008.1.1"
    return request


def _encoded(request: C_STORE | C_ECHO, max_pdu: int) -> list[P_DATA]:
    message = C_STORE_RQ() if isinstance(request, C_STORE) else C_ECHO_RQ()
    message.primitive_to_message(request)
    return list(message.encode_msg(5, max_pdu))


def _as_views(primitive: P_DATA) -> P_DATA:
    """The primitive with each value a view of a buffer, as node.reactor.PDataTF passes them."""
    views = P_DATA()
    views.presentation_data_value_list.extend(
        (context_id, memoryview(bytearray(value)))
        for context_id, value in primitive.presentation_data_value_list)
    return views


def _both(primitives: list[P_DATA]) -> tuple[DIMSEMessage, DIMSEMessage, list[bool], list[bool]]:
    theirs, ours, fragments = DIMSEMessage(), DIMSEMessage(), []
    done_theirs = [theirs.decode_msg(p) for p in primitives]
    done_ours = [assemble(ours, fragments, _as_views(p)) for p in primitives]
    return theirs, ours, done_theirs, done_ours


def _same(theirs: DIMSEMessage, ours: DIMSEMessage) -> None:
    assert type(ours) is type(theirs)
    assert ours.context_id == theirs.context_id
    assert ours.encoded_command_set.getvalue() == theirs.encoded_command_set.getvalue()
    assert ours.command_set == theirs.command_set
    assert ours.data_set.getvalue() == theirs.data_set.getvalue()
    assert ours.data_set.tell() == theirs.data_set.tell()
    mine, pynetdicom = ours.message_to_primitive(), theirs.message_to_primitive()
    for name in ("MessageID", "AffectedSOPClassUID", "AffectedSOPInstanceUID", "Priority"):
        assert getattr(mine, name, None) == getattr(pynetdicom, name, None)


@pytest.mark.parametrize("max_pdu", [0, 16384, 4096, 120])
def test_store_request_assembles_as_pynetdicom_decodes_it(refdata: Path, max_pdu: int) -> None:
    request = _store_request(refdata)
    primitives = _encoded(request, max_pdu)
    if max_pdu == 120:
        assert len(primitives) > 100  # the command set itself comes in several fragments
    theirs, ours, done_theirs, done_ours = _both(primitives)
    assert done_ours == done_theirs and done_ours[-1] and not any(done_ours[:-1])
    _same(theirs, ours)
    assert ours.data_set.getvalue() == request.DataSet.getvalue()


def test_several_fragments_in_one_primitive_and_a_message_without_data_set(refdata: Path) -> None:
    merged = P_DATA()
    for primitive in _encoded(_store_request(refdata), 2048):
        merged.presentation_data_value_list.extend(primitive.presentation_data_value_list)
    theirs, ours, done_theirs, done_ours = _both([merged])
    assert done_ours == done_theirs == [True]
    _same(theirs, ours)
    echo = _encoded(_echo_request(), 16384)
    theirs, ours, done_theirs, done_ours = _both(echo)
    assert done_ours == done_theirs == [True]
    _same(theirs, ours)
    assert ours.data_set.getvalue() == b""


def test_odd_fragment_orders_end_as_in_pynetdicom(refdata: Path) -> None:
    """PDVs after the fragment that completes a message are ignored, and data fragments before
    the command belong to the data set, in both."""
    store = _encoded(_store_request(refdata), 4096)
    echo = _encoded(_echo_request(), 16384)
    trailing = P_DATA()
    trailing.presentation_data_value_list.extend(
        echo[0].presentation_data_value_list + store[-1].presentation_data_value_list)
    theirs, ours, done_theirs, done_ours = _both([trailing])
    assert done_ours == done_theirs == [True]
    _same(theirs, ours)
    assert ours.data_set.getvalue() == b""
    data_first = [store[1], *echo]  # a data fragment, then a command saying no data set follows
    assert store[1].presentation_data_value_list[0][1][0] == 0x00
    theirs, ours, done_theirs, done_ours = _both(data_first)
    assert done_ours == done_theirs == [False, True]
    _same(theirs, ours)
    assert ours.data_set.getvalue() == store[1].presentation_data_value_list[0][1][1:]


def test_a_command_set_that_cannot_be_decoded_fails_in_both() -> None:
    broken = P_DATA()
    broken.presentation_data_value_list.append((1, b"\x03" + b"\x00\x00\x00\x01\xff\xff"))
    with pytest.raises(Exception) as pynetdicom_error:
        DIMSEMessage().decode_msg(broken)
    with pytest.raises(type(pynetdicom_error.value)):
        assemble(DIMSEMessage(), [], _as_views(broken))


def _element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _us(value: int) -> bytes:
    return struct.pack("<H", value)


STORE_ELEMENTS = [(0x0002, CT.encode() + b"\0"), (0x0100, _us(0x0001)), (0x0110, _us(9)),
                  (0x0700, _us(2)), (0x0800, _us(0x0000)), (0x1000, b"1.2.3.4 ")]


def _command(elements: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(_element(e, v) for e, v in elements)
    return _element(0x0000, struct.pack("<I", len(body))) + body


def _message(command: bytes, data: bytes = b"\x08\x00\x16\x00UI\x02\x001\x00") -> list[P_DATA]:
    primitives = []
    for control, value in ((0x03, command), (0x02, data)):
        primitive = P_DATA()
        primitive.presentation_data_value_list.append((3, bytes([control]) + value))
        primitives.append(primitive)
    return primitives


def _primitives(primitives: list[P_DATA]) -> tuple[C_STORE, C_STORE]:
    """The C-STORE indication pynetdicom makes, and the one made from the plain request."""
    theirs, ours, fragments = DIMSEMessage(), DIMSEMessage(), []
    for primitive in primitives:
        theirs.decode_msg(primitive)
        done = assemble(ours, fragments, _as_views(primitive), plain=True)
    assert done and isinstance(ours, C_STORE_RQ)
    assert "CommandField" not in ours.command_set  # read directly, not decoded by pydicom
    return theirs.message_to_primitive(), ours.plain_request.primitive(ours.data_set,
                                                                        ours.context_id)


FIELDS = ("MessageID", "Priority", "AffectedSOPClassUID", "AffectedSOPInstanceUID",
          "MoveOriginatorApplicationEntityTitle", "MoveOriginatorMessageID", "_context_id",
          "_dataset_path", "_dataset_file")


@pytest.mark.parametrize("elements", [
    STORE_ELEMENTS,
    [*STORE_ELEMENTS, (0x1030, b" MOVER  "), (0x1031, _us(65535))],
    [(e, b"1.2.840.10008.5.1.4.1.1.4" if e == 0x0002 else v) for e, v in STORE_ELEMENTS],
    [(e, _us(0) if e == 0x0110 else v) for e, v in STORE_ELEMENTS],
    [(e, b"1.02.3.4" if e == 0x1000 else v) for e, v in STORE_ELEMENTS],  # not conformant
])
def test_plain_store_request_makes_the_primitive_pynetdicom_makes(elements) -> None:
    theirs, ours = _primitives(_message(_command(elements)))
    for name in FIELDS:
        assert getattr(ours, name) == getattr(theirs, name), name
        assert type(getattr(ours, name)) is type(getattr(theirs, name)), name
    assert ours.DataSet.getvalue() == theirs.DataSet.getvalue()


@pytest.mark.parametrize("max_pdu", [0, 4096, 120])
def test_pynetdicom_encoded_store_requests_are_plain(refdata: Path, max_pdu: int) -> None:
    request = _store_request(refdata)
    request.MoveOriginatorApplicationEntityTitle = "MOVESCU"
    request.MoveOriginatorMessageID = 4
    theirs, ours = _primitives(_encoded(request, max_pdu))
    for name in FIELDS:
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.DataSet.getvalue() == request.DataSet.getvalue()


@pytest.mark.parametrize("elements", [
    [*STORE_ELEMENTS, (0x0900, _us(0))],  # an element a C-STORE request does not have
    [(e, _us(0x0030) if e == 0x0100 else v) for e, v in STORE_ELEMENTS],  # C-ECHO-RQ
    [(e, b"1.2.3\\4.5" if e == 0x1000 else v) for e, v in STORE_ELEMENTS],  # two UIDs
    [(e, b"" if e == 0x0002 else v) for e, v in STORE_ELEMENTS],  # empty UID
    [(e, b"\x01\x00\x00\x00" if e == 0x0110 else v) for e, v in STORE_ELEMENTS],  # UL as US
    [STORE_ELEMENTS[1], STORE_ELEMENTS[0], *STORE_ELEMENTS[2:]],  # out of order
    [(0x0002, CT.encode()), *STORE_ELEMENTS],  # twice
    STORE_ELEMENTS[1:],  # no Affected SOP Class UID
])
def test_other_commands_are_left_to_pynetdicom(elements) -> None:
    assert plain_store_request(_command(elements)) is None


def test_a_cut_command_set_is_left_to_pynetdicom() -> None:
    command = _command(STORE_ELEMENTS)
    assert plain_store_request(command) is not None
    assert plain_store_request(command[:-3]) is None
    assert plain_store_request(command + b"\x00\x00") is None
    assert plain_store_request(struct.pack("<HHI", 0x0008, 0x0016, 0) + command) is None


@pytest.mark.parametrize("value", ["1.2.840.10008.5.1.4.1.1.2", "1.2.3.4 ", "1.02.3",
                                   "1.2.3.4\0", "1.2.3.a"])
def test_checked_uid_is_set_uid_and_logs_as_it_does_every_time(value: str, caplog,
                                                               monkeypatch) -> None:
    import node.dimse

    calls: list[str] = []
    monkeypatch.setattr(node.dimse, "set_uid", lambda *args: calls.append(args[0]) or set_uid(
        *args))
    expected = set_uid(value, "Affected SOP Instance UID") or None
    caplog.clear()
    with warnings.catch_warnings(record=True) as warned_by_pydicom:
        warnings.simplefilter("always")
        for _ in range(2):
            got = checked_uid(value, "Affected SOP Instance UID")
            assert got == expected and type(got) is type(expected)
    conformant = expected is not None and expected.is_valid and expected == value
    warned = [r for r in caplog.records if "Non-conformant" in r.getMessage()]
    if conformant:  # nothing to check or warn of: made directly, then remembered
        assert not calls and not warned and not warned_by_pydicom
    else:  # checked each time, with every warning each time, as the setter gives them
        assert len(calls) == 2 and (warned or warned_by_pydicom)
        assert len(warned) % 2 == 0 and len(warned_by_pydicom) % 2 == 0


def test_checked_uid_raises_where_set_uid_raises() -> None:
    with pytest.raises(ValueError):
        set_uid("1." + "2" * 70, "Affected SOP Instance UID")
    with pytest.raises(ValueError):
        checked_uid("1." + "2" * 70, "Affected SOP Instance UID")


@pytest.mark.parametrize("text", ["1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.02.3", "1.2.3.a",
                                  "", "0", "1." + "2" * 63, "1.2..3"])
def test_command_set_uids_are_what_pydicom_decodes_with_the_same_warnings(text: str) -> None:
    from pydicom.uid import UID

    from node.dimse import _command_uid

    with warnings.catch_warnings(record=True) as theirs:
        warnings.simplefilter("always")
        expected = UID(text)
    with warnings.catch_warnings(record=True) as ours:
        warnings.simplefilter("always")
        got = _command_uid(text)
    assert got == expected and type(got) is type(expected)
    assert [str(w.message) for w in ours] == [str(w.message) for w in theirs]


def test_checked_uid_uses_a_replaced_ui_validator(monkeypatch) -> None:
    from pynetdicom import _config

    monkeypatch.setitem(_config.VALIDATORS, "UI", lambda value: (False, "refused by the test"))
    with pytest.raises(ValueError, match="refused by the test"):
        checked_uid("1.2.840.10008.5.1.4.1.1.2", "Affected SOP Class UID")
