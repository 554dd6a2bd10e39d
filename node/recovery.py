"""What a node does at start after a crash: no half files, no stored-but-unindexed instances, no
job left 'running'.

A spool file appears under its final name only after fsync and rename (node.spool), so a file
with a final name is complete even when the node died before its index row was committed; such
an instance was never acknowledged, but it is good data and is indexed now. The same holds when a
power cut took back rows the receiver had committed (its index connection does not wait for the
disk, ``node.index``): those instances were acknowledged, their files are durable, and they are
indexed again here. Temporary files of interrupted writes are removed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pydicom

from node.config import NodeConfig
from node.index import Index, InstanceRow
from node.logs import fields
from node.spool import is_uid, remove_stale_partials

log = logging.getLogger(__name__)

RECOVERED = "(recovered from spool)"
"""The source recorded for instances indexed at start from complete spool files."""


@dataclass(frozen=True)
class Recovery:
    """What the start-up recovery found and did."""

    partial_files_removed: int
    instances_indexed: int
    jobs_requeued: int


def _index_orphans(spool_dir: Path, index: Index) -> int:
    indexed = 0
    for path in sorted(spool_dir.glob("*/*/*.dcm")):
        if not is_uid(path.stem) or index.has_instance(path.stem):
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            row = InstanceRow(str(ds.SOPInstanceUID), str(ds.SOPClassUID),
                              str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(path),
                              path.stat().st_size, RECOVERED)
        except Exception as exc:  # a file the node wrote but cannot read back: keep, report
            log.error("spool file unreadable", extra=fields(file=str(path), error=str(exc)))
            continue
        index.add_instance(row, str(ds.get("Modality", "") or ""), now=path.stat().st_mtime)
        indexed += 1
    return indexed


def recover(config: NodeConfig, index: Index) -> Recovery:
    """Clean the spool, index complete but unindexed files, queue interrupted jobs again."""
    done = Recovery(
        partial_files_removed=remove_stale_partials(config.spool_dir),
        instances_indexed=_index_orphans(config.spool_dir, index),
        jobs_requeued=index.requeue_interrupted_jobs(),
    )
    if done != Recovery(0, 0, 0):
        log.warning("recovered after an unclean stop", extra=fields(
            partial_files_removed=done.partial_files_removed,
            instances_indexed=done.instances_indexed, jobs_requeued=done.jobs_requeued))
    return done
