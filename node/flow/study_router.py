"""Study rules (``node.config.StudyRule``): several image series of one study, each by its role,
measured on one segmentation drawn on one of them.

A stable SEG or RTSTRUCT whose referenced series (``seg_refs``, filed by ``node.flow.router``)
is stable and plays a role the rule allows segmentations on (``segmented_on``) is paired with
the study's other stable image series:

* roles are filled required ones first, then optional ones, each group in configuration order;
  a series plays at most one role and a role takes at most one series: among several series
  that match a role, the one with the highest Series Number (0020,0011) (PS3.3 C.7.3.1; the
  later acquisition of a repeated phase), then the highest Series Instance UID; the others are
  logged;
* every required role filled: one study job, the segmented role's series first (its preset is
  the job's), queued as ``reprocess`` allows (inputs digest over the rule's name, each role's
  series' SOP Instance UIDs and the segmentation's);
* a required role empty: the segmentation waits (``study_waits``) and is evaluated again each
  time a series of the study becomes stable; once ``study_stable_after`` seconds have passed
  since the study's last received instance (:meth:`StudyRouter.give_up_due`, every assembly
  tick), a failed job records the roles missing and, for each stable image series of the
  study, why it does not play them (``node.flow.router.mismatches``).

Whichever comes last, the segmentation or a required role's series, queues the job.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import pydicom
from pydicom.dataset import Dataset

from node.config import PRIORITIES, NodeConfig, StudyRule
from node.flow.router import SEGMENTATION_MODALITIES, b_values_of, foreign_source, mismatches
from node.logs import fields
from node.state import Index
from node.state.instances import SeriesRow
from node.state.jobs import JobRow, JobSeries
from pipelines.io.references import text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Casting:
    """A study rule's roles filled from one study: ``series`` by role (the segmented role
    first), the required roles left empty (``missing``), and why each stable image series of
    the study does not play each of them (``why_not``: role -> lines)."""

    series: tuple[JobSeries, ...]
    missing: tuple[str, ...]
    why_not: dict[str, list[str]]


class StudySeries:
    """The stable image series of one study, each header and its b-values read once."""

    def __init__(self, index: Index, rows: list[SeriesRow]):
        self._index = index
        self.rows = [row for row in rows if row.stable_at is not None
                     and row.modality not in SEGMENTATION_MODALITIES]
        self._headers: dict[str, Dataset | None] = {}
        self._b_values: dict[str, set[float]] = {}

    def header(self, series_uid: str) -> Dataset | None:
        """The header (no pixel data) of the series' first instance; None when it has none."""
        if series_uid not in self._headers:
            instances = self._index.instances.of_series(series_uid)
            self._headers[series_uid] = pydicom.dcmread(
                instances[0].path, stop_before_pixels=True) if instances else None
        return self._headers[series_uid]

    def b_values(self, series_uid: str) -> Callable[[], set[float]]:
        """A reader of the b-values of every instance of the series (read at the first call)."""
        def read() -> set[float]:
            if series_uid not in self._b_values:
                self._b_values[series_uid] = b_values_of(
                    row.path for row in self._index.instances.of_series(series_uid))
            return self._b_values[series_uid]
        return read


def _series_number(header: Dataset) -> int:
    try:
        return int(header.get("SeriesNumber", -1))
    except (TypeError, ValueError):
        return -1


def _described(series_uid: str, header: Dataset | None) -> str:
    shown = text(header, "SeriesDescription") if header is not None else ""
    return f"series {series_uid} ({shown!r})" if shown else f"series {series_uid}"


def cast(rule: StudyRule, segmented_role: str, segmented: str, study: StudySeries) -> Casting:
    """Fill ``rule``'s roles from ``study``'s stable image series, ``segmented`` (the series
    the segmentation was drawn on) playing ``segmented_role`` (module docstring)."""
    chosen: dict[str, str] = {segmented_role: segmented}
    playing = {segmented: segmented_role}
    why_not: dict[str, list[str]] = {}
    order = [name for name, role in rule.roles.items() if role.required] + \
        [name for name, role in rule.roles.items() if not role.required]
    for name in order:
        if name in chosen:
            continue
        role = rule.roles[name]
        candidates, reasons = [], []
        for row in study.rows:
            header = study.header(row.series_uid)
            if header is None:
                continue
            if row.series_uid in playing:
                reasons.append(f"{_described(row.series_uid, header)} plays "
                               f"{playing[row.series_uid]}")
                continue
            failed = mismatches(role, header, study.b_values(row.series_uid))
            if failed:
                reasons.append(f"{_described(row.series_uid, header)}: "
                               f"{failed[0].keyword} {failed[0].reason}")
            else:
                candidates.append((_series_number(header), row.series_uid))
        if not candidates:
            why_not[name] = reasons or ["no stable image series in the study"]
            continue
        candidates.sort(reverse=True)
        best = candidates[0][1]
        if len(candidates) > 1:
            log.info("several series match a role: the highest SeriesNumber plays it",
                     extra=fields(rule=rule.name, role=name, chosen_series_uid=best,
                                  other_series_uids=[uid for _, uid in candidates[1:]]))
        chosen[name] = best
        playing[best] = name
    series = tuple(JobSeries(name, chosen[name], rule.preset_of(name))
                   for name in [segmented_role, *(n for n in order if n != segmented_role)]
                   if name in chosen)
    missing = tuple(name for name in order if rule.roles[name].required and name not in chosen)
    return Casting(series, missing, {name: why_not[name] for name in missing})


def gave_up_reason(rule: StudyRule, casting: Casting) -> str:
    """The one-line reason of a study job that gave up: the required roles missing and, for
    each, why each stable image series of the study does not play it."""
    roles = ", ".join(casting.missing)
    noun = "role" if len(casting.missing) == 1 else "roles"
    why = "; ".join(f"{name}: {', '.join(casting.why_not[name])}" for name in casting.missing)
    return (f"study rule {rule.name}: required {noun} {roles} missing "
            f"{rule.study_stable_after:g} s after the study's last instance ({why})")


class StudyRouter:
    """Queues study jobs (module docstring); ``repaired`` is the series router's rerun of a
    failed job whose inputs were repaired (``node.flow.router.Router.repaired``)."""

    def __init__(self, config: NodeConfig, index: Index,
                 repaired: Callable[[JobRow], list[int]]):
        self._config = config
        self._index = index
        self._repaired = repaired

    def route(self, series: SeriesRow) -> list[int]:
        """Queue the study jobs that ``series`` (now stable, after ``Router.route`` filed a
        segmentation's references) completes: :meth:`route_study` for its study, or for a
        segmentation, for each study of the series it references."""
        if not self._config.study_rules:
            return []
        if series.modality in SEGMENTATION_MODALITIES:
            studies = self._index.instances.studies_segmented_by(series.series_uid)
        else:
            studies = [series.study_uid]
        return [job for study in studies for job in self.route_study(study)]

    def route_study(self, study_uid: str) -> list[int]:
        """Evaluate every stable segmentation drawn on a series of ``study_uid`` against every
        study rule, now that one of its series is stable; returns the ids of the jobs queued."""
        if not self._config.study_rules:
            return []
        study = StudySeries(self._index, self._index.instances.of_study(study_uid))
        queued: list[int] = []
        for seg_sop_uid, source in self._index.instances.segs_of_study(study_uid):
            for rule in self._config.study_rules:
                queued += self._evaluate(rule, seg_sop_uid, source, study, give_up=False)
        return queued

    def give_up_due(self) -> list[int]:
        """End the waits whose study has been quiet for its rule's ``study_stable_after``: the
        job is queued when the roles are there by now, else recorded failed with the missing
        roles (:func:`gave_up_reason`). A wait whose rule is no longer configured is dropped.
        Returns the ids of the jobs queued or failed."""
        rules = {rule.name: rule for rule in self._config.study_rules}
        done: list[int] = []
        now = self._index.clock.time()
        for wait in self._index.jobs.study_waits():
            rule = rules.get(wait.rule)
            if rule is None:
                self._index.jobs.end_wait(wait.rule, wait.seg_sop_uid)
                continue
            rows = self._index.instances.of_study(wait.study_uid)
            last = max((row.last_received or 0.0 for row in rows), default=0.0)
            if now < last + rule.study_stable_after:
                continue
            done += self._evaluate(rule, wait.seg_sop_uid, wait.source_series_uid,
                                   StudySeries(self._index, rows), give_up=True)
        return done

    def _evaluate(self, rule: StudyRule, seg_sop_uid: str, source: str, study: StudySeries,
                  give_up: bool) -> list[int]:
        """Queue, wait or (``give_up``) fail the job of ``rule`` for the segmentation
        ``seg_sop_uid`` drawn on ``source`` (:meth:`_cast`); when there is no such job to
        make, a wait that is due is dropped (routed again, a series that is stable again
        files it anew)."""
        cast_for = self._cast(rule, seg_sop_uid, source, study)
        if cast_for is None:
            if give_up:
                self._index.jobs.end_wait(rule.name, seg_sop_uid)
            return []
        casting, study_uid = cast_for
        context = {"rule": rule.name, "seg_sop_uid": seg_sop_uid, "source_series_uid": source,
                   "segmented_role": casting.series[0].role}
        if casting.missing and not give_up:
            self._index.jobs.wait_for_roles(rule.name, seg_sop_uid, study_uid, source)
            log.info("study job waits for required roles", extra=fields(
                **context, missing=list(casting.missing)))
            return []
        return self._queue(rule, seg_sop_uid, casting, context)

    def _cast(self, rule: StudyRule, seg_sop_uid: str, source: str, study: StudySeries
              ) -> tuple[Casting, str] | None:
        """``rule``'s roles filled (:func:`cast`) for the segmentation ``seg_sop_uid`` drawn on
        ``source``, with the study's UID; None when either is not stable, the source plays no
        role the rule allows segmentations on, or it is of another study or patient (the series
        router says why)."""
        segmentation = self._index.instances.get(seg_sop_uid)
        seg_series = self._index.instances.series(segmentation.series_uid) \
            if segmentation is not None else None
        if segmentation is None or seg_series is None or seg_series.stable_at is None:
            return None
        source_row = next((row for row in study.rows if row.series_uid == source), None)
        header = study.header(source) if source_row is not None else None
        if source_row is None or header is None:
            return None
        role = next((name for name in rule.segmentable
                     if not mismatches(rule.roles[name], header, study.b_values(source))), None)
        if role is None:
            return None
        seg_header = pydicom.dcmread(segmentation.path, stop_before_pixels=True)
        if foreign_source(seg_header, source_row, header) is not None:
            return None
        return cast(rule, role, source, study), source_row.study_uid

    def inputs_digest(self, rule: StudyRule, series: tuple[JobSeries, ...],
                      seg_sop_uid: str) -> str:
        """sha256 of the rule's name, each role with its series' SOP Instance UIDs (sorted) and
        the segmentation's: a late instance in any role, another series in a role or a
        corrected segmentation is a change; ``reprocess: always`` adds the time."""
        parts = [f"study rule {rule.name}"]
        for item in series:
            parts.append(f"role {item.role}")
            parts += sorted(row.sop_instance_uid
                            for row in self._index.instances.of_series(item.series_uid))
        digest = hashlib.sha256("\n".join([*parts, "seg", seg_sop_uid]).encode()).hexdigest()
        if self._config.reprocess == "always":
            digest += f"@{self._index.clock.time():.6f}"
        return digest

    def _queue(self, rule: StudyRule, seg_sop_uid: str, casting: Casting,
               context: dict[str, str]) -> list[int]:
        """Queue the study job of ``casting`` as ``reprocess`` allows, or record it failed
        when required roles are missing (the wait gave up)."""
        digest = self.inputs_digest(rule, casting.series, seg_sop_uid)
        earlier = self._index.jobs.for_study(rule.name, seg_sop_uid)
        same = next((job for job in earlier if job.inputs_digest == digest), None)
        if same is not None:
            self._index.jobs.end_wait(rule.name, seg_sop_uid)
            return self._repaired(same)
        if earlier and self._config.reprocess == "never":
            self._index.jobs.end_wait(rule.name, seg_sop_uid)
            log.info("inputs changed, not processed again (reprocess: never)", extra=fields(
                **context, earlier_job_id=earlier[-1].id))
            return []
        roles = {item.role: item.series_uid for item in casting.series}
        reason = gave_up_reason(rule, casting) if casting.missing else None
        job_id = self._index.jobs.add_study(
            list(casting.series), seg_sop_uid, rule.name, digest,
            rerun_of=earlier[-1].id if earlier else None, priority=PRIORITIES[rule.priority],
            failed=reason, prior=rule.prior is not None)
        if job_id is None:
            return []
        if reason is not None:
            log.warning("study job gave up: required roles missing", extra=fields(
                **context, job_id=job_id, missing=list(casting.missing), reason=reason))
        else:
            log.info("study job queued", extra=fields(
                **context, job_id=job_id, roles=roles, preset=casting.series[0].preset,
                priority=PRIORITIES[rule.priority],
                rerun_of=earlier[-1].id if earlier else None))
        return [job_id]
