"""C-STORE from a Part 10 file (``node.dicom.store_scu.c_store``): sent as it is on disk where the
peer accepts the file's transfer syntax, decoded and sent in another one where it does not, and a
file gone before it is sent is a failed attempt of the outbox, not a stopped tick."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.dsutils import decode, split_dataset
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelFind

from node.config import Destination, NodeConfig
from node.dicom.store_scu import c_store
from node.flow.outbox import Outbox
from node.state import Index
from tests.conftest import free_port


@dataclass
class Received:
    """The encoded data set and transfer syntax of each C-STORE the test SCP took."""

    port: int
    stores: list[tuple[bytes, str]] = field(default_factory=list)


def _scp(transfer_syntaxes: list[str]) -> Iterator[Received]:
    received = Received(free_port())

    def on_store(event: evt.Event) -> int:
        received.stores.append((event.request.DataSet.getvalue(),
                                str(event.context.transfer_syntax)))
        return 0x0000

    ae = AE(ae_title="PACS")
    ae.add_supported_context(CTImageStorage, transfer_syntaxes)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    server = ae.start_server(("127.0.0.1", received.port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield received
    finally:
        server.shutdown()


@pytest.fixture
def explicit_only() -> Iterator[Received]:
    yield from _scp([ExplicitVRLittleEndian])


@pytest.fixture
def implicit_only() -> Iterator[Received]:
    yield from _scp([ImplicitVRLittleEndian])


def _destination(port: int) -> Destination:
    return Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=port)


def _data_set_bytes(path: Path) -> bytes:
    """The file's bytes after its preamble and File Meta Information (PS3.10 7.1)."""
    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def test_a_file_goes_out_as_it_is_on_disk(refdata: Path, explicit_only: Received) -> None:
    path = refdata / "pydicom" / "test_files" / "CT_small.dcm"
    assert c_store("NODE", _destination(explicit_only.port), [path], 5) == [0x0000]
    [(data, syntax)] = explicit_only.stores
    assert syntax == ExplicitVRLittleEndian
    assert data == _data_set_bytes(path)


def test_a_file_goes_out_decoded_where_the_peer_takes_another_syntax(
        refdata: Path, implicit_only: Received) -> None:
    path = refdata / "pydicom" / "test_files" / "CT_small.dcm"
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert c_store("NODE", _destination(implicit_only.port), [path], 5) == [0x0000]
    [(data, syntax)] = implicit_only.stores
    assert syntax == ImplicitVRLittleEndian
    got = decode(io.BytesIO(data), is_implicit_vr=True, is_little_endian=True)
    got.file_meta = pydicom.dataset.FileMetaDataset()
    got.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    sent = pydicom.dcmread(path)
    assert got.SOPInstanceUID == sent.SOPInstanceUID
    assert (got.pixel_array == sent.pixel_array).all()


def test_a_result_file_gone_before_it_is_sent_is_a_failed_attempt(
        tmp_path: Path, refdata: Path, explicit_only: Received,
        monkeypatch: pytest.MonkeyPatch) -> None:
    config = NodeConfig(state_dir=tmp_path / "node", destinations=[
        _destination(explicit_only.port).model_copy(update={"verify": False})])
    index = Index(config.index_path)
    path = tmp_path / "result.dcm"
    path.write_bytes((refdata / "pydicom" / "test_files" / "CT_small.dcm").read_bytes())
    job_id = index.jobs.add("1.2.3", "1.2.3.4", "rule", "preset", "digest")
    assert job_id is not None and index.jobs.claim() is not None
    index.jobs.finish(job_id, [("pacs", str(path), str(pydicom.dcmread(path).SOPInstanceUID))])
    outbox = Outbox(config, index)
    read = outbox._read

    def read_then_lose(batch: list) -> list:  # gone between reading its header and sending it
        items = read(batch)
        path.unlink()
        return items

    monkeypatch.setattr(outbox, "_read", read_then_lose)
    outbox.tick()
    [row] = index.outbox.with_checks()
    assert (row["state"], row["attempts"]) == ("pending", 1)
    assert "cannot send from the result file" in row["last_error"]
    assert explicit_only.stores == []
