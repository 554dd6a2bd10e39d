"""What a node does at start after a crash: no half files, no stored-but-unindexed instances, no
indexed instance whose spool file is missing or of another size, no job left 'running'.

A spool file appears under its final name only after fsync and rename (node.state.spool), so a file
with a final name is complete even when the node died before its index row was committed; such
an instance was never acknowledged, but it is good data and is indexed now. The same holds when a
power cut took back rows the receiver had committed (its index connection does not wait for the
disk, ``node.state.db``): those instances were acknowledged, their files are durable, and they are
indexed again here. Temporary files of interrupted writes are removed.

Every indexed instance's spool file must exist with the size its row records. A file missing or of
another size was damaged behind the node's back (deleted, truncated, overwritten): the file, when
present, is moved to quarantine with a reason naming both sizes, the row is forgotten and the
unfinished jobs that read it fail (``Index.instances.forget``). Sent again, the instance is new to
the index and stored as any other; its series is then routed and a job that failed on the damaged
copy runs again, unless ``reprocess`` is ``never`` (``node.flow.router``). The check is a stat per
file (0.18 s for 20,000 files): reading and hashing a large spool at every start would take
minutes; the sha256 a row keeps is checked when the instance arrives again (``node.dicom.ingest``).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import pydicom

from node.config import NodeConfig
from node.logs import fields
from node.state import Index
from node.state.instances import InstanceRow
from node.state.quarantine import quarantine
from node.state.spool import is_uid, remove_stale_partials, size_damage

log = logging.getLogger(__name__)

RECOVERED = "(recovered from spool)"
"""The source recorded for instances indexed at start from complete spool files."""


@dataclass(frozen=True)
class Recovery:
    """What the start-up recovery found and did."""

    partial_files_removed: int
    damaged_instances_removed: int
    """Indexed instances whose spool file was missing or of another size: rows forgotten."""
    instances_indexed: int
    jobs_requeued: int


def _remove_damaged(config: NodeConfig, index: Index) -> int:
    """Forget every indexed instance whose spool file is missing or of another size than its row
    says, quarantining the file when present; one warning line each. Returns how many."""
    removed = 0
    for sop_uid, name, size in index.instances.files():
        path = Path(name)
        damage = size_damage(path, size)
        if damage is None:
            continue
        kept: Path | None = None
        if damage != "missing":
            kept = quarantine(config.quarantine_dir, path.read_bytes(), source=name,
                              tag="(spool file)",
                              reason=f"spool copy of {sop_uid} damaged: {damage} (found at start)",
                              now=index.clock.time())
            path.unlink()
        row = index.instances.forget(
            sop_uid, f"input {sop_uid} removed from the spool at start ({damage}): send it again")
        log.warning("damaged spool copy removed", extra=fields(
            sop_instance_uid=sop_uid, series_uid=row.series_uid if row else None, damage=damage,
            quarantined=kept.name if kept else None))
        removed += 1
    return removed


def _index_orphans(spool_dir: Path, index: Index) -> int:
    indexed = 0
    for path in sorted(spool_dir.glob("*/*/*.dcm")):
        if not is_uid(path.stem) or index.instances.has(path.stem):
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            with path.open("rb") as file:
                sha256 = hashlib.file_digest(file, "sha256").hexdigest()
            row = InstanceRow(str(ds.SOPInstanceUID), str(ds.SOPClassUID),
                              str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(path),
                              path.stat().st_size, RECOVERED, sha256=sha256)
        except Exception as exc:  # a file the node wrote but cannot read back: keep, report
            log.error("spool file unreadable", extra=fields(file=str(path), error=str(exc)))
            continue
        index.instances.add(row, str(ds.get("Modality", "") or ""), now=path.stat().st_mtime)
        indexed += 1
    return indexed


def recover(config: NodeConfig, index: Index) -> Recovery:
    """Clean the spool, forget instances whose spool file is missing or of another size (one
    warning line each), index complete but unindexed files, queue interrupted jobs again."""
    partial = remove_stale_partials(config.spool_dir)
    damaged = _remove_damaged(config, index)
    done = Recovery(
        partial_files_removed=partial,
        damaged_instances_removed=damaged,
        instances_indexed=_index_orphans(config.spool_dir, index),
        jobs_requeued=index.jobs.requeue_interrupted(),
    )
    if done != Recovery(0, 0, 0, 0):
        log.warning("recovered after an unclean stop", extra=fields(
            partial_files_removed=done.partial_files_removed,
            damaged_instances_removed=done.damaged_instances_removed,
            instances_indexed=done.instances_indexed, jobs_requeued=done.jobs_requeued))
    return done
