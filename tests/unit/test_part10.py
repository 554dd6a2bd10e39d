"""node.dicom.part10: the File Meta Information the receiver writes is what pydicom writes for the
same values, the file it makes reads back as sent, and the spool writes split buffers in order."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless
from pynetdicom.dsutils import create_file_meta

from node.dicom.part10 import PREAMBLE, Part10, file_meta_header
from node.state.spool import write_durably


@pytest.mark.parametrize("instance",
                         ["1.2.3.4", "1.2.3.45", "1.2.826.0.1.3680043.8.498." + "9" * 38])
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                                    JPEGLSLossless])
def test_header_is_what_pydicom_writes(instance: str, syntax: str) -> None:
    expected = BytesIO()
    write_file_meta_info(expected, create_file_meta(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2", sop_instance_uid=instance,
        transfer_syntax=syntax))
    header = file_meta_header("1.2.840.10008.5.1.4.1.1.2", instance, syntax)
    assert header == PREAMBLE + expected.getvalue()


def test_part10_file_reads_back_with_the_data_set_as_sent(tmp_path: Path, refdata: Path) -> None:
    source = pydicom.dcmread(refdata / "pydicom" / "test_files" / "CT_small.dcm")
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, source)  # the data set only, as a C-STORE carries it
    data = Part10(file_meta_header(source.SOPClassUID, source.SOPInstanceUID,
                                   ExplicitVRLittleEndian), body.getvalue(),
                  ExplicitVRLittleEndian)
    target = tmp_path / "spool" / "a.dcm"
    write_durably(target, *data.chunks)
    assert target.read_bytes() == bytes(data) and len(data) == target.stat().st_size
    back = pydicom.dcmread(target)
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert back.file_meta.MediaStorageSOPInstanceUID == source.SOPInstanceUID
    assert back.PixelData == source.PixelData and back.PatientName == source.PatientName


def test_write_durably_joins_chunks_in_order(tmp_path: Path) -> None:
    chunks = [b"a" * 3, memoryview(b"bcd" * 100_000), b"", b"e"]
    write_durably(tmp_path / "x" / "f", *chunks)
    assert (tmp_path / "x" / "f").read_bytes() == b"".join(bytes(c) for c in chunks)
    assert not list((tmp_path / "x").glob(".incoming-*"))
