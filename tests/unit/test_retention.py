"""Retention: spool and results leave the disk once delivered and old enough; nothing that
unfinished work needs (queued, running or failed jobs, pending or dead deliveries, waiting
retrievals) is ever removed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from node.config import NodeConfig
from node.state import Index
from node.state.instances import InstanceRow
from node.state.retention import DAY, Retention

STUDY = "1.2.826.0.1.3680043.8.498.1"
CT = "1.2.826.0.1.3680043.8.498.2"
SEG = "1.2.826.0.1.3680043.8.498.3"
SEG_SOP = "1.2.826.0.1.3680043.8.498.3.1"


def _store(config: NodeConfig, index: Index, series: str, sop: str, modality: str,
           received: float) -> Path:
    path = config.spool_dir / STUDY / series / f"{sop}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * 10)
    index.instances.add(InstanceRow(sop, "1.2.840.10008.5.1.4.1.1.2", STUDY, series, str(path),
                                   10, "SCANNER", "10.1.2.3"), modality, now=received)
    return path


class Site:
    """A node's state with one CT series of two instances, its SEG and one job."""

    def __init__(self, tmp_path: Path, days_ago: float = 20):
        self.config = NodeConfig(state_dir=tmp_path,
                                 retention={"spool_days": 14, "results_days": 30})
        self.index = Index(self.config.index_path)
        self.received = time.time() - days_ago * DAY
        self.files = [_store(self.config, self.index, CT, f"{CT}.{i}", "CT", self.received)
                      for i in (1, 2)]
        self.files.append(_store(self.config, self.index, SEG, SEG_SOP, "SEG", self.received))
        self.index.instances.mark_stable(self.received + 1, now=self.received + 1)
        self.job_id = self.index.jobs.add(CT, SEG_SOP, "rule", "ct-liver-basic", "digest")
        self.results = self.config.results_dir / f"job-{self.job_id}"
        self.results.mkdir(parents=True)
        (self.results / "sr.dcm").write_bytes(b"sr")

    def finish(self, destinations: int = 1) -> None:
        assert self.index.jobs.claim() is not None
        self.index.jobs.finish(self.job_id, [(f"pacs{i}", str(self.results / "sr.dcm"),
                                             f"1.2.3.{i}") for i in range(destinations)],
                              preset_hash="abc")

    def deliver_all(self) -> None:
        for row in self.index.outbox.all(self.job_id):
            self.index.outbox.mark_verified(row["id"], "c-find")

    def tick(self, days_later: float = 0) -> tuple[int, int]:
        return Retention(self.config, self.index).tick(now=time.time() + days_later * DAY)

    def spool_left(self) -> list[Path]:
        return [p for p in self.files if p.exists()]


def test_delivered_study_is_cleaned_after_its_time(tmp_path: Path) -> None:
    site = Site(tmp_path, days_ago=20)
    site.finish()
    site.deliver_all()
    assert site.tick() == (3, 0)  # spool after 14 days; results 30 days after finishing
    assert site.spool_left() == []
    assert site.index.instances.series(CT) is None and site.index.instances.get(SEG_SOP) is None
    assert not (site.config.spool_dir / STUDY).exists()  # empty folders go too
    assert site.results.is_dir()
    assert site.tick(days_later=31) == (0, 1)
    assert not site.results.exists()
    assert site.tick(days_later=31) == (0, 0)  # nothing twice
    events = [e for e in site.index.audit.study_trail(STUDY)["events"]
              if e["event"] in ("spool removed", "results removed")]
    assert [e["event"] for e in events] == ["spool removed", "spool removed", "results removed"]
    removed = json.loads(events[0]["detail"])
    assert removed["senders"] == ["SCANNER@10.1.2.3"] and removed["instances"] == 2
    assert site.index.queries.totals() == {"instances_received": 3, "bytes_received": 30}


def test_recent_series_are_kept(tmp_path: Path) -> None:
    site = Site(tmp_path, days_ago=10)
    site.finish()
    site.deliver_all()
    assert site.tick() == (0, 0)
    assert len(site.spool_left()) == 3
    assert site.tick(days_later=5) == (3, 0)


@pytest.mark.parametrize("state", ["queued", "running", "failed", "pending", "dead"])
def test_unfinished_work_is_never_cleaned(tmp_path: Path, state: str) -> None:
    site = Site(tmp_path, days_ago=400)
    if state == "running":
        site.index.jobs.claim()
    elif state == "failed":
        site.index.jobs.claim()
        site.index.jobs.fail(site.job_id, "QC: metal artefact")
    elif state in ("pending", "dead"):
        site.finish(destinations=2)
        first, second = site.index.outbox.all(site.job_id)
        site.index.outbox.mark_verified(first["id"], "c-find")  # one delivered, the other not
        if state == "dead":
            site.index.outbox.mark_attempt_failed(second["id"], "refused", retry_at=None)
    assert site.tick(days_later=400) == (0, 0)
    assert len(site.spool_left()) == 3 and site.results.is_dir()
    assert site.index.instances.series(CT) is not None


def test_series_a_retrieval_waits_for_is_kept(tmp_path: Path) -> None:
    config = NodeConfig(state_dir=tmp_path)
    index = Index(config.index_path)
    old = time.time() - 100 * DAY
    seg = _store(config, index, SEG, SEG_SOP, "SEG", old)
    index.instances.mark_stable(old + 1, now=old + 1)
    index.retrievals.request(CT, STUDY, SEG_SOP)
    assert Retention(config, index).tick() == (0, 0)
    assert seg.exists()
    index.retrievals.finish(CT, "failed", "not retrievable")
    assert Retention(config, index).tick() == (1, 0)  # no job will ever read it
    assert not seg.exists()


def test_null_keeps_forever(tmp_path: Path) -> None:
    site = Site(tmp_path, days_ago=1000)
    site.config = site.config.model_copy(update={"retention": site.config.retention.model_copy(
        update={"spool_days": None, "results_days": None})})
    site.finish()
    site.deliver_all()
    assert site.tick(days_later=1000) == (0, 0)
    assert len(site.spool_left()) == 3 and site.results.is_dir()
