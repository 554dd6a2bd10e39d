"""bench.ingest.PeakMemory counts a child forked without exec by its own pages only: its
copy-on-write pages are its parent's, already in the parent's RSS."""

import subprocess
import sys
import textwrap
import time

import psutil

from bench.ingest import PeakMemory

MIB = 2**20

# A process that writes 200 MiB, then forks a child that sleeps without writing them, and a
# second child that writes a copy of them (200 MiB of its own).
_SCRIPT = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    data = np.ones(200 * 2**20 // 8)
    print("allocated", flush=True)
    if os.fork() == 0:
        time.sleep(1.5)
        os._exit(0)
    if sys.argv[1] == "copy" and os.fork() == 0:
        mine = data.copy()
        mine += 1
        time.sleep(1.5)
        os._exit(0)
    time.sleep(1.5)
    os.wait()
""")


def _peak(mode: str) -> int:
    with subprocess.Popen([sys.executable, "-c", _SCRIPT, mode], stdout=subprocess.PIPE,
                          text=True) as process:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "allocated"
        time.sleep(0.2)
        with PeakMemory(process.pid, interval=0.05) as memory:
            while process.poll() is None:
                time.sleep(0.05)
                if not psutil.pid_exists(process.pid):
                    break
        process.wait()
    return memory.peak


def test_a_forked_child_that_writes_nothing_adds_little() -> None:
    peak = _peak("share")
    assert 200 * MIB < peak < 300 * MIB  # one copy of the 200 MiB, not two


def test_a_forked_child_that_writes_its_own_pages_adds_them() -> None:
    peak = _peak("copy")
    assert peak > 400 * MIB  # the parent's 200 MiB and the second child's own copy
