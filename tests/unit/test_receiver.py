"""The storage SCP, driven by a real pynetdicom SCU over loopback."""

import json
import logging
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, Verification

from node.config import NodeConfig
from node.dicom.receiver import TRACE_EVENTS, Receiver
from node.state import Index
from tests.conftest import free_port


@pytest.fixture
def node(tmp_path: Path):
    config = NodeConfig(state_dir=tmp_path / "state", listener={"port": free_port()},
                        peers=[{"name": "test", "ae_title": "TESTSCU", "host": "127.0.0.1"}])
    index = Index(config.index_path)
    receiver = Receiver(config, index)
    receiver.start()
    yield config, index
    receiver.stop()
    index.close()


def _associate(config: NodeConfig, *contexts: str):
    ae = AE(ae_title="TESTSCU")
    for uid in contexts:
        ae.add_requested_context(uid)
    assoc = ae.associate("127.0.0.1", config.listener.port, ae_title=config.listener.ae_title)
    assert assoc.is_established
    return assoc


def test_echo(node) -> None:
    config, _ = node
    assoc = _associate(config, Verification)
    assert assoc.send_c_echo().Status == 0
    assoc.release()


def test_store_writes_spool_then_index(node, refdata: Path) -> None:
    config, index = node
    source = refdata / "pydicom" / "test_files" / "CT_small.dcm"
    ds = pydicom.dcmread(source)
    assoc = _associate(config, CTImageStorage)
    assert assoc.send_c_store(ds).Status == 0x0000
    assert assoc.send_c_store(ds).Status == 0x0000  # the same instance again: idempotent
    assoc.release()

    row = index.instances.get(ds.SOPInstanceUID)
    assert row is not None and row.calling_ae == "TESTSCU"
    stored = pydicom.dcmread(row.path)
    assert stored.SOPInstanceUID == ds.SOPInstanceUID
    assert stored.PixelData == ds.PixelData
    assert Path(row.path).stat().st_size == row.size
    series = index.instances.series(ds.SeriesInstanceUID)
    assert series is not None and series.n_instances == 1 and series.modality == "CT"
    leftovers = list(config.spool_dir.rglob("*.part"))
    assert leftovers == []


def test_missing_uid_is_refused_and_quarantined(node, refdata: Path) -> None:
    config, index = node
    ds = pydicom.dcmread(refdata / "pydicom" / "test_files" / "CT_small.dcm")
    del ds.SeriesInstanceUID
    assoc = _associate(config, CTImageStorage)
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == 0xC000
    assert "SeriesInstanceUID" in status.ErrorComment
    assert index.instances.get(ds.SOPInstanceUID) is None
    reasons = list(config.quarantine_dir.glob("*.reason.json"))
    assert len(reasons) == 1
    record = json.loads(reasons[0].read_text())
    assert record["tag"] == "(0020,000E) SeriesInstanceUID" and record["reason"] == "missing"
    assert (config.quarantine_dir / record["file"]).stat().st_size > 0


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                  "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm"])
def test_lossless_compressed_and_big_endian_are_stored_as_sent(node, refdata: Path,
                                                               name: str) -> None:
    """The sender's transfer syntax is kept (no transcoding) and the stored file decodes to the
    same pixels as the uncompressed original."""
    config, index = node
    sent = refdata / "pydicom" / "test_files" / name
    ds = pydicom.dcmread(sent)
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", config.listener.port, ae_title=config.listener.ae_title)
    assert assoc.is_established
    assert assoc.send_c_store(sent).Status == 0x0000  # a path: sent without decoding
    assoc.release()
    stored = pydicom.dcmread(index.instances.get(ds.SOPInstanceUID).path)
    assert stored.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    reference = pydicom.dcmread(refdata / "pydicom" / "test_files" / "MR_small.dcm")
    assert (stored.pixel_array == reference.pixel_array).all()


def test_one_log_line_per_association_with_its_tally(node, refdata: Path, caplog) -> None:
    config, _ = node
    ds = pydicom.dcmread(refdata / "pydicom" / "test_files" / "CT_small.dcm")
    caplog.set_level(logging.INFO)
    assoc = _associate(config, CTImageStorage)
    for number in range(3):
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.7.{number}"
        assert assoc.send_c_store(ds).Status == 0
    del ds.SeriesInstanceUID  # refused: (0020,000E) missing
    assert assoc.send_c_store(ds).Status == 0xC000
    assoc.release()
    deadline = time.monotonic() + 10
    while not (ended := [r for r in caplog.records if r.getMessage() == "association ended"]):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    [record] = ended
    tally = record.fields
    assert (tally["calling_ae"], tally["host"]) == ("TESTSCU", "127.0.0.1")
    assert (tally["stored"], tally["refused"]) == (3, 1)
    assert tally["bytes"] > 4 * len(ds.PixelData) and tally["seconds"] > 0
    # each instance is logged at DEBUG only: a 300-slice series is one line at INFO
    assert not [r for r in caplog.records
                if r.getMessage() == "instance stored" and r.levelno >= logging.INFO]


def test_pynetdicom_trace_handlers_are_not_bound(node) -> None:
    config, _ = node
    assoc = _associate(config, Verification)
    try:
        [ours] = [a for a in threading.enumerate() if "AcceptorThread" in a.name
                  and a._server.server_address[1] == config.listener.port]
        assert all(ours.get_handlers(event) == [] for event in TRACE_EVENTS)
        assert ours.get_handlers(evt.EVT_C_STORE)  # the node's own stay
    finally:
        assoc.release()


def test_receiver_processes_keep_freed_heap_memory_on_glibc() -> None:
    import platform

    from node.dicom.receiver import keep_freed_memory

    assert keep_freed_memory() is (platform.libc_ver()[0] == "glibc")
