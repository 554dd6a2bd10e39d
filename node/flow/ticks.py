"""A scheduled tick that runs once more, at once, when it is woken while it runs, and that keeps
count of the runs that failed in a row.

apscheduler 3 runs each of the node's ticks with ``max_instances=1``, and skips a run that falls
due while the tick is still running ("maximum number of running instances reached"), the early
runs ``Node.wake`` asks for included. The work that woke it then waits for the next regular
run, up to ``scan_interval`` later: a job's results finished while the outbox is still sending
the objects of the job before, or of this job's maps (docs/history/performance.md, "End to end",
ninth round). A
:class:`Tick` remembers a wake that came while it ran and runs its function again as soon as
that run ends.

A run that raises does not take the scheduler down and is not left to apscheduler to print: it is
logged as one line (the tick's name and ``node.flow.jobs.failure_reason`` of the exception; the
traceback at debug level) and counted. ``failures_in_a_row`` and ``last_error`` tell
``/healthz`` (``node.ops.health``) of a tick that keeps failing, e.g. on a damaged page of the
index, while the heartbeat still runs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from node.flow.jobs import failure_reason
from node.logs import fields

log = logging.getLogger(__name__)


class Tick:
    """``fn`` as a scheduler job called ``name``; :meth:`wake_if_running` asks a running tick for
    another run."""

    def __init__(self, fn: Callable[[], None], name: str = ""):
        self._fn = fn
        self.name = name or getattr(fn, "__qualname__", "tick")
        self._lock = threading.Lock()
        self._running = False
        self._again = False
        self.failures_in_a_row = 0
        self.last_error = ""

    def __call__(self) -> None:
        with self._lock:
            self._running, self._again = True, False
        try:
            while True:
                self._run()
                with self._lock:  # decided and no longer running at once: no wake falls between
                    if not self._again:
                        self._running = False
                        return
                    self._again = False
        except BaseException:
            with self._lock:
                self._running = False
            raise

    def _run(self) -> None:
        """One run of ``fn``: an exception is logged in one line and counted, not raised."""
        try:
            self._fn()
        except Exception as exc:
            self.last_error = failure_reason(exc)
            self.failures_in_a_row += 1
            log.error("tick failed", extra=fields(tick=self.name, error=self.last_error,
                                                  failures_in_a_row=self.failures_in_a_row))
            log.debug("tick failure traceback", exc_info=exc, extra=fields(tick=self.name))
        else:
            self.failures_in_a_row = 0

    def wake_if_running(self) -> bool:
        """When the tick is running, have it run once more as soon as this run ends, and say
        so; False when it is not running (the caller schedules a run)."""
        with self._lock:
            self._again = self._again or self._running
            return self._running
