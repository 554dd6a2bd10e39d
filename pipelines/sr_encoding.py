"""The NUM content items of a TID 1500 report encoded straight to bytes, and the Content Sequence
of a measurement group handed to pydicom as one raw element.

A ``ct-liver-crlm`` report holds 1037 NUMs per ROI variant, 4 variants per lesion: 8 288 content
items for two lesions, 46 000 for ten. Built as pydicom ``Dataset`` objects (7 datasets and 9
sequences per NUM) and written by ``pydicom.dcmwrite``, they took 8 s of a 27 s study on the
demonstration CT. Here each NUM is cut from a template made once per feature key: only the
Floating Point Value, the Numeric Value and the three length fields that depend on it change.

Encoding: Explicit VR Little Endian (PS3.5 7.1.2, the transfer syntax highdicom gives the SR),
every sequence and item with an explicit length (PS3.5 7.5.1), values padded to even length
(PS3.5 6.2: text with a space, PS3.5 6.2 for DS), text in the report's Specific Character Set
(PS3.5 6.1). These are the bytes pydicom writes for the same items (a test compares them with
``highdicom.sr.Measurement`` written by pydicom).

The group's Content Sequence becomes a ``RawDataElement``: pydicom writes a raw element's value
as it is (``pydicom.filewriter.write_data_element``) if the dataset holding it says it was
encoded in the file's transfer syntax and character set (``Dataset.set_original_encoding``);
otherwise it first decodes it, which stays correct (e.g. an export in another transfer syntax),
only slower. Reading the element (``group.ContentSequence``) decodes it like a read file does.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from functools import cache

from pydicom.charset import encode_string
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_sequence_item
from pydicom.sr.coding import Code
from pydicom.tag import Tag
from pydicom.valuerep import AMBIGUOUS_VR as AMBIGUOUS_VRS
from pydicom.valuerep import format_number_as_ds

from pipelines.codes import feature_concept, image_filter_concept

_ITEM = b"\xfe\xff\x00\xe0"  # (FFFE,E000) Item, PS3.5 7.5.2
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT",
                       "UV"})  # 4-byte length in Explicit VR (PS3.5 Table 7.1-1)
_CONTENT_SEQUENCE = 0x0040A730
_MEASUREMENT_METHOD = Code("370129005", "SCT", "Measurement Method")


def _header(tag: int, vr: str, length: int) -> bytes:
    """Tag, VR and length of an Explicit VR Little Endian data element (PS3.5 7.1.2)."""
    if vr in _LONG_VRS:
        return struct.pack("<HH2sHL", tag >> 16, tag & 0xFFFF, vr.encode(), 0, length)
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), length)


def _element(tag: int, vr: str, value: bytes) -> bytes:
    return _header(tag, vr, len(value)) + value


def _text(tag: int, vr: str, text: str, encodings: Sequence[str]) -> bytes:
    """A text element, padded with a space to even length (PS3.5 6.2)."""
    value = encode_string(text, list(encodings))
    return _element(tag, vr, value + b" " if len(value) % 2 else value)


def _item(body: bytes) -> bytes:
    return _ITEM + struct.pack("<L", len(body)) + body


def _sequence(tag: int, *items: bytes) -> bytes:
    """A sequence of explicit length holding the given item bodies."""
    return _element(tag, "SQ", b"".join(_item(body) for body in items))


def _code(value: str, scheme: str, meaning: str, version: str | None,
          encodings: Sequence[str]) -> bytes:
    """A Code Sequence item's body (PS3.3 8.8, Table 8.8-1): Code Value, or Long Code Value
    (UC) when over 16 characters, Coding Scheme Designator, Version if any, Code Meaning, in tag
    order."""
    parts = [] if len(value) > 16 else [_text(0x00080100, "SH", value, encodings)]
    parts.append(_text(0x00080102, "SH", scheme, encodings))
    if version:
        parts.append(_text(0x00080103, "SH", version, encodings))
    parts.append(_text(0x00080104, "LO", meaning, encodings))
    if len(value) > 16:
        parts.append(_text(0x00080119, "UC", value, encodings))
    return b"".join(parts)


def _concept(concept: Code, encodings: Sequence[str]) -> bytes:
    return _code(concept.value, concept.scheme_designator, concept.meaning,
                 concept.scheme_version, encodings)


@cache
def _template(key: str, modality: str, encodings: tuple[str, ...]) -> tuple[bytes, bytes, bytes]:
    """(elements before the Measured Value Sequence, the elements of its item before the
    values, the elements after it) of the NUM of feature ``key``; made once per process."""
    concept = feature_concept(key, modality)
    head = b"".join([
        _text(0x0040A010, "CS", "CONTAINS", encodings),
        _text(0x0040A040, "CS", "NUM", encodings),
        _sequence(0x0040A043, _concept(concept.name, encodings)),
    ])
    unit = _sequence(0x004008EA, _concept(concept.unit, encodings))
    method = b"".join([
        _text(0x0040A010, "CS", "HAS CONCEPT MOD", encodings),
        _text(0x0040A040, "CS", "CODE", encodings),
        _sequence(0x0040A043, _concept(_MEASUREMENT_METHOD, encodings)),
        _sequence(0x0040A168, _concept(image_filter_concept(concept.image_filter), encodings)),
    ])
    return head, unit, _sequence(_CONTENT_SEQUENCE, method)


def num_item(key: str, value: float, modality: str, encodings: tuple[str, ...]) -> bytes:
    """The item (FFFE,E000) of the NUM of feature ``key`` (a pyradiomics key) measured on an
    image of ``modality``, with its length, ready for a Content Sequence (PS3.3 C.17.3.2.1,
    C.18.1; TID 1419 / TID 300): Relationship Type CONTAINS, Value Type NUM, the concept name,
    the Measured Value Sequence (UCUM unit, Floating Point Value FD with the exact double,
    Numeric Value DS as pydicom's ``DS(value, auto_format=True)`` gives it) and the image filter
    as Measurement Method (HAS CONCEPT MOD, SCT 370129005), as :mod:`pipelines.codes` names
    them. ``encodings`` are the report's (``pydicom.charset.convert_encodings``)."""
    head, unit, tail = _template(key, modality, encodings)
    number = format_number_as_ds(float(value)).encode("ascii")
    measured = b"".join([
        unit,
        _element(0x0040A161, "FD", struct.pack("<d", value)),
        _element(0x0040A30A, "DS", number + b" " if len(number) % 2 else number),
    ])
    return _item(head + _element(0x0040A300, "SQ", _item(measured)) + tail)


def encoded_items(items: Iterable[Dataset], encodings: Sequence[str]) -> bytes:
    """Content items built as pydicom datasets, encoded by pydicom as sequence items in Explicit
    VR Little Endian (the bytes ``dcmwrite`` would write for them inside a sequence)."""
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    for item in items:
        write_sequence_item(buffer, item, list(encodings))
    return buffer.getvalue()


def written_as_is(dataset: Dataset) -> Dataset:
    """Mark ``dataset`` as encoded in Explicit VR Little Endian and its own character set, so that
    pydicom writes its raw elements without decoding them; returns it."""
    dataset.set_original_encoding(False, True, dataset._character_set)
    return dataset


def written_as_is_throughout(dataset: Dataset) -> Dataset:
    """:func:`written_as_is` for ``dataset`` and every dataset nested in it whose elements have
    no ambiguous VR (PS3.5 Annex A.1 (c); those are left to pydicom to resolve), without
    decoding raw elements; returns ``dataset``. pydicom otherwise resolves ambiguous VRs in
    every nested dataset again at each level of nesting it writes."""
    ambiguous = False
    for element in dataset.elements():
        if element.VR in AMBIGUOUS_VRS:
            ambiguous = True
        elif element.VR == "SQ" and not isinstance(element, RawDataElement):
            for item in element.value:
                written_as_is_throughout(item)
    return dataset if ambiguous else written_as_is(dataset)


def raw_content_sequence(content: bytes) -> RawDataElement:
    """A Content Sequence (0040,A730) of explicit length whose value is ``content``, encoded
    items one after another."""
    return RawDataElement(Tag(_CONTENT_SEQUENCE), "SQ", len(content), content, 0, False, True)
