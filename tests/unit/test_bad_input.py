"""Malformed input gets the C-STORE failure status of PS3.4 B.2.3 / PS3.7 Annex C with an Error
Comment naming the tag, lands in quarantine with a reason file, and never stops the node.

Cases marked ``network`` are sent as Part 10 files over a real association, byte for byte
(pynetdicom's chunked sending does not decode them); the others can only arrive by the pull and
retrieve paths, which hand bytes to the same ``Ingest.accept``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import JPEGBaseline8Bit
from pynetdicom import AE, _config
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    UltrasoundImageStorage,
    Verification,
)

from node.config import NodeConfig
from node.dicom.ingest import Ingest
from node.dicom.receiver import Receiver
from node.state import Index
from tests.conftest import free_port
from tests.unit.malformed import decode, implicit_declared_explicit_sent, part10, with_bytes


@pytest.fixture(scope="module")
def ct(refdata: Path) -> Dataset:
    return pydicom.dcmread(refdata / "pydicom" / "test_files" / "CT_small.dcm")


def _copy(ds: Dataset, **changes: object) -> Dataset:
    copy = deepcopy(ds)
    for keyword, value in changes.items():
        if value is None:
            delattr(copy, keyword)
        else:
            setattr(copy, keyword, value)
    return copy


def _instance_number_garbage(ds: Dataset) -> bytes:
    # InstanceNumber (0020,0013) IS "1 " becomes "x?" (not an integer string, PS3.5 6.2)
    return with_bytes(part10(ds), b"\x20\x00\x13\x00IS\x02\x001 ", b"\x20\x00\x13\x00IS\x02\x00x?")


def _huge_length(ds: Dataset) -> bytes:
    # Pixel Data (7FE0,0010) OW declares 0xFFFFFFF0 bytes, far more than follow
    pixel_header = b"\xe0\x7f\x10\x00OW\x00\x00"
    return with_bytes(part10(ds), pixel_header + struct.pack("<I", len(ds.PixelData)),
                      pixel_header + struct.pack("<I", 0xFFFFFFF0))


def _uid_value(ds: Dataset, new: Callable[[int], bytes]) -> bytes:
    """``ds`` with the SOP Instance UID value replaced by ``new(length)`` bytes, length kept."""
    uid = ds.SOPInstanceUID.encode()
    uid += b"\x00" * (len(uid) % 2)
    header = b"\x08\x00\x18\x00UI" + struct.pack("<H", len(uid))
    return with_bytes(part10(ds), header + uid, header + new(len(uid)))


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Dataset], bytes]
    status: int
    tag: str
    network: bool


CASES = [
    Case("truncated in Pixel Data", lambda ds: part10(ds)[:-20000], 0xA900,
         "(7FE0,0010) PixelData", True),
    Case("truncated in the header", lambda ds: part10(ds)[:1000], 0xC000, "(", True),
    Case("transfer syntax says implicit VR, data set is explicit",
         implicit_declared_explicit_sent, 0xC000, "(0002,0010) TransferSyntaxUID", True),
    Case("transfer syntax missing", lambda ds: part10(ds, declared_syntax=None), 0xC000,
         "(0002,0010) TransferSyntaxUID", False),
    Case("transfer syntax not accepted", lambda ds: part10(ds, JPEGBaseline8Bit), 0xC000,
         "(0002,0010) TransferSyntaxUID", False),
    Case("no Part 10 header", lambda ds: part10(ds)[132:], 0xC000,
         "(0002,0000) File Meta Information", False),
    Case("Pixel Data missing", lambda ds: part10(_copy(ds, PixelData=None)), 0xA900,
         "(7FE0,0010) PixelData", True),
    Case("Rows missing", lambda ds: part10(_copy(ds, Rows=None)), 0xA900, "(0028,0010) Rows", True),
    Case("Rows x Columns inconsistent with Pixel Data", lambda ds: part10(_copy(ds, Rows=1024)),
         0xA900, "(7FE0,0010) PixelData", True),
    Case("SOP class of the data set differs from the command",
         lambda ds: part10(_copy(ds, SOPClassUID=MRImageStorage), sop_class=CTImageStorage),
         0xA900, "(0008,0016) SOPClassUID", True),
    Case("SOP class the node does not store",
         lambda ds: part10(_copy(ds, SOPClassUID=UltrasoundImageStorage)), 0x0122,
         "(0008,0016) SOPClassUID", False),
    Case("SOP Instance UID empty", lambda ds: _uid_value(ds, lambda n: b" " * n), 0xC000,
         "(0008,0018) SOPInstanceUID", True),
    Case("random bytes in the SOP Instance UID",
         lambda ds: _uid_value(ds, lambda n: (b"\xff\x00A." * n)[:n]), 0xC000,
         "(0008,0018) SOPInstanceUID", True),
    Case("malformed IS value", _instance_number_garbage, 0xC000, "(0020,0013) InstanceNumber",
         True),
    Case("huge element length", _huge_length, 0xA900, "(7FE0,0010) PixelData", True),
]
"""Each malformed input, the status it must get and the tag its Error Comment must name."""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory):
    state = tmp_path_factory.mktemp("bad-input")
    config = NodeConfig(state_dir=state, listener={"port": free_port()},
                        peers=[{"name": "test", "ae_title": "TESTSCU", "host": "127.0.0.1"}])
    index = Index(config.index_path)
    receiver = Receiver(config, index)
    receiver.start()
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # send files byte for byte, never decoded
    yield config, index
    _config.STORE_SEND_CHUNKED_DATASET = chunked
    receiver.stop()
    index.close()


def send_file(port: int, path: Path) -> Dataset:
    """C-STORE the Part 10 file at ``path`` as it is; the response status dataset."""
    ae = AE(ae_title="TESTSCU")
    for syntax in (pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian):
        ae.add_requested_context(CTImageStorage, syntax)  # one context each: both accepted
    assoc = ae.associate("127.0.0.1", port, ae_title="RADIOMICS")
    assert assoc.is_established
    try:
        return assoc.send_c_store(path)
    finally:
        assoc.release()


def _reasons(config: NodeConfig) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(config.quarantine_dir.glob("*.reason.json"))]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_refused_with_status_naming_tag_and_quarantined(
        node, ct: Dataset, case: Case, tmp_path: Path) -> None:
    config, index = node
    data = case.build(ct)
    before = {r["file"] for r in _reasons(config)}
    if case.network:
        path = tmp_path / "bad.dcm"
        path.write_bytes(data)
        response = send_file(config.listener.port, path)
        status, comment = response.Status, str(response.get("ErrorComment", ""))
    else:
        outcome = Ingest(config, index).accept(data, lambda: decode(data), "test")
        status, comment = outcome.status, outcome.comment
    assert status == case.status, comment
    assert comment.startswith(case.tag), comment
    [record] = [r for r in _reasons(config) if r["file"] not in before]
    assert comment.startswith(record["tag"]) and record["reason"]
    assert (config.quarantine_dir / record["file"]).read_bytes() in (data, data[132:]) or \
        case.network  # over the network the node keeps the bytes as the association carried them
    assert index.instances.get(ct.SOPInstanceUID) is None


def test_instance_over_the_size_limit_is_out_of_resources(tmp_path: Path, ct: Dataset) -> None:
    config = NodeConfig(state_dir=tmp_path, limits={"max_instance_bytes": 10_000})
    index = Index(config.index_path)
    data = part10(ct)
    outcome = Ingest(config, index).accept(data, lambda: decode(data), "test")
    index.close()
    assert outcome.status == 0xA700 and outcome.comment.startswith("(dataset)")
    assert len(list(config.quarantine_dir.glob("*.reason.json"))) == 1


def test_node_still_serves_after_bad_input(node, ct: Dataset, tmp_path: Path) -> None:
    config, index = node
    path = tmp_path / "bad.dcm"
    path.write_bytes(part10(ct)[:500])
    assert send_file(config.listener.port, path).Status == 0xC000
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", config.listener.port, ae_title="RADIOMICS")
    valid = _copy(ct, SOPInstanceUID=pydicom.uid.generate_uid())  # CASES' UID stays unstored
    assert assoc.send_c_echo().Status == 0x0000
    assert assoc.send_c_store(valid).Status == 0x0000
    assoc.release()
    assert index.instances.get(valid.SOPInstanceUID) is not None
