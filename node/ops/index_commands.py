"""``radiomics-node index check`` and ``index rebuild``: the index's integrity, and a new index
made from the spool when the old one is damaged.

The spool is the durable record of what the node acknowledged (``node.dicom.ingest``: each instance
is on disk before its row, and its file name is its SOP Instance UID); the index adds what happened
to it (series state, jobs, deliveries, audit). ``rebuild`` keeps the damaged database beside the
new one (``<name>.damaged-<UTC time>``, with its ``-wal`` and ``-shm`` files), then indexes every
complete spool file as ``node.state.recovery`` does after a crash. The series become stable and are
routed again when the node starts; results get the same UIDs as before (``pipelines.outputs.uids``),
so a PACS that has them already keeps one copy. What is lost is the history: jobs, deliveries, the
audit trail and feed positions (a feed starts where ``orthanc_feeds[].start`` says).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.clock import SYSTEM_CLOCK
from node.config import load_config

if TYPE_CHECKING:
    from node.state import Index


def open_configured(config_path: Path | None) -> Index | None:
    """The index of the node configured by ``config_path`` (defaults when None), opened beside
    a running node (SQLite WAL); None, with a message on stderr, when that node has none yet."""
    from node.state import Index

    config = load_config(config_path)
    if not config.index_path.is_file():
        print(f"no index at {config.index_path} (state_dir of the configuration)", file=sys.stderr)
        return None
    return Index(config.index_path)


def _check(args: argparse.Namespace) -> int:
    """Exit 0 when SQLite's integrity check passes, 1 (with its findings) when it does not."""
    from node.state import Index, IndexDamaged

    config = load_config(args.config)
    if not config.index_path.is_file():
        print(f"no index at {config.index_path} (state_dir of the configuration)", file=sys.stderr)
        return 1
    try:
        index = Index(config.index_path)
    except IndexDamaged as exc:
        print(f"DAMAGED  {exc}")
        return 1
    try:
        problems = index.integrity_problems()
    finally:
        index.close()
    if problems:
        print(f"DAMAGED  index {config.index_path}: {len(problems)} problem(s) found by SQLite's "
              "quick_check; stop the node and run `radiomics-node index rebuild`")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    print(f"ok       index {config.index_path}")
    return 0


def _rebuild(args: argparse.Namespace) -> int:
    """Move the index aside and index the spool anew (module docstring). The node must be
    stopped: its open connection would go on writing to the moved file."""
    from node.state import Index
    from node.state.recovery import recover

    config = load_config(args.config)
    path = config.index_path
    kept: list[Path] = []
    if path.exists():
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(SYSTEM_CLOCK.time()))
        for suffix in ("", "-wal", "-shm"):
            old = path.with_name(path.name + suffix)
            if old.exists():
                target = path.with_name(f"{path.name}.damaged-{stamp}{suffix}")
                old.rename(target)
                kept.append(target)
    index = Index(path)
    try:
        done = recover(config, index)
    finally:
        index.close()
    if kept:
        print(f"kept the old index as {kept[0]}")
    print(f"new index {path}: {done.instances_indexed} instance(s) indexed from "
          f"{config.spool_dir}, {done.partial_files_removed} partial file(s) removed; the series "
          "are routed again when the node starts")
    return 0


def add_commands(commands: Any) -> None:
    """Add ``index check`` and ``index rebuild`` to the ``radiomics-node`` parser."""
    index = commands.add_parser("index", help="the node's index: integrity check, rebuild from "
                                "the spool")
    index_commands = index.add_subparsers(dest="index_command", required=True)
    check = index_commands.add_parser(
        "check", help="SQLite's integrity check of the index (exit 1 when damaged)")
    check.add_argument("--config", type=Path, help="YAML configuration (defaults when omitted)")
    check.set_defaults(func=_check)
    rebuild = index_commands.add_parser(
        "rebuild", help="with the node stopped: keep the index aside and index the spool anew "
        "(history of jobs and deliveries is not rebuilt)")
    rebuild.add_argument("--config", type=Path, help="YAML configuration (defaults when omitted)")
    rebuild.set_defaults(func=_rebuild)
