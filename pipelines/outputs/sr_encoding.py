"""The bulk of a TID 1500 report encoded straight to bytes: the NUM items of the measurement
groups and the Image Library entries, each handed to pydicom inside one raw Content Sequence.

A ``ct-liver-crlm`` feature report holds 1037 NUMs per ROI variant, 4 variants per lesion: 8 296
for two lesions, 41 480 for ten. Built as pydicom ``Dataset`` objects and written by
``pydicom.dcmwrite``, they took 8 s of a 27 s study on the demonstration CT (when each NUM had a
Measurement Method child). Here each NUM is cut from a template made once per feature key: only
the Floating Point Value, the Numeric Value and the two length fields that depend on it change.

Encoding: Explicit VR Little Endian (PS3.5 7.1.2, the transfer syntax highdicom gives the SR),
every sequence and item with an explicit length (PS3.5 7.5.1), values padded to even length
(PS3.5 6.2: text with a space, PS3.5 6.2 for DS), text in the report's Specific Character Set
(PS3.5 6.1). These are the bytes pydicom writes for the same items (tests compare them with
``highdicom.sr.Measurement`` and ``highdicom.sr.ImageLibrary`` written by pydicom).

The Image Library (TID 1600) has an entry per source image of about 25 content items; highdicom
builds one in about 8 ms, 2.3 s for a 300-slice series. :func:`image_library` encodes the
entries of classic CT, MR and PET images (TID 1601 with the TID 1604 cross-sectional
descriptors, as ``highdicom.sr.ImageLibraryEntryDescriptors`` gives them) and leaves every other
image to highdicom.

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

import highdicom as hd
from pydicom.charset import encode_string
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_sequence_item
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.tag import Tag
from pydicom.uid import (
    CTImageStorage,
    MRImageStorage,
    PositronEmissionTomographyImageStorage,
)
from pydicom.valuerep import AMBIGUOUS_VR as AMBIGUOUS_VRS
from pydicom.valuerep import DS

from pipelines.io.pydicom_adapter import character_set
from pipelines.outputs.codes import FeatureCodeError, feature_concept

_ITEM = b"\xfe\xff\x00\xe0"  # (FFFE,E000) Item, PS3.5 7.5.2
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT",
                       "UV"})  # 4-byte length in Explicit VR (PS3.5 Table 7.1-1)
_CONTENT_SEQUENCE = 0x0040A730


def _header(tag: int, vr: str, length: int) -> bytes:
    """Tag, VR and length of an Explicit VR Little Endian data element (PS3.5 7.1.2)."""
    if vr in _LONG_VRS:
        return struct.pack("<HH2sHL", tag >> 16, tag & 0xFFFF, vr.encode(), 0, length)
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), length)


def _element(tag: int, vr: str, value: bytes) -> bytes:
    return _header(tag, vr, len(value)) + value


def _text(tag: int, vr: str, text: str, encodings: Sequence[str]) -> bytes:
    """A text element, padded with a space to even length (PS3.5 6.2); no ``encodings``: an
    ASCII text (:func:`_ascii_template`)."""
    value = encode_string(text, list(encodings)) if encodings else text.encode("ascii")
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


def _numeric_value(value: float) -> bytes:
    """Numeric Value (0040,A30A) as highdicom sets it, ``DS(value, auto_format=True)``."""
    number = str(DS(value, auto_format=True)).encode("ascii")
    return _element(0x0040A30A, "DS", number + b" " if len(number) % 2 else number)


def _concept(concept: Code, encodings: Sequence[str]) -> bytes:
    return _code(concept.value, concept.scheme_designator, concept.meaning,
                 concept.scheme_version, encodings)


def _template_codes(key: str, modality: str) -> tuple[Code, Code]:
    """The codes of the NUM of feature ``key``: concept name and unit (what its template holds,
    and what :func:`_ascii_template` checks)."""
    concept = feature_concept(key, modality)
    return concept.name, concept.unit


@cache
def _template(key: str, modality: str, encodings: tuple[str, ...]) -> tuple[bytes, bytes]:
    """(elements before the Measured Value Sequence, the elements of its item before the
    values) of the NUM of feature ``key``; made once per process (for every report when its
    texts are ASCII: ``encodings`` empty, :func:`_ascii_template`)."""
    name, unit_code = _template_codes(key, modality)
    head = b"".join([
        _text(0x0040A010, "CS", "CONTAINS", encodings),
        _text(0x0040A040, "CS", "NUM", encodings),
        _sequence(0x0040A043, _concept(name, encodings)),
    ])
    return head, _sequence(0x004008EA, _concept(unit_code, encodings))


@cache
def _ascii_template(key: str, modality: str) -> bool:
    """Whether every text of the NUM template of feature ``key`` is ASCII. Its bytes are then
    the same in every character set a report may declare (each keeps ASCII in its single-byte
    or G0 part, PS3.5 6.1; ``tests/unit/test_sr_encoding.py`` checks pydicom's encoders), so
    one template, made without the report's encodings, serves every report."""
    return all(text.isascii()
               for code in _template_codes(key, modality)
               for text in (code.value, code.scheme_designator, code.meaning,
                            code.scheme_version or ""))


def prepare_templates(keys: Iterable[str], modality: str) -> int:
    """Make the NUM templates of feature ``keys`` (pyradiomics keys) for reports on images of
    ``modality`` now, e.g. when a job worker starts, so that the first report does not make
    them (about 0.13 s for the 1 036 features of ``ct-liver-crlm``). Keys without a concept in
    ``pipelines.outputs.codes``, or with non-ASCII texts (their template depends on the report's
    character set), are left for the report. Returns the number of templates made."""
    made = 0
    for key in keys:
        try:
            if not _ascii_template(key, modality):
                continue
        except FeatureCodeError:
            continue
        _template(key, modality, ())
        made += 1
    return made


def num_item(key: str, value: float, modality: str, encodings: tuple[str, ...],
             unit: Code | None = None) -> bytes:
    """The item (FFFE,E000) of the NUM of feature ``key`` (a pyradiomics key) measured on an
    image of ``modality``, with its length, ready for a Content Sequence (PS3.3 C.17.3.2.1,
    C.18.1; TID 1419 / TID 300): Relationship Type CONTAINS, Value Type NUM, the concept name
    and the Measured Value Sequence (UCUM unit, Floating Point Value FD with the exact double,
    Numeric Value DS as pydicom's ``DS(value, auto_format=True)`` gives it), as
    :mod:`pipelines.outputs.codes` names them, and no child: the image filter is the group's
    Measurement Method (``pipelines.outputs.feature_report``). ``encodings`` are the report's
    (``pydicom.charset.convert_encodings``). ``unit`` replaces the feature's unit (e.g. percent,
    for a relative change)."""
    head, units = _template(key, modality,
                            () if _ascii_template(key, modality) else encodings)
    if unit is not None:
        units = _sequence(0x004008EA, _concept(unit, encodings))
    measured = b"".join([units, _element(0x0040A161, "FD", struct.pack("<d", value)),
                         _numeric_value(float(value))])
    return _item(head + _element(0x0040A300, "SQ", _item(measured)))


_ACQUISITION_CONTEXT = "HAS ACQ CONTEXT"
_CLASSIC_IMAGES = {  # SOP Class UID -> CID 29 Acquisition Modality, as highdicom maps them
    CTImageStorage: codes.cid29.ComputedTomography,
    MRImageStorage: codes.cid29.MagneticResonance,
    PositronEmissionTomographyImageStorage: codes.cid29.PositronEmissionTomography,
}
_MODALITIES = {  # Modality (0008,0060) of a multi-frame image -> CID 29 Acquisition Modality
    "CT": codes.cid29.ComputedTomography,
    "MR": codes.cid29.MagneticResonance,
    "PT": codes.cid29.PositronEmissionTomography,
}
_PIXELS = Code("{pixels}", "UCUM", "Pixels")
_DIRECTION = Code("{-1:1}", "UCUM", "{-1:1}")
_SOURCE = Code("260753009", "SCT", "Source")
_ORIENTATION = (codes.DCM.ImageOrientationPatientRowX, codes.DCM.ImageOrientationPatientRowY,
                codes.DCM.ImageOrientationPatientRowZ, codes.DCM.ImageOrientationPatientColumnX,
                codes.DCM.ImageOrientationPatientColumnY,
                codes.DCM.ImageOrientationPatientColumnZ)
_POSITION = (codes.DCM.ImagePositionPatientX, codes.DCM.ImagePositionPatientY,
             codes.DCM.ImagePositionPatientZ)


def _uid(tag: int, value: str) -> bytes:
    """A UI element, padded with NUL to even length (PS3.5 6.2)."""
    data = str(value).encode("ascii")
    return _element(tag, "UI", data + b"\0" if len(data) % 2 else data)


def _descriptor(value_type: str, name: Code, value: bytes, encodings: Sequence[str]) -> bytes:
    """An Image Library Entry Descriptor content item (HAS ACQ CONTEXT) with its value
    elements."""
    return b"".join([
        _text(0x0040A010, "CS", _ACQUISITION_CONTEXT, encodings),
        _text(0x0040A040, "CS", value_type, encodings),
        _sequence(0x0040A043, _concept(name, encodings)),
        value,
    ])


def _acquisition_num(name: Code, value: float, unit: Code, encodings: Sequence[str]) -> bytes:
    """A NUM descriptor as ``highdicom.sr.NumContentItem`` encodes it: Numeric Value as pydicom's
    ``DS(value, auto_format=True)``, Floating Point Value only for a float."""
    measured = [_sequence(0x004008EA, _concept(unit, encodings))]
    if isinstance(value, float):
        measured.append(_element(0x0040A161, "FD", struct.pack("<d", value)))
    measured.append(_numeric_value(value))
    return _descriptor("NUM", name, _element(0x0040A300, "SQ", _item(b"".join(measured))),
                       encodings)


def _classic(image: Dataset) -> bool:
    """Whether ``image`` is a single-frame CT, MR or PET image with the attributes of the
    cross-sectional descriptors, whose entry :func:`_entry` encodes as highdicom would."""
    return (str(image.get("SOPClassUID", "")) in _CLASSIC_IMAGES
            and image.get("Modality") in ("CT", "MR", "PT")
            and all(image.get(keyword) is not None for keyword in (
                "Rows", "Columns", "PixelSpacing", "ImagePositionPatient",
                "ImageOrientationPatient")))


def _multi_frame(image: Dataset) -> bool:
    """Whether ``image`` is a multi-frame CT, MR or PET image whose geometry is in functional
    groups (PS3.3 C.7.6.16: Enhanced and Legacy Converted Enhanced CT/MR/PET), for which
    highdicom 0.28's Image Library reads image-level attributes that such an image lacks."""
    return (image.get("Modality") in _MODALITIES and "PerFrameFunctionalGroupsSequence" in image
            and image.get("Rows") is not None and image.get("Columns") is not None)


def _shared_group(image: Dataset, keyword: str) -> Dataset | None:
    """The item of a functional group macro that all frames share: from the Shared Functional
    Groups Sequence, or the per-frame item when there is one frame (PS3.3 C.7.6.16)."""
    holders = [*image.get("SharedFunctionalGroupsSequence", [])]
    frames = image.get("PerFrameFunctionalGroupsSequence", [])
    if len(frames) == 1:
        holders.append(frames[0])
    for holder in holders:
        if keyword in holder and len(holder[keyword].value) > 0:
            return holder[keyword].value[0]
    return None


def _entry(image: Dataset, encodings: Sequence[str]) -> bytes:
    """The body of one Image Library Entry (TID 1601): an IMAGE item referencing ``image``
    (concept SCT 260753009 "Source") with the descriptors of TID 1602 and TID 1604 in
    highdicom's order: modality, frame of reference, rows, columns, horizontal and vertical
    pixel spacing, slice thickness, position x/y/z, orientation, spacing between slices. An
    empty Slice Thickness (Type 2, PS3.3 C.7.6.2: unknown) gives no descriptor: a NUM needs a
    value (PS3.3 C.18.1).

    For a multi-frame image (:func:`_multi_frame`) the TID 1604 descriptors are those that hold
    for every frame: pixel spacing and slice thickness of the shared Pixel Measures, the
    orientation of the shared Plane Orientation, the position only when there is one frame;
    a descriptor whose value differs between frames is left out (TID 1604 describes one plane)."""
    if str(image.SOPClassUID) in _CLASSIC_IMAGES and not _multi_frame(image):
        modality = _CLASSIC_IMAGES[str(image.SOPClassUID)]
        spacing, thickness = image.PixelSpacing, image.get("SliceThickness")
        position, orientation = image.ImagePositionPatient, image.ImageOrientationPatient
    else:
        modality = _MODALITIES[str(image.Modality)]
        measures = _shared_group(image, "PixelMeasuresSequence") or Dataset()
        spacing, thickness = measures.get("PixelSpacing"), measures.get("SliceThickness")
        plane = _shared_group(image, "PlaneOrientationSequence") or Dataset()
        orientation = plane.get("ImageOrientationPatient")
        located = _shared_group(image, "PlanePositionSequence") or Dataset()
        position = located.get("ImagePositionPatient") \
            if len(image.PerFrameFunctionalGroupsSequence) == 1 else None
    descriptors = [_descriptor("CODE", codes.DCM.Modality,
                               _sequence(0x0040A168, _concept(modality, encodings)), encodings)]
    if "FrameOfReferenceUID" in image:
        descriptors.append(_descriptor("UIDREF", codes.DCM.FrameOfReferenceUID,
                                       _uid(0x0040A124, image.FrameOfReferenceUID), encodings))
    descriptors += [
        _acquisition_num(codes.DCM.PixelDataRows, image.Rows, _PIXELS, encodings),
        _acquisition_num(codes.DCM.PixelDataColumns, image.Columns, _PIXELS, encodings),
    ]
    if spacing is not None:
        descriptors += [
            _acquisition_num(codes.DCM.HorizontalPixelSpacing, spacing[1], codes.UCUM.Millimeter,
                             encodings),
            _acquisition_num(codes.DCM.VerticalPixelSpacing, spacing[0], codes.UCUM.Millimeter,
                             encodings),
        ]
    if thickness not in (None, ""):
        descriptors.append(_acquisition_num(codes.DCM.SliceThickness, thickness,
                                            codes.UCUM.Millimeter, encodings))
    if position is not None:
        descriptors += [_acquisition_num(name, value, codes.UCUM.Millimeter, encodings)
                        for name, value in zip(_POSITION, position, strict=True)]
    if orientation is not None:
        descriptors += [_acquisition_num(name, value, _DIRECTION, encodings)
                        for name, value in zip(_ORIENTATION, orientation, strict=True)]
    if image.get("SpacingBetweenSlices") is not None:
        descriptors.append(_acquisition_num(codes.DCM.SpacingBetweenSlices,
                                            image.SpacingBetweenSlices, codes.UCUM.Millimeter,
                                            encodings))
    return b"".join([
        _sequence(0x00081199, _uid(0x00081150, image.SOPClassUID)
                  + _uid(0x00081155, image.SOPInstanceUID)),
        _text(0x0040A010, "CS", "CONTAINS", encodings),
        _text(0x0040A040, "CS", "IMAGE", encodings),
        _sequence(0x0040A043, _concept(_SOURCE, encodings)),
        _sequence(_CONTENT_SEQUENCE, *descriptors),
    ])


def image_library(images: Sequence[Dataset], encodings: Sequence[str]) -> Dataset:
    """The Image Library container (TID 1600) of ``images``, as ``highdicom.sr.ImageLibrary``
    builds it: one Image Library Group per modality and frame of reference (in order of first
    appearance) with its images' entries (highdicom 0.28 gives the group no Frame of Reference
    UID item of its own; each entry has one). For classic CT, MR and PET images, and multi-frame
    ones whose geometry is in functional groups, the groups' Content Sequences are raw elements of
    entries encoded here (:func:`_entry`); otherwise highdicom builds the whole library."""
    if not images or not all(_classic(image) or _multi_frame(image) for image in images):
        return hd.sr.ImageLibrary(list(images))[0]
    groups: dict[tuple[str, ...], list[Dataset]] = {}
    for image in images:
        key = (str(image.SOPClassUID), *([str(image.FrameOfReferenceUID)]
                                         if "FrameOfReferenceUID" in image else []))
        groups.setdefault(key, []).append(image)
    group_items = []
    for members in groups.values():
        group = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibraryGroup,
                                           relationship_type="CONTAINS")
        group[_CONTENT_SEQUENCE] = raw_content_sequence(
            b"".join(_item(_entry(image, encodings)) for image in members))
        group_items.append(written_as_is(group))
    library = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibrary, relationship_type="CONTAINS")
    library[_CONTENT_SEQUENCE] = raw_content_sequence(encoded_items(group_items, encodings))
    return written_as_is(library)


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
    dataset.set_original_encoding(False, True, character_set(dataset))
    return dataset


def written_as_is_throughout(dataset: Dataset) -> Dataset:
    """:func:`written_as_is` for ``dataset`` and every dataset nested in it whose elements have
    no ambiguous VR (PS3.5 Annex A.1 (c); those are left to pydicom to resolve), without
    decoding raw elements; returns ``dataset``. pydicom otherwise resolves ambiguous VRs in
    every nested dataset again at each level of nesting it writes. A dataset decoded from
    another encoding (e.g. a sequence copied from an Implicit VR source, whose raw elements carry
    no VR) is left to pydicom to convert."""
    left_to_pydicom = dataset.original_encoding not in ((None, None), (False, True))
    for element in dataset.elements():
        if element.VR in AMBIGUOUS_VRS:
            left_to_pydicom = True
        elif element.VR == "SQ" and not isinstance(element, RawDataElement):
            for item in element.value:
                written_as_is_throughout(item)
    return dataset if left_to_pydicom else written_as_is(dataset)


def raw_content_sequence(content: bytes) -> RawDataElement:
    """A Content Sequence (0040,A730) of explicit length whose value is ``content``, encoded
    items one after another."""
    return RawDataElement(Tag(_CONTENT_SEQUENCE), "SQ", len(content), content, 0, False, True)
