"""node.state.spool's temporary files: created exclusively with mode 0600 under a name of the
process and a counter, a name already there skipped, never left behind, and found by
remove_stale_partials when a crash leaves one; a directory made for a file is durable in its
parent."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from node.state import spool
from node.state.spool import remove_stale_partials, write_durably


def test_a_temporary_is_new_private_and_named_for_the_stale_partial_sweep(tmp_path: Path) -> None:
    fd, path = spool._create_temporary(tmp_path)
    os.close(fd)
    name = Path(path).name
    assert name.startswith(f".incoming-{os.getpid()}-") and name.endswith(".part")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert remove_stale_partials(tmp_path) == 1 and not os.path.exists(path)


def test_a_name_left_by_an_earlier_process_is_skipped(tmp_path: Path, monkeypatch) -> None:
    counter = iter(range(5, 100))
    monkeypatch.setattr(spool, "_temporaries", counter)
    left = tmp_path / f".incoming-{os.getpid()}-5.part"
    left.write_bytes(b"left by a crash")
    fd, path = spool._create_temporary(tmp_path)  # 6, not the name already there
    os.close(fd)
    assert path.endswith("-6.part") and left.read_bytes() == b"left by a crash"


def test_no_free_name_is_an_error_not_an_overwrite(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(spool, "_temporaries", iter(lambda: 1, None))  # always the same name
    (tmp_path / f".incoming-{os.getpid()}-1.part").write_bytes(b"x")
    with pytest.raises(FileExistsError):
        spool._create_temporary(tmp_path)


def test_writes_leave_only_their_targets(tmp_path: Path) -> None:
    for number in range(20):
        write_durably(tmp_path / "s" / f"{number}.dcm", b"a", b"b")
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == sorted(
        f"{n}.dcm" for n in range(20))


def test_directories_made_for_a_file_are_fsynced_in_their_parents(tmp_path: Path,
                                                                   monkeypatch) -> None:
    synced: list[Path] = []
    real = spool._fsync_dir
    monkeypatch.setattr(spool, "_fsync_dir", lambda d: (synced.append(Path(d)), real(d)))
    write_durably(tmp_path / "study" / "series" / "1.dcm", b"x")
    assert synced == [tmp_path, tmp_path / "study", tmp_path / "study" / "series"]
    synced.clear()
    write_durably(tmp_path / "study" / "series" / "2.dcm", b"y")  # nothing made: its dir only
    assert synced == [tmp_path / "study" / "series"]
