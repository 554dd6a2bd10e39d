"""Start-up recovery: partial spool files removed, complete unindexed files indexed, interrupted
jobs queued again."""

import shutil
from pathlib import Path

import pydicom

from node.config import NodeConfig
from node.index import Index
from node.ingest import Ingest
from node.recovery import RECOVERED, Recovery, recover
from node.spool import spool_path


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
    job = index.add_job("1.2.3", "1.2.3.4", "rule", "preset", "digest")
    assert index.claim_job().id == job

    assert recover(config, index) == Recovery(partial_files_removed=1, instances_indexed=1,
                                              jobs_requeued=1)
    assert not partial.exists()
    row = index.instance(ds.SOPInstanceUID)
    assert row is not None and row.path == str(orphan) and row.calling_ae == RECOVERED
    assert index.series(ds.SeriesInstanceUID).n_instances == 1
    assert index.job(job).state == "queued"
    assert recover(config, index) == Recovery(0, 0, 0)  # idempotent


def test_receiver_connection_commits_without_fsync_and_recovery_restores_lost_rows(
        tmp_path: Path, refdata: Path) -> None:
    """The receiver's index connection is synchronous=NORMAL: a power cut may take back its last
    rows. The spool file was durable before the row was written, so recovery indexes it again."""
    config = NodeConfig(state_dir=tmp_path)
    index = Index(config.index_path)
    receiving = Index(config.index_path, synchronous="NORMAL")
    assert index._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert receiving._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    source = refdata / "pydicom" / "test_files" / "CT_small.dcm"
    data = source.read_bytes()
    assert Ingest(config, receiving).accept(
        data, lambda: pydicom.dcmread(source), "SCANNER", host="10.0.0.1").status == 0
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    assert index.instance(ds.SOPInstanceUID).calling_ae == "SCANNER"  # visible to the node
    # the power cut: the row and its series count are gone, the file is not
    index._db.execute("DELETE FROM instances")
    index._db.execute("DELETE FROM series")
    assert recover(config, index).instances_indexed == 1
    row = index.instance(ds.SOPInstanceUID)
    assert row is not None and row.calling_ae == RECOVERED and Path(row.path).read_bytes() == data
    receiving.close()
    index.close()
