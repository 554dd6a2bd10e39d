"""Spool copies checked against their index row (issue 20, item 3): the sha256 of the bytes as
written is kept; a duplicate whose spool copy is damaged (missing, truncated, overwritten) replaces
it and routes its series again, so that a job that failed on the damaged copy is queued again
under the ``reprocess`` policy; an intact duplicate is ignored as before. Real files, a real
Ingest, Index and Router; no worker runs."""

import hashlib
import logging
import os
import sqlite3
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from demo.synthetic import SyntheticStudy, write_synthetic_study
from node.config import NodeConfig
from node.dicom.ingest import Ingest
from node.dicom.part10 import Part10, file_meta_header
from node.flow.router import INPUTS_REPAIRED, Router
from node.state import Index
from node.state.recovery import recover

REPLACED = "damaged spool copy replaced"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    return write_synthetic_study(tmp_path_factory.mktemp("study"), shape=(6, 48, 48))


def _node(tmp_path: Path, **settings: object) -> tuple[NodeConfig, Index, Ingest, Router]:
    config = NodeConfig(state_dir=tmp_path, **settings)
    index = Index(config.index_path)
    return config, index, Ingest(config, index), Router(config, index)


def _send(ingest: Ingest, path: Path) -> int:
    """``path`` through ``Ingest.accept`` as the receiver hands it over; the status."""
    return ingest.accept(path.read_bytes(), lambda: pydicom.dcmread(path), "SCANNER",
                         host="10.0.0.1").status


def _sop(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _replaced(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == REPLACED]


def _stabilise(index: Index, router: Router) -> list[int]:
    """Mark every receiving series stable, as the assembly tick does once it is quiet, and
    route each; the jobs queued."""
    return [job for series in index.instances.mark_stable(time.time() + 1)
            for job in router.route(series)]


def test_stored_sha256_is_the_spool_files(tmp_path: Path, study: SyntheticStudy) -> None:
    _, index, ingest, _ = _node(tmp_path)
    # one buffer
    assert _send(ingest, study.ct_paths[0]) == 0
    row = index.instances.get(_sop(study.ct_paths[0]))
    assert row is not None and row.sha256 == hashlib.sha256(
        Path(row.path).read_bytes()).hexdigest() == hashlib.sha256(
        study.ct_paths[0].read_bytes()).hexdigest()
    # header and data set as the receiver hands them over (node.dicom.part10)
    ds = pydicom.dcmread(study.ct_paths[1])
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    data = Part10(file_meta_header(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian),
                  memoryview(body.getvalue()), ExplicitVRLittleEndian)
    assert ingest.accept(data, lambda: ds, "SCANNER").status == 0
    row = index.instances.get(ds.SOPInstanceUID)
    assert row is not None and Path(row.path).read_bytes() == bytes(data)
    assert row.sha256 == hashlib.sha256(Path(row.path).read_bytes()).hexdigest()


@pytest.mark.parametrize("damage", ["truncated", "deleted", "overwritten"])
def test_damaged_copy_is_replaced_by_the_intact_duplicate(
        tmp_path: Path, study: SyntheticStudy, caplog: pytest.LogCaptureFixture,
        damage: str) -> None:
    _, index, ingest, _ = _node(tmp_path)
    source = study.ct_paths[2]
    data = source.read_bytes()
    assert _send(ingest, source) == 0
    row = index.instances.get(_sop(source))
    path = Path(row.path)
    assert index.instances.mark_stable(time.time() + 1)  # stable before the damage
    if damage == "truncated":
        path.write_bytes(data[:1000])
        expected = f"size 1000 expected {len(data)}"
    elif damage == "deleted":
        path.unlink()
        expected = "missing"
    else:  # the same length, other bytes: only the hash tells
        path.write_bytes(data[:-16] + b"\xff" * 16)
        expected = "hash differs"

    with caplog.at_level(logging.DEBUG, logger="node.dicom.ingest"):
        assert _send(ingest, source) == 0
    assert path.read_bytes() == data
    again = index.instances.get(row.sop_instance_uid)
    assert (again.size, again.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    [warned] = _replaced(caplog)
    assert warned.levelno == logging.WARNING
    assert warned.fields["damage"] == expected
    assert warned.fields["series_uid"] == row.series_uid
    series = index.instances.series(row.series_uid)
    assert series.stable_at is None and series.n_instances == 1  # receiving again, not grown
    assert index.queries.totals()["instances_received"] == 1


def test_intact_duplicate_is_ignored_and_its_file_untouched(
        tmp_path: Path, study: SyntheticStudy, caplog: pytest.LogCaptureFixture) -> None:
    _, index, ingest, _ = _node(tmp_path)
    source = study.ct_paths[3]
    assert _send(ingest, source) == 0
    row = index.instances.get(_sop(source))
    before = os.stat(row.path)
    assert index.instances.mark_stable(time.time() + 1)
    with caplog.at_level(logging.DEBUG, logger="node.dicom.ingest"):
        assert _send(ingest, source) == 0
    after = os.stat(row.path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert index.instances.get(row.sop_instance_uid) == row
    assert not _replaced(caplog)
    assert [r.getMessage() for r in caplog.records] == ["duplicate instance ignored"]
    assert index.instances.series(row.series_uid).stable_at is not None  # not routed again


def test_damaged_copy_not_replaced_by_an_instance_of_another_series(
        tmp_path: Path, study: SyntheticStudy, caplog: pytest.LogCaptureFixture) -> None:
    _, index, ingest, _ = _node(tmp_path)
    source = study.ct_paths[4]
    assert _send(ingest, source) == 0
    row = index.instances.get(_sop(source))
    Path(row.path).write_bytes(source.read_bytes()[:1000])
    moved = pydicom.dcmread(source)
    moved.SeriesInstanceUID = generate_uid()
    other = tmp_path / "other.dcm"
    moved.save_as(other)
    with caplog.at_level(logging.WARNING, logger="node.dicom.ingest"):
        assert _send(ingest, other) == 0
    assert Path(row.path).stat().st_size == 1000
    assert index.instances.get(row.sop_instance_uid) == row
    [warned] = [r for r in caplog.records if r.name == "node.dicom.ingest"]
    assert warned.getMessage().startswith("damaged spool copy not replaced")
    assert warned.fields["arriving_series_uid"] == moved.SeriesInstanceUID


def test_replacement_below_the_disk_floor_is_refused_for_later(
        tmp_path: Path, study: SyntheticStudy) -> None:
    _, index, ingest, _ = _node(tmp_path)
    source = study.ct_paths[5]
    assert _send(ingest, source) == 0
    row = index.instances.get(_sop(source))
    Path(row.path).write_bytes(source.read_bytes()[:1000])
    full = Ingest(NodeConfig(state_dir=tmp_path, min_free_bytes=2**62), index)
    assert _send(full, source) == 0xA700
    assert Path(row.path).stat().st_size == 1000
    assert index.instances.get(row.sop_instance_uid) == row
    assert _send(ingest, source) == 0  # room again: replaced
    assert Path(row.path).read_bytes() == source.read_bytes()


def _failed_job(index: Index, ingest: Ingest, router: Router, study: SyntheticStudy) -> int:
    """The study stored and routed, its job run and failed (as on a damaged spool copy)."""
    for path in (*study.ct_paths, study.seg_path):
        assert _send(ingest, path) == 0
    [job] = _stabilise(index, router)
    assert index.jobs.claim().id == job
    index.jobs.fail(job, "cannot read the CT series: truncated file")
    return job


@pytest.mark.parametrize("damaged", ["ct", "seg"])
@pytest.mark.parametrize(("policy", "queued_again"), [("on_change", True), ("never", False)])
def test_failed_job_is_queued_again_when_its_input_is_repaired(
        tmp_path: Path, study: SyntheticStudy, caplog: pytest.LogCaptureFixture, damaged: str,
        policy: str, queued_again: bool) -> None:
    _, index, ingest, router = _node(tmp_path, reprocess=policy)
    job = _failed_job(index, ingest, router, study)
    # routed again without a repair: the failed job stays failed
    assert router.route(index.instances.series(study.ct_series_uid)) == []
    assert index.jobs.get(job).state == "failed"

    source = study.ct_paths[1] if damaged == "ct" else study.seg_path
    row = index.instances.get(_sop(source))
    Path(row.path).write_bytes(source.read_bytes()[:1000])  # behind the node's back
    with caplog.at_level(logging.INFO), caplog.at_level(logging.DEBUG, logger="node.dicom.ingest"):
        statuses = [_send(ingest, path) for path in (*study.ct_paths, study.seg_path)]
        assert _stabilise(index, router) == ([job] if queued_again else [])
    assert statuses == [0] * 7  # the intact study sent again: 7/7 acknowledged
    ingested = [r.getMessage() for r in caplog.records if r.name == "node.dicom.ingest"]
    assert sorted(ingested) == ["damaged spool copy replaced"] + ["duplicate instance ignored"] * 6
    assert Path(row.path).read_bytes() == source.read_bytes()
    after = index.jobs.get(job)
    assert len(index.jobs.all()) == 1
    messages = [r.getMessage() for r in caplog.records if r.name == "node.flow.router"]
    if queued_again:
        assert (after.state, after.attempts) == ("queued", 0)
        assert index.audit.count(INPUTS_REPAIRED) == 1
        assert "inputs repaired: failed job queued again" in messages
        # runs and fails again: not queued again without another repair
        assert index.jobs.claim().id == job
        index.jobs.fail(job, "failed again")
        assert router.route(index.instances.series(study.ct_series_uid)) == []
    else:
        assert after.state == "failed" and index.audit.count(INPUTS_REPAIRED) == 0
        assert "inputs repaired, failed job not processed again (reprocess: never)" in messages


def test_done_job_is_not_run_again_after_a_repair(tmp_path: Path, study: SyntheticStudy) -> None:
    _, index, ingest, router = _node(tmp_path)
    for path in (*study.ct_paths, study.seg_path):
        assert _send(ingest, path) == 0
    [job] = _stabilise(index, router)
    assert index.jobs.claim().id == job
    index.jobs.finish(job, [])
    row = index.instances.get(_sop(study.ct_paths[0]))
    Path(row.path).write_bytes(study.ct_paths[0].read_bytes()[:1000])
    assert _send(ingest, study.ct_paths[0]) == 0
    assert Path(row.path).read_bytes() == study.ct_paths[0].read_bytes()
    assert _stabilise(index, router) == []
    assert [j.state for j in index.jobs.all()] == ["done"]


def test_failed_job_runs_again_when_damaged_copies_removed_at_start_are_sent_again(
        tmp_path: Path, study: SyntheticStudy) -> None:
    """The measured bug with a restart in between: recovery forgets the damaged instance; sent
    again, it is new to the index, and once its series is stable the failed job is queued."""
    config, index, ingest, router = _node(tmp_path)
    job = _failed_job(index, ingest, router, study)
    row = index.instances.get(_sop(study.ct_paths[2]))
    Path(row.path).write_bytes(study.ct_paths[2].read_bytes()[:1000])
    assert recover(config, index).damaged_instances_removed == 1
    assert index.instances.get(row.sop_instance_uid) is None
    assert index.instances.series(study.ct_series_uid).stable_at is not None  # not routed
    assert _stabilise(index, router) == []
    for path in (*study.ct_paths, study.seg_path):
        assert _send(ingest, path) == 0
    assert _stabilise(index, router) == [job]
    assert index.jobs.get(job).state == "queued"
    assert Path(index.instances.get(row.sop_instance_uid).path).read_bytes() == \
        study.ct_paths[2].read_bytes()


def test_index_made_before_the_hash_is_upgraded_and_checks_by_size(
        tmp_path: Path, study: SyntheticStudy) -> None:
    config = NodeConfig(state_dir=tmp_path)
    source = study.ct_paths[0]
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    spooled = config.spool_dir / ds.StudyInstanceUID / ds.SeriesInstanceUID / "x.dcm"
    spooled.parent.mkdir(parents=True)
    spooled.write_bytes(source.read_bytes())
    config.index_path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(config.index_path)
    db.executescript("""CREATE TABLE instances (sop_instance_uid TEXT PRIMARY KEY,
        sop_class_uid TEXT NOT NULL, study_uid TEXT NOT NULL, series_uid TEXT NOT NULL,
        path TEXT NOT NULL, size INTEGER NOT NULL, calling_ae TEXT NOT NULL,
        received_at REAL NOT NULL, peer_host TEXT);
        CREATE TABLE series (series_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL,
        modality TEXT NOT NULL, first_received REAL NOT NULL, last_received REAL NOT NULL,
        n_instances INTEGER NOT NULL, stable_at REAL);""")
    db.execute("INSERT INTO instances VALUES (?,?,?,?,?,?,'OLD',0,NULL)",
               (ds.SOPInstanceUID, ds.SOPClassUID, ds.StudyInstanceUID, ds.SeriesInstanceUID,
                str(spooled), spooled.stat().st_size))
    db.execute("INSERT INTO series VALUES (?,?,'CT',0,0,1,1)",
               (ds.SeriesInstanceUID, ds.StudyInstanceUID))
    db.commit()
    db.close()
    index = Index(config.index_path)
    ingest = Ingest(config, index)
    assert index.instances.get(ds.SOPInstanceUID).sha256 is None
    assert _send(ingest, source) == 0  # intact by size: ignored
    assert index.instances.get(ds.SOPInstanceUID).sha256 is None
    spooled.write_bytes(source.read_bytes()[:1000])
    assert _send(ingest, source) == 0
    row = index.instances.get(ds.SOPInstanceUID)
    assert row.sha256 == hashlib.sha256(spooled.read_bytes()).hexdigest()
    assert spooled.read_bytes() == source.read_bytes()
    assert index.instances.series(ds.SeriesInstanceUID).stable_at is None
    assert _send(ingest, study.ct_paths[1]) == 0  # a new instance into the old series table
    assert index.instances.series(ds.SeriesInstanceUID).n_instances == 2
