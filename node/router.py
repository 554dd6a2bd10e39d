"""Routing: which stable series a pipeline is for, and which segmentation goes with which series.

Rules are evaluated on the header of one instance of a stable image series (the series-level
attributes of PS3.3 C.7.3.1 and C.8.2.1 are the same in every instance). A segmentation, a SEG
or an RT Structure Set (RTSTRUCT), is paired with its source series through the series it
references (:func:`pipelines.segmentation.referenced_series_uids`): a SEG's Referenced Series
Sequence (0008,1115) of the Common Instance Reference Module (PS3.3 C.12.2), an RTSTRUCT's RT
Referenced Series Sequence (3006,0014) inside Referenced Frame of Reference Sequence (3006,0010) >
RT Referenced Study Sequence (3006,0012) of the Structure Set Module (PS3.3 C.8.8.5). A job is
queued when both are stable, whichever came last; a referenced series the node does not have is
asked for (``node.retrieve``). A segmentation that references no series is never paired: the
router logs why in one line and files it in the audit trail (event
``node.index.SEGMENTATION_NOT_PROCESSED``), which the status page lists.
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
from node.index import SEGMENTATION_NOT_PROCESSED, Index, InstanceRow, SeriesRow
from node.logs import fields
from pipelines.rtstruct import RTSTRUCT_SOP_CLASS_UID
from pipelines.segmentation import referenced_series_uids
from pipelines.software import MANUFACTURER

log = logging.getLogger(__name__)

SEGMENTATION_MODALITIES = frozenset({"SEG", "RTSTRUCT"})
"""Modality (0008,0060) of the segmentations the router pairs: SEG (PS3.3 C.8.20.1) and RTSTRUCT
(PS3.3 C.8.8.1)."""

_RT_REFERENCE_PATH = (("(3006,0010)", "ReferencedFrameOfReferenceSequence"),
                      ("(3006,0012)", "RTReferencedStudySequence"),
                      ("(3006,0014)", "RTReferencedSeriesSequence"))
"""Where an RT Structure Set names its image series (PS3.3 C.8.8.5), outermost first."""


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


def _is_rtstruct(segmentation: Dataset) -> bool:
    return str(segmentation.get("SOPClassUID", "")) == RTSTRUCT_SOP_CLASS_UID


def missing_reference(segmentation: Dataset) -> str:
    """Why ``segmentation`` names no series, as ``<kind> references no series (<where>)``: the
    first sequence on the path to the series UIDs that is absent (not in any item of the one
    before) or empty, or that its items hold no Series Instance UID. For a SEG, Referenced
    Series Sequence (0008,1115) (PS3.3 C.12.2); for an RTSTRUCT, (3006,0010) > (3006,0012) >
    (3006,0014) (PS3.3 C.8.8.5)."""
    if _is_rtstruct(segmentation):
        kind, path = "RTSTRUCT", _RT_REFERENCE_PATH
    else:
        kind, path = "SEG", (("(0008,1115)", "ReferencedSeriesSequence"),)
    parents: list[Dataset] = [segmentation]
    names: list[str] = []
    for tag, keyword in path:
        names.append(f"{tag} {keyword}")
        items = [item for parent in parents for item in parent.get(keyword) or []]
        if not items:
            state = "empty" if any(keyword in parent for parent in parents) else "absent"
            return f"{kind} references no series ({' > '.join(names)} {state})"
        parents = items
    return f"{kind} references no series ({' > '.join(names)} items hold no SeriesInstanceUID)"


def source_study_uid(segmentation: Dataset, series_uid: str) -> str:
    """The Study Instance UID of the study that holds ``series_uid`` as ``segmentation`` names
    it, for the retrieval of a missing series (PS3.4 C.4.3 needs the study key).

    An RTSTRUCT may reference a series of another study: the RT Referenced Study Sequence
    (3006,0012) item whose RT Referenced Series Sequence (3006,0014) lists the series gives it as
    Referenced SOP Instance UID (0008,1155) (PS3.3 C.8.8.5). A SEG's Referenced Series Sequence
    (0008,1115) lists series of its own study (PS3.3 C.12.2). Otherwise, and when that item
    lacks the UID, the segmentation's own Study Instance UID."""
    if _is_rtstruct(segmentation):
        for frame in segmentation.get("ReferencedFrameOfReferenceSequence") or []:
            for study in frame.get("RTReferencedStudySequence") or []:
                listed = {str(series.get("SeriesInstanceUID", "") or "").strip()
                          for series in study.get("RTReferencedSeriesSequence") or []}
                study_uid = str(study.get("ReferencedSOPInstanceUID", "") or "").strip()
                if series_uid in listed and study_uid:
                    return study_uid
    return str(segmentation.StudyInstanceUID)


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
        header = self._header(series_uid)
        return [] if header is None else matching_rules(self._config.rules, header)

    def route(self, series: SeriesRow) -> list[int]:
        """Queue the jobs that ``series`` (now stable) completes; returns their ids."""
        if series.modality in SEGMENTATION_MODALITIES:
            return self._route_segmentation(series)
        return self._route_image(series)

    def _route_segmentation(self, series: SeriesRow) -> list[int]:
        """Pair each instance of a stable SEG or RTSTRUCT series with the series it references
        and queue the jobs whose image series is there and stable; ask for the missing ones."""
        queued: list[int] = []
        for instance in self._index.instances_of(series.series_uid):
            segmentation = pydicom.dcmread(instance.path, stop_before_pixels=True)
            if (segmentation.get("Manufacturer"), segmentation.get("ManufacturerModelName")) == (
                    MANUFACTURER, MANUFACTURER):
                # the node's own derived SEG, sent back by a PACS: its ROIs are not lesions
                log.info("own segmentation not processed", extra=fields(
                    seg_sop_uid=instance.sop_instance_uid, modality=series.modality))
                continue
            sources = referenced_series_uids(segmentation)
            if not sources:
                self._not_processed(instance, series,
                                    f"{missing_reference(segmentation)}: not processed")
                continue
            self._index.add_seg_refs(instance.sop_instance_uid, series.series_uid, sources)
            for source in sorted(sources):
                source_series = self._index.series(source)
                if source_series is None:
                    log.info("segmentation waits for its source series", extra=fields(
                        seg_sop_uid=instance.sop_instance_uid, modality=series.modality,
                        source_series_uid=source))
                    # node.retrieve fetches it from a queryable peer, or fails it in time
                    self._index.request_retrieval(source, source_study_uid(segmentation, source),
                                                  instance.sop_instance_uid)
                    continue
                if source_series.stable_at is None:
                    continue  # paired when the image series is stable (_route_image)
                rules = self._image_rules(source)
                if not rules:
                    log.info("segmentation not processed: its source series matches no rule",
                             extra=fields(seg_sop_uid=instance.sop_instance_uid,
                                          modality=series.modality, source_series_uid=source,
                                          source_modality=source_series.modality))
                    continue
                queued += self._queue(source, instance.sop_instance_uid, rules)
        return queued

    def _not_processed(self, instance: InstanceRow, series: SeriesRow, why: str) -> None:
        """Record that the segmentation ``instance`` is never paired: one JSON log line and an
        audit row whose ``reason`` is ``<file>: <why>`` (one line; the status page lists it)."""
        reason = f"{instance.path}: {why}"
        log.warning(SEGMENTATION_NOT_PROCESSED, extra=fields(
            seg_sop_uid=instance.sop_instance_uid, series_uid=series.series_uid,
            modality=series.modality, reason=reason))
        self._index.add_audit(SEGMENTATION_NOT_PROCESSED, study_uid=series.study_uid,
                              series_uid=series.series_uid,
                              detail={"seg_sop_uid": instance.sop_instance_uid,
                                      "modality": series.modality, "reason": reason})

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
            segmentation = self._index.instance(seg_sop_uid)
            seg_series = self._index.series(segmentation.series_uid) if segmentation else None
            if seg_series is not None and seg_series.stable_at is not None:
                queued += self._queue(series.series_uid, seg_sop_uid, rules)
        return queued

    def inputs_digest(self, source: str, seg_sop_uid: str) -> str:
        """sha256 of the source series' SOP Instance UIDs (sorted) and the segmentation's (SEG or
        RTSTRUCT): the inputs a job reads, so a late instance or a corrected segmentation is a
        change."""
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
