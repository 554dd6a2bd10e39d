"""A study does not wait for the next scheduler tick at each step: the assembly tick is woken when
the next receiving series is due to be stable, the jobs tick when the router queued a job, the
outbox tick when a job is done. The regular ticks here are ten minutes apart, so everything that
happens sooner happened because of a wake-up."""

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest

from demo.synthetic import SyntheticStudy, write_synthetic_study
from node.config import Destination, NodeConfig, SeriesRule
from node.dicom.receiver import Receiver
from node.service import STABLE_MARGIN, Node
from node.state import Index
from node.state.instances import InstanceRow
from tests.conftest import free_port
from tests.fake_clock import FakeClock

SCAN_INTERVAL = 600.0


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    return write_synthetic_study(tmp_path_factory.mktemp("study"), shape=(12, 64, 64))


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[tuple[NodeConfig, Index]]:
    """A second receiver that takes the node's results."""
    config = NodeConfig(state_dir=tmp_path / "peer", listener={"port": free_port(),
                                                               "ae_title": "PEER"},
                        status={"enabled": False},
                        peers=[{"name": "node", "ae_title": "RADIOMICS", "host": "127.0.0.1"}])
    index = Index(config.index_path)
    receiver = Receiver(config, index)
    receiver.start()
    yield config, index
    receiver.stop()
    index.close()


def _node(tmp_path: Path, peer_port: int, stable_after: float, clock: FakeClock) -> Node:
    return Node(NodeConfig(
        state_dir=tmp_path / "node", listener={"port": free_port()}, status={"enabled": False},
        scan_interval=SCAN_INTERVAL, stable_after=stable_after,
        rules=[SeriesRule(name="liver", preset="ct-liver-basic", modality=["CT"])],
        destinations=[Destination(name="peer", ae_title="PEER", host="127.0.0.1",
                                  port=peer_port, verify=False)]),  # the receiver has no C-FIND
        clock=clock)


def _index(index: Index, paths: list[Path], received: float) -> None:
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        index.instances.add(InstanceRow(ds.SOPInstanceUID, ds.SOPClassUID, ds.StudyInstanceUID,
                                       ds.SeriesInstanceUID, str(path), 1, "SCANNER"),
                           ds.Modality, now=received)


def _until(condition: Callable[[], bool], timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_assembly_is_woken_when_the_next_series_is_due_to_be_stable(
        tmp_path: Path, study: SyntheticStudy, clock: FakeClock) -> None:
    node = _node(tmp_path, free_port(), stable_after=300, clock=clock)
    node.start()
    try:
        regular = node._scheduler.get_job("assembly").next_run_time
        woken: list[tuple[str, float | None]] = []
        scheduled = node.wake

        def wake(tick: str, at: float | None = None) -> None:
            woken.append((tick, at))
            scheduled(tick, at)

        node.wake = wake  # type: ignore[method-assign]
        received = clock.time()
        _index(node.index, list(study.ct_paths), received)
        _index(node.index, [study.seg_path], received - 5)  # quiet for longer: stable first
        node.assemble()
        assert woken == [("assembly", received - 5 + 300 + STABLE_MARGIN)]
        # handed to the scheduler as that delay from now: before the regular run
        assert node._scheduler.get_job("assembly").next_run_time < regular
    finally:
        node.stop()


def test_a_study_is_processed_and_delivered_without_waiting_for_ticks(
        tmp_path: Path, study: SyntheticStudy, peer: tuple[NodeConfig, Index],
        clock: FakeClock) -> None:
    peer_config, peer_index = peer
    node = _node(tmp_path, peer_config.listener.port, stable_after=1, clock=clock)
    node.start()
    try:
        _index(node.index, [*study.ct_paths, study.seg_path], clock.time() - 10)
        node.assemble()  # as the first regular tick would: both series stable, a job queued
        [job] = node.index.jobs.all()
        _until(lambda: all(d["state"] == "delivered" for d in node.index.outbox.all())
               and bool(node.index.outbox.all()))
        timeline = node.index.jobs.timeline(job.id)
        assert node.index.jobs.get(job.id).state == "done"
        assert len(timeline.deliveries) == 3  # the two reports and the summary image
        for delivery in timeline.deliveries:
            assert peer_index.instances.get(delivery.sop_instance_uid) is not None
    finally:
        node.stop()


def test_a_queued_job_wakes_the_priors_tick_whose_end_wakes_the_jobs_tick(
        tmp_path: Path, study: SyntheticStudy, clock: FakeClock) -> None:
    """A job of a rule with prior: the assembly wakes the jobs and priors ticks; the lookup
    (here: its source does not listen, one attempt allowed) ends and wakes the jobs tick."""
    port = free_port()
    node = Node(NodeConfig(
        state_dir=tmp_path / "node", listener={"port": free_port()}, status={"enabled": False},
        scan_interval=600, stable_after=1,  # no regular tick during the test
        retrieve={"sources": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                               "port": port}], "timeout": 2},
        rules=[{"name": "liver", "modality": ["CT"],
                "prior": {"source": "pacs", "max_attempts": 1}}]), clock=clock)
    woken: list[str] = []
    node.wake = lambda tick, at=None: woken.append(tick)  # type: ignore[method-assign]
    try:
        _index(node.index, [*study.ct_paths, study.seg_path], clock.time() - 10)
        node.assemble()
        [job] = node.index.jobs.all()
        assert woken == ["jobs", "priors"]
        assert node.index.jobs.claim() is None  # its lookup is pending
        node.priors.tick()
        assert woken == ["jobs", "priors", "jobs"]
        assert node.index.priors.get(job.id).state == "failed"  # type: ignore[union-attr]
    finally:
        node.stop()
