"""Rule priorities: a study matched by an urgent rule overtakes a backlog of queued jobs, never
a running one; the index of an earlier version gets every existing job at normal priority."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import pydicom
import pytest

from demo.synthetic import SyntheticStudy, write_synthetic_study
from node.config import NodeConfig
from node.dicom.ingest import Ingest
from node.flow.router import Router
from node.state import Index
from tests.fake_clock import FakeClock

RULES = [
    {"name": "ct-urgent", "preset": "ct-liver-basic", "modality": ["CT"],
     "series_description": "urgent", "priority": "urgent"},
    {"name": "ct-routine", "preset": "ct-liver-basic", "modality": ["CT"],
     "series_description": "routine", "priority": "backlog"},
]


def _study(folder: Path, seed: int, description: str) -> SyntheticStudy:
    study = write_synthetic_study(folder, shape=(4, 32, 32), seed=seed)
    for path in study.ct_paths:
        dataset = pydicom.dcmread(path)
        dataset.SeriesDescription = description
        dataset.save_as(path)
    return study


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> list[SyntheticStudy]:
    folder = tmp_path_factory.mktemp("studies")
    return [_study(folder / f"s{n}", n, "urgent CT" if n == 6 else "routine CT")
            for n in range(7)]


def _received(config: NodeConfig, index: Index, study: SyntheticStudy) -> list[int]:
    ingest = Ingest(config, index)
    for path in [*study.ct_paths, study.seg_path]:
        data = path.read_bytes()
        ingest.accept(data, lambda data=data: pydicom.dcmread(io.BytesIO(data)), "SCANNER")
    router = Router(config, index)
    return [job for series in index.instances.mark_stable(index.clock.time() + 1)
            for job in router.route(series)]


def test_urgent_study_overtakes_a_backlog_of_five(tmp_path: Path,
                                                   studies: list[SyntheticStudy]) -> None:
    config = NodeConfig(state_dir=tmp_path / "state", rules=RULES)
    config.spool_dir.mkdir(parents=True)
    index = Index(config.index_path, clock=FakeClock())
    [running] = _received(config, index, studies[0])
    assert index.jobs.claim().id == running  # one job runs; five more wait behind it
    backlog = [job for study in studies[1:6] for job in _received(config, index, study)]
    [urgent] = _received(config, index, studies[6])
    assert len(backlog) == 5
    assert [index.jobs.get(job).priority for job in [*backlog, urgent]] == [2] * 5 + [0]
    order = []
    while (job := index.jobs.claim()) is not None:
        order.append(job.id)
    assert order == [urgent, *backlog]
    assert index.jobs.get(running).state == "running"  # never pre-empted
    index.close()


def test_an_index_of_the_previous_version_gets_normal_priority(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite3"
    index = Index(path)
    job = index.jobs.add("1.2.3", "1.2.3.4", "rule", "preset", "digest")
    index.close()
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE jobs DROP COLUMN priority")
    db.execute("DROP TABLE job_series")  # and what steps after priority's made
    db.execute("DROP TABLE study_waits")
    db.execute("DROP TABLE job_priors")
    db.execute("PRAGMA user_version=1")  # the version before priority's step (2)
    db.commit()
    db.close()
    index = Index(path)
    assert index.jobs.get(job).priority == 1
    index.close()
