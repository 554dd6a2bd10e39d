"""node.dicom.validation.check_elements skips converting the elements whose conversion cannot fail:
the skip rule (``_certainly_decodes``) never passes a value pydicom would refuse, and on mutated
instances the check refuses exactly what converting every element refuses, with the same tag and
reason. The identity and Image Pixel attributes read from the raw bytes (``element_value``,
``expected_length``) are what ``Dataset.get`` and pydicom's ``get_expected_length`` give, and
the checks on them decide as before on mutated values."""

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
from pydicom.pixels.utils import get_expected_length
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.dsutils import decode

import node.dicom.validation as validation
from node.dicom.ingest import identify
from node.dicom.validation import (
    ALWAYS_DECODED_VRS,
    NUMBER_SIZES,
    TEXT_VRS,
    Refusal,
    _certainly_decodes,
    _numbers,
    check_elements,
    check_pixels,
    element_value,
    expected_length,
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


READ = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Rows",
        "Columns", "SamplesPerPixel", "BitsAllocated", "PhotometricInterpretation", "Modality",
        "NumberOfFrames", "PatientName", "NoSuchKeyword")


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "MR_small_bigendian.dcm",
                                  "MR_small_implicit.dcm", "MR_small_RLE.dcm"])
def test_element_value_is_what_dataset_get_gives(refdata: Path, name: str) -> None:
    source = pydicom.dcmread(refdata / "pydicom" / "test_files" / name)
    syntax = source.file_meta.TransferSyntaxUID
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = syntax.is_little_endian, syntax.is_implicit_VR
    write_dataset(body, source)
    for keyword in READ:
        fast = element_value(decode(BytesIO(body.getvalue()), syntax.is_implicit_VR,
                                    syntax.is_little_endian), keyword, "absent")
        slow = decode(BytesIO(body.getvalue()), syntax.is_implicit_VR,
                      syntax.is_little_endian).get(keyword, "absent")
        assert fast == slow and str(fast) == str(slow), keyword
        assert isinstance(fast, int) == isinstance(slow, int), keyword


@pytest.mark.parametrize("bits", [1, 8, 16, 32])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "RGB", "YBR_FULL_422"])
@pytest.mark.parametrize(("rows", "columns", "samples", "frames"),
                         [(512, 512, 1, 1), (7, 5, 3, 1), (3, 3, 1, 7), (1, 1, 1, 1)])
def test_expected_length_is_pydicoms(bits: int, photometric: str, rows: int, columns: int,
                                     samples: int, frames: int) -> None:
    ds = pydicom.Dataset()
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsAllocated = rows, columns, samples, bits
    ds.PhotometricInterpretation, ds.NumberOfFrames = photometric, frames
    assert expected_length(rows, columns, samples, bits, frames, photometric) == \
        get_expected_length(ds, "bytes")


def _set_value(body: bytes, tag: int, value: bytes) -> bytes:
    """``body`` (explicit VR little endian) with the first element ``tag`` (a short-length VR)
    holding ``value``."""
    at = body.index(struct.pack("<HH", tag >> 16, tag & 0xFFFF))
    (length,) = struct.unpack("<H", body[at + 6:at + 8])
    return body[:at + 6] + struct.pack("<H", len(value)) + value + body[at + 8 + length:]


IDENTITY_TAGS = [0x00080016, 0x00080018, 0x0020000D, 0x0020000E, 0x00280010, 0x00280011,
                 0x00280002, 0x00280100, 0x00280004, 0x00080060]

VALUES = st.one_of(
    st.binary(max_size=12),
    st.sampled_from([b"", b"\x00\x00", b"\x00\x02", b"\x01\x00", b"\x10\x00\x10\x00", b"1.2.3",
                     b"1.2.3\x00", b" 1.2.3 ", b"1.2\\3.4", b"MONOCHROME2 ", b"YBR_FULL_422",
                     b"CT", b"CT\\MR", b"\xa01.2\xa0", b"RGB\x00", b"\x85"]))


@given(data=st.data())
@CHECKS
def test_identity_and_pixel_checks_read_as_dataset_get_would(
        ct_body: bytes, data: st.DataObject, monkeypatch: pytest.MonkeyPatch) -> None:
    body = ct_body
    for _ in range(data.draw(st.integers(1, 3))):
        body = _set_value(body, data.draw(st.sampled_from(IDENTITY_TAGS)), data.draw(VALUES))

    def outcome() -> object:
        dataset = decode(BytesIO(body), False, True)
        try:
            identity = identify(dataset)
            check_pixels(dataset, identity["SOPClassUID"], ExplicitVRLittleEndian)
        except Refusal as refusal:
            return refusal.status, refusal.tag, refusal.reason
        except Exception as exc:
            return type(exc).__name__
        return identity, str(element_value(dataset, "Modality", "") or "")

    fast = outcome()
    with monkeypatch.context() as patch:
        patch.setattr(validation, "plain_pydicom_settings", lambda: False)
        slow = outcome()
    assert fast == slow


def test_the_identity_comparison_can_tell_a_refusal(ct_body: bytes) -> None:
    rows = _set_value(ct_body, 0x00280010, b"\x00\x00")
    dataset = decode(BytesIO(rows), False, True)
    with pytest.raises(Refusal, match="not a positive number: '0'"):
        check_pixels(dataset, identify(dataset)["SOPClassUID"], ExplicitVRLittleEndian)
    wrong = _set_value(ct_body, 0x00280010, b"\x40\x00")  # 64 of 128 rows: Pixel Data too long
    dataset = decode(BytesIO(wrong), False, True)
    with pytest.raises(Refusal, match="32768 bytes, 16384 expected"):
        check_pixels(dataset, identify(dataset)["SOPClassUID"], ExplicitVRLittleEndian)
