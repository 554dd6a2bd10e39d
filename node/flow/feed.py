"""Pull mode: follow an Orthanc server's change feed (``GET /changes``) and download what becomes
stable, beside or instead of the DICOM listener.

Orthanc numbers its changes; a ``StableSeries`` (or ``StableStudy``) change says a series (or
study) has had no new instance for Orthanc's ``StableAge`` seconds. For each such change the
series of the configured modalities are downloaded instance by instance
(``GET /series/{id}/instances``, ``GET /instances/{id}/file``) and handed to ``Ingest.accept``
with source ``orthanc:<feed name>``. The feed's position (the last change whose instances are all
stored) is kept in the index and advanced only after them, so a node stopped, killed or cut off
mid-download reads the same change again and loses nothing; instances it already has are not
downloaded again.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import pydicom

from node.config import NodeConfig, OrthancFeed
from node.dicom.ingest import OUT_OF_RESOURCES, SUCCESS, Ingest
from node.dicom.orthanc import OrthancClient, OrthancError
from node.logs import fields
from node.state import Index

log = logging.getLogger(__name__)


class FeedStalled(Exception):
    """A change whose instances could not all be stored; the feed stays before it."""


class Feed:
    """One configured Orthanc feed; ``poll`` is its scheduler tick."""

    def __init__(self, config: NodeConfig, index: Index, feed: OrthancFeed):
        self.settings = feed
        self._index = index
        self._ingest = Ingest(config, index)
        self._source = f"orthanc:{feed.name}"

    def poll(self) -> int:
        """Read every change since the saved position; returns how many instances were stored.
        Never raises: a failure is logged and the next poll starts from the same change."""
        feed = self.settings
        stored = 0
        try:
            with OrthancClient(feed.url, feed.username, feed.password, feed.timeout) as client:
                seq = self._index.retrievals.feed_seq(feed.name)
                if seq is None:
                    seq = client.last_change() if feed.start == "latest" else 0
                    self._index.retrievals.set_feed_seq(feed.name, seq)
                    log.info("feed starts", extra=fields(feed=feed.name, seq=seq,
                                                         start=feed.start))
                while True:
                    page = client.changes(seq, feed.batch)
                    for change in page.get("Changes", []):
                        if change.get("ChangeType") in feed.change_types:
                            stored += self._download(client, change)
                            self._index.retrievals.set_feed_seq(feed.name, int(change["Seq"]))
                        seq = int(change["Seq"])
                    seq = max(seq, int(page.get("Last", seq)))
                    self._index.retrievals.set_feed_seq(feed.name, seq)
                    if page.get("Done", True):
                        break
        except (OrthancError, FeedStalled) as exc:
            log.warning("feed poll stopped, will resume at the same change", extra=fields(
                feed=feed.name, seq=self._index.retrievals.feed_seq(feed.name), error=str(exc)))
        return stored

    def _series_of(self, client: OrthancClient, change: dict[str, Any]) -> list[str]:
        if change.get("ResourceType") == "Study":
            return client.study_series(change["ID"])
        return [change["ID"]]

    def _download(self, client: OrthancClient, change: dict[str, Any]) -> int:
        """Store the instances of the series a change names; FeedStalled when one could not be
        stored for a reason that may pass (disk full, network)."""
        stored = 0
        try:
            series_ids = self._series_of(client, change)
        except OrthancError as exc:
            if exc.status == 404:  # deleted from Orthanc since: nothing left to fetch
                log.warning("changed resource no longer in Orthanc", extra=fields(
                    feed=self.settings.name, seq=change.get("Seq"), id=change.get("ID")))
                return 0
            raise
        for series_id in series_ids:
            try:
                stored += self._download_series(client, series_id)
            except OrthancError as exc:
                if exc.status != 404:
                    raise
                log.warning("series no longer in Orthanc", extra=fields(
                    feed=self.settings.name, series_id=series_id))
        return stored

    def _download_series(self, client: OrthancClient, series_id: str) -> int:
        series = client.series(series_id)
        tags = series.get("MainDicomTags", {})
        modality = tags.get("Modality", "")
        if modality not in self.settings.modalities:
            log.info("series not pulled: modality not followed", extra=fields(
                feed=self.settings.name, series_uid=tags.get("SeriesInstanceUID"),
                modality=modality))
            return 0
        stored = 0
        for instance in client.series_instances(series_id):
            uid = instance.get("MainDicomTags", {}).get("SOPInstanceUID")
            if uid and self._index.instances.has(uid):
                continue
            data = client.instance_file(instance["ID"])
            outcome = self._ingest.accept(data, lambda data=data: pydicom.dcmread(io.BytesIO(data)),
                                          self._source)
            if outcome.status == OUT_OF_RESOURCES:
                raise FeedStalled(f"instance {instance['ID']} not stored: {outcome.comment}")
            stored += outcome.status == SUCCESS
        log.info("series pulled", extra=fields(
            feed=self.settings.name, series_uid=tags.get("SeriesInstanceUID"),
            modality=modality, stored=stored))
        return stored
