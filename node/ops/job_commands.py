"""``radiomics-node jobs list`` and ``jobs retry``: the node's jobs, and a failed job run again.

A job that failed for a transient cause is run again by the node itself (``node.flow.jobs``); one
that failed for good (its inputs refused, an error in the pipeline, or a transient cause that
did not pass in ``max_job_attempts`` runs) runs again only when someone asks, e.g. once space is
freed or the inputs are corrected. ``retry`` puts it back in the queue of the running node (the
index is shared through SQLite's WAL), attempts reset; the audit trail records who asked.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Any

from node.ops.index_commands import open_configured


def _list(args: argparse.Namespace) -> int:
    index = open_configured(args.config)
    if index is None:
        return 1
    try:
        jobs = index.jobs.all(args.state)
    finally:
        index.close()
    print(f"{'id':>5}  {'state':7}  {'tries':>5}  {'preset':16}  source series / reason")
    for job in jobs:
        reason = f"  [{job.reason}]" if job.reason and job.state != "done" else ""
        print(f"{job.id:>5}  {job.state:7}  {job.attempts:>5}  {job.preset[:16]:16}  "
              f"{job.source_series_uid}{reason}")
    print(f"{len(jobs)} job{'' if len(jobs) == 1 else 's'}")
    return 0


def _retry(args: argparse.Namespace) -> int:
    if not args.failed and not args.ids:
        print("name job ids or --failed", file=sys.stderr)
        return 2
    index = open_configured(args.config)
    if index is None:
        return 1
    try:
        queued = index.jobs.retry(None if args.failed else args.ids,
                                  actor=f"cli:{getpass.getuser()}")
    finally:
        index.close()
    print(f"{len(queued)} job{'' if len(queued) == 1 else 's'} queued again, attempts reset: "
          f"{', '.join(map(str, queued)) or 'none'}")
    skipped = sorted(set(args.ids or []) - set(queued))
    if skipped:
        print(f"not retried (no such job, or not failed): {', '.join(map(str, skipped))}",
              file=sys.stderr)
        return 1
    return 0


def add_commands(commands: Any) -> None:
    """Add ``jobs list`` and ``jobs retry`` to the ``radiomics-node`` parser."""
    jobs = commands.add_parser("jobs", help="the node's jobs: list, run a failed one again")
    job_commands = jobs.add_subparsers(dest="jobs_command", required=True)
    listing = job_commands.add_parser("list", help="jobs, oldest first, with why they failed")
    listing.add_argument("--config", type=Path, help="YAML configuration (defaults when omitted)")
    listing.add_argument("--state", choices=["queued", "running", "done", "failed"])
    listing.set_defaults(func=_list)
    retry = job_commands.add_parser("retry", help="queue failed jobs again, attempts reset")
    retry.add_argument("--config", type=Path, help="YAML configuration (defaults when omitted)")
    retry.add_argument("ids", type=int, nargs="*", metavar="ID", help="job ids")
    retry.add_argument("--failed", action="store_true", help="every failed job")
    retry.set_defaults(func=_retry)
