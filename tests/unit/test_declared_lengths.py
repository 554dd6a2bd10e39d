"""Every declared length is checked against the bytes present before success (issue 19, item 3):
pydicom reads an element cut short at the end of the data set without a word, so a Pixel Data
declaring 2 GiB with one slice's bytes present was answered 0x0000 and spooled. Sent over a real
association (pynetdicom SCU, the file's bytes as they are) to the receiver; each refusal names
the tag, is quarantined with its reason on one log line, and nothing is indexed."""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Callable
from copy import deepcopy
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, MRImageStorage

from node.config import NodeConfig
from node.dicom.receiver import Receiver
from node.state import Index
from tests.conftest import free_port
from tests.unit.malformed import part10

PIXEL_HEADER = b"\xe0\x7f\x10\x00OW\x00\x00"
"""Pixel Data (7FE0,0010) OW, explicit VR little endian: tag, VR, two reserved bytes."""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory):
    config = NodeConfig(state_dir=tmp_path_factory.mktemp("lengths"),
                        listener={"port": free_port()},
                        peers=[{"name": "test", "ae_title": "TESTSCU", "host": "127.0.0.1"}])
    index = Index(config.index_path)
    receiver = Receiver(config, index)
    receiver.start()
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # files sent byte for byte, never decoded
    yield config, index
    _config.STORE_SEND_CHUNKED_DATASET = chunked
    receiver.stop()
    index.close()


def _ct(refdata: Path) -> Dataset:
    """CT_small with a new SOP Instance UID and nothing after Pixel Data, so that Pixel Data is
    the last element (128 x 128 x 16 bits: 32,768 bytes, exactly what Rows and Columns say)."""
    ds = pydicom.dcmread(refdata / "pydicom" / "test_files" / "CT_small.dcm")
    for tag in [element.tag for element in ds if element.tag > 0x7FE00010]:
        del ds[tag]
    ds.SOPInstanceUID = generate_uid()
    return ds


def _declared(data: bytes, ds: Dataset, length: int) -> bytes:
    """``data`` with the Pixel Data header declaring ``length`` bytes (its value unchanged)."""
    old = PIXEL_HEADER + struct.pack("<I", len(ds.PixelData))
    assert data.count(old) == 1
    return data.replace(old, PIXEL_HEADER + struct.pack("<I", length))


def pixel_data_2_gib(ds: Dataset) -> bytes:
    """The issue's case: Pixel Data declares 2 GiB; the 32 KiB present are what Rows x Columns
    x Bits Allocated say, so the Image Pixel check alone let it through."""
    return _declared(part10(ds), ds, 2**31)


def pixel_data_one_byte_more(ds: Dataset) -> bytes:
    return _declared(part10(ds), ds, len(ds.PixelData) + 2)


def trailing_padding_cut(ds: Dataset) -> bytes:
    """Data Set Trailing Padding (FFFC,FFFC) OB declaring 1,000 bytes, 10 present."""
    return part10(ds) + b"\xfc\xff\xfc\xffOB\x00\x00" + struct.pack("<I", 1000) + b"\0" * 10


def sequence_cut(ds: Dataset) -> bytes:
    """Digital Signatures Sequence (FFFA,FFFA) SQ of defined length 4,000, one item present."""
    item = b"\x00\x04\x05\x00US\x02\x00\x01\x00"  # (0400,0005) MAC ID Number US 1
    return (part10(ds) + b"\xfa\xff\xfa\xffSQ\x00\x00" + struct.pack("<I", 4000)
            + b"\xfe\xff\x00\xe0" + struct.pack("<I", len(item)) + item)


CASES: list[tuple[str, Callable[[Dataset], bytes], int, str, str]] = [
    ("Pixel Data declares 2 GiB, 32 KiB present", pixel_data_2_gib, 0xA900,
     "(7FE0,0010) PixelData", "declares 2147483648 bytes, 32768 present"),
    ("Pixel Data declares 2 bytes more than present", pixel_data_one_byte_more, 0xA900,
     "(7FE0,0010) PixelData", "declares 32770 bytes, 32768 present"),
    ("trailing padding cut short", trailing_padding_cut, 0xC000,
     "(FFFC,FFFC) DataSetTrailingPadding", "declares 1000 bytes, 10 present"),
    ("sequence cut short", sequence_cut, 0xC000, "(FFFA,FFFA) DigitalSignaturesSequence",
     "declares 4000 bytes, 18 present"),
]


def _send(config: NodeConfig, path: Path, sop_class: str, syntax: str) -> Dataset:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", config.listener.port, ae_title="RADIOMICS")
    assert assoc.is_established
    try:
        return assoc.send_c_store(path)
    finally:
        assoc.release()


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_element_longer_than_its_bytes_is_refused_naming_the_tag(
        node, refdata: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, case) -> None:
    config, index = node
    _, build, status, tag, reason = case
    ds = _ct(refdata)
    path = tmp_path / "sent.dcm"
    path.write_bytes(build(ds))
    caplog.set_level(logging.WARNING, logger="node.dicom.ingest")
    response = _send(config, path, CTImageStorage, ExplicitVRLittleEndian)
    assert response.Status == status
    assert str(response.ErrorComment).startswith(f"{tag}: {reason}"[:64])
    assert index.instances.get(ds.SOPInstanceUID) is None
    [line] = [r for r in caplog.records if r.getMessage() == "instance refused"]
    assert (line.fields["tag"], line.fields["reason"]) == (tag, reason)
    kept = config.quarantine_dir / line.fields["quarantined"]
    record = json.loads(kept.with_suffix(".reason.json").read_text())
    assert (record["tag"], record["reason"]) == (tag, reason) and kept.stat().st_size > 0


def test_encapsulated_fragment_longer_than_its_bytes_is_refused(
        node, refdata: Path, tmp_path: Path) -> None:
    """RLE Lossless Pixel Data (undefined length, PS3.5 A.4) whose one fragment declares 100
    bytes more than it holds, the Sequence Delimiter still in place: 0xA900 naming the item;
    the same file with its lengths intact is stored."""
    config, index = node
    source = refdata / "pydicom" / "test_files" / "MR_small_RLE.dcm"
    sent = pydicom.dcmread(source)
    intact = source.read_bytes()
    table = intact.index(b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff") + 12  # item 0
    (table_length,) = struct.unpack_from("<I", intact, table + 4)
    fragment = table + 8 + table_length  # item 1, the first fragment
    assert intact[fragment:fragment + 4] == b"\xfe\xff\x00\xe0"
    (length,) = struct.unpack_from("<I", intact, fragment + 4)
    broken = intact[:fragment + 4] + struct.pack("<I", length + 100) + intact[fragment + 8:]
    path = tmp_path / "broken.dcm"
    path.write_bytes(broken)
    response = _send(config, path, MRImageStorage, RLELossless)
    assert response.Status == 0xA900
    assert str(response.ErrorComment).startswith(
        f"(7FE0,0010) PixelData: item 1 declares {length + 100} bytes")
    assert index.instances.get(sent.SOPInstanceUID) is None
    assert _send(config, source, MRImageStorage, RLELossless).Status == 0x0000
    assert index.instances.get(sent.SOPInstanceUID) is not None


def test_intact_lengths_are_stored(node, refdata: Path, tmp_path: Path) -> None:
    """The check can pass: the same CT with its lengths as they are is stored, byte for byte."""
    config, index = node
    ds = _ct(refdata)
    path = tmp_path / "intact.dcm"
    data = part10(deepcopy(ds))
    path.write_bytes(data)
    assert _send(config, path, CTImageStorage, ExplicitVRLittleEndian).Status == 0x0000
    row = index.instances.get(ds.SOPInstanceUID)
    assert row is not None and Path(row.path).read_bytes()[-len(ds.PixelData):] == ds.PixelData
