"""The running node: receiver, assembly, router, job runner and outbox wired to one index.

apscheduler 3 drives the periodic work in background threads: one tick marks quiet series as
stable and routes them, one starts queued jobs, one sends due deliveries, one fetches missing
source series (``node.flow.retrieve``), one looks up and fetches the prior studies of queued
jobs of rules with ``prior`` (``node.flow.priors``), one per Orthanc feed polls its change feed
(``node.flow.feed``), one removes expired spool and results (``node.state.retention``) and a
heartbeat shows ``/healthz`` that the scheduler runs. Each tick is a job with ``max_instances=1``
and ``coalesce=True``, so a slow tick is never run twice at once. The ticks also run early when
there is work for them, so a study does not wait for the next tick at each step: the assembly
tick at the moment the next receiving series has been quiet for ``stable_after`` seconds, the
jobs tick and the priors tick as soon as the router queued a job, the jobs tick again once a
job's prior lookup ended, the outbox tick as soon as a job is done; woken
while it runs, a tick runs again as soon as it is done (``node.flow.ticks``). The status
page, ``/healthz`` and ``/metrics`` (``node.ops.status``) are served over HTTP while the node runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler

from node.clock import SYSTEM_CLOCK, Clock
from node.config import NodeConfig
from node.dicom.receiver import Receiver
from node.flow.executor import Executor
from node.flow.feed import Feed
from node.flow.jobs import JobRunner
from node.flow.outbox import Outbox
from node.flow.priors import PriorFinder
from node.flow.retrieve import Retriever
from node.flow.router import Router
from node.flow.study_router import StudyRouter
from node.flow.ticks import Tick
from node.logs import fields
from node.ops.health import Health, check_health
from node.ops.status import StatusServer
from node.state import Index, IndexDamaged
from node.state.recovery import recover
from node.state.retention import Retention

log = logging.getLogger(__name__)

STABLE_MARGIN = 0.005
"""Seconds after a series' last arrival + ``stable_after`` at which the assembly tick is woken:
``Index.instances.mark_stable`` wants the last arrival strictly before ``now - stable_after``."""


class Node:
    """One radiomics node on one machine; ``start`` returns once it listens. ``executor`` runs
    its jobs: by default the one ``config.executor`` names, made here (``node.cli`` makes it
    before it imports this module, so that the job workers start first). ``clock`` is the time
    of every part (``node.clock``): both index connections hold it, and the parts read it
    there."""

    def __init__(self, config: NodeConfig, executor: Executor | None = None,
                 clock: Clock = SYSTEM_CLOCK):
        self.config = config
        self.clock = clock
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.index = Index(config.index_path, clock=clock)
        # the receiver's own connection commits without waiting for the disk (node.state.db): the
        # spool file it wrote first is the durable record of what it acknowledged
        self.ingest_index = Index(config.index_path, synchronous="NORMAL", clock=clock)
        self.receiver = Receiver(config, self.ingest_index)
        self.router = Router(config, self.index)
        self.studies = StudyRouter(config, self.index, self.router.repaired)
        self.jobs = JobRunner(config, self.index, executor,
                              on_done=lambda _job_id: self.wake("outbox"))
        self.outbox = Outbox(config, self.index)
        self.retriever = Retriever(config, self.index)
        self.priors = PriorFinder(config, self.index,
                                  on_resolved=lambda _job_id: self.wake("jobs"))
        self.feeds = [Feed(config, self.index, feed) for feed in config.orthanc_feeds]
        self.retention = Retention(config, self.index)
        self.status = StatusServer(config, self.index, self.health) \
            if config.status.enabled else None
        self.status_address: tuple[str, int] | None = None
        self.heartbeat: float | None = None
        self.ticks: dict[str, Tick] = {}
        self._scheduler = BackgroundScheduler(
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None}
        )
        self.address: tuple[str, int] | None = None

    def assemble(self) -> None:
        """Mark series quiet for ``stable_after`` seconds as stable and route each (DESIGN.md)
        by the series rules and the study rules; end the study rules' waits that are due
        (``StudyRouter.give_up_due``); wake the jobs tick when a job was queued, and this tick
        again when the next receiving series is due to be stable."""
        queued = False
        for series in self.index.instances.mark_stable(
                self.clock.time() - self.config.stable_after):
            log.info("series stable", extra=fields(
                series_uid=series.series_uid, modality=series.modality,
                instances=series.n_instances))
            try:
                queued = bool(self.router.route(series)) or queued
                queued = bool(self.studies.route(series)) or queued
            except Exception:
                log.exception("routing failed", extra=fields(series_uid=series.series_uid))
        try:
            queued = bool(self.studies.give_up_due()) or queued
        except Exception:
            log.exception("study rules' waits not ended")
        if queued:
            self.wake("jobs")
            self.wake("priors")
        quiet = self.index.instances.quietest_receiving()
        if quiet is not None:
            self.wake("assembly", at=quiet + self.config.stable_after + STABLE_MARGIN)

    def wake(self, tick: str, at: float | None = None) -> None:
        """Run the scheduled ``tick`` (its id) at ``at`` (epoch seconds of ``clock``; now when
        None) when that is before its next regular run; woken for now while it runs, it runs
        again as soon as it is done (``node.flow.ticks``). The scheduler keeps the machine's time:
        ``at`` is handed to it as the same delay from now."""
        job = self._scheduler.get_job(tick) if self._scheduler.running else None
        if job is None:
            return
        if at is None and isinstance(job.func, Tick) and job.func.wake_if_running():
            return
        delay = 0.0 if at is None else max(0.0, at - self.clock.time())
        when = datetime.now(UTC) + timedelta(seconds=delay)
        if job.next_run_time is None or when < job.next_run_time:
            self._scheduler.modify_job(tick, next_run_time=when)

    def beat(self) -> None:
        """The heartbeat tick: proves to ``/healthz`` that scheduled work runs."""
        self.heartbeat = self.clock.time()

    def health(self) -> Health:
        """The ``/healthz`` checks (``node.ops.health``) of this node now."""
        return check_health(self.config, self.index, self.receiver.listening,
                            self._scheduler.running, self.heartbeat,
                            ticks=tuple(self.ticks.values()))

    def _schedule(self, tick: str, fn: Callable[[], None], seconds: float) -> None:
        """Run ``fn`` every ``seconds`` as the tick ``tick`` (``node.flow.ticks``: woken early, its
        failures counted for ``/healthz``)."""
        self.ticks[tick] = Tick(fn, tick)
        self._scheduler.add_job(self.ticks[tick], "interval", seconds=seconds, id=tick,
                                name=getattr(fn, "__qualname__", tick))

    def start(self) -> tuple[str, int]:
        """Check the index, recover from an unclean stop, listen and start the ticks.

        Raises:
            IndexDamaged: the index fails SQLite's integrity check; nothing is started
                (``radiomics-node index rebuild`` makes a new one from the spool).
        """
        problems = self.index.integrity_problems()
        if problems:
            raise IndexDamaged(self.index.path, "; ".join(problems[:3]))
        recover(self.config, self.index)
        if self.status is not None:  # first: a port in use stops the node before it listens
            self.status_address = self.status.start()
        self.address = self.receiver.start()
        interval = self.config.scan_interval
        self._schedule("assembly", self.assemble, interval)
        self._schedule("jobs", self.jobs.tick, interval)
        self._schedule("outbox", self.outbox.tick, interval)
        self._schedule("retrieve", self.retriever.tick, interval)
        self._schedule("priors", self.priors.tick, interval)
        self._schedule("heartbeat", self.beat, interval)
        self._schedule("retention", self.retention.tick, self.config.retention.interval)
        for feed in self.feeds:
            self._schedule(f"feed-{feed.settings.name}", feed.poll, feed.settings.poll_interval)
        self._scheduler.start()
        self.beat()
        return self.address

    def stop(self) -> None:
        if self.status is not None:
            self.status.stop()
        self.receiver.stop()
        self.ingest_index.close()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)
        self.jobs.stop()
        self.index.close()
        log.info("stopped")
