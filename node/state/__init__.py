"""The node's durable state: every instance, series, job, delivery, retrieval and audit row is a
row in one SQLite database (``node.state.db``: WAL, the ``synchronous`` option, versioned
migrations in ``node.state.migrations``), so a restarted node resumes where it stopped.

``Index`` owns the connection and the clock it stamps rows with, and holds one store per
aggregate: ``instances`` (instances, series, segmentation references), ``jobs``, ``outbox``,
``retrievals`` (retrievals and feed positions), ``priors`` (a job's prior study), ``audit`` and
``queries`` (read-only, for the status page, ``/healthz`` and ``/metrics``). A change that
spans aggregates (a job done with its deliveries queued, an instance forgotten with the jobs that
read it failed) is one method of one store, in one transaction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from node.clock import SYSTEM_CLOCK, Clock
from node.state.audit import AuditStore
from node.state.db import Database, IndexDamaged
from node.state.instances import InstanceStore
from node.state.jobs import JobStore
from node.state.outbox import OutboxStore
from node.state.priors import PriorStore
from node.state.queries import StatusQueries
from node.state.retrievals import RetrievalStore

__all__ = ["Index", "IndexDamaged"]


class Index:
    """One connection to the node's database (thread-safe: one lock) and its stores.

    ``clock`` stamps every row written and decides what is due; the node's other parts that
    hold this index read the same one (``clock``).

    Raises:
        IndexDamaged: when SQLite cannot open, set up or migrate the database (e.g. "database
            disk image is malformed").
    """

    def __init__(self, path: Path, *, synchronous: Literal["FULL", "NORMAL"] = "FULL",
                 clock: Clock = SYSTEM_CLOCK):
        self.path = path
        self.clock = clock
        self._db = Database(path, synchronous=synchronous)
        self.instances = InstanceStore(self._db, clock)
        self.jobs = JobStore(self._db, clock)
        self.outbox = OutboxStore(self._db, clock)
        self.retrievals = RetrievalStore(self._db, clock)
        self.priors = PriorStore(self._db, clock)
        self.audit = AuditStore(self._db, clock)
        self.queries = StatusQueries(self._db)

    def integrity_problems(self, most: int = 10) -> list[str]:
        """SQLite's ``PRAGMA quick_check`` (``Database.integrity_problems``): up to ``most``
        lines naming what is damaged, empty when the database is sound."""
        return self._db.integrity_problems(most)

    def close(self) -> None:
        self._db.close()
