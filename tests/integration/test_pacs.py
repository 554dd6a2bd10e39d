"""The node with a real PACS (Debian's Orthanc 1.10.1): pull mode over Orthanc's change feed,
results pushed back by REST or C-STORE and verified there, a missing source series fetched by
C-GET / C-MOVE / REST, and a destination that is down for a while."""

from __future__ import annotations

import io
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from demo.synthetic import SyntheticStudy, write_synthetic_study
from node.config import NodeConfig
from node.dicom.ingest import Ingest
from node.dicom.receiver import Receiver
from node.flow.feed import Feed
from node.flow.retrieve import Retriever
from node.flow.router import Router
from node.state import Index
from tests.conftest import free_port
from tests.fake_clock import FakeClock
from tests.integration.peers import NodeService, OrthancServer, orthanc, require_tools

pytestmark = pytest.mark.integration

SHAPE = (20, 128, 128)


@pytest.fixture
def study(tmp_path: Path) -> SyntheticStudy:
    return write_synthetic_study(tmp_path / "study", shape=SHAPE)


def upload(pacs: OrthancServer, paths: list[Path]) -> None:
    """Store files in Orthanc as a modality would, through its REST API (POST /instances)."""
    for path in paths:
        pacs.http.post("/instances", content=path.read_bytes()).raise_for_status()


def wait_for(condition: Callable[[], object], timeout: float, what: str,
             log: Path | None = None) -> object:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            tail = log.read_text()[-4000:] if log and log.exists() else ""
            raise AssertionError(f"{what}: not within {timeout:.0f} s\n{tail}")
        time.sleep(0.25)
    return value


def stable_changes(pacs: OrthancServer) -> list[dict]:
    changes = pacs.http.get("/changes", params={"since": 0, "limit": 1000}).json()["Changes"]
    return [c for c in changes if c["ChangeType"] == "StableSeries"]


def sr_instances(pacs: OrthancServer, study_uid: str) -> list[bytes]:
    """Both reports of ``study_uid`` (reading and feature report) once both are in Orthanc,
    else an empty list."""
    found = [data for series in pacs.find_series(study_uid, "SR")
             for data in pacs.instance_files(series)]
    return found if len(found) == 2 else []


def storescu(port: int, paths: list[Path]) -> None:
    subprocess.run(["storescu", "--required", "-aet", "SCANNER", "-aec", "RADIOMICS",
                    "127.0.0.1", str(port), *map(str, paths)],
                   check=True, capture_output=True, env={**os.environ, "TCP_NODELAY": "1"})


def pacs_peer(pacs: OrthancServer) -> dict:
    """Orthanc as a known peer: sends to the node, receives its results, may be queried."""
    return {"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port,
            "send": True, "receive_results": True, "query": True}


SCANNER = {"name": "scanner", "ae_title": "SCANNER", "host": "127.0.0.1"}


# -- pull mode ----------------------------------------------------------------------------------

def test_feed_position_advances_only_after_the_instances_are_stored(
        tmp_path: Path, study: SyntheticStudy) -> None:
    with orthanc(tmp_path / "orthanc", {}) as pacs:
        upload(pacs, list(study.ct_paths))
        [change] = wait_for(lambda: stable_changes(pacs), 30, "StableSeries in Orthanc")
        feed = {"name": "pacs", "url": pacs.url, "start": "oldest", "batch": 2}
        full = NodeConfig(state_dir=tmp_path / "node", orthanc_feeds=[feed],
                          min_free_bytes=2**62)  # the spool refuses everything: 0xA700
        full.spool_dir.mkdir(parents=True)
        index = Index(full.index_path)
        assert Feed(full, index, full.orthanc_feeds[0]).poll() == 0
        assert index.retrievals.feed_seq("pacs") < change["Seq"]  # stopped before StableSeries
        assert index.instances.series(study.ct_series_uid) is None

        room = full.model_copy(update={"min_free_bytes": 0})
        assert Feed(room, index, room.orthanc_feeds[0]).poll() == SHAPE[0]
        assert index.retrievals.feed_seq("pacs") == pacs.http.get("/changes?last").json()["Last"]
        rows = index.instances.of_series(study.ct_series_uid)
        assert len(rows) == SHAPE[0] and {r.calling_ae for r in rows} == {"orthanc:pacs"}
        assert Feed(room, index, room.orthanc_feeds[0]).poll() == 0  # nothing new, nothing again


def test_pull_mode_round_trip_with_rest_push(tmp_path: Path, study: SyntheticStudy) -> None:
    with orthanc(tmp_path / "orthanc", {}) as pacs:
        node = NodeService(tmp_path / "node", {
            "orthanc_feeds": [{"name": "pacs", "url": pacs.url, "poll_interval": 0.5,
                               "start": "oldest"}],
            "destinations": [{"name": "pacs-rest", "kind": "orthanc-rest", "url": pacs.url}],
        })
        node.start()
        try:
            upload(pacs, [*study.ct_paths, study.seg_path])
            reports = wait_for(lambda: sr_instances(pacs, study.study_instance_uid), 120,
                               "both reports pushed back to Orthanc", node.log_path)
            # the reports and the summary image become stable series in Orthanc too; the feed
            # must not pull them back
            wait_for(lambda: len(stable_changes(pacs)) == 5, 60,
                     "report and summary series stable in Orthanc")
            wait_for(lambda: any(e.get("event") == "series not pulled: modality not followed"
                                 for e in node.events()), 10, "SR skipped by the feed",
                     node.log_path)
        finally:
            node.stop()
    assert [pydicom.dcmread(io.BytesIO(sr)).Modality for sr in reports] == ["SR", "SR"]
    index = Index(node.state_dir / "index.sqlite3")
    deliveries = index.outbox.with_checks()
    assert len(deliveries) == 3  # ct-liver-basic: the two reports and the summary image
    assert {(d["state"], d["attempts"], d["verified_by"]) for d in deliveries} == \
        {("delivered", 1, "orthanc-lookup")}
    senders = {r.calling_ae for r in index.instances.of_series(study.ct_series_uid)}
    assert senders == {"orthanc:pacs"}
    assert [job.state for job in index.jobs.all()] == ["done"]


# -- a segmentation whose source series the node lacks -------------------------------------------

@pytest.mark.parametrize("method", ["c-get", "c-move", "orthanc-rest"])
def test_missing_source_series_is_fetched(tmp_path: Path, study: SyntheticStudy,
                                          method: str) -> None:
    node_port = free_port()
    with orthanc(tmp_path / "orthanc", {"node": ["RADIOMICS", "127.0.0.1", node_port]}) as pacs:
        upload(pacs, list(study.ct_paths))  # the PACS has the CT; only the SEG reaches the node
        if method == "orthanc-rest":
            source = {"name": "pacs", "kind": "orthanc-rest", "url": pacs.url}
        else:
            source = {"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1",
                      "port": pacs.dicom_port, "method": method}
        config = NodeConfig(state_dir=tmp_path / "node", listener={"port": node_port},
                            peers=[pacs_peer(pacs), SCANNER], retrieve={"sources": [source]})
        config.spool_dir.mkdir(parents=True)
        index = Index(config.index_path)
        receiver = Receiver(config, index)  # C-MOVE's sub-operations arrive here
        receiver.start()
        try:
            data = study.seg_path.read_bytes()
            Ingest(config, index).accept(data, lambda: pydicom.dcmread(io.BytesIO(data)),
                                         "SCANNER")
            router = Router(config, index)
            [seg_series] = index.instances.mark_stable(index.clock.time() + 1)
            assert router.route(seg_series) == []
            [request] = index.retrievals.all()
            assert (request.series_uid, request.state) == (study.ct_series_uid, "waiting")

            Retriever(config, index).tick()
        finally:
            receiver.stop()
    [request] = index.retrievals.all()
    assert request.state == "fetched", request.reason
    rows = index.instances.of_series(study.ct_series_uid)
    expected_source = {"c-get": "c-get:pacs", "c-move": "ORTHANC",
                       "orthanc-rest": "orthanc:pacs"}[method]
    assert len(rows) == SHAPE[0] and {r.calling_ae for r in rows} == {expected_source}
    [ct_series] = index.instances.mark_stable(index.clock.time() + 1)
    [job_id] = router.route(ct_series)  # then it goes on as if both had been sent
    assert index.jobs.get(job_id).source_series_uid == study.ct_series_uid


def test_segmentation_without_source_anywhere_fails_with_a_reason(
        tmp_path: Path, study: SyntheticStudy, clock: FakeClock) -> None:
    with orthanc(tmp_path / "orthanc", {}) as pacs:  # empty PACS
        source = {"name": "pacs", "kind": "orthanc-rest", "url": pacs.url}
        config = NodeConfig(state_dir=tmp_path / "node",
                            retrieve={"sources": [source], "wait": 0.5, "retry_interval": 0.1})
        config.spool_dir.mkdir(parents=True)
        index = Index(config.index_path, clock=clock)
        data = study.seg_path.read_bytes()  # the segmentation that asks (its Patient ID counts)
        Ingest(config, index).accept(data, lambda: pydicom.dcmread(io.BytesIO(data)), "SCANNER")
        seg_sop_uid = pydicom.dcmread(study.seg_path, stop_before_pixels=True).SOPInstanceUID
        assert index.retrievals.request(study.ct_series_uid, study.study_instance_uid,
                                       seg_sop_uid)
        retriever = Retriever(config, index)
        retriever.tick()
        assert index.retrievals.all()[0].state == "waiting"
        clock.advance(0.5)  # the wait is over
        retriever.tick()
    [request] = index.retrievals.all()
    assert request.state == "failed"
    assert request.reason == (
        f"source series {study.ct_series_uid} not received within 0.5 s and not retrievable "
        "from pacs (pacs: has no such series)")


def _all_delivered(node: NodeService) -> bool:
    """Whether the node's outbox holds deliveries and has delivered (stored and verified) every
    one, read from its index while it runs."""
    index = Index(node.state_dir / "index.sqlite3")
    try:
        states = [d["state"] for d in index.outbox.with_checks()]
    finally:
        index.close()
    return bool(states) and set(states) == {"delivered"}


def test_seg_only_node_fetches_by_c_get_and_verifies_by_c_find(
        tmp_path: Path, study: SyntheticStudy) -> None:
    require_tools("storescu")
    node_port = free_port()
    with orthanc(tmp_path / "orthanc", {"node": ["RADIOMICS", "127.0.0.1", node_port]}) as pacs:
        destination = {"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1",
                       "port": pacs.dicom_port}
        node = NodeService(tmp_path / "node", {
            "listener": {"port": node_port}, "peers": [pacs_peer(pacs), SCANNER],
            "destinations": [destination],
            "retrieve": {"sources": [{**destination, "method": "c-get"}], "retry_interval": 1}})
        upload(pacs, list(study.ct_paths))
        node.start()
        try:
            storescu(node_port, [study.seg_path])
            wait_for(lambda: sr_instances(pacs, study.study_instance_uid), 120,
                     "SR in Orthanc", node.log_path)
            wait_for(lambda: _all_delivered(node), 60, "every result verified", node.log_path)
        finally:
            node.stop()
    index = Index(node.state_dir / "index.sqlite3")
    assert [(r.series_uid, r.state) for r in index.retrievals.all()] == \
        [(study.ct_series_uid, "fetched")]
    deliveries = index.outbox.with_checks()
    assert len(deliveries) == 3  # the two reports and the summary image
    assert {(d["state"], d["verified_by"]) for d in deliveries} == {("delivered", "c-find")}


# -- a destination that is down for a while ------------------------------------------------------

def test_destination_down_gets_everything_once_back_in_order(tmp_path: Path) -> None:
    require_tools("storescu")
    studies = [write_synthetic_study(tmp_path / f"study-{n}", shape=SHAPE, seed=n)
               for n in range(2)]
    ports = (free_port(), free_port())
    node_port = free_port()
    modalities = {"node": ["RADIOMICS", "127.0.0.1", node_port]}
    peer = {"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": ports[0],
            "send": True, "receive_results": True, "query": True}
    node = NodeService(tmp_path / "node", {
        "listener": {"port": node_port}, "peers": [peer, SCANNER],
        "destinations": [{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1",
                          "port": ports[0]}],
        "outbox": {"max_attempts": 50, "backoff_initial": 0.5, "backoff_max": 2, "timeout": 5},
    })
    with orthanc(tmp_path / "orthanc", modalities, ports):
        pass  # the PACS existed, then went down
    node.start()

    def failures() -> dict[int, int]:
        """Failed attempts per delivery id, from the node's log."""
        counted: dict[int, int] = {}
        for event in node.events():
            if event.get("event") == "delivery failed, will retry":
                counted[event["delivery_id"]] = counted.get(event["delivery_id"], 0) + 1
        return counted

    try:
        for one in studies:
            storescu(node_port, [*one.ct_paths, one.seg_path])
        # three result objects per study (two reports, summary image): six deliveries
        wait_for(lambda: len(failures()) == 6 and min(failures().values()) >= 2, 120,
                 "all deliveries failing", node.log_path)
        with orthanc(tmp_path / "orthanc", modalities, ports) as pacs:
            for one in studies:
                wait_for(lambda one=one: sr_instances(pacs, one.study_instance_uid), 60,
                         "SR in Orthanc after restart", node.log_path)
            time.sleep(2)  # a few more outbox ticks: nothing may be sent twice
            counts = [len(pacs.find_series(one.study_instance_uid, "SR")) for one in studies]
            counts += [len(pacs.instance_files(series)) for one in studies
                       for series in pacs.find_series(one.study_instance_uid, "SR")]
            arrivals = [c["ID"] for c in pacs.http.get(
                "/changes", params={"since": 0, "limit": 1000}).json()["Changes"]
                if c["ChangeType"] == "NewInstance"]
            index = Index(node.state_dir / "index.sqlite3")
            rows = index.outbox.with_checks()
            orthanc_ids = [pacs.http.post("/tools/lookup", content=row["sop_instance_uid"])
                           .json()[0]["ID"] for row in rows]
    finally:
        node.stop()
    assert counts == [2, 2, 1, 1, 1, 1]  # two report series a study, each report once
    assert arrivals == orthanc_ids  # in outbox order
    assert [r["state"] for r in rows] == ["delivered"] * 6
    assert all(r["attempts"] >= 3 and r["verified_by"] == "c-find" for r in rows)
    print(f"\ndestination down: failed attempts per delivery {failures()}, then "
          f"{[r['attempts'] for r in rows]} attempts in all; each SR stored once, in order")
