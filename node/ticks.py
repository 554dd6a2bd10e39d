"""A scheduled tick that runs once more, at once, when it is woken while it runs.

apscheduler 3 runs each of the node's ticks with ``max_instances=1``, and skips a run that falls
due while the tick is still running ("maximum number of running instances reached"), the early
runs ``Node.wake`` asks for included. The work that woke it then waits for the next regular
run, up to ``scan_interval`` later: a job's results finished while the outbox is still sending
the objects of the job before, or of this job's maps (docs/performance.md, "End to end"). A
:class:`Tick` remembers a wake that came while it ran and runs its function again as soon as
that run ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Tick:
    """``fn`` as a scheduler job; :meth:`wake_if_running` asks a running tick for another run."""

    def __init__(self, fn: Callable[[], None]):
        self._fn = fn
        self._lock = threading.Lock()
        self._running = False
        self._again = False

    def __call__(self) -> None:
        with self._lock:
            self._running, self._again = True, False
        try:
            while True:
                self._fn()
                with self._lock:  # decided and no longer running at once: no wake falls between
                    if not self._again:
                        self._running = False
                        return
                    self._again = False
        except BaseException:
            with self._lock:
                self._running = False
            raise

    def wake_if_running(self) -> bool:
        """When the tick is running, have it run once more as soon as this run ends, and say
        so; False when it is not running (the caller schedules a run)."""
        with self._lock:
            self._again = self._again or self._running
            return self._running
