"""The spool: received instances as files, written so that a crash never leaves a half file visible.

Bytes go to a temporary file in the same filesystem, are flushed with fsync, renamed atomically
into place, and the directory entry is fsynced too, as is each directory created for it in its
parent; only then may the receiver index the instance and acknowledge it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from node.state import direct_io

if TYPE_CHECKING:
    from node.state.instances import InstanceRow

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_uid(value: str) -> bool:
    """A UID of digits and dots, at most 64 characters (PS3.5 9.1); safe as a file name."""
    return 0 < len(value) <= 64 and bool(_UID.match(value))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, chunks: Sequence[bytes | memoryview]) -> None:
    """Write ``chunks`` in order with ``writev``, continuing after a short write."""
    views = [memoryview(chunk) for chunk in chunks if len(chunk)]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


_TEMPORARY_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | \
    getattr(os, "O_CLOEXEC", 0)
"""How ``tempfile.mkstemp`` opens its file: created here and now, by this process only."""

_temporaries = itertools.count()


def _create_temporary(directory: Path, direct: bool = False) -> tuple[int, str]:
    """A new file ``.incoming-<pid>-<n>.part`` in ``directory``, open (as ``mkstemp`` makes it:
    exclusive creation, mode 0600), with ``O_DIRECT`` when ``direct``; its descriptor and path.
    Named by process and a counter rather than by ``mkstemp``'s random letters (3 % of the
    receiver's interpreter time per CT slice, py-spy); a name left by an earlier process with
    the same ID is skipped."""
    flags = _TEMPORARY_FLAGS | (os.O_DIRECT if direct else 0)
    for _ in range(10_000):
        path = os.path.join(directory, f".incoming-{os.getpid()}-{next(_temporaries)}.part")
        try:
            return os.open(path, flags, 0o600), path
        except FileExistsError:
            continue
        except OSError as exc:
            if not direct or exc.errno != errno.EINVAL:
                raise
            # this file system does not take O_DIRECT; Linux may have created the file before
            # it refused the flag (O_EXCL: nobody else's file)
            direct_io.refused(str(directory))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            flags &= ~os.O_DIRECT
            direct = False
    raise FileExistsError(f"no free temporary name in {directory}")


def make_directories(directory: Path) -> None:
    """``directory`` and any missing parents created, each one's entry made durable by an fsync
    of its parent (a file renamed into a directory is not durable while the directory's own
    entry is not)."""
    missing = []
    while not directory.is_dir():
        missing.append(directory)
        directory = directory.parent
    for created in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another writer made it: fsync it all the same
            created.mkdir()
        _fsync_dir(created.parent)


def write_durably(target: Path, *chunks: bytes | memoryview, direct: bool = False) -> None:
    """Write the concatenation of ``chunks`` to ``target`` atomically and durably (temp file,
    fsync, rename, fsync dir; a directory created for it fsynced in its parent). ``direct``:
    past the page cache where the file system allows it (``node.state.direct_io``)."""
    make_directories(target.parent)
    direct = direct and direct_io.direct_wanted(str(target.parent), sum(map(len, chunks)))
    fd, tmp = _create_temporary(target.parent, direct)
    try:
        try:
            if not (direct and direct_io.write_direct(fd, chunks)):
                _write_all(fd, chunks)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def spool_path(spool_dir: Path, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
    """Where an instance lives: ``spool/<study>/<series>/<sop>.dcm``; all parts must be UIDs."""
    for uid in (study_uid, series_uid, sop_instance_uid):
        if not is_uid(uid):
            raise ValueError(f"not a valid UID: {uid!r}")
    return spool_dir / study_uid / series_uid / f"{sop_instance_uid}.dcm"


def remove_stale_partials(spool_dir: Path) -> int:
    """Delete temporary files an interrupted write left behind; returns how many."""
    removed = 0
    if spool_dir.is_dir():
        for partial in spool_dir.rglob(".incoming-*.part"):
            partial.unlink(missing_ok=True)
            removed += 1
    return removed


def size_damage(path: Path, size: int) -> str | None:
    """What is wrong with the file ``path`` that should hold ``size`` bytes: ``missing``, or
    ``size X expected Y``; None when it has that size (a stat, nothing read)."""
    try:
        found = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    return None if found == size else f"size {found} expected {size}"


def spool_damage(row: InstanceRow) -> str | None:
    """What is wrong with the spool copy of the indexed instance ``row``: ``missing``, ``size X
    expected Y`` (:func:`size_damage`) or ``hash differs`` (the file is read and hashed, when the
    row has a sha256: rows indexed before it was kept are checked by size alone); None when it
    is intact."""
    path = Path(row.path)
    damage = size_damage(path, row.size)
    if damage is None and row.sha256 is not None:
        with path.open("rb") as file:
            if hashlib.file_digest(file, "sha256").hexdigest() != row.sha256:
                damage = "hash differs"
    return damage
