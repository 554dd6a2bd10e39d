"""Outbox: delivered only on success status; back-off; dead letter after max attempts."""

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, MRImageStorage

from node.config import Destination, NodeConfig, OutboxConfig
from node.dicom.receiver import Receiver
from node.flow.outbox import Outbox, next_attempt_delay
from node.state import Index
from tests.conftest import free_port
from tests.fake_clock import FakeClock


@contextmanager
def _storage_scp(name: str, ae_title: str, sop_classes: list[str],
                 on_store: Callable) -> Iterator[Destination]:
    """A pynetdicom Storage SCP of ``sop_classes`` on a free port, answering each C-STORE with
    ``on_store(event)``; the destination ``name`` that reaches it (no C-FIND SCP: verify off)."""
    ae = AE(ae_title=ae_title)
    for sop_class in sop_classes:
        ae.add_supported_context(sop_class)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield Destination(name=name, ae_title=ae_title, host="127.0.0.1", port=port,
                          verify=False)
    finally:
        server.shutdown()


def test_back_off_doubles_and_is_capped() -> None:
    assert [next_attempt_delay(n, 2.0, 20.0) for n in range(1, 6)] == [2, 4, 8, 16, 20]


def _queue_result(index: Index, path: Path, uid: str, destination: str) -> None:
    job_id = index.jobs.add("1.2.3", "1.2.3.4", "rule", "preset", "digest")
    assert job_id is not None and index.jobs.claim() is not None
    index.jobs.finish(job_id, [(destination, str(path), uid)])


@pytest.fixture
def result_file(tmp_path: Path, refdata: Path) -> Path:
    target = tmp_path / "result.dcm"
    shutil.copyfile(refdata / "pydicom" / "test_files" / "CT_small.dcm", target)
    return target


def test_delivered_to_a_real_scp(tmp_path: Path, result_file: Path) -> None:
    peer_config = NodeConfig(state_dir=tmp_path / "peer", listener={"port": free_port(),
                                                                    "ae_title": "PEER"},
                             peers=[{"name": "node", "ae_title": "RADIOMICS", "host": "127.0.0.1"}])
    peer_index = Index(peer_config.index_path)
    peer = Receiver(peer_config, peer_index)
    peer.start()
    try:
        destination = Destination(name="peer", ae_title="PEER", host="127.0.0.1",
                                  port=peer_config.listener.port, verify=False)  # no C-FIND SCP
        config = NodeConfig(state_dir=tmp_path / "node", destinations=[destination])
        index = Index(config.index_path)
        _queue_result(index, result_file, "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322",
                      "peer")
        Outbox(config, index).tick()
        [row] = index.outbox.all()
        assert row["state"] == "delivered" and row["attempts"] == 1
        assert peer_index.instances.get(row["sop_instance_uid"]) is not None
        # stored at the peer (success status), then marked delivered
        assert row["sent_at"] is not None and row["sent_at"] <= row["delivered_at"]
        Outbox(config, index).tick()  # nothing due any more
        assert index.outbox.all()[0]["attempts"] == 1
    finally:
        peer.stop()
        peer_index.close()


def test_unreachable_peer_is_retried_then_dead_lettered(tmp_path: Path, result_file: Path,
                                                        clock: FakeClock) -> None:
    destination = Destination(name="down", ae_title="DOWN", host="127.0.0.1", port=free_port())
    config = NodeConfig(state_dir=tmp_path / "node", destinations=[destination],
                        outbox=OutboxConfig(max_attempts=3, backoff_initial=0.01,
                                            backoff_max=0.01, timeout=2))
    index = Index(config.index_path, clock=clock)
    _queue_result(index, result_file, "1.2.3.9", "down")
    outbox = Outbox(config, index)
    outbox.tick()
    row = index.outbox.all()[0]
    assert row["state"] == "pending" and row["attempts"] == 1
    assert "no association with DOWN@127.0.0.1" in row["last_error"]
    for attempts in (1, 2):
        outbox.tick()  # the 10 ms back-off holds it
        assert index.outbox.all()[0]["attempts"] == attempts
        clock.advance(0.01)  # the back-off over
        outbox.tick()
    row = index.outbox.all()[0]
    assert row["state"] == "dead" and row["attempts"] == 3
    assert row["sent_at"] is None


def test_a_class_the_peer_refuses_fails_that_delivery_and_the_outbox_goes_on(
        tmp_path: Path, result_file: Path, refdata: Path) -> None:
    """A peer that accepts the association but no presentation context for one result's SOP
    class (an SCP of MR only, sent an MR and a CT) gets the MR; the CT's delivery fails with a
    reason, and the tick does not raise."""
    mr = tmp_path / "mr.dcm"
    shutil.copyfile(refdata / "pydicom" / "test_files" / "MR_small.dcm", mr)
    with _storage_scp("mr", "MRONLY", [MRImageStorage], lambda event: 0x0000) as destination:
        config = NodeConfig(state_dir=tmp_path / "node", destinations=[destination])
        index = Index(config.index_path)
        job_id = index.jobs.add("1.2.3", "1.2.3.4", "rule", "preset", "digest")
        index.jobs.claim()
        index.jobs.finish(job_id, [
            ("mr", str(mr), "1.3.6.1.4.1.5962.1.1.4.1.1.20040826185059.5457"),
            ("mr", str(result_file), "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322")])
        Outbox(config, index).tick()
        mr_row, ct_row = index.outbox.all()
        assert mr_row["state"] == "delivered"
        assert ct_row["state"] == "pending" and ct_row["attempts"] == 1
        assert "no response" in ct_row["last_error"]


def test_a_running_jobs_early_results_are_sent_and_wait_for_a_rerun_to_write_them(
        tmp_path: Path, refdata: Path) -> None:
    """Deliveries queued while their job runs (``OutboxStore.queue_early``) are sent at the next
    tick; a file missing because the job runs again ends the batch without an attempt (nothing
    overtakes it), and is sent once the rerun wrote it; once the job failed, a missing file is
    a failed attempt like any other."""
    stored: list[str] = []

    def store(event) -> int:  # type: ignore[no-untyped-def]
        stored.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    ct_uid = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"
    mr_uid = "1.3.6.1.4.1.5962.1.1.4.1.1.20040826185059.5457"
    results = tmp_path / "results"
    results.mkdir()
    with _storage_scp("peer", "PEER", [CTImageStorage, MRImageStorage], store) as destination:
        config = NodeConfig(state_dir=tmp_path / "node", destinations=[destination])
        index = Index(config.index_path)
        job_id = index.jobs.add("1.2.3", "1.2.3.4", "rule", "preset", "digest")
        index.jobs.claim()
        ct, mr = results / "ct.dcm", results / "mr.dcm"
        shutil.copyfile(refdata / "pydicom" / "test_files" / "MR_small.dcm", mr)
        index.outbox.queue_early(job_id, [("peer", str(ct), ct_uid),
                                              ("peer", str(mr), mr_uid)])
        outbox = Outbox(config, index)
        outbox.tick()  # ct.dcm not written yet (the job runs again): neither is sent
        assert stored == []
        assert [(r["state"], r["attempts"]) for r in index.outbox.all()] == [("pending", 0)] * 2
        shutil.copyfile(refdata / "pydicom" / "test_files" / "CT_small.dcm", ct)
        outbox.tick()
        assert stored == [ct_uid, mr_uid]  # in outbox order
        assert [r["state"] for r in index.outbox.all()] == ["delivered"] * 2
        assert index.jobs.get(job_id).state == "running"  # sent before the job finished
        index.jobs.finish(job_id, [("peer", str(ct), ct_uid), ("peer", str(mr), mr_uid)])
        assert len(index.outbox.all()) == 2  # queued once
        failed = index.jobs.add("1.2.5", "1.2.5.4", "rule", "preset", "digest")
        index.jobs.claim()
        index.outbox.queue_early(failed, [("peer", str(results / "gone.dcm"), "1.2.5.9")])
        index.jobs.fail(failed, "pipeline error")
        outbox.tick()
        [row] = [r for r in index.outbox.all() if r["job_id"] == failed]
        assert row["attempts"] == 1 and "cannot read" in row["last_error"]
