"""Routing: which stable series a pipeline is for, and which segmentation goes with which series.

Rules are evaluated on the header of one instance of a stable image series (the series-level
attributes of PS3.3 C.7.3.1 and C.8.2.1 are the same in every instance). A segmentation is paired
with its source series through ReferencedSeriesSequence (0008,1115), PS3.3 C.8.20.2 / C.7.6.16.
A job is queued when both are stable, whichever came last.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass

import pydicom
from pydicom.dataset import Dataset

from node.config import NodeConfig, SeriesRule
from node.index import Index, SeriesRow
from node.logs import fields
from pipelines.segmentation import referenced_series_uids
from pipelines.software import MANUFACTURER

log = logging.getLogger(__name__)

SEGMENTATION_MODALITIES = frozenset({"SEG", "RTSTRUCT"})


@dataclass(frozen=True)
class RuleMismatch:
    """Why a rule did not match: the keyword tested and the reason."""

    keyword: str
    reason: str


def _as_list(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str | bytes):
        return [str(value)]
    return [str(v) for v in value]  # type: ignore[attr-defined]


def mismatches(rule: SeriesRule, header: Dataset) -> list[RuleMismatch]:
    """Every condition of ``rule`` that ``header`` fails; empty when the rule matches."""
    found: list[RuleMismatch] = []
    modality = str(header.get("Modality", ""))
    if rule.modality and modality not in rule.modality:
        found.append(RuleMismatch("Modality", f"{modality!r} not in {rule.modality}"))
    if rule.series_description is not None:
        description = str(header.get("SeriesDescription", ""))
        if not re.search(rule.series_description, description, flags=re.IGNORECASE):
            reason = f"{description!r} does not match /{rule.series_description}/"
            found.append(RuleMismatch("SeriesDescription", reason))
    for keyword, interval in rule.ranges.items():
        raw = header.get(keyword)
        try:
            value = float(raw) if raw is not None and raw != "" else None
        except (TypeError, ValueError):
            value = None
        if value is None:
            found.append(RuleMismatch(keyword, "missing or not a single number"))
        elif not interval.contains(value):
            reason = f"{value:g} outside [{interval.min}, {interval.max}]"
            found.append(RuleMismatch(keyword, reason))
    image_type = {v.upper() for v in _as_list(header.get("ImageType"))}
    missing = [v for v in rule.image_type_includes if v.upper() not in image_type]
    if missing:
        found.append(RuleMismatch("ImageType", f"lacks {missing}"))
    excluded = [v for v in rule.image_type_excludes if v.upper() in image_type]
    if excluded:
        found.append(RuleMismatch("ImageType", f"contains excluded {excluded}"))
    return found


def matching_rules(rules: list[SeriesRule], header: Dataset) -> list[SeriesRule]:
    """The rules whose every condition holds for ``header``, in configuration order."""
    return [rule for rule in rules if not mismatches(rule, header)]


class Router:
    """Turns newly stable series into queued jobs."""

    def __init__(self, config: NodeConfig, index: Index):
        self._config = config
        self._index = index

    def _header(self, series_uid: str) -> Dataset | None:
        instances = self._index.instances_of(series_uid)
        if not instances:
            return None
        return pydicom.dcmread(instances[0].path, stop_before_pixels=True)

    def _image_rules(self, series_uid: str) -> list[SeriesRule]:
        series = self._index.series(series_uid)
        if series is None or series.stable_at is None:
            return []
        header = self._header(series_uid)
        return [] if header is None else matching_rules(self._config.rules, header)

    def route(self, series: SeriesRow) -> list[int]:
        """Queue the jobs that ``series`` (now stable) completes; returns their ids."""
        if series.modality in SEGMENTATION_MODALITIES:
            return self._route_segmentation(series)
        return self._route_image(series)

    def _route_segmentation(self, series: SeriesRow) -> list[int]:
        queued: list[int] = []
        for instance in self._index.instances_of(series.series_uid):
            seg = pydicom.dcmread(instance.path, stop_before_pixels=True)
            if (seg.get("Manufacturer"), seg.get("ManufacturerModelName")) == (
                    MANUFACTURER, MANUFACTURER):
                # the node's own derived SEG, sent back by a PACS: its ROIs are not lesions
                log.info("own segmentation not processed", extra=fields(
                    seg_sop_uid=instance.sop_instance_uid))
                continue
            sources = referenced_series_uids(seg)
            self._index.add_seg_refs(instance.sop_instance_uid, series.series_uid, sources)
            for source in sorted(sources):
                if self._index.series(source) is None:
                    log.info("segmentation waits for its source series", extra=fields(
                        seg_sop_uid=instance.sop_instance_uid, source_series_uid=source))
                    # node.retrieve fetches it from a queryable peer, or fails it in time
                    self._index.request_retrieval(source, str(seg.StudyInstanceUID),
                                                  instance.sop_instance_uid)
                    continue
                queued += self._queue(source, instance.sop_instance_uid,
                                      self._image_rules(source))
        return queued

    def _route_image(self, series: SeriesRow) -> list[int]:
        header = self._header(series.series_uid)
        if header is None:
            return []
        rules = matching_rules(self._config.rules, header)
        if not rules:
            reasons = {rule.name: [f"{m.keyword}: {m.reason}" for m in mismatches(rule, header)]
                       for rule in self._config.rules}
            log.info("series matches no rule", extra=fields(
                series_uid=series.series_uid, modality=series.modality, reasons=reasons))
            return []
        queued: list[int] = []
        for seg_sop_uid in self._index.segs_referencing(series.series_uid):
            seg = self._index.instance(seg_sop_uid)
            seg_series = self._index.series(seg.series_uid) if seg else None
            if seg_series is not None and seg_series.stable_at is not None:
                queued += self._queue(series.series_uid, seg_sop_uid, rules)
        return queued

    def inputs_digest(self, source: str, seg_sop_uid: str) -> str:
        """sha256 of the source series' SOP Instance UIDs (sorted) and the SEG's: the inputs a
        job reads, so a late instance or a corrected SEG is a change."""
        uids = sorted(row.sop_instance_uid for row in self._index.instances_of(source))
        digest = hashlib.sha256("\n".join([*uids, "seg", seg_sop_uid]).encode()).hexdigest()
        if self._config.reprocess == "always":
            digest += f"@{time.time():.6f}"
        return digest

    def _queue(self, source: str, seg_sop_uid: str, rules: list[SeriesRule]) -> list[int]:
        """Queue one job per preset of ``rules``, as the ``reprocess`` policy allows."""
        queued: list[int] = []
        presets: dict[str, str] = {}
        for rule in rules:
            presets.setdefault(rule.preset, rule.name)
        digest = self.inputs_digest(source, seg_sop_uid) if presets else ""
        for preset, rule in presets.items():
            earlier = self._index.jobs_for(source, seg_sop_uid, preset)
            if any(job.inputs_digest == digest for job in earlier):
                continue  # the same inputs were processed already (or are queued)
            if earlier and self._config.reprocess == "never":
                log.info("inputs changed, not processed again (reprocess: never)", extra=fields(
                    source_series_uid=source, seg_sop_uid=seg_sop_uid, preset=preset,
                    earlier_job_id=earlier[-1].id))
                continue
            job_id = self._index.add_job(source, seg_sop_uid, rule, preset, digest,
                                         rerun_of=earlier[-1].id if earlier else None)
            if job_id is None:
                continue
            if earlier:
                log.warning("inputs changed: processing again into a new result series",
                            extra=fields(job_id=job_id, earlier_job_id=earlier[-1].id,
                                         reprocess=self._config.reprocess, preset=preset,
                                         source_series_uid=source, seg_sop_uid=seg_sop_uid))
            log.info("job queued", extra=fields(
                job_id=job_id, rule=rule, preset=preset,
                source_series_uid=source, seg_sop_uid=seg_sop_uid))
            queued.append(job_id)
        return queued
