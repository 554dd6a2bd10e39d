"""Fuzzing the storage SCP with hypothesis: mutated CT instances, sent byte for byte over one
loopback association, never stop the node; every refusal is quarantined, every success is on
disk and indexed (acknowledged == stored); afterwards the node answers C-ECHO and stores a valid
instance.

Two strategies, 260 examples each, derandomized so CI sees the same 520 inputs every run:
element-level mutations (delete an element, random bytes of the wrong VR in its value, a value of
another length, a declared length far past the end, random bytes in a UID or in Pixel Data) and
byte-level mutations of the data set (flip, truncate, insert). The File Meta Information is kept
intact so that the client can address the C-STORE at all.
"""

from __future__ import annotations

import struct
from collections import Counter
from copy import deepcopy
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.filereader import _read_file_meta_info, data_element_generator, read_preamble
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, Verification

from node.config import NodeConfig
from node.dicom.receiver import Receiver
from node.state import Index
from tests.conftest import free_port
from tests.unit.malformed import part10

LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"}
"""Explicit VRs with a 4-byte length after 2 reserved bytes (PS3.5 7.1.2)."""

FUZZ = settings(max_examples=260, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])

OUTCOMES: Counter[str] = Counter()
"""Status counts over the whole module, printed at the end for the reliability report."""


class Fuzzed:
    """The node under test, one association kept open, and the running tally."""

    def __init__(self, config: NodeConfig, index: Index, base: Dataset, folder: Path):
        self.config, self.index, self.base, self.folder = config, index, base, folder
        self.assoc = None
        self.count = 0
        self.sent = self.acknowledged = self.stored = self.refused = self.quarantined = 0

    def instance(self) -> tuple[bytes, str, int]:
        """A valid Part 10 CT with a fresh SOP Instance UID; and where its data set starts."""
        ds = deepcopy(self.base)
        self.count += 1  # a fresh UID of constant length: every example has the same layout
        ds.SOPInstanceUID = f"2.25.1{self.count:019d}"
        data = part10(ds, ExplicitVRLittleEndian)
        stream = BytesIO(data)
        read_preamble(stream, False)
        _read_file_meta_info(stream)
        return data, ds.SOPInstanceUID, stream.tell()

    def send(self, data: bytes, uid: str) -> int:
        if self.assoc is None or not self.assoc.is_established:
            ae = AE(ae_title="FUZZER")
            ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
            ae.add_requested_context(Verification)
            self.assoc = ae.associate("127.0.0.1", self.config.listener.port,
                                      ae_title="RADIOMICS")
            assert self.assoc.is_established
        path = self.folder / "fuzzed.dcm"
        path.write_bytes(data)
        before = len(list(self.config.quarantine_dir.glob("*.reason.json")))
        response = self.assoc.send_c_store(path)
        assert "Status" in response, "the node did not answer"
        status = int(response.Status)
        self.sent += 1
        OUTCOMES[f"0x{status:04X}"] += 1
        after = len(list(self.config.quarantine_dir.glob("*.reason.json")))
        if status == 0x0000:
            self.acknowledged += 1
            row = self.index.instances.get(uid)
            assert row is not None and Path(row.path).is_file(), "acknowledged but not stored"
            self.stored += 1
            assert after == before
        else:
            self.refused += 1
            assert str(response.get("ErrorComment", "")).startswith("("), "no tag named"
            assert after == before + 1, "refused but not quarantined"
            self.quarantined += 1
        return status


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory, refdata: Path):
    folder = tmp_path_factory.mktemp("fuzz")
    config = NodeConfig(state_dir=folder / "state", listener={"port": free_port()},
                        peers=[{"name": "fuzzer", "ae_title": "FUZZER", "host": "127.0.0.1"}])
    index = Index(config.index_path)
    receiver = Receiver(config, index)
    receiver.start()
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # the bytes go out as they are, never decoded
    base = pydicom.dcmread(refdata / "pydicom" / "test_files" / "CT_small.dcm")
    state = Fuzzed(config, index, base, folder)
    yield state
    _config.STORE_SEND_CHUNKED_DATASET = chunked
    if state.assoc is not None and state.assoc.is_established:
        state.assoc.release()
    receiver.stop()
    index.close()
    print(f"\nfuzz: sent {state.sent}, acknowledged {state.acknowledged}, stored {state.stored}, "
          f"refused {state.refused}, quarantined {state.quarantined}; statuses {dict(OUTCOMES)}")


def _elements(data: bytes, start: int) -> list[tuple[int, int, int, str]]:
    """(header offset, value offset, value length, VR) of each top-level element."""
    found = []
    for raw in data_element_generator(BytesIO(data[start:]), False, True):
        header = 12 if raw.VR in LONG_VRS else 8
        found.append((start + raw.value_tell - header, start + raw.value_tell, raw.length,
                      str(raw.VR)))
    return found


@st.composite
def element_mutation(draw: st.DrawFn, fuzz: Fuzzed) -> tuple[bytes, str]:
    data, uid, start = fuzz.instance()
    elements = _elements(data, start)
    header, value, length, vr = draw(st.sampled_from(elements))
    long_vr = vr in LONG_VRS
    kind = draw(st.sampled_from(["delete", "wrong bytes", "other length", "huge length",
                                 "uid bytes", "pixel bytes"]))
    if kind == "uid bytes":
        uids = [e for e in elements if e[3] == "UI"]
        header, value, length, vr = draw(st.sampled_from(uids))
        long_vr = False
    if kind == "pixel bytes":
        header, value, length, vr = elements[-1]  # (7FE0,0010) is the last element
        long_vr = True
    if kind == "delete":
        return data[:header] + data[value + length:], uid
    if kind in ("wrong bytes", "uid bytes", "pixel bytes"):
        noise = draw(st.binary(min_size=length, max_size=length)) if length <= 64 else \
            draw(st.binary(min_size=1, max_size=64)) * (length // 64 + 1)
        return data[:value] + noise[:length] + data[value + length:], uid
    if kind == "other length":
        new = draw(st.binary(min_size=0, max_size=300))
        new += b"\0" * (len(new) % 2)
        size = struct.pack("<I", len(new)) if long_vr else struct.pack("<H", len(new))
        return data[:value - len(size)] + size + new + data[value + length:], uid
    huge = struct.pack("<I", draw(st.integers(0x1000_0000, 0xFFFF_FFFE))) if long_vr else \
        struct.pack("<H", draw(st.integers(0x1000, 0xFFFF)))
    return data[:value - len(huge)] + huge + data[value:], uid


@st.composite
def byte_mutation(draw: st.DrawFn, fuzz: Fuzzed) -> tuple[bytes, str]:
    data, uid, start = fuzz.instance()
    body = bytearray(data[start:])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "overwrite"]))
        at = draw(st.integers(0, max(0, len(body) - 1)))
        if kind == "flip":
            body[at] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del body[at:]
        elif kind == "insert":
            body[at:at] = draw(st.binary(min_size=1, max_size=32))
        else:
            chunk = draw(st.binary(min_size=1, max_size=64))
            body[at:at + len(chunk)] = chunk
        if not body:
            body = bytearray(b"\0")
    return data[:start] + bytes(body), uid


@given(st.data())
@FUZZ
def test_element_level_mutations(fuzzed: Fuzzed, data: st.DataObject) -> None:
    payload, uid = data.draw(element_mutation(fuzzed))
    fuzzed.send(payload, uid)


@given(st.data())
@FUZZ
def test_byte_level_mutations(fuzzed: Fuzzed, data: st.DataObject) -> None:
    payload, uid = data.draw(byte_mutation(fuzzed))
    fuzzed.send(payload, uid)


def test_node_serves_after_fuzzing(fuzzed: Fuzzed) -> None:
    assert fuzzed.sent >= 500 and fuzzed.acknowledged == fuzzed.stored
    assert fuzzed.refused == fuzzed.quarantined and fuzzed.refused > 0
    ae = AE(ae_title="FUZZER")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", fuzzed.config.listener.port, ae_title="RADIOMICS")
    assert assoc.is_established and assoc.send_c_echo().Status == 0x0000
    valid = deepcopy(fuzzed.base)
    valid.SOPInstanceUID = generate_uid()
    assert assoc.send_c_store(valid).Status == 0x0000
    assoc.release()
    assert fuzzed.index.instances.get(valid.SOPInstanceUID) is not None
