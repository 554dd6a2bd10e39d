"""The outbox: durable deliveries of result objects to each destination by C-STORE (PS3.4 B.2).

A delivery is marked delivered only on a success status from the peer. A failed attempt (no
association, a rejected context, a failure status) is retried with back-off doubling from
``backoff_initial`` to ``backoff_max``; after ``max_attempts`` it is dead-lettered.
"""

from __future__ import annotations

import logging
import time
from itertools import groupby

import pydicom

from node.config import Destination, NodeConfig
from node.index import DeliveryRow, Index
from node.logs import fields
from node.store_scu import AssociationRefused, c_store

log = logging.getLogger(__name__)

STORED_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})
"""C-STORE statuses meaning the peer stored the object: success and the warnings of PS3.4 B.2.3
(coercion of data elements, elements discarded, data set does not match SOP class)."""


def next_attempt_delay(attempts_so_far: int, initial: float, maximum: float) -> float:
    """Seconds to wait after the ``attempts_so_far``-th failure: initial, 2x, 4x, ... capped."""
    return min(maximum, initial * 2 ** max(0, attempts_so_far - 1))


class Outbox:
    """Sends due deliveries, one association per destination per tick."""

    def __init__(self, config: NodeConfig, index: Index):
        self._config = config
        self._index = index
        self._destinations = {d.name: d for d in config.destinations}

    def tick(self) -> None:
        due = self._index.due_deliveries()
        for name, group in groupby(due, key=lambda d: d.destination):
            batch = list(group)
            destination = self._destinations.get(name)
            if destination is None:
                for delivery in batch:
                    self._failed(delivery, f"destination {name!r} is no longer configured")
                continue
            self._send(destination, batch)

    def _failed(self, delivery: DeliveryRow, error: str) -> None:
        settings = self._config.outbox
        attempts = delivery.attempts + 1
        if attempts >= settings.max_attempts:
            self._index.mark_attempt_failed(delivery.id, error, retry_at=None)
            log.error("delivery dead-lettered", extra=fields(
                delivery_id=delivery.id, destination=delivery.destination,
                sop_instance_uid=delivery.sop_instance_uid, attempts=attempts, error=error))
            return
        delay = next_attempt_delay(attempts, settings.backoff_initial, settings.backoff_max)
        self._index.mark_attempt_failed(delivery.id, error, retry_at=time.time() + delay)
        log.warning("delivery failed, will retry", extra=fields(
            delivery_id=delivery.id, destination=delivery.destination,
            sop_instance_uid=delivery.sop_instance_uid, attempts=attempts, retry_in_s=delay,
            error=error))

    def _send(self, destination: Destination, batch: list[DeliveryRow]) -> None:
        datasets = []
        for delivery in batch:
            try:
                datasets.append((delivery, pydicom.dcmread(delivery.path)))
            except (OSError, pydicom.errors.InvalidDicomError) as exc:
                self._failed(delivery, f"cannot read {delivery.path}: {exc}")
        if not datasets:
            return
        try:
            statuses = c_store(self._config.listener.ae_title, destination,
                               [ds for _, ds in datasets], self._config.outbox.timeout)
        except AssociationRefused as exc:
            for delivery, _ in datasets:
                self._failed(delivery, str(exc))
            return
        for (delivery, _), code in zip(datasets, statuses, strict=True):
            if code in STORED_STATUSES:
                self._index.mark_delivered(delivery.id)
                log.info("delivered", extra=fields(
                    delivery_id=delivery.id, destination=destination.name,
                    sop_instance_uid=delivery.sop_instance_uid))
            else:
                shown = "no response" if code is None else f"status 0x{code:04X}"
                self._failed(delivery, f"C-STORE {shown}")
