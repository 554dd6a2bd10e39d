"""``/healthz``: is the node doing its work? Five checks, each with a reason when it fails.

- ``receiver``: the DICOM listener's socket is open;
- ``scheduler``: the scheduler runs and its heartbeat tick ran within
  ``status.scheduler_stale_after`` seconds (a wedged thread pool stops the heartbeat too);
- ``disk``: free space in the spool is at least ``min_free_bytes`` (below it C-STORE is
  answered 0xA700, PS3.4 B.2.3);
- ``outbox``: no pending delivery has been due for longer than ``status.stuck_after`` seconds
  (deliveries in back-off are not due; a destination that is down for long enough fails this);
- ``ticks``: no scheduled tick has failed ``TICK_FAILURES`` times in a row (``node.flow.ticks``): a
  tick that raises on every run, e.g. on a damaged page of the index, does the node's work no
  more although the heartbeat still runs.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from node.config import NodeConfig
from node.flow.ticks import Tick
from node.state import Index

TICK_FAILURES = 3
"""Runs in a row a tick may fail before ``/healthz`` fails: one failed run may be a passing
cause (a peer that hung up), three in a row at ``scan_interval`` are not."""


@dataclass(frozen=True)
class Check:
    """One health check: its name, whether it passed, and what was seen."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Health:
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def as_json(self) -> dict:
        """``{"status": "ok"|"fail", "checks": {name: {"ok": bool, "detail": str}}}``."""
        return {"status": "ok" if self.ok else "fail",
                "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in self.checks}}


def check_health(config: NodeConfig, index: Index, listening: bool, scheduler_running: bool,
                 heartbeat: float | None, now: float | None = None,
                 ticks: tuple[Tick, ...] = ()) -> Health:
    """Run the checks; ``heartbeat`` is when the scheduler's heartbeat tick last ran, ``ticks``
    the node's scheduled ticks."""
    now = index.clock.time() if now is None else now
    status = config.status
    listener = config.listener
    receiver = Check("receiver", listening,
                     f"{listener.ae_title} on {listener.host}:{listener.port} "
                     f"{'listening' if listening else 'not listening'}")
    if not scheduler_running:
        scheduler = Check("scheduler", False, "scheduler not running")
    elif heartbeat is None:
        scheduler = Check("scheduler", False, "no heartbeat yet")
    else:
        age = now - heartbeat
        limit = status.scheduler_stale_after
        scheduler = Check("scheduler", age <= limit,
                          f"last heartbeat {age:.1f} s ago (limit {limit:g} s)")
    free = shutil.disk_usage(config.state_dir).free
    disk = Check("disk", free >= config.min_free_bytes,
                 f"{free / 2**30:.2f} GiB free in {config.state_dir} "
                 f"(floor {config.min_free_bytes / 2**30:.2f} GiB)")
    oldest = index.queries.oldest_due_delivery(now)
    if oldest is None:
        outbox = Check("outbox", True, "no delivery overdue")
    else:
        waiting = now - oldest
        outbox = Check("outbox", waiting <= status.stuck_after,
                       f"oldest due delivery waiting {waiting:.0f} s "
                       f"(limit {status.stuck_after:g} s)")
    failing = [tick for tick in ticks if tick.failures_in_a_row >= TICK_FAILURES]
    tick_check = Check("ticks", not failing, "; ".join(
        f"{tick.name} failed {tick.failures_in_a_row} times in a row, last {tick.last_error}"
        for tick in failing) or f"no tick failed {TICK_FAILURES} times in a row")
    return Health((receiver, scheduler, disk, outbox, tick_check))
