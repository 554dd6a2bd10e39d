"""Spool writes that bypass the page cache (``O_DIRECT``, open(2)).

A received instance is written once and fsynced before the sender hears success
(``node.state.spool``). Through the page cache that costs a copy into newly allocated cache pages,
and on a virtual machine each newly allocated page can fault into the hypervisor: on a 2-vCPU box
(``docs/history/performance.md``, "Ingest", fourth round) buffered write + fsync of a 525 KB
CT slice cost 0.65 to 1.9 ms of system
time, against 0.15 to 0.56 ms written directly from a reused buffer. The bytes are copied into a
page-aligned window (a reused anonymous mapping, so its pages stay mapped), the page-aligned part
of the file goes to the device straight from there, and only the last partial page is written
through the page cache (so no ``ftruncate``, which would read the last block back to zero its
tail). ``fsync`` still follows: it persists the file's size and allocation and flushes the
device's write cache.

Where a file system refuses ``O_DIRECT`` (``EINVAL`` at open or at the first write), the file is
written through the page cache instead and that file system is not asked again by this process.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

ALIGNMENT = max(4096, mmap.PAGESIZE)
"""Buffer address, file offset and length of a direct write are multiples of this: ``O_DIRECT``
wants multiples of the device's logical block size (512 or 4096 bytes), and a whole page keeps
the buffered tail off the pages written directly."""

WINDOW = 4 * 2**20
"""Bytes copied and written per direct write; a larger instance takes several."""

KEEP = 8
"""Windows kept for reuse when returned; more are unmapped (one is in use per association that is
storing at that moment)."""


class WindowPool:
    """Page-aligned windows of ``WINDOW`` bytes (anonymous mappings), lent one per write and kept
    for the next one, so that their pages stay mapped and warm."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[mmap.mmap] = []

    @contextmanager
    def window(self) -> Iterator[mmap.mmap]:
        """A window for one write; back to the pool after it (or dropped, and unmapped when the
        last view of it goes, when ``KEEP`` are idle already)."""
        with self._lock:
            window = self._idle.pop() if self._idle else mmap.mmap(-1, WINDOW)
        try:
            yield window
        finally:
            with self._lock:
                if len(self._idle) < KEEP:
                    self._idle.append(window)

    def reset(self) -> None:
        """Forget the windows (in a forked child: the parent's lock may be held)."""
        self._lock = threading.Lock()
        self._idle = []


_pool = WindowPool()
os.register_at_fork(after_in_child=_pool.reset)

_refused: set[int] = set()
"""``st_dev`` of file systems that refused ``O_DIRECT`` in this process."""


def direct_wanted(directory: str, size: int) -> bool:
    """Whether to open a file of ``size`` bytes in ``directory`` with ``O_DIRECT``: it has at
    least one aligned block, and the file system has not refused it before."""
    if size < ALIGNMENT or not hasattr(os, "O_DIRECT"):
        return False
    return not _refused or os.stat(directory).st_dev not in _refused


def refused(fd_or_directory: int | str) -> None:
    """Remember that the file system of ``fd_or_directory`` refuses ``O_DIRECT``."""
    _refused.add(os.stat(fd_or_directory).st_dev)


def _write_exactly(fd: int, view: memoryview) -> None:
    """Write all of ``view`` at the file offset, continuing after a short write."""
    while view:
        view = view[os.write(fd, view):]


def _buffered(fd: int) -> None:
    """Clear ``O_DIRECT`` on ``fd``: its next writes go through the page cache."""
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)


def write_direct(fd: int, chunks: Sequence[bytes | memoryview]) -> bool:
    """Write the concatenation of ``chunks`` to ``fd`` (opened with ``O_DIRECT``, at offset 0):
    whole windows and the aligned rest directly, the last partial page through the page cache.
    False, with nothing written and ``O_DIRECT`` cleared, when the file system refuses a direct
    write (``EINVAL``); the caller then writes the file as usual."""
    with _pool.window() as window, memoryview(window) as staged:
        filled = 0
        for chunk in chunks:
            with memoryview(chunk) as source, source.cast("B") as data:
                taken = 0
                while taken < len(data):
                    step = min(len(data) - taken, WINDOW - filled)
                    staged[filled:filled + step] = data[taken:taken + step]
                    filled, taken = filled + step, taken + step
                    if filled == WINDOW:
                        if not _direct_write(fd, staged):
                            return False
                        filled = 0
        aligned = filled - filled % ALIGNMENT
        if aligned and not _direct_write(fd, staged[:aligned]):
            return False
        _buffered(fd)
        _write_exactly(fd, staged[aligned:filled])
    return True


def _direct_write(fd: int, view: memoryview) -> bool:
    """A direct write of ``view``; False when the file system refuses it at offset 0 (nothing
    written yet, so the caller can start again through the page cache); any other error
    raises."""
    try:
        _write_exactly(fd, view)
    except OSError as exc:
        if exc.errno != errno.EINVAL or os.lseek(fd, 0, os.SEEK_CUR) != 0:
            raise
        _buffered(fd)
        refused(fd)
        return False
    return True
