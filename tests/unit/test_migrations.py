"""The index's schema is versioned (``node.state.migrations``): a database written before versions
were kept (``user_version`` 0), whichever of the columns added since the first release it has,
is upgraded in place at open with its rows kept; a current one is opened as it is; one from a
newer node is refused."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from node.state import Index, IndexDamaged
from node.state.instances import InstanceRow
from node.state.migrations import LATEST, MIGRATIONS, UNVERSIONED_COLUMNS
from tests.fake_clock import FakeClock

BEFORE_VERSIONS = """
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    sop_class_uid    TEXT NOT NULL,
    study_uid        TEXT NOT NULL,
    series_uid       TEXT NOT NULL,
    path             TEXT NOT NULL,
    size             INTEGER NOT NULL,
    calling_ae       TEXT NOT NULL,
    received_at      REAL NOT NULL,
    peer_host        TEXT,
    sha256           TEXT
);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid);
CREATE TABLE IF NOT EXISTS series (
    series_uid     TEXT PRIMARY KEY,
    study_uid      TEXT NOT NULL,
    modality       TEXT NOT NULL,
    first_received REAL NOT NULL,
    last_received  REAL NOT NULL,
    n_instances    INTEGER NOT NULL,
    stable_at      REAL,
    repaired_at    REAL
);
CREATE TABLE IF NOT EXISTS seg_refs (
    seg_sop_uid       TEXT NOT NULL,
    seg_series_uid    TEXT NOT NULL,
    source_series_uid TEXT NOT NULL,
    PRIMARY KEY (seg_sop_uid, source_series_uid)
);
CREATE TABLE IF NOT EXISTS jobs (
    id                INTEGER PRIMARY KEY,
    source_series_uid TEXT NOT NULL,
    seg_sop_uid       TEXT NOT NULL,
    rule              TEXT NOT NULL,
    preset            TEXT NOT NULL,
    inputs_digest     TEXT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
    attempts          INTEGER NOT NULL DEFAULT 0,
    reason            TEXT,
    created_at        REAL NOT NULL,
    started_at        REAL,
    finished_at       REAL,
    preset_hash       TEXT,
    models            TEXT,
    results_removed_at REAL,
    rerun_of          INTEGER,
    timings           TEXT,
    UNIQUE (source_series_uid, seg_sop_uid, preset, inputs_digest)
);
CREATE TABLE IF NOT EXISTS outbox (
    id               INTEGER PRIMARY KEY,
    job_id           INTEGER NOT NULL REFERENCES jobs(id),
    destination      TEXT NOT NULL,
    path             TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL NOT NULL,
    last_error       TEXT,
    delivered_at     REAL,
    sent_at          REAL,
    UNIQUE (destination, sop_instance_uid)
);
CREATE TABLE IF NOT EXISTS delivery_checks (
    delivery_id INTEGER PRIMARY KEY REFERENCES outbox(id),
    method      TEXT NOT NULL,
    checked_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS feed_state (
    feed       TEXT PRIMARY KEY,
    last_seq   INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS retrievals (
    series_uid      TEXT PRIMARY KEY,
    study_uid       TEXT NOT NULL,
    seg_sop_uid     TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('waiting', 'fetched', 'received', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    requested_at    REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    reason          TEXT,
    finished_at     REAL
);
CREATE TABLE IF NOT EXISTS totals (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id          INTEGER PRIMARY KEY,
    at          REAL NOT NULL,
    event       TEXT NOT NULL,
    actor       TEXT NOT NULL,
    study_uid   TEXT,
    series_uid  TEXT,
    job_id      INTEGER,
    delivery_id INTEGER,
    detail      TEXT
);
CREATE INDEX IF NOT EXISTS audit_study ON audit(study_uid);
CREATE INDEX IF NOT EXISTS audit_job ON audit(job_id);
"""
"""The schema the node wrote before versions were kept (``node/index.py`` up to 00e5c22): every
column of ``UNVERSIONED_COLUMNS`` but ``jobs.not_before``, which it added at open."""

FIRST_RELEASE = re.sub(r",\n\)", "\n)", re.sub(
    r"\n    (" + "|".join(column for _, column, _ in UNVERSIONED_COLUMNS) + r") +[A-Z]+,?",
    "", BEFORE_VERSIONS))
"""The same tables without the columns added since the first release."""

T0 = 1_000_000.0


def _old_database(path: Path, schema: str, added: int) -> None:
    """A database as a node before versions left it: ``schema``, then the first ``added``
    columns of ``UNVERSIONED_COLUMNS`` that it lacks, added as that node did, and a row in
    each table the stores read back; ``user_version`` 0."""
    db = sqlite3.connect(path)
    db.executescript(schema)
    for table, column, declaration in UNVERSIONED_COLUMNS[:added]:
        if column not in {r[1] for r in db.execute(f"PRAGMA table_info({table})")}:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
    db.execute("""INSERT INTO instances (sop_instance_uid, sop_class_uid, study_uid, series_uid,
                  path, size, calling_ae, received_at) VALUES
                  ('1.2.3.1', '1.2.840.10008.5.1.4.1.1.2', '1.2.3', '1.2.3.9', '/spool/a', 7,
                   'SCANNER', ?)""", (T0,))
    db.execute("""INSERT INTO series (series_uid, study_uid, modality, first_received,
                  last_received, n_instances) VALUES ('1.2.3.9', '1.2.3', 'CT', ?, ?, 1)""",
               (T0, T0))
    db.execute("""INSERT INTO jobs (source_series_uid, seg_sop_uid, rule, preset, inputs_digest,
                  state, created_at) VALUES ('1.2.3.9', '1.2.3.5', 'liver', 'ct-liver-basic',
                  'd', 'queued', ?)""", (T0,))
    db.execute("""INSERT INTO outbox (job_id, destination, path, sop_instance_uid, state,
                  next_attempt_at) VALUES (1, 'pacs', '/results/sr', '1.2.3.7', 'pending', ?)""",
               (T0,))
    db.execute("INSERT INTO feed_state VALUES ('orthanc', 41, ?)", (T0,))
    db.commit()
    assert db.execute("PRAGMA user_version").fetchone()[0] == 0
    db.close()


def _columns(path: Path) -> dict[str, set[str]]:
    db = sqlite3.connect(path)
    try:
        tables = [r[0] for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return {t: {r[1] for r in db.execute(f"PRAGMA table_info({t})")} for t in tables}
    finally:
        db.close()


def _version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


def test_the_first_release_schema_lacks_exactly_the_unversioned_columns() -> None:
    assert "sha256" not in FIRST_RELEASE and "not_before" not in BEFORE_VERSIONS
    assert FIRST_RELEASE.count("CREATE TABLE") == BEFORE_VERSIONS.count("CREATE TABLE")
    for _, column, _ in UNVERSIONED_COLUMNS:
        assert re.search(rf"\b{column}\b", FIRST_RELEASE) is None, column


@pytest.mark.parametrize(("schema", "added"), [
    (FIRST_RELEASE, 0),  # the first release: none of the added columns
    (FIRST_RELEASE, 3),  # a node between releases: some of them
    (FIRST_RELEASE, 7),
    (BEFORE_VERSIONS, len(UNVERSIONED_COLUMNS)),  # the node just before versions: all of them
], ids=["first-release", "3-added", "7-added", "before-versions"])
def test_an_index_from_before_versions_is_upgraded_in_place(tmp_path: Path, schema: str,
                                                            added: int) -> None:
    fresh = tmp_path / "fresh.sqlite3"
    Index(fresh).close()
    path = tmp_path / "index.sqlite3"
    _old_database(path, schema, added)

    clock = FakeClock(T0 + 10)
    index = Index(path, clock=clock)
    try:
        assert _version(path) == LATEST
        assert _columns(path) == _columns(fresh)
        # the rows are kept and read as rows of the current schema (new columns NULL)
        row = index.instances.get("1.2.3.1")
        assert row == InstanceRow("1.2.3.1", "1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1.2.3.9",
                                  "/spool/a", 7, "SCANNER", None, None)
        assert index.retrievals.feed_seq("orthanc") == 41
        assert [d.sop_instance_uid for d in index.outbox.due_in_order()] == ["1.2.3.7"]
        job = index.jobs.claim()  # reads not_before, which the oldest had not
        assert job is not None and (job.id, job.state, job.attempts) == (1, "running", 1)
        [stable] = index.instances.mark_stable(T0 + 1)
        assert stable.series_uid == "1.2.3.9"
        assert index.queries.totals() == {}
    finally:
        index.close()


def test_a_current_index_is_opened_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite3"
    index = Index(path)
    job_id = index.jobs.add("1.2.3.9", "1.2.3.5", "liver", "ct-liver-basic", "d")
    index.close()
    schema = _columns(path)
    index = Index(path)
    try:
        assert _version(path) == LATEST == len(MIGRATIONS)
        assert _columns(path) == schema
        assert [j.id for j in index.jobs.all()] == [job_id]
    finally:
        index.close()


def test_an_index_from_a_newer_node_is_refused_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite3"
    Index(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={LATEST + 1}")
    db.close()
    with pytest.raises(IndexDamaged, match=rf"schema version {LATEST + 1} is newer"):
        Index(path)
    assert _version(path) == LATEST + 1
