"""Routing: which stable series a pipeline is for, and which segmentation goes with which series.

Rules are evaluated on the header of one instance of a stable image series (the series-level
attributes of PS3.3 C.7.3.1 and C.8.2.1 are the same in every instance). A segmentation, a SEG
or an RT Structure Set (RTSTRUCT), is paired with its source series through the series it
references (:func:`pipelines.io.references.referenced_series_uids`): a SEG's Referenced Series
Sequence (0008,1115) of the Common Instance Reference Module (PS3.3 C.12.2), an RTSTRUCT's RT
Referenced Series Sequence (3006,0014) inside Referenced Frame of Reference Sequence (3006,0010) >
RT Referenced Study Sequence (3006,0012) of the Structure Set Module (PS3.3 C.8.8.5). A job is
queued when both are stable, whichever came last; a referenced series the node does not have is
asked for (``node.flow.retrieve``), by its exact UIDs. A segmentation is paired only with a series
of its own study (or of the study an RTSTRUCT's RT Referenced Study names) and of its own Patient ID
(0010,0020). A segmentation that references no series, references a value that is not a UID
(PS3.5 9.1: an empty or wildcard value would match every series of a PACS, PS3.4 C.2.2.2), or
references a series of another study or patient is never paired: the router logs why in one line
and files it in the audit trail (event ``node.state.audit.SEGMENTATION_NOT_PROCESSED``), which the
status page lists.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from node.config import PRIORITIES, NodeConfig, RoleRule, SeriesMatch, SeriesRule
from node.logs import fields
from node.state import Index
from node.state.audit import SEGMENTATION_NOT_PROCESSED
from node.state.instances import InstanceRow, SeriesRow
from node.state.jobs import JobRow
from node.state.spool import is_uid
from pipelines.io.references import (
    kind,
    missing_reference,
    reference_values,
    referenced_series_uids,
    source_study_uid,
    text,
)
from pipelines.outputs.software import MANUFACTURER

log = logging.getLogger(__name__)

SEGMENTATION_MODALITIES = frozenset({"SEG", "RTSTRUCT"})
"""Modality (0008,0060) of the segmentations the router pairs: SEG (PS3.3 C.8.20.1) and RTSTRUCT
(PS3.3 C.8.8.1)."""

INPUTS_REPAIRED = "job queued again: inputs repaired"
"""The audit event of a failed job queued again because a damaged spool copy of its inputs was
repaired (:meth:`Router.repaired`)."""

SHOWN_CHARS = 64
"""The most characters of a referenced value a reason repeats (a UID has at most 64)."""


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


def b_values_of(paths: Iterable[str]) -> set[float]:
    """The Diffusion b-values (0018,9087) (PS3.3 C.8.13.5.9) at the top level of the instances
    ``paths``, read without their pixel data; an instance without one (or unreadable) adds
    none."""
    found: set[float] = set()
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["DiffusionBValue"])
            raw = ds.get("DiffusionBValue")
            if raw is not None and raw != "":
                found.add(float(raw))
        except (InvalidDicomError, OSError, ValueError, TypeError, EOFError):
            continue
    return found


B_VALUE_TOLERANCE = 1.0
"""How far (s/mm2) a series' b-value may be from a role's ``b_values`` entry and still be it."""


def _role_mismatches(role: RoleRule, header: Dataset,
                     b_values: Callable[[], set[float]] | None) -> list[RuleMismatch]:
    """The conditions only a study rule's role has: contrast, tags, b_values (see
    :class:`node.config.RoleRule`)."""
    found: list[RuleMismatch] = []
    if role.contrast is not None:
        agent = text(header, "ContrastBolusAgent")
        if role.contrast and not agent:
            found.append(RuleMismatch("ContrastBolusAgent", "absent or empty, contrast required"))
        elif not role.contrast and agent:
            found.append(RuleMismatch("ContrastBolusAgent",
                                      f"{agent!r} present, no contrast required"))
    for keyword, pattern in role.tags.items():
        if keyword not in header:
            found.append(RuleMismatch(keyword, "missing"))
            continue
        value = "\\".join(_as_list(header[keyword].value))
        if not re.search(pattern, value, flags=re.IGNORECASE):
            found.append(RuleMismatch(keyword, f"{value!r} does not match /{pattern}/"))
    if role.b_values:
        held = b_values() if b_values is not None else b_values_of_header(header)
        lacking = [b for b in role.b_values
                   if not any(abs(b - h) <= B_VALUE_TOLERANCE for h in held)]
        if lacking:
            seen = ", ".join(f"{h:g}" for h in sorted(held)) or "none"
            found.append(RuleMismatch("DiffusionBValue",
                                      f"lacks {[f'{b:g}' for b in lacking]} (has {seen})"))
    return found


def b_values_of_header(header: Dataset) -> set[float]:
    """The Diffusion b-value (0018,9087) of one header, as a set (empty when it has none)."""
    raw = header.get("DiffusionBValue")
    try:
        return {float(raw)} if raw is not None and raw != "" else set()
    except (TypeError, ValueError):
        return set()


def mismatches(rule: SeriesMatch, header: Dataset,
               b_values: Callable[[], set[float]] | None = None) -> list[RuleMismatch]:
    """Every condition of ``rule`` (a series rule, or a study rule's role) that ``header`` fails;
    empty when the rule matches. ``b_values`` gives the b-values of every instance of the series
    (read only when a role asks for b-values; when None, the header's own)."""
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
    if isinstance(rule, RoleRule):
        found += _role_mismatches(rule, header, b_values)
    return found


def matching_rules(rules: list[SeriesRule], header: Dataset) -> list[SeriesRule]:
    """The rules whose every condition holds for ``header``, in configuration order."""
    return [rule for rule in rules if not mismatches(rule, header)]


def _shown(value: str) -> str:
    """``value`` quoted on one line, cut to ``SHOWN_CHARS`` with its length noted."""
    if len(value) <= SHOWN_CHARS:
        return repr(value)
    return f"{value[:SHOWN_CHARS]!r}... ({len(value)} characters)"


def invalid_reference(segmentation: Dataset) -> str | None:
    """Why a UID that ``segmentation`` references is not one, or None when each is.

    Each non-empty value that names the source series, or for an RTSTRUCT the study that holds
    them, must be a UID as ``node.state.spool.is_uid`` (and so the node's ingest) takes it: digits
    and dots, at most 64 characters (PS3.5 9.1). An empty value is no reference (dropped by
    :func:`pipelines.io.references.referenced_series_uids`); ``*``, ``?`` or any other character
    would reach a C-GET, C-MOVE or Orthanc find as a wildcard (PS3.4 C.2.2.2.4), so nothing is
    requested. The reason, ``<kind> references an invalid UID (<path> <value> is not a UID,
    PS3.5 9.1)``, names the tag and the value (cut: :func:`_shown`)."""
    for where, value in reference_values(segmentation):
        if value and not is_uid(value):
            return (f"{kind(segmentation)} references an invalid UID ({where} {_shown(value)} is "
                    "not a UID, PS3.5 9.1)")
    return None


def patient_id(dataset: Dataset) -> str:
    """Patient ID (0010,0020) of ``dataset`` (PS3.3 C.7.1.1), stripped; empty when absent."""
    return text(dataset, "PatientID")


def foreign_source(segmentation: Dataset, source: SeriesRow, header: Dataset) -> str | None:
    """Why the series ``source`` (``header``: one of its instances) cannot be the one
    ``segmentation`` references, or None when it can: it must be in the study that
    :func:`source_study_uid` gives and carry the segmentation's Patient ID (0010,0020) (a SEG
    and its source share the Patient and General Study modules, PS3.3 A.51.3; so do a structure
    set and its images, PS3.3 A.19.3). The reason names the tag, and the UIDs but not the Patient
    IDs (patient identity is never logged)."""
    named = f"{kind(segmentation)} references series {source.series_uid}"
    study = source_study_uid(segmentation, source.series_uid)
    if source.study_uid != study:
        return (f"{named} of study {source.study_uid}, not of study {study} ((0020,000D) "
                "StudyInstanceUID)")
    if patient_id(header) != patient_id(segmentation):
        return f"{named} of another patient ((0010,0020) PatientID differs; values not logged)"
    return None


class Router:
    """Turns newly stable series into queued jobs."""

    def __init__(self, config: NodeConfig, index: Index):
        self._config = config
        self._index = index

    def _header(self, series_uid: str) -> Dataset | None:
        instances = self._index.instances.of_series(series_uid)
        if not instances:
            return None
        return pydicom.dcmread(instances[0].path, stop_before_pixels=True)

    def route(self, series: SeriesRow) -> list[int]:
        """Queue the jobs that ``series`` (now stable) completes; returns their ids."""
        if series.modality in SEGMENTATION_MODALITIES:
            return self._route_segmentation(series)
        return self._route_image(series)

    def _route_segmentation(self, series: SeriesRow) -> list[int]:
        """Pair each instance of a stable SEG or RTSTRUCT series with the series it references
        and queue the jobs whose image series is there, stable and of its study and patient
        (:func:`foreign_source`); ask for the missing ones by their exact UIDs. One whose
        references are missing or not UIDs (:func:`invalid_reference`) is not processed and asks
        for nothing."""
        queued: list[int] = []
        for instance in self._index.instances.of_series(series.series_uid):
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
            invalid = invalid_reference(segmentation)
            if invalid is not None:
                self._not_processed(instance, series, f"{invalid}: not processed")
                continue
            self._index.instances.add_seg_refs(instance.sop_instance_uid, series.series_uid,
                                               sources)
            for source in sorted(sources):
                source_series = self._index.instances.series(source)
                if source_series is None:
                    log.info("segmentation waits for its source series", extra=fields(
                        seg_sop_uid=instance.sop_instance_uid, modality=series.modality,
                        source_series_uid=source))
                    # node.flow.retrieve fetches it from a queryable peer, or fails it in time
                    self._index.retrievals.request(source, source_study_uid(segmentation, source),
                                                  instance.sop_instance_uid)
                    continue
                if source_series.stable_at is None:
                    continue  # paired when the image series is stable (_route_image)
                header = self._header(source)
                if header is None:
                    continue
                foreign = foreign_source(segmentation, source_series, header)
                if foreign is not None:
                    self._not_processed(instance, series, f"{foreign}: not processed")
                    continue
                rules = matching_rules(self._config.rules, header)
                if not rules:
                    log.info("segmentation not processed: its source series matches no rule",
                             extra=fields(seg_sop_uid=instance.sop_instance_uid,
                                          modality=series.modality, source_series_uid=source,
                                          source_modality=source_series.modality))
                    continue
                queued += self._queue(source, instance.sop_instance_uid, rules)
        return queued

    def repaired(self, job: JobRow) -> list[int]:
        """Queue ``job`` again, and return its id, when it failed and a damaged spool copy in its
        source series or its segmentation's series was repaired after its last attempt started
        (``JobStore.inputs_repaired_at``: an intact copy sent again, ``node.dicom.ingest``, or the
        damaged one removed at start and the instance sent again, ``node.state.recovery``), unless
        ``reprocess`` is ``never`` (then logged as not processed again). The audit trail records
        ``INPUTS_REPAIRED``. A done job is not run again: its results came from intact inputs."""
        if job.state != "failed":
            return []
        repaired_at = self._index.jobs.inputs_repaired_at(job.id)
        if repaired_at is None:
            return []
        context = fields(job_id=job.id, source_series_uid=job.source_series_uid,
                         seg_sop_uid=job.seg_sop_uid, preset=job.preset, repaired_at=repaired_at)
        if self._config.reprocess == "never":
            log.info("inputs repaired, failed job not processed again (reprocess: never)",
                     extra=context)
            return []
        queued = self._index.jobs.retry([job.id], event=INPUTS_REPAIRED)
        if queued:
            log.warning("inputs repaired: failed job queued again", extra=context)
        return queued

    def _not_processed(self, instance: InstanceRow, series: SeriesRow, why: str) -> None:
        """Record that the segmentation ``instance`` is never paired: one JSON log line and an
        audit row whose ``reason`` is ``<file>: <why>`` (one line; the status page lists it)."""
        reason = f"{instance.path}: {why}"
        log.warning(SEGMENTATION_NOT_PROCESSED, extra=fields(
            seg_sop_uid=instance.sop_instance_uid, series_uid=series.series_uid,
            modality=series.modality, reason=reason))
        self._index.audit.add(SEGMENTATION_NOT_PROCESSED, study_uid=series.study_uid,
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
        for seg_sop_uid in self._index.instances.segs_referencing(series.series_uid):
            segmentation = self._index.instances.get(seg_sop_uid)
            seg_series = self._index.instances.series(segmentation.series_uid) \
                if segmentation else None
            if segmentation is None or seg_series is None or seg_series.stable_at is None:
                continue
            seg_header = pydicom.dcmread(segmentation.path, stop_before_pixels=True)
            foreign = foreign_source(seg_header, series, header)
            if foreign is not None:
                self._not_processed(segmentation, seg_series, f"{foreign}: not processed")
                continue
            queued += self._queue(series.series_uid, seg_sop_uid, rules)
        return queued

    def inputs_digest(self, source: str, seg_sop_uid: str) -> str:
        """sha256 of the source series' SOP Instance UIDs (sorted) and the segmentation's (SEG or
        RTSTRUCT): the inputs a job reads, so a late instance or a corrected segmentation is a
        change."""
        uids = sorted(row.sop_instance_uid for row in self._index.instances.of_series(source))
        digest = hashlib.sha256("\n".join([*uids, "seg", seg_sop_uid]).encode()).hexdigest()
        if self._config.reprocess == "always":
            digest += f"@{self._index.clock.time():.6f}"
        return digest

    def _queue(self, source: str, seg_sop_uid: str, rules: list[SeriesRule]) -> list[int]:
        """Queue one job per preset of ``rules``, as the ``reprocess`` policy allows; a job whose
        rule (the first of its preset) has ``prior`` waits for its prior lookup
        (``node.flow.priors``). A job of the same inputs is not queued twice; one that failed is
        queued again when a damaged spool copy of its inputs was repaired since
        (:meth:`repaired`)."""
        queued: list[int] = []
        presets: dict[str, str] = {}
        urgency: dict[str, int] = {}
        for rule in rules:
            presets.setdefault(rule.preset, rule.name)
            level = PRIORITIES[rule.priority]
            urgency[rule.preset] = min(urgency.get(rule.preset, level), level)
        with_prior = {rule.name for rule in rules if rule.prior is not None}
        digest = self.inputs_digest(source, seg_sop_uid) if presets else ""
        for preset, rule in presets.items():
            earlier = self._index.jobs.for_inputs(source, seg_sop_uid, preset)
            same = next((job for job in earlier if job.inputs_digest == digest), None)
            if same is not None:  # the same inputs were processed already (or are queued)
                queued += self.repaired(same)
                continue
            if earlier and self._config.reprocess == "never":
                log.info("inputs changed, not processed again (reprocess: never)", extra=fields(
                    source_series_uid=source, seg_sop_uid=seg_sop_uid, preset=preset,
                    earlier_job_id=earlier[-1].id))
                continue
            job_id = self._index.jobs.add(source, seg_sop_uid, rule, preset, digest,
                                         rerun_of=earlier[-1].id if earlier else None,
                                         priority=urgency[preset], prior=rule in with_prior)
            if job_id is None:
                continue
            if earlier:
                log.warning("inputs changed: processing again into a new result series",
                            extra=fields(job_id=job_id, earlier_job_id=earlier[-1].id,
                                         reprocess=self._config.reprocess, preset=preset,
                                         source_series_uid=source, seg_sop_uid=seg_sop_uid))
            log.info("job queued", extra=fields(
                job_id=job_id, rule=rule, preset=preset, priority=urgency[preset],
                source_series_uid=source, seg_sop_uid=seg_sop_uid))
            queued.append(job_id)
        return queued
