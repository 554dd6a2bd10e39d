"""node.state.direct_io and ``write_durably(direct=True)``: the file holds exactly the bytes given,
for every size around the alignment and window boundaries and any split into chunks; a file of a
whole aligned block or more is opened with O_DIRECT, a smaller one not; a file system that refuses
O_DIRECT, at open or at the first write, gets the same file through the page cache and is not
asked again; a full disk is the sender's 0xA700 with nothing left behind; the windows are
reused."""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
from pathlib import Path

import pydicom
import pytest

from node.config import NodeConfig
from node.dicom.ingest import Ingest
from node.state import Index, direct_io, spool
from node.state.direct_io import ALIGNMENT, WINDOW
from node.state.spool import write_durably
from tests.unit.malformed import decode, part10

SIZES = [0, 1, ALIGNMENT - 1, ALIGNMENT, ALIGNMENT + 1, 525_338, WINDOW - 1, WINDOW, WINDOW + 1,
         2 * WINDOW + ALIGNMENT + 7]


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(direct_io, "_refused", set())


@pytest.mark.parametrize("size", SIZES)
def test_the_file_holds_exactly_the_bytes(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    cuts = sorted({0, size // 7, size // 2, size - min(size, 3), size})
    chunks = [memoryview(data)[a:b] if k % 2 else data[a:b]
              for k, (a, b) in enumerate(itertools.pairwise(cuts))]
    target = tmp_path / "series" / "x.dcm"
    write_durably(target, *chunks, direct=True)
    assert target.read_bytes() == data
    assert [p.name for p in target.parent.iterdir()] == ["x.dcm"]


def _opened_flags(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The flags of every os.open by node.state.spool, recorded."""
    seen: list[int] = []
    real = os.open

    def recording(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(flags)
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(spool.os, "open", recording)
    return seen


def test_large_files_are_opened_direct_small_ones_not(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    flags = _opened_flags(monkeypatch)
    write_durably(tmp_path / "a.dcm", os.urandom(ALIGNMENT), direct=True)
    write_durably(tmp_path / "b.dcm", os.urandom(ALIGNMENT - 1), direct=True)
    write_durably(tmp_path / "c.dcm", os.urandom(ALIGNMENT), direct=False)
    opened = [f & os.O_DIRECT for f in flags if f & os.O_CREAT]  # not the directory fsync
    assert opened == [os.O_DIRECT, 0, 0]


def test_a_file_system_that_refuses_o_direct_at_open(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """As a file system without direct I/O answers open(2): the file created, then EINVAL (e.g.
    tmpfs before Linux 6.6); the file is written through the page cache under another name, the
    refused one is not left behind, and the file system is not asked again."""
    real = os.open
    direct_opens = []

    def no_direct(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        if flags & os.O_DIRECT:
            direct_opens.append(path)
            os.close(real(path, flags & ~os.O_DIRECT, *args, **kwargs))
            raise OSError(errno.EINVAL, "Invalid argument", path)
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(spool.os, "open", no_direct)
    data = os.urandom(3 * ALIGNMENT + 5)
    for name in ("a.dcm", "b.dcm"):
        write_durably(tmp_path / name, data, direct=True)
        assert (tmp_path / name).read_bytes() == data
    assert len(direct_opens) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.dcm", "b.dcm"]


def test_a_file_system_that_refuses_the_first_direct_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As a file system that opens with O_DIRECT but fails the write (alignment stricter than a
    page): the same file through the page cache; a later error is the caller's."""
    real = os.write
    refusals = []

    def strict(fd: int, data) -> int:  # type: ignore[no-untyped-def]
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refusals.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data)

    monkeypatch.setattr(direct_io.os, "write", strict)
    data = os.urandom(WINDOW + 3 * ALIGNMENT + 5)
    write_durably(tmp_path / "a.dcm", data[:10], data[10:], direct=True)
    write_durably(tmp_path / "b.dcm", data, direct=True)
    assert (tmp_path / "a.dcm").read_bytes() == data == (tmp_path / "b.dcm").read_bytes()
    assert len(refusals) == 1


def test_an_error_past_the_first_write_is_raised_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.write
    calls = []

    def full(fd: int, data) -> int:  # type: ignore[no-untyped-def]
        calls.append(len(data))
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(direct_io.os, "write", full)
    with pytest.raises(OSError) as raised:
        write_durably(tmp_path / "a.dcm", os.urandom(2 * WINDOW), direct=True)
    assert raised.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_out_of_resources_for_the_sender(
        tmp_path: Path, refdata: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC at the direct write: C-STORE status 0xA700 naming the reason, nothing indexed or
    left in the spool; once there is room the same instance is stored, byte for byte."""
    config = NodeConfig(state_dir=tmp_path / "state")
    index = Index(config.index_path)
    ct = pydicom.dcmread(refdata / "pydicom" / "test_files" / "CT_small.dcm")
    data = part10(ct)
    assert len(data) > ALIGNMENT  # written directly
    real = os.write

    def full(fd: int, payload) -> int:  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(direct_io.os, "write", full)
    outcome = Ingest(config, index).accept(data, lambda: decode(data), "test")
    assert (outcome.status, outcome.comment) == (0xA700, "spool write failed: No space left on "
                                                         "device")
    assert index.instances.get(ct.SOPInstanceUID) is None
    assert [p for p in config.spool_dir.rglob("*") if p.is_file()] == []
    monkeypatch.setattr(direct_io.os, "write", real)
    assert Ingest(config, index).accept(data, lambda: decode(data), "test").status == 0x0000
    assert Path(index.instances.get(ct.SOPInstanceUID).path).read_bytes() == data
    index.close()


def test_windows_are_reused_and_bounded() -> None:
    pool = direct_io.WindowPool()
    with pool.window() as first:
        pass
    with pool.window() as again:
        assert again is first
    with pool.window() as a, pool.window() as b:
        assert a is not b and first in (a, b)
    nested = [pool.window() for _ in range(direct_io.KEEP + 3)]
    windows = [context.__enter__() for context in nested]
    for context in nested:
        context.__exit__(None, None, None)
    assert len({id(w) for w in windows}) == direct_io.KEEP + 3
    assert len(pool._idle) == direct_io.KEEP
