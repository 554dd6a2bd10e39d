"""``/metrics``: Prometheus text exposition (prometheus_client), read from the index at scrape
time.

Counts come from the index, not from in-process counters, so they survive restarts and cover
work done by other processes on the same index (``outbox retry`` from the CLI). Counters are
monotonic: instances and bytes received are running totals the index keeps even when retention
removes the instances; retries are counted from the audit trail.
"""

from __future__ import annotations

import bisect
import shutil
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from node.config import NodeConfig
from node.ops.health import Health
from node.state import Index

JOB_DURATION_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
"""Seconds: a small CT job takes seconds, a wavelet preset on a large series many minutes."""

JOB_STATES = ("queued", "running", "done", "failed")


class IndexCollector(Collector):
    """Every metric of the node, computed from the index and the health checks."""

    def __init__(self, config: NodeConfig, index: Index, health: Callable[[], Health]):
        self._config = config
        self._index = index
        self._health = health

    def collect(self) -> Iterator[Metric]:
        totals = self._index.queries.totals()
        yield CounterMetricFamily("radiomics_node_instances_received",
                                  "Instances stored (C-STORE, pull, retrieve).",
                                  value=totals.get("instances_received", 0))
        yield CounterMetricFamily("radiomics_node_received_bytes",
                                  "Bytes of the instances stored.",
                                  value=totals.get("bytes_received", 0))
        by_state = self._index.queries.jobs_by_state()
        jobs = GaugeMetricFamily("radiomics_node_jobs", "Jobs by state.", labels=["state"])
        for state in JOB_STATES:
            jobs.add_metric([state], by_state.get(state, 0))
        yield jobs
        durations = sorted(self._index.queries.job_durations())
        buckets = [(str(bound), bisect.bisect_right(durations, bound))
                   for bound in JOB_DURATION_BUCKETS]
        buckets.append(("+Inf", len(durations)))
        yield HistogramMetricFamily("radiomics_node_job_duration_seconds",
                                    "Run time of finished jobs (done or failed).",
                                    buckets=buckets, sum_value=sum(durations))
        yield CounterMetricFamily(
            "radiomics_node_delivery_retries",
            "Failed delivery attempts that were scheduled for another try.",
            value=self._index.audit.count("delivery failed"))
        yield CounterMetricFamily(
            "radiomics_node_deliveries_dead_lettered",
            "Deliveries that ran out of attempts.",
            value=self._index.audit.count("delivery dead-lettered"))
        yield CounterMetricFamily(
            "radiomics_node_delivery_manual_retries",
            "Deliveries sent again by a person (CLI or status page).",
            value=self._index.audit.count("delivery retry requested"))
        depth = GaugeMetricFamily("radiomics_node_queue_depth",
                                  "Work waiting, by queue.", labels=["queue"])
        for queue, count in self._index.queries.queue_depths().items():
            depth.add_metric([queue], count)
        yield depth
        usage = shutil.disk_usage(self._config.state_dir)
        yield GaugeMetricFamily("radiomics_node_disk_free_bytes",
                                "Free bytes on the state directory's file system.",
                                value=usage.free)
        yield GaugeMetricFamily("radiomics_node_spool_bytes",
                                "Bytes of the instances in the spool.",
                                value=self._index.queries.spool_bytes())
        healthy = GaugeMetricFamily("radiomics_node_health_check",
                                    "1 when the /healthz check passes.", labels=["check"])
        for check in self._health().checks:
            healthy.add_metric([check.name], 1.0 if check.ok else 0.0)
        yield healthy


def render_metrics(config: NodeConfig, index: Index, health: Callable[[], Health]) -> bytes:
    """The metrics in Prometheus text format (version 0.0.4)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(IndexCollector(config, index, health))
    return generate_latest(registry)
