"""The node's one source of wall-clock time: every time the node stamps on a row, compares with
a stamped time, or turns into a deadline or back-off (a series' stability, a job's or a
delivery's next attempt, a retrieval's wait, the retention cut-off, the heartbeat) is read from a
``Clock``. ``node.service.Node`` takes one and hands it to its index connections
(``node.state.Index.clock``), where the parts that hold an index read it; a command that makes
no node reads ``SYSTEM_CLOCK``. Tests hand a clock of their own and move it on instead of
waiting.

Durations measured within one process for logs and limits (``time.monotonic``,
``time.perf_counter``) are not times of the node's state and are read directly.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Wall time: what is recorded, and what is compared with recorded times."""

    def time(self) -> float:
        """Seconds since the epoch (UTC)."""
        ...


class SystemClock:
    """The machine's clock, ``time.time``."""

    def time(self) -> float:
        return time.time()


SYSTEM_CLOCK: Clock = SystemClock()
"""The clock of a node, an index or a command made without one of their own."""
