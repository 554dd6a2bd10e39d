"""A ``node.clock.Clock`` for tests: it stands still until the test moves it on, so a back-off,
a retry interval or a stable-time period passes at once and exactly."""

from __future__ import annotations

START = 1_700_000_000.0
"""Where a fake clock starts: an epoch time of 2023, so rows it stamps look like real ones."""


class FakeClock:
    """Reads ``now``; :meth:`advance` moves it on."""

    def __init__(self, now: float = START):
        self.now = now

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` on (what waiting that long would have done)."""
        self.now += seconds
