"""The index's schema, versioned: ``MIGRATIONS`` is the ordered list of steps from an empty
database to the current schema, and ``PRAGMA user_version`` the number of steps a database has
had. ``migrate`` applies the missing ones, each in its own transaction with the version it
reaches, so a crash between two steps leaves a database at the first one's version.

Version 0 is also every index made before versions were kept: its tables may lack any of the
columns added since the first release (``UNVERSIONED_COLUMNS``). Step 1 is therefore written to
be applied to any of them: it makes the tables that are missing and adds the columns that are
missing, and leaves what is there. A step after it runs once, on the version before it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS instances (
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
)""",
    "CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid)",
    """CREATE TABLE IF NOT EXISTS series (
    series_uid     TEXT PRIMARY KEY,
    study_uid      TEXT NOT NULL,
    modality       TEXT NOT NULL,
    first_received REAL NOT NULL,
    last_received  REAL NOT NULL,
    n_instances    INTEGER NOT NULL,
    stable_at      REAL,
    repaired_at    REAL
)""",
    """CREATE TABLE IF NOT EXISTS seg_refs (
    seg_sop_uid       TEXT NOT NULL,
    seg_series_uid    TEXT NOT NULL,
    source_series_uid TEXT NOT NULL,
    PRIMARY KEY (seg_sop_uid, source_series_uid)
)""",
    """CREATE TABLE IF NOT EXISTS jobs (
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
)""",
    """CREATE TABLE IF NOT EXISTS outbox (
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
)""",
    """CREATE TABLE IF NOT EXISTS delivery_checks (
    delivery_id INTEGER PRIMARY KEY REFERENCES outbox(id),
    method      TEXT NOT NULL,
    checked_at  REAL NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS feed_state (
    feed       TEXT PRIMARY KEY,
    last_seq   INTEGER NOT NULL,
    updated_at REAL NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS retrievals (
    series_uid      TEXT PRIMARY KEY,
    study_uid       TEXT NOT NULL,
    seg_sop_uid     TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('waiting', 'fetched', 'received', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    requested_at    REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    reason          TEXT,
    finished_at     REAL
)""",
    """CREATE TABLE IF NOT EXISTS totals (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS audit (
    id          INTEGER PRIMARY KEY,
    at          REAL NOT NULL,
    event       TEXT NOT NULL,
    actor       TEXT NOT NULL,
    study_uid   TEXT,
    series_uid  TEXT,
    job_id      INTEGER,
    delivery_id INTEGER,
    detail      TEXT
)""",
    "CREATE INDEX IF NOT EXISTS audit_study ON audit(study_uid)",
    "CREATE INDEX IF NOT EXISTS audit_job ON audit(job_id)",
)
"""The statements of step 1 that make the tables and their indices (when missing)."""

UNVERSIONED_COLUMNS = (
    ("instances", "peer_host", "TEXT"),
    ("jobs", "preset_hash", "TEXT"),
    ("jobs", "models", "TEXT"),
    ("jobs", "results_removed_at", "REAL"),
    ("jobs", "rerun_of", "INTEGER"),
    ("jobs", "timings", "TEXT"),
    ("outbox", "sent_at", "REAL"),
    ("jobs", "not_before", "REAL"),
    ("instances", "sha256", "TEXT"),
    ("series", "repaired_at", "REAL"),
)
"""(table, column, declaration) of the columns added after the first release, before versions
were kept, in the order they were added: step 1 adds those a table lacks."""


def _tables_and_unversioned_columns(db: sqlite3.Connection) -> None:
    for statement in SCHEMA:
        db.execute(statement)
    for table, column, declaration in UNVERSIONED_COLUMNS:
        have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")


@dataclass(frozen=True)
class Migration:
    """One step of the schema: ``apply`` runs inside the transaction that sets the version."""

    version: int
    what: str
    apply: Callable[[sqlite3.Connection], None]


def _job_priority(db: sqlite3.Connection) -> None:
    db.execute("ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 1")


def _study_jobs(db: sqlite3.Connection) -> None:
    db.execute("""CREATE TABLE job_series (
    job_id     INTEGER NOT NULL REFERENCES jobs(id),
    position   INTEGER NOT NULL,
    role       TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    preset     TEXT NOT NULL,
    PRIMARY KEY (job_id, role)
)""")
    db.execute("CREATE INDEX job_series_series ON job_series(series_uid)")
    db.execute("""CREATE TABLE study_waits (
    rule              TEXT NOT NULL,
    seg_sop_uid       TEXT NOT NULL,
    study_uid         TEXT NOT NULL,
    source_series_uid TEXT NOT NULL,
    since             REAL NOT NULL,
    PRIMARY KEY (rule, seg_sop_uid)
)""")


def _job_priors(db: sqlite3.Connection) -> None:
    db.execute("""CREATE TABLE job_priors (
    job_id          INTEGER PRIMARY KEY REFERENCES jobs(id),
    state           TEXT NOT NULL CHECK (state IN ('pending', 'found', 'none', 'failed')),
    prior_study_uid TEXT,
    series_uid      TEXT,
    seg_sop_uid     TEXT,
    folder          TEXT,
    reason          TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    finished_at     REAL
)""")
    db.execute("CREATE INDEX job_priors_due ON job_priors(state, next_attempt_at)")


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "the tables, and the columns an index made before versions may lack",
              _tables_and_unversioned_columns),
    Migration(2, "jobs.priority (0 urgent, 1 normal, 2 backlog; existing jobs normal)",
              _job_priority),
    Migration(3, "job_series (a study job's series by role, the segmented one at position 0; "
              "none for a job of one series) and study_waits (segmentations waiting for a "
              "study rule's required roles)", _study_jobs),
    Migration(4, "job_priors (delta radiomics: the prior study of a job of a rule with prior, "
              "pending until found, none or failed)", _job_priors),
)
"""Every step, in order; ``version`` is its place (1, 2, ...). A new step is added at the end
and never changed once released."""

LATEST = MIGRATIONS[-1].version
"""The schema version this code writes and reads."""


class SchemaTooNew(Exception):
    """The database's ``user_version`` is beyond ``LATEST``: a newer node made it."""


def migrate(db: sqlite3.Connection) -> int:
    """Bring ``db`` (autocommit: ``isolation_level=None``) to ``LATEST``: each missing step in a
    ``BEGIN IMMEDIATE`` transaction that re-reads the version first (another process may be
    migrating the same file) and ends by setting it. Returns the version found at open.

    Raises:
        SchemaTooNew: the version is above ``LATEST``; nothing is changed.
        sqlite3.DatabaseError: SQLite cannot read or write the database.
    """
    found = db.execute("PRAGMA user_version").fetchone()[0]
    if found > LATEST:
        raise SchemaTooNew(f"schema version {found} is newer than this node's ({LATEST})")
    for step in MIGRATIONS:
        if step.version <= found:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("PRAGMA user_version").fetchone()[0] < step.version:
                step.apply(db)
                db.execute(f"PRAGMA user_version={step.version}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    return found
