"""Start-up recovery: partial spool files removed, indexed instances whose spool file is missing
or truncated forgotten (the file quarantined), complete unindexed files indexed, interrupted jobs
queued again."""

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pydicom
import pytest

from demo.synthetic import write_synthetic_study
from node.config import NodeConfig
from node.dicom.ingest import Ingest
from node.state import Index
from node.state.recovery import RECOVERED, Recovery, recover
from node.state.spool import spool_path


def test_recover_after_a_crash(tmp_path: Path, refdata: Path) -> None:
    config = NodeConfig(state_dir=tmp_path)
    index = Index(config.index_path)
    source = refdata / "pydicom" / "test_files" / "CT_small.dcm"
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    # killed after the rename, before the index commit: complete file, no row
    orphan = spool_path(config.spool_dir, ds.StudyInstanceUID, ds.SeriesInstanceUID,
                        ds.SOPInstanceUID)
    orphan.parent.mkdir(parents=True)
    shutil.copyfile(source, orphan)
    # killed during the write: a temporary file
    partial = orphan.parent / ".incoming-abc.part"
    partial.write_bytes(source.read_bytes()[:1000])
    # killed while a job ran
    job = index.jobs.add("1.2.3", "1.2.3.4", "rule", "preset", "digest")
    assert index.jobs.claim().id == job

    assert recover(config, index) == Recovery(partial_files_removed=1, damaged_instances_removed=0,
                                              instances_indexed=1, jobs_requeued=1)
    assert not partial.exists()
    row = index.instances.get(ds.SOPInstanceUID)
    assert row is not None and row.path == str(orphan) and row.calling_ae == RECOVERED
    assert row.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert index.instances.series(ds.SeriesInstanceUID).n_instances == 1
    assert index.jobs.get(job).state == "queued"
    assert recover(config, index) == Recovery(0, 0, 0, 0)  # idempotent


def test_receiver_connection_commits_without_fsync_and_recovery_restores_lost_rows(
        tmp_path: Path, refdata: Path) -> None:
    """The receiver's index connection is synchronous=NORMAL: a power cut may take back its last
    rows. The spool file was durable before the row was written, so recovery indexes it again."""
    config = NodeConfig(state_dir=tmp_path)
    index = Index(config.index_path)
    receiving = Index(config.index_path, synchronous="NORMAL")
    assert index._db.query("PRAGMA synchronous")[0][0] == 2  # FULL
    assert receiving._db.query("PRAGMA synchronous")[0][0] == 1  # NORMAL
    source = refdata / "pydicom" / "test_files" / "CT_small.dcm"
    data = source.read_bytes()
    assert Ingest(config, receiving).accept(
        data, lambda: pydicom.dcmread(source), "SCANNER", host="10.0.0.1").status == 0
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    assert index.instances.get(ds.SOPInstanceUID).calling_ae == "SCANNER"  # visible to the node
    # the power cut: the row and its series count are gone, the file is not
    with index._db.transaction() as db:
        db.execute("DELETE FROM instances")
        db.execute("DELETE FROM series")
    assert recover(config, index).instances_indexed == 1
    row = index.instances.get(ds.SOPInstanceUID)
    assert row is not None and row.calling_ae == RECOVERED and Path(row.path).read_bytes() == data
    receiving.close()
    index.close()


def test_truncated_and_deleted_spool_files_are_forgotten_and_stored_again_when_sent(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 20, item 3: a spool file truncated or deleted behind the node's back. At start the
    row goes (the truncated bytes to quarantine, with both sizes), the job queued on the series
    fails rather than run without the instance, and the study sent again is stored."""
    study = write_synthetic_study(tmp_path / "study", shape=(4, 32, 32))
    config = NodeConfig(state_dir=tmp_path / "node")
    index = Index(config.index_path)
    ingest = Ingest(config, index)
    paths = [*study.ct_paths, study.seg_path]
    for path in paths:
        assert ingest.accept(path.read_bytes(), lambda p=path: pydicom.dcmread(p),
                             "SCANNER").status == 0
    [first, second] = [index.instances.get(pydicom.dcmread(p).SOPInstanceUID) for p in paths[:2]]
    job = index.jobs.add(study.ct_series_uid, "1.2.3.4", "rule", "preset", "digest")
    Path(first.path).write_bytes(paths[0].read_bytes()[:1000])  # truncated
    Path(second.path).unlink()  # deleted

    with caplog.at_level(logging.WARNING, logger="node.state.recovery"):
        assert recover(config, index) == Recovery(0, 2, 0, 0)
    assert index.instances.get(first.sop_instance_uid) is None
    assert index.instances.get(second.sop_instance_uid) is None
    assert not Path(first.path).exists()
    assert index.instances.series(study.ct_series_uid).n_instances == 2
    removed = [r.fields for r in caplog.records if r.getMessage() == "damaged spool copy removed"]
    assert [(f["sop_instance_uid"], f["damage"]) for f in removed] == [
        (first.sop_instance_uid, f"size 1000 expected {first.size}"),
        (second.sop_instance_uid, "missing")]
    [kept] = config.quarantine_dir.glob("*.dcm")
    assert kept.read_bytes() == paths[0].read_bytes()[:1000]
    reason = json.loads(kept.with_name(kept.stem + ".reason.json").read_text())
    assert reason["source"] == first.path
    assert reason["reason"] == (f"spool copy of {first.sop_instance_uid} damaged: size 1000 "
                                f"expected {first.size} (found at start)")
    failed = index.jobs.get(job)
    assert failed.state == "failed" and failed.reason == (
        f"input {first.sop_instance_uid} removed from the spool at start (size 1000 expected "
        f"{first.size}): send it again")

    for path in paths:  # the study sent again: the two are new to the index
        assert ingest.accept(path.read_bytes(), lambda p=path: pydicom.dcmread(p),
                             "SCANNER").status == 0
    for path, row in ((paths[0], first), (paths[1], second)):
        again = index.instances.get(row.sop_instance_uid)
        assert again is not None and Path(again.path).read_bytes() == path.read_bytes()
    assert index.instances.series(study.ct_series_uid).n_instances == 4
    assert recover(config, index) == Recovery(0, 0, 0, 0)
    index.close()
