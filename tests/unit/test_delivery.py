"""Delivery verification, order and the outbox CLI, against a real pynetdicom SCP that stores by
C-STORE and answers C-FIND at IMAGE level from what it stored (or, lying, stores nothing)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelFind

from node.cli import main
from node.clock import SYSTEM_CLOCK, Clock
from node.config import Destination, NodeConfig, OutboxConfig
from node.flow.outbox import Outbox
from node.state import Index
from tests.conftest import free_port
from tests.fake_clock import FakeClock


@dataclass
class Pacs:
    """What the test SCP received, in order, and whether it keeps what it acknowledges."""

    port: int
    honest: bool = True
    stores: list[str] = field(default_factory=list)
    finds: list[str] = field(default_factory=list)
    held: dict[str, Dataset] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def pacs() -> Iterator[Pacs]:
    state = Pacs(free_port())

    def on_store(event: evt.Event) -> int:
        with state.lock:
            state.stores.append(event.request.AffectedSOPInstanceUID)
            if state.honest:
                state.held[event.request.AffectedSOPInstanceUID] = event.dataset
        return 0x0000

    def on_find(event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        uid = event.identifier.SOPInstanceUID
        with state.lock:
            state.finds.append(uid)
            held = state.held.get(uid)
        if held is not None and event.identifier.QueryRetrieveLevel == "IMAGE":
            answer = Dataset()
            answer.QueryRetrieveLevel = "IMAGE"
            answer.SOPInstanceUID = uid
            yield 0xFF00, answer
        yield 0x0000, None

    ae = AE(ae_title="PACS")
    ae.add_supported_context(CTImageStorage)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    server = ae.start_server(("127.0.0.1", state.port), block=False, evt_handlers=[
        (evt.EVT_C_STORE, on_store), (evt.EVT_C_FIND, on_find)])
    try:
        yield state
    finally:
        server.shutdown()


def _results(tmp_path: Path, refdata: Path, count: int) -> list[tuple[Path, str]]:
    """``count`` CT objects with their own SOP Instance UIDs, as a job would leave them."""
    source = pydicom.dcmread(refdata / "pydicom" / "test_files" / "CT_small.dcm")
    made = []
    for n in range(count):
        uid = f"1.2.826.0.1.3680043.8.498.{n + 1}"
        source.SOPInstanceUID = source.file_meta.MediaStorageSOPInstanceUID = uid
        path = tmp_path / f"result-{n}.dcm"
        source.save_as(path)
        made.append((path, uid))
    return made


def _node(tmp_path: Path, pacs: Pacs, max_attempts: int = 3,
          clock: Clock = SYSTEM_CLOCK) -> tuple[NodeConfig, Index]:
    destination = Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=pacs.port)
    config = NodeConfig(state_dir=tmp_path / "node", destinations=[destination],
                        outbox=OutboxConfig(max_attempts=max_attempts, backoff_initial=0.01,
                                            backoff_max=0.01, timeout=5))
    return config, Index(config.index_path, clock=clock)


def _queue(index: Index, results: list[tuple[Path, str]]) -> None:
    job_id = index.jobs.add("1.2.3", "1.2.3.4", "rule", "preset", "digest")
    assert job_id is not None and index.jobs.claim() is not None
    index.jobs.finish(job_id, [("pacs", str(path), uid) for path, uid in results])


def test_delivered_once_found_by_c_find(tmp_path: Path, refdata: Path, pacs: Pacs) -> None:
    config, index = _node(tmp_path, pacs)
    results = _results(tmp_path, refdata, 2)
    _queue(index, results)
    Outbox(config, index).tick()
    rows = index.outbox.with_checks()
    assert [(r["state"], r["attempts"], r["verified_by"]) for r in rows] == \
        [("delivered", 1, "c-find")] * 2
    assert pacs.stores == [uid for _, uid in results]  # in outbox order


def test_acknowledged_but_not_stored_is_retried_then_dead(tmp_path: Path, refdata: Path,
                                                          pacs: Pacs, clock: FakeClock) -> None:
    pacs.honest = False
    config, index = _node(tmp_path, pacs, max_attempts=2, clock=clock)
    [(path, uid)] = _results(tmp_path, refdata, 1)
    _queue(index, [(path, uid)])
    outbox = Outbox(config, index)
    outbox.tick()
    [row] = index.outbox.with_checks()
    assert row["state"] == "pending" and row["attempts"] == 1
    assert row["last_error"] == f"sent, but not found at PACS@127.0.0.1:{pacs.port} by c-find"
    clock.advance(0.01)  # the back-off
    outbox.tick()
    [row] = index.outbox.with_checks()
    assert row["state"] == "dead" and row["attempts"] == 2 and pacs.stores == [uid, uid]


def test_already_at_destination_is_not_sent_again(tmp_path: Path, refdata: Path,
                                                  pacs: Pacs) -> None:
    config, index = _node(tmp_path, pacs)
    [(path, uid)] = _results(tmp_path, refdata, 1)
    pacs.held[uid] = pydicom.dcmread(path)  # e.g. sent just before the node was killed
    _queue(index, [(path, uid)])
    Outbox(config, index).tick()
    [row] = index.outbox.with_checks()
    assert row["state"] == "delivered" and row["verified_by"] == "c-find"
    assert pacs.stores == []


def test_a_result_queued_since_the_outbox_started_is_sent_without_a_look_up_first(
        tmp_path: Path, refdata: Path, pacs: Pacs) -> None:
    config, index = _node(tmp_path, pacs)
    outbox = Outbox(config, index)
    [(path, uid)] = _results(tmp_path, refdata, 1)
    _queue(index, [(path, uid)])
    outbox.tick()
    [row] = index.outbox.with_checks()
    assert row["state"] == "delivered" and pacs.stores == [uid]
    assert pacs.finds == [uid]  # the verification after the store only


def test_a_result_this_outbox_tried_is_looked_up_before_it_is_sent_again(
        tmp_path: Path, refdata: Path, pacs: Pacs, clock: FakeClock) -> None:
    pacs.honest = False  # acknowledges, keeps nothing: the first attempt is not verified
    config, index = _node(tmp_path, pacs, clock=clock)
    outbox = Outbox(config, index)
    [(path, uid)] = _results(tmp_path, refdata, 1)
    _queue(index, [(path, uid)])
    outbox.tick()
    assert pacs.finds == [uid] and pacs.stores == [uid]
    pacs.honest = True
    pacs.held[uid] = pydicom.dcmread(path)  # it got there after all
    clock.advance(0.01)  # the back-off
    outbox.tick()
    [row] = index.outbox.with_checks()
    assert row["state"] == "delivered" and pacs.stores == [uid]  # not sent again
    assert pacs.finds == [uid, uid]


def test_a_later_result_waits_for_an_earlier_one_in_back_off(
        tmp_path: Path, refdata: Path, pacs: Pacs, clock: FakeClock) -> None:
    config, index = _node(tmp_path, pacs, max_attempts=5, clock=clock)
    results = _results(tmp_path, refdata, 2)
    _queue(index, results)
    first, _ = index.outbox.with_checks()
    index.outbox.mark_attempt_failed(first["id"], "peer was down", retry_at=clock.time() + 0.3)
    Outbox(config, index).tick()
    assert pacs.stores == []  # the second is due, but the first is not yet
    clock.advance(0.3)
    Outbox(config, index).tick()
    assert pacs.stores == [results[0][1], results[1][1]]
    assert [r["state"] for r in index.outbox.with_checks()] == ["delivered", "delivered"]


def test_cli_lists_and_retries_dead_letters(tmp_path: Path, refdata: Path, pacs: Pacs,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    pacs.honest = False
    config, index = _node(tmp_path, pacs, max_attempts=1)
    results = _results(tmp_path, refdata, 2)
    _queue(index, results)
    Outbox(config, index).tick()
    assert [r["state"] for r in index.outbox.with_checks()] == ["dead", "dead"]
    config_file = tmp_path / "node.yaml"
    config_file.write_text(f"state_dir: {config.state_dir}\n")

    assert main(["outbox", "list", "--state", "dead", "--config", str(config_file)]) == 0
    listing = capsys.readouterr().out
    assert "2 deliveries" in listing and "not found at PACS@" in listing
    assert all(uid in listing for _, uid in results)

    first_id = index.outbox.with_checks()[0]["id"]
    assert main(["outbox", "retry", str(first_id), "--config", str(config_file)]) == 0
    assert [(r["state"], r["attempts"]) for r in index.outbox.with_checks()] == \
        [("pending", 0), ("dead", 1)]
    assert main(["outbox", "retry", "--all-dead", "--config", str(config_file)]) == 0
    assert [(r["state"], r["attempts"]) for r in index.outbox.with_checks()] == [("pending", 0)] * 2
    assert main(["outbox", "retry", "999", "--config", str(config_file)]) == 1
    capsys.readouterr()

    pacs.honest = True
    Outbox(config, index).tick()
    assert [r["state"] for r in index.outbox.with_checks()] == ["delivered", "delivered"]


def test_delivered_row_cannot_be_retried(tmp_path: Path, refdata: Path, pacs: Pacs) -> None:
    config, index = _node(tmp_path, pacs)
    [(path, uid)] = _results(tmp_path, refdata, 1)
    _queue(index, [(path, uid)])
    Outbox(config, index).tick()
    [row] = index.outbox.with_checks()
    assert index.outbox.retry([row["id"]]) == []
    assert index.outbox.with_checks()[0]["state"] == "delivered"
