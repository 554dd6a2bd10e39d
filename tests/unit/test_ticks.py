"""A tick woken while it runs runs again as soon as it is done (``node.flow.ticks``), in the node's
real scheduler too: apscheduler alone skips such a run, and the work waits a whole interval
(ten minutes here)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from node.config import NodeConfig
from node.flow.ticks import Tick
from node.service import Node
from tests.conftest import free_port


def _until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class _Blocking:
    """A tick function whose first run waits until released; counts its runs."""

    def __init__(self) -> None:
        self.runs = 0
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self) -> None:
        self.runs += 1
        self.started.set()
        if self.runs == 1:
            assert self.release.wait(60)


def test_woken_while_running_it_runs_once_more() -> None:
    fn = _Blocking()
    tick = Tick(fn)
    assert not tick.wake_if_running()  # not running: the caller schedules it
    thread = threading.Thread(target=tick)
    thread.start()
    assert fn.started.wait(60)
    assert tick.wake_if_running() and tick.wake_if_running()  # twice: one more run, not two
    fn.release.set()
    thread.join(60)
    assert fn.runs == 2
    tick()  # a later run is one run
    assert fn.runs == 3 and not tick.wake_if_running()


def test_the_node_runs_a_tick_woken_while_it_ran_without_waiting_for_the_interval(
        tmp_path: Path) -> None:
    node = Node(NodeConfig(state_dir=tmp_path / "node", listener={"port": free_port()},
                           status={"enabled": False}, scan_interval=600.0))
    fn = _Blocking()
    node.outbox.tick = fn  # type: ignore[method-assign]
    node.start()
    try:
        node.wake("outbox")
        assert fn.started.wait(60)
        node.wake("outbox")  # a job done while the outbox sends
        # the scheduler has dealt with that wake (apscheduler alone skips the run, and the
        # next one is an interval away) before the running tick ends
        _until(lambda: node._scheduler.get_job("outbox").next_run_time.timestamp()
               > time.time() + 300)
        fn.release.set()
        _until(lambda: fn.runs == 2)
    finally:
        node.stop()
