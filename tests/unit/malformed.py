"""Builders of malformed DICOM input for the bad-input and fuzz tests: Part 10 bytes written
piece by piece, so the file meta can say one thing and the data set another."""

from __future__ import annotations

from io import BytesIO

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian


def part10(dataset: Dataset, declared_syntax: str | None = ExplicitVRLittleEndian,
           body_implicit: bool = False, sop_class: str | None = None) -> bytes:
    """Preamble, file meta declaring ``declared_syntax`` (none when None) and ``sop_class`` (the
    data set's own when None), then ``dataset`` encoded as ``body_implicit`` says."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class or dataset.SOPClassUID
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    if declared_syntax is not None:
        meta.TransferSyntaxUID = declared_syntax
    head = DicomBytesIO()
    head.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=declared_syntax is not None)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, body_implicit
    write_dataset(body, dataset)
    return head.getvalue() + body.getvalue()


def with_bytes(data: bytes, find: bytes, replace: bytes) -> bytes:
    """``data`` with the first ``find`` replaced; the test fails if it is absent."""
    assert find in data, find
    return data.replace(find, replace, 1)


def decode(data: bytes) -> Dataset:
    """How the pull and retrieve paths decode what they fetched."""
    return pydicom.dcmread(BytesIO(data))


def implicit_declared_explicit_sent(dataset: Dataset) -> bytes:
    """File meta says Implicit VR Little Endian, the data set is Explicit VR."""
    return part10(dataset, ImplicitVRLittleEndian, body_implicit=False)
