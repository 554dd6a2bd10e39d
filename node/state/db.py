"""The one SQLite connection of an ``Index`` and how it is opened, migrated, locked and checked.

WAL journal. Connections are ``synchronous=FULL`` (a committed row survives a power cut), except
the receivers' own (``synchronous=NORMAL``: a committed row survives the node's crash, and a
power cut may take back the last rows; the spool file of each acknowledged instance is durable
before its row is written, and start-up recovery indexes spool files without a row again,
``node.state.recovery``). SQLite waits up to 5 s for another connection's write lock (sqlite3's
default busy timeout) before it raises.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from node.state.migrations import SchemaTooNew, migrate


class IndexDamaged(RuntimeError):
    """The index database cannot be used: SQLite reports it malformed, its integrity check
    finds damage, or a newer node gave it a schema this one does not know. ``path`` is the
    database, ``problem`` the first complaint (one line)."""

    def __init__(self, path: Path, problem: str):
        super().__init__(f"index {path} is damaged: {problem}")
        self.path = path
        self.problem = problem


class Database:
    """One connection (autocommit; transactions are explicit), shared by threads under one lock.

    Raises:
        IndexDamaged: when SQLite cannot open, set up or migrate the database (e.g. "database
            disk image is malformed"), or its schema version is newer than this code's.
    """

    def __init__(self, path: Path, *, synchronous: Literal["FULL", "NORMAL"] = "FULL"):
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.execute("PRAGMA foreign_keys=ON")
            migrate(self._db)
        except (sqlite3.DatabaseError, SchemaTooNew) as exc:
            self._db.close()
            raise IndexDamaged(path, str(exc).splitlines()[0]) from exc

    def integrity_problems(self, most: int = 10) -> list[str]:
        """SQLite's ``PRAGMA quick_check`` of the whole database: up to ``most`` lines naming
        what is damaged (pages, rows, indices), empty when it is sound. It reads every page, so
        the node runs it once, at start.
        ``sqlite3.DatabaseError`` raised by the check itself is reported as its message."""
        with self._lock:
            try:
                rows = [str(r[0]) for r in self._db.execute(f"PRAGMA quick_check({int(most)})")]
            except sqlite3.DatabaseError as exc:
                return [str(exc).splitlines()[0]]
        return [] if rows == ["ok"] else rows

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The connection inside ``BEGIN IMMEDIATE``: committed when the block ends, rolled
        back when it raises. Nested use by one thread is not supported (SQLite has no nested
        BEGIN); a store method that spans aggregates does all its writes in one block."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def query(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        """Every row of one read, outside any transaction of this connection."""
        with self._lock:
            return self._db.execute(sql, params).fetchall()
