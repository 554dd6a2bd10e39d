"""node.validation.check_elements skips converting the elements whose conversion cannot fail: the
skip rule (``_certainly_decodes``) never passes a value pydicom would refuse, and on mutated
instances the check refuses exactly what converting every element refuses, with the same tag and
reason."""

from __future__ import annotations

import struct
import warnings
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import config
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import data_element_generator
from pydicom.filewriter import write_dataset
from pydicom.tag import Tag
from pynetdicom.dsutils import decode

import node.validation as validation
from node.validation import (
    ALWAYS_DECODED_VRS,
    NUMBER_SIZES,
    TEXT_VRS,
    Refusal,
    _certainly_decodes,
    _numbers,
    check_elements,
    plain_pydicom_settings,
)

CHECKS = settings(max_examples=400, derandomize=True, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow,
                                         HealthCheck.function_scoped_fixture])

TAGS = {  # an element of each VR, for the VR lookup of implicit VR and the message
    "AE": 0x00080054, "AS": 0x00101010, "CS": 0x00080060, "DA": 0x00080020, "DT": 0x0008002A,
    "TM": 0x00080030, "UI": 0x00080018, "UR": 0x00081190, "OB": 0x00420011, "OD": 0x003A032E,
    "OF": 0x00660016, "OL": 0x00660040, "OW": 0x00281201, "OV": 0x00720081, "SH": 0x00080050,
    "LO": 0x00081030, "ST": 0x00080081, "LT": 0x00204000, "UC": 0x00080119, "UT": 0x0008030E,
    "US": 0x00280010, "SS": 0x00189219, "UL": 0x00081161, "SL": 0x00186020, "FL": 0x00089459,
    "FD": 0x00189087, "SV": 0x00720082, "UV": 0x00720083, "DS": 0x00280030, "IS": 0x00200013,
}

NUMBERISH = st.text(alphabet=" +-.0123456789eE\\\x00\x1b", max_size=40).map(
    lambda text: text.encode("latin-1"))


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about every invalid value
        yield


def _pydicom_accepts(raw: RawDataElement) -> bool:
    """What check_elements concludes from converting ``raw`` (not counting SQ items)."""
    try:
        converted = convert_raw_data_element(raw, encoding=["latin_1"])
        value = converted.value
    except Exception:
        return False
    return converted.VR not in ("IS", "DS") or _numbers(value)


def test_default_settings_take_the_fast_path_and_raise_mode_does_not(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert plain_pydicom_settings()
    monkeypatch.setattr(config.settings, "reading_validation_mode", config.RAISE)
    assert not plain_pydicom_settings()
    monkeypatch.undo()
    monkeypatch.setattr(config, "datetime_conversion", True)
    assert not plain_pydicom_settings()


def test_every_fast_vr_has_a_tag_of_that_vr() -> None:
    fast = ALWAYS_DECODED_VRS | TEXT_VRS | set(NUMBER_SIZES) | {"DS", "IS"}
    assert fast == set(TAGS)
    assert all(pydicom.datadict.dictionary_VR(tag) == vr for vr, tag in TAGS.items())


@given(vr=st.sampled_from(sorted(TAGS)), value=st.one_of(st.binary(max_size=40), NUMBERISH),
       implicit=st.booleans())
@CHECKS
def test_what_is_skipped_pydicom_accepts(vr: str, value: bytes, implicit: bool) -> None:
    raw = RawDataElement(Tag(TAGS[vr]), None if implicit else vr, len(value), value, 0,
                         implicit, True)
    certain = _certainly_decodes(raw)
    accepted = _pydicom_accepts(raw)
    if certain:
        assert accepted, f"{vr} {value!r} skipped but pydicom refuses it"
    if vr in NUMBER_SIZES:
        assert certain == accepted
    if vr in ALWAYS_DECODED_VRS:
        assert certain


@pytest.mark.parametrize(("vr", "value"), [
    ("DS", b"1.5\\-2e-3 "), ("DS", b" .5"), ("DS", b""), ("DS", b"1\\\\2"), ("IS", b"-12 "),
    ("IS", b"7\\8"), ("US", b"\x01\x00\x02\x00"), ("LO", "Zürich".encode("latin-1"))])
def test_plain_values_are_skipped(vr: str, value: bytes) -> None:
    raw = RawDataElement(Tag(TAGS[vr]), vr, len(value), value, 0, False, True)
    assert _certainly_decodes(raw) and _pydicom_accepts(raw)


@pytest.mark.parametrize(("vr", "value"), [
    ("DS", b"abc "), ("DS", b"  "), ("DS", b"1.5\\x"), ("DS", b"inf "), ("IS", b"1.5 "),
    ("IS", b"1" * 13), ("US", b"\x01\x00\x02"), ("FD", b"\x00" * 12), ("LO", b"\x1b$Bab"),
    ("SQ", b""), ("UN", b"1\\2 "), ("PN", b"Doe^John")])
def test_other_values_are_left_to_pydicom(vr: str, value: bytes) -> None:
    tag = TAGS.get(vr, 0x00100010 if vr == "PN" else 0x00081115 if vr == "SQ" else 0x00280030)
    raw = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)
    assert not _certainly_decodes(raw)


@pytest.fixture(scope="module")
def ct_body(refdata: Path) -> bytes:
    ct = pydicom.dcmread(refdata / "pydicom" / "test_files" / "CT_small.dcm")
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ct)
    return body.getvalue()


def _outcome(body: bytes) -> tuple[int, str, str] | str | None:
    """check_elements on ``body`` decoded as the receiver decodes it: None when accepted, the
    refusal, or "undecodable" when pydicom cannot even read it."""
    try:
        dataset = decode(BytesIO(body), False, True)
    except Exception:
        return "undecodable"
    try:
        check_elements(dataset)
    except Refusal as refusal:
        return refusal.status, refusal.tag, refusal.reason
    except Exception as exc:
        return f"{type(exc).__name__}"
    return None


@st.composite
def mutated(draw: st.DrawFn, body: bytes) -> bytes:
    elements = [(raw.value_tell, raw.length) for raw in
                data_element_generator(BytesIO(body), False, True) if raw.length < 0xFFFF]
    data = bytearray(body)
    for _ in range(draw(st.integers(1, 3))):
        value, length = draw(st.sampled_from(elements))
        kind = draw(st.sampled_from(["noise", "numberish", "flip"]))
        if kind == "noise":
            data[value:value + length] = draw(st.binary(min_size=length, max_size=length))
        elif kind == "numberish":
            new = draw(NUMBERISH)[:length].ljust(length, b" ")
            data[value:value + length] = new
        else:
            at = draw(st.integers(0, len(data) - 1))
            data[at] ^= draw(st.integers(1, 255))
    return bytes(data)


@given(data=st.data())
@CHECKS
def test_mutated_instances_are_refused_as_when_every_element_is_converted(
        ct_body: bytes, data: st.DataObject, monkeypatch: pytest.MonkeyPatch) -> None:
    body = data.draw(mutated(ct_body))
    fast = _outcome(body)
    with monkeypatch.context() as patch:
        patch.setattr(validation, "plain_pydicom_settings", lambda: False)
        slow = _outcome(body)
    assert fast == slow


def test_the_differential_check_can_tell_a_refusal(ct_body: bytes) -> None:
    """The comparison above sees refusals: a DS value of letters is one (and the same both
    ways)."""
    at = ct_body.index(b"\x28\x00\x30\x00DS")  # Pixel Spacing
    (length,) = struct.unpack("<H", ct_body[at + 6:at + 8])
    body = ct_body[:at + 8] + b"x" * length + ct_body[at + 8 + length:]
    assert _outcome(body) == (0xC000, "(0028,0030) PixelSpacing",
                              f"not a DS number: {'x' * length!r}")
