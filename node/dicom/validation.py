"""Checks an incoming instance must pass before the node stores it, each failing with the C-STORE
status that PS3.4 B.2.3 (Table B.2-1) or PS3.7 Annex C gives for it and the tag at fault:

- 0xA700 Refused: Out of Resources - larger than ``limits.max_instance_bytes``;
- 0x0122 Refused: SOP Class not supported - a class the node does not store;
- 0xA900 Error: Data Set does not match SOP Class - an image without Pixel Data or the Image
  Pixel attributes, native Pixel Data whose length does not match Rows x Columns x frames x
  samples x bits, Pixel Data (or a fragment of it) declaring more bytes than are present,
  identity UIDs differing from the C-STORE command;
- 0xC000 Error: Cannot understand - no Part 10 header, missing, unsupported or untrue transfer
  syntax, elements that cannot be decoded or that declare more bytes than are present, IS/DS
  without a number, missing or invalid UIDs.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from decimal import Decimal
from io import BytesIO

from pydicom import config, hooks
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.filereader import read_preamble
from pydicom.multival import MultiValue
from pydicom.pixels.utils import get_expected_length
from pydicom.tag import Tag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import sop_class

from pipelines.io.pydicom_adapter import character_set, read_file_meta_info

OUT_OF_RESOURCES = 0xA700
SOP_CLASS_NOT_SUPPORTED = 0x0122
NOT_AUTHORIZED = 0x0124
DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000

IMAGE_CLASSES: frozenset[str] = frozenset({
    sop_class.CTImageStorage,
    sop_class.EnhancedCTImageStorage,
    sop_class.LegacyConvertedEnhancedCTImageStorage,
    sop_class.MRImageStorage,
    sop_class.EnhancedMRImageStorage,
    sop_class.LegacyConvertedEnhancedMRImageStorage,
    sop_class.PositronEmissionTomographyImageStorage,
    sop_class.SegmentationStorage,
    sop_class.SecondaryCaptureImageStorage,
})
"""Classes whose IOD requires the Image Pixel module with Pixel Data (PS3.3 A.3, A.4, A.36, A.38,
A.21, A.51, A.70, A.71, A.8)."""

STORAGE_CLASSES: tuple[str, ...] = (
    *sorted(IMAGE_CLASSES),
    sop_class.RTStructureSetStorage,
    sop_class.ComprehensiveSRStorage,
    sop_class.Comprehensive3DSRStorage,
    sop_class.ParametricMapStorage,
)
"""SOP classes the node stores (its DICOM Conformance Statement lists the same): its inputs, and
the classes of its own results (SR, SEG, Secondary Capture, Parametric Map), so that a node can
be the destination of another, or of itself as in the demo."""

TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    RLELossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEG2000Lossless,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
)
"""Transfer syntaxes accepted: the uncompressed ones and the lossless compressed ones that pydicom
decodes with pylibjpeg (tested in tests/unit/test_series.py). Lossy syntaxes are not accepted:
lossy compression changes texture features."""

NATIVE_SYNTAXES = frozenset(
    {ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
     ExplicitVRBigEndian}
)
"""Transfer syntaxes with native (not encapsulated) Pixel Data, whose length is fixed by the
Image Pixel module (PS3.5 8.1.1)."""

IMAGE_PIXEL_TAGS = (
    ("(0028,0002) SamplesPerPixel", "SamplesPerPixel"),
    ("(0028,0004) PhotometricInterpretation", "PhotometricInterpretation"),
    ("(0028,0010) Rows", "Rows"),
    ("(0028,0011) Columns", "Columns"),
    ("(0028,0100) BitsAllocated", "BitsAllocated"),
)
"""Type 1 attributes of the Image Pixel module (PS3.3 C.7.6.3) that size the Pixel Data."""


@dataclass
class Refusal(Exception):
    """Why an instance was not accepted: the status to answer, the tag at fault, the reason."""

    status: int
    tag: str
    reason: str


def _tag_name(tag: int, keyword: str = "") -> str:
    t = Tag(tag)
    return f"({t.group:04X},{t.element:04X}) {keyword}".rstrip()


def check_size(size: int, limit: int) -> None:
    """Refuse with 0xA700 an instance larger than ``limit`` bytes (limits.max_instance_bytes)."""
    if size > limit:
        raise Refusal(OUT_OF_RESOURCES, "(dataset)",
                      f"{size} bytes, more than limits.max_instance_bytes {limit}")


VRS = frozenset({
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"OB",
    b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM",
    b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT", b"UV",
})
"""The value representations of PS3.5 Table 6.2-1, as an explicit VR element carries them."""


def check_transfer_syntax(data: bytes) -> str:
    """The Transfer Syntax UID (0002,0010) of the Part 10 bytes ``data`` (PS3.10 7.1), which must
    be one the node decodes and must describe the data set that follows
    (``check_data_set_encoding``). Raise Refusal 0xC000 otherwise."""
    stream = BytesIO(data)
    try:
        read_preamble(stream, False)
        meta = read_file_meta_info(stream)  # pydicom's own Part 10 header reader
    except Exception as exc:  # pydicom raises several types on a broken header
        raise Refusal(CANNOT_UNDERSTAND, "(0002,0000) File Meta Information",
                      f"not a Part 10 header: {exc}") from exc
    syntax = str(meta.get("TransferSyntaxUID", "") or "")
    if not syntax:
        raise Refusal(CANNOT_UNDERSTAND, "(0002,0010) TransferSyntaxUID", "missing")
    if syntax not in TRANSFER_SYNTAXES:
        raise Refusal(CANNOT_UNDERSTAND, "(0002,0010) TransferSyntaxUID",
                      f"{syntax[:64]} is not accepted")
    check_data_set_encoding(syntax, stream.read(6))
    return syntax


def check_data_set_encoding(syntax: str, first: bytes) -> None:
    """The data set's first bytes ``first`` must agree with ``syntax``: its first element has a
    VR field exactly when the syntax is explicit VR (PS3.5 7.1.2, 7.1.3). Raise Refusal 0xC000
    otherwise."""
    if syntax != DeflatedExplicitVRLittleEndian and len(first) >= 6:
        explicit = bytes(first[4:6]) in VRS
        if explicit != (syntax != ImplicitVRLittleEndian):
            says = "implicit" if syntax == ImplicitVRLittleEndian else "explicit"
            raise Refusal(CANNOT_UNDERSTAND, "(0002,0010) TransferSyntaxUID",
                          f"says {says} VR, the data set is not")


ALWAYS_DECODED_VRS = frozenset({
    "AE", "AS", "CS", "DA", "DT", "TM", "UI", "UR",  # decoded as ISO 8859-1: any byte is a char
    "OB", "OD", "OF", "OL", "OW", "OV",  # kept as bytes
})
"""VRs whose raw value pydicom converts without failing, whatever the bytes, under
``plain_pydicom_settings`` (``pydicom.values.converters``: the strings are decoded with the
default ISO 8859-1 encoding, dates and times stay strings, the O* values stay bytes)."""

TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT"})
"""Text VRs decoded with the data set's character set: ``pydicom.charset.decode_bytes`` replaces
what it cannot decode (with a warning) unless reading validation is RAISE; values with an escape
sequence (ISO 2022 code extensions) take its other path and are left to pydicom here."""

NUMBER_SIZES = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "FD": 8, "SV": 8, "UV": 8}
"""Bytes per value of the binary number VRs: pydicom's ``convert_numbers`` fails exactly when the
value's length is not a multiple (PS3.5 Table 6.2-1)."""

_DS_VALUE = rb" *[+-]?(?:[0-9]{1,16}(?:\.[0-9]{0,16})?|\.[0-9]{1,16})(?:[eE][+-]?[0-9]{1,3})? *"
_IS_VALUE = rb" *[+-]?[0-9]{1,12} *"
PLAIN_DS = re.compile(rb"(?:%s)?(?:\\(?:%s)?)*" % (_DS_VALUE, _DS_VALUE))
PLAIN_IS = re.compile(rb"(?:%s)?(?:\\(?:%s)?)*" % (_IS_VALUE, _IS_VALUE))
"""DS and IS values that pydicom certainly reads as numbers: each of the backslash-separated
values empty or a plain decimal (DS) or integer (IS) between spaces (PS3.5 Table 6.2-1), no
longer than the VR allows. Anything else is left to pydicom to decide."""


def plain_pydicom_settings() -> bool:
    """Whether pydicom reads as ``_certainly_decodes`` assumes: its default hooks, no element
    callback, reading validation not RAISE, no date/time, Decimal or numpy conversion."""
    return (config.settings.reading_validation_mode != config.RAISE
            and not config.datetime_conversion and not config.use_DS_decimal
            and not config.use_DS_numpy and not config.use_IS_numpy
            and config.data_element_callback is None
            and hooks.hooks.raw_element_vr is hooks.raw_element_vr
            and hooks.hooks.raw_element_value is hooks.raw_element_value)


def _certainly_decodes(element: RawDataElement) -> bool:
    """True when ``check_elements`` would accept ``element`` after converting it: its VR (as
    pydicom looks it up: the explicit VR, or the dictionary's for implicit VR; UN, which pydicom
    may replace, and unknown VRs are not decided here) converts without failing for any value,
    or its value has a form that converts (numbers, DS, IS). False means "convert it and see"."""
    vr = element.VR
    if vr is None:
        try:
            vr = dictionary_VR(element.tag)
        except KeyError:
            return False
    value = element.value
    if value is None:
        return False
    if vr in ALWAYS_DECODED_VRS:
        return True
    if vr in TEXT_VRS:
        return b"\x1b" not in value
    size = NUMBER_SIZES.get(vr)
    if size is not None:
        return len(value) % size == 0
    if vr == "DS":
        return PLAIN_DS.fullmatch(value) is not None
    if vr == "IS":
        return PLAIN_IS.fullmatch(value) is not None
    return False


UNDEFINED_LENGTH = 0xFFFFFFFF
"""The Value Length of an element or item whose end is marked by a delimiter (PS3.5 7.1.1)."""

PIXEL_DATA_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
"""Float, Double Float and Pixel Data (PS3.3 C.7.6.3): a short value there is an image that
does not match its Image Pixel module (0xA900), elsewhere an element that cannot be read
(0xC000)."""

_ITEM = (0xFFFE, 0xE000)
"""Item tag (PS3.5 7.5): each fragment of encapsulated Pixel Data is one (PS3.5 A.4)."""


def check_length(element: RawDataElement) -> None:
    """The bytes ``element`` declares (its Value Length, PS3.5 7.1) must all be present: pydicom
    reads what there is and gives an element cut short at the end of the data set without a
    word. Encapsulated Pixel Data (undefined length) is read to its Sequence Delimiter, and each
    of its fragment items must fit in what was read (PS3.5 A.4). Raise Refusal naming the tag:
    0xA900 for pixel data, 0xC000 for any other element."""
    value = element.value
    if value is None:
        return
    declared = element.length
    if declared == UNDEFINED_LENGTH:
        if element.tag in PIXEL_DATA_TAGS:
            _check_fragments(element, value)
        return
    if len(value) < declared:
        status = DOES_NOT_MATCH_SOP_CLASS if element.tag in PIXEL_DATA_TAGS \
            else CANNOT_UNDERSTAND
        raise Refusal(status, _tag_name(element.tag, keyword_for_tag(element.tag)),
                      f"declares {declared} bytes, {len(value)} present")


def _check_fragments(element: RawDataElement, value: bytes) -> None:
    """Each item of encapsulated pixel data ``value`` (Basic Offset Table, then fragments) is an
    Item tag and a length that the value holds (PS3.5 A.4)."""
    layout = "<HHI" if element.is_little_endian else ">HHI"
    offset, end, number = 0, len(value), 0
    while offset < end:
        tag = _tag_name(element.tag, keyword_for_tag(element.tag))
        if end - offset < 8:
            raise Refusal(DOES_NOT_MATCH_SOP_CLASS, tag,
                          f"item {number} cut short: {end - offset} bytes of its header")
        group, elem, length = struct.unpack_from(layout, value, offset)
        if (group, elem) != _ITEM:
            raise Refusal(DOES_NOT_MATCH_SOP_CLASS, tag,
                          f"item {number} has tag ({group:04X},{elem:04X}), not an Item")
        if length > end - offset - 8:
            raise Refusal(DOES_NOT_MATCH_SOP_CLASS, tag,
                          f"item {number} declares {length} bytes, {end - offset - 8} present")
        offset += 8 + length
        number += 1


def check_elements(dataset: Dataset) -> None:
    """Decode every element, nested ones too; the first that declares more bytes than are
    present (``check_length``), that cannot be decoded, or an IS or DS element that holds no
    number, is named. Other VR violations (a string longer than its VR allows, say) only warn,
    as pydicom does: they are common in clinical data and harmless to the pipelines.

    Each raw element is converted on its own (``convert_raw_data_element``) and the dataset is
    left as read: storing the converted elements back would run pydicom's value validation on
    each and take several times longer (docs/history/performance.md, "Ingest", first round).
    Elements whose
    conversion cannot fail (``_certainly_decodes``: most of a CT header, and Pixel Data) are not
    converted at all; every other is, so the refusals are the same."""
    encoding = character_set(dataset)
    plain = plain_pydicom_settings()
    for element in list(dataset.elements()):
        if isinstance(element, RawDataElement):
            check_length(element)
            if plain and _certainly_decodes(element):
                continue
        try:
            converted = convert_raw_data_element(element, encoding=encoding, ds=dataset) \
                if isinstance(element, RawDataElement) else element
            value = converted.value
        except Exception as exc:  # value conversion raises many types on malformed bytes
            raise Refusal(CANNOT_UNDERSTAND, _tag_name(element.tag, keyword_for_tag(element.tag)),
                          f"cannot decode: {exc}") from exc
        if converted.VR in ("IS", "DS") and not _numbers(value):
            raise Refusal(CANNOT_UNDERSTAND, _tag_name(element.tag, keyword_for_tag(element.tag)),
                          f"not a {converted.VR} number: {str(value)[:24]!r}")
        if converted.VR == "SQ":
            for item in value:
                check_elements(item)


def _numbers(value: object) -> bool:
    """True when a decoded IS or DS value holds only numbers (or is empty); pydicom keeps a string
    it cannot read as a number as the string (PS3.5 Table 6.2-1 allows digits, sign, point,
    exponent and spaces only)."""
    values = value if isinstance(value, MultiValue) else [value]
    return all(isinstance(v, int | float | Decimal) for v in values if v not in (None, ""))


PLAIN_VALUE_VRS = frozenset({"UI", "CS", "US"})
"""VRs ``element_value`` reads from the raw bytes (a single value)."""


def element_value(dataset: Dataset, keyword: str, default: object = None) -> object:
    """``dataset.get(keyword, default)``, read from the raw bytes without converting (and storing)
    the element when it is a single UI, CS or US value and pydicom's settings are plain
    (``plain_pydicom_settings``): a UI as the ``str`` of pydicom's ``UID`` (NUL and space padding
    stripped, then surrounding white space), a CS without trailing NUL and space padding, a US of
    two bytes as its number (PS3.5 6.2). Anything else (several values, another VR, an
    unexpected length, a converted element) from ``dataset.get``. Used for the dozen attributes
    the receiver reads from every instance: converting them was as costly as decoding the data
    set."""
    tag = tag_for_keyword(keyword)
    element = dataset.get_item(tag) if tag is not None else None
    if element is None:
        return default if tag is not None else dataset.get(keyword, default)
    if isinstance(element, RawDataElement) and element.value is not None \
            and b"\\" not in element.value and plain_pydicom_settings():
        vr = element.VR or dictionary_VR(tag)
        value = element.value
        if vr == "UI":
            return value.decode("latin-1").rstrip(" \0").strip()
        if vr == "CS":
            return value.decode("latin-1").rstrip(" \0")
        if vr == "US" and len(value) == 2:
            return struct.unpack("<H" if element.is_little_endian else ">H", value)[0]
    return dataset.get(keyword, default)


def _single_int(dataset: Dataset, tag: str, keyword: str) -> int:
    value = element_value(dataset, keyword)
    if value is None or value == "":
        raise Refusal(DOES_NOT_MATCH_SOP_CLASS, tag, "missing (Image Pixel module, type 1)")
    if not isinstance(value, int) or value <= 0:
        raise Refusal(DOES_NOT_MATCH_SOP_CLASS, tag, f"not a positive number: {str(value)[:30]!r}")
    return value


def expected_length(rows: int, columns: int, samples: int, bits_allocated: int, frames: int,
                    photometric: str) -> int:
    """Bytes of native Pixel Data the Image Pixel module describes, without the padding byte:
    pydicom's ``get_expected_length(ds, "bytes")`` from the values already checked (1-bit pixels
    packed, YBR_FULL_422 two thirds; PS3.5 8.1.1, PS3.3 C.7.6.3.1.2)."""
    length = rows * columns * samples * frames
    if bits_allocated == 1:
        length = length // 8 + (length % 8 > 0)
    else:
        length *= bits_allocated // 8
    if photometric == "YBR_FULL_422":
        length = length // 3 * 2
    return length


def check_sop_class(sop_class_uid: str) -> None:
    """Refuse with 0x0122 a SOP class the node does not store (brought by pull or retrieve; over
    the listener such a class has no presentation context)."""
    if sop_class_uid not in STORAGE_CLASSES:
        raise Refusal(SOP_CLASS_NOT_SUPPORTED, "(0008,0016) SOPClassUID",
                      f"{sop_class_uid} is not stored by this node")


def check_pixels(dataset: Dataset, sop_class_uid: str, transfer_syntax: str) -> None:
    """An image class needs Pixel Data (7FE0,0010) and the Image Pixel attributes that size it;
    native Pixel Data must be exactly as long as they say, plus one padding byte at most
    (PS3.5 8.1.1, 7.1.1)."""
    if sop_class_uid not in IMAGE_CLASSES:
        return
    if "PixelData" not in dataset:
        raise Refusal(DOES_NOT_MATCH_SOP_CLASS, "(7FE0,0010) PixelData",
                      "missing in an image SOP class")
    size: dict[str, int] = {}
    for tag, keyword in IMAGE_PIXEL_TAGS:
        if keyword == "PhotometricInterpretation":
            photometric = str(element_value(dataset, keyword, "") or "")
            if not photometric:
                raise Refusal(DOES_NOT_MATCH_SOP_CLASS, tag, "missing (Image Pixel module, type 1)")
        else:
            size[keyword] = _single_int(dataset, tag, keyword)
    frames = 1
    if "NumberOfFrames" in dataset:
        frames = _single_int(dataset, "(0028,0008) NumberOfFrames", "NumberOfFrames")
    if transfer_syntax not in NATIVE_SYNTAXES:
        return
    if plain_pydicom_settings():
        expected = expected_length(size["Rows"], size["Columns"], size["SamplesPerPixel"],
                                   size["BitsAllocated"], frames, photometric)
    else:
        expected = get_expected_length(dataset, "bytes")
    pixels = dataset.get_item(0x7FE00010)
    actual = len(pixels.value) if isinstance(pixels, RawDataElement) and \
        pixels.value is not None else len(dataset.PixelData)
    if actual not in (expected, expected + expected % 2):
        raise Refusal(DOES_NOT_MATCH_SOP_CLASS, "(7FE0,0010) PixelData",
                      f"{actual} bytes, {expected} expected")
