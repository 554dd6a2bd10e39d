"""node.dimse: the C-STORE responses the receiver encodes itself are byte for byte what pynetdicom
encodes, and responses with optional attributes still go through pynetdicom."""

from __future__ import annotations

import pytest
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE

from node.dimse import LAST_COMMAND_FRAGMENT, encode_store_response, plain_store_response

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
