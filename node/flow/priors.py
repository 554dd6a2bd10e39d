"""Delta radiomics: the patient's prior study of a job, found at a retrieve source and fetched
into a folder of its own before the job runs.

A job of a rule (``rules`` or ``study_rules``) with a ``prior`` section is queued with a pending
lookup (``Index.priors``, ``job_priors``), and is not claimed while it is pending
(``JobStore.claim``). Every tick (``PriorFinder.tick``, woken when a job is queued) each due
lookup asks the rule's ``prior.source`` (a ``retrieve.sources`` entry, ``node.dicom.query``):

1. the job's segmented series gives the patient: Patient ID (0010,0020), and Issuer of Patient
   ID (0010,0021) when present, sent as exact values only (an empty or wildcard value would
   match other patients, PS3.4 C.2.2.2), and its Study Date (0008,0020);
2. the patient's studies dated from Study Date - ``window_days`` to Study Date -
   ``min_interval_days`` (PS3.4 C.2.2.2.5 range matching; checked again on the answers), other
   than the job's own study, and including ``prior.modality`` when set: C-FIND at STUDY level
   (Study Root, PS3.4 C.4.1), Orthanc ``/tools/find`` or QIDO-RS (PS3.18 10.6);
3. from the most recent one back: its SEG and RTSTRUCT series (a SERIES-level query of each
   Modality); each is fetched, and each segmentation in it that is not the node's own derived
   SEG names its image series (``pipelines.io.references``), which is fetched and must match
   the rule as the router matches (``node.flow.router.mismatches`` on one instance's header:
   the series rule, or for a study rule the role the job's segmentation was drawn on);
4. the first that matches is the prior: ``found``, its files in ``priors/job-<id>/`` (``seg/``
   the segmentation series, ``images/`` the image series); nothing: ``none``, the reason saying
   what was searched and what each study lacked.

Fetching reuses ``node.flow.retrieve.SeriesFetcher`` (C-GET on the query's source, Orthanc
REST, or QIDO-RS + WADO-RS; never C-MOVE, whose instances would arrive at the listener and be
processed as a new study: ``node.config`` refuses it for a prior source), with what each
instance must hold (the study, the series and the job's Patient ID) and the checks a received
instance passes (``node.dicom.ingest.check_instance``); the files never enter the spool, so the
router never queues a job of the old study and nothing of it is sent to the PACS. A refused
instance is quarantined as ingest does, and the prior is not used: ``failed``, with the one-line
reason. A network error leaves the lookup pending, tried again after ``prior.retry_interval``
seconds doubled at each try (the index's clock), and fails it after ``prior.max_attempts``; so
does any other error (the disk, a bug), so that no job waits for ever on its lookup. A job
whose lookup ended ``none`` or ``failed`` runs without a prior (no delta); the state and reason
are on the status page's job row, in ``audit STUDY_UID`` and in the job's log lines, never
with patient identity.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import logging
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from node.config import NodeConfig, PriorConfig, RetrieveSource, SeriesMatch
from node.dicom.dicomweb import DicomWebError, DicomWebPeer
from node.dicom.ingest import SUCCESS, Outcome, check_instance, loggable_reason
from node.dicom.orthanc import OrthancClient, OrthancError
from node.dicom.query import (
    DicomQuery,
    DicomWebQuery,
    OrthancQuery,
    QueryError,
    StudyQuery,
    exact,
)
from node.dicom.store_scu import AssociationRefused
from node.dicom.validation import Refusal
from node.flow.retrieve import RetrieveError, RetrieveRefused, SeriesFetcher
from node.flow.router import b_values_of, invalid_reference, mismatches, patient_id
from node.logs import fields
from node.state import Index
from node.state.jobs import JobRow
from node.state.priors import PriorRow
from node.state.quarantine import quarantine
from node.state.spool import is_uid, write_durably
from pipelines.io.references import referenced_series_uids, source_study_uid, text
from pipelines.outputs.software import MANUFACTURER

log = logging.getLogger(__name__)

NETWORK_ERRORS = (AssociationRefused, OrthancError, DicomWebError, QueryError, RetrieveError)
"""What a source's failure to answer raises: the lookup is tried again (RetrieveRefused, a
subclass of RetrieveError, is caught before: the same would come again)."""

DATE = "%Y%m%d"
"""Study Date (0008,0020), VR DA (PS3.5 6.2)."""


class PriorRefused(Exception):
    """The source offered instances of the prior that the node does not take (malformed, of
    another study, series or patient, more than ``retrieve.max_instances``): not used."""


@dataclass(frozen=True)
class PriorFound:
    """The prior of a job: its study, the image series and the segmentation, in ``folder``."""

    study_uid: str
    series_uid: str
    seg_sop_uid: str
    folder: Path


@dataclass
class _Folder:
    """Where one fetched series goes: each instance checked (``check_instance``) and written as
    ``<SOP Instance UID>.dcm``; what was refused, as one-line reasons without patient
    identity."""

    path: Path
    config: NodeConfig
    now: Callable[[], float]
    refused: list[str] = field(default_factory=list)

    def accept(self, data: bytes, source: str, expected: Mapping[str, str],
               expected_class: str | None, expected_instance: str | None) -> Outcome:
        try:
            _, identity = check_instance(
                data, lambda: pydicom.dcmread(io.BytesIO(data)),
                self.config.limits.max_instance_bytes, expected_class, expected_instance,
                expected)
        except Refusal as refusal:
            quarantine(self.config.quarantine_dir, bytes(data), source=source, tag=refusal.tag,
                       reason=refusal.reason, now=self.now())
            self.refused.append(f"{refusal.tag}: {loggable_reason(refusal)}")
            return Outcome(refusal.status, f"{refusal.tag}: {refusal.reason}", refusal.tag)
        write_durably(self.path / f"{identity['SOPInstanceUID']}.dcm", data)
        return Outcome(SUCCESS)

    def files(self) -> list[Path]:
        return sorted(self.path.glob("*.dcm")) if self.path.is_dir() else []


def window(study_date: str, settings: PriorConfig) -> tuple[str, str]:
    """The Study Dates (YYYYMMDD, both included) a prior of a study of ``study_date`` may have:
    ``window_days`` back to ``min_interval_days`` back. ValueError when ``study_date`` is not a
    date."""
    day = datetime.datetime.strptime(study_date, DATE).date()
    return ((day - datetime.timedelta(days=settings.window_days)).strftime(DATE),
            (day - datetime.timedelta(days=settings.min_interval_days)).strftime(DATE))


class PriorFinder:
    """Resolves the due prior lookups of queued jobs; ``on_resolved`` is called with a job's id
    once its lookup ended (the node wakes the jobs tick with it)."""

    def __init__(self, config: NodeConfig, index: Index,
                 on_resolved: Callable[[int], None] | None = None):
        self._config = config
        self._index = index
        self._on_resolved = on_resolved

    def tick(self) -> None:
        for row in self._index.priors.due():
            self._attempt(row)

    def folder(self, job_id: int) -> Path:
        """Where the prior of job ``job_id`` is fetched to."""
        return self._config.priors_dir / f"job-{job_id}"

    def _rule(self, job: JobRow) -> tuple[PriorConfig | None, SeriesMatch | None]:
        """The ``prior`` section of ``job``'s rule and what the prior's image series must match:
        the series rule, or the study rule's role the job's segmentation was drawn on."""
        rule = next((r for r in self._config.rules if r.name == job.rule), None)
        if rule is not None:
            return rule.prior, rule
        study_rule = next((r for r in self._config.study_rules if r.name == job.rule), None)
        roles = self._index.jobs.series_of(job.id)
        if study_rule is None or not roles or roles[0].role not in study_rule.roles:
            return None, None
        return study_rule.prior, study_rule.roles[roles[0].role]

    def _end(self, row: PriorRow, state: str, reason: str,
             found: PriorFound | None = None) -> None:
        if found is None:
            shutil.rmtree(self.folder(row.job_id), ignore_errors=True)
            self._index.priors.finish(row.job_id, state, reason)
        else:
            self._index.priors.finish(
                row.job_id, state, reason, study_uid=found.study_uid,
                series_uid=found.series_uid, seg_sop_uid=found.seg_sop_uid,
                folder=str(found.folder))
        (log.info if state != "failed" else log.error)(
            {"found": "prior study found", "none": "no prior study",
             "failed": "prior study not fetched"}[state],
            extra=fields(job_id=row.job_id, delta=state, reason=reason))
        if self._on_resolved is not None:
            self._on_resolved(row.job_id)

    def _attempt(self, row: PriorRow) -> None:
        job = self._index.jobs.get(row.job_id)
        settings, match = self._rule(job)
        if settings is None or match is None:
            self._end(row, "none", f"rule {job.rule} has no prior section now: none searched")
            return
        source = next(s for s in self._config.retrieve.sources if s.name == settings.source)
        instances = self._index.instances.of_series(job.source_series_uid)
        try:
            header = pydicom.dcmread(instances[0].path, stop_before_pixels=True) \
                if instances else None
        except (OSError, InvalidDicomError):
            header = None
        if header is None:
            self._end(row, "none", "the job's series is no longer readable: none searched")
            return
        patient, issuer = patient_id(header), text(header, "IssuerOfPatientID")
        if not exact(patient) or (issuer and not exact(issuer)):
            self._end(row, "none", "the job's series has no exact Patient ID (empty or a "
                                   "wildcard; values not logged): none searched")
            return
        try:
            dates = window(text(header, "StudyDate"), settings)
        except ValueError:
            self._end(row, "none", "the job's series has no valid StudyDate (0008,0020): "
                                   "none searched")
            return
        folder = self.folder(row.job_id)
        try:
            found, reason = self._search(source, settings, match, header, dates, folder)
        except (RetrieveRefused, PriorRefused) as exc:
            self._end(row, "failed", f"{source.name}: {exc}; not used")
            return
        except NETWORK_ERRORS as exc:
            self._retry(row, settings, f"{source.name}: {exc}")
            return
        except Exception as exc:  # the disk, or a bug: bounded as a network error, so that the
            # job is never held back for ever by its lookup
            log.debug("prior lookup error", exc_info=exc, extra=fields(job_id=row.job_id))
            first = next((line for line in str(exc).splitlines() if line.strip()), "")
            self._retry(row, settings, f"{source.name}: {type(exc).__name__}: {first[:300]}")
            return
        if found is None:
            self._end(row, "none", reason)
        else:
            self._end(row, "found", reason, found)

    def _retry(self, row: PriorRow, settings: PriorConfig, reason: str) -> None:
        """A network error: pending again after the back-off, or failed past max_attempts."""
        shutil.rmtree(self.folder(row.job_id), ignore_errors=True)
        attempts = row.attempts + 1
        if attempts >= settings.max_attempts:
            self._end(row, "failed", f"{reason} (gave up after {attempts} attempts)")
            return
        delay = settings.retry_interval * 2 ** (attempts - 1)
        self._index.priors.tried(row.job_id, reason, self._index.clock.time() + delay)
        log.warning("prior study not looked up yet", extra=fields(
            job_id=row.job_id, attempt=attempts, retry_in_s=delay, reason=reason))

    @contextlib.contextmanager
    def _query(self, source: RetrieveSource) -> Iterator[StudyQuery]:
        timeout = self._config.retrieve.timeout
        if source.kind == "orthanc-rest":
            with OrthancClient(str(source.url), source.username, source.password,
                               timeout) as client:
                yield OrthancQuery(client)
        elif source.kind == "dicomweb":
            with DicomWebPeer(str(source.url), source.username, source.password,
                              timeout) as peer:
                yield DicomWebQuery(peer)
        else:
            yield DicomQuery(self._config.listener.ae_title, source, timeout, self._config.tls)

    def _fetch(self, source: RetrieveSource, target: _Folder,
               expected: dict[str, str]) -> list[Path]:
        """Fetch one series into ``target`` (emptied first); its files. PriorRefused when the
        node refused any instance of it."""
        shutil.rmtree(target.path, ignore_errors=True)
        target.refused.clear()
        SeriesFetcher(self._config, target.accept).fetch(source, expected)
        if target.refused:
            raise PriorRefused(f"series {expected['SeriesInstanceUID']}: "
                               f"{len(target.refused)} instance(s) refused ({target.refused[0]})")
        return target.files()

    def _search(self, source: RetrieveSource, settings: PriorConfig, match: SeriesMatch,
                header: Dataset, dates: tuple[str, str], folder: Path
                ) -> tuple[PriorFound | None, str]:
        """The most recent study in ``dates`` with a segmentation on a series matching
        ``match`` (fetched into ``folder``), and the reason; (None, what was searched and what
        each study lacked) when there is none."""
        patient, current = patient_id(header), text(header, "StudyInstanceUID")
        issuer = text(header, "IssuerOfPatientID") or None
        searched = (f"{source.name}: studies of the patient from {dates[0]} to {dates[1]}"
                    + (f" with {settings.modality}" if settings.modality else ""))
        lacking: list[str] = []
        with self._query(source) as query:
            answered = query.studies(patient, issuer, dates, settings.modality)
            candidates = sorted(
                {s.study_uid: s for s in answered
                 if s.study_uid != current and is_uid(s.study_uid)
                 and dates[0] <= s.study_date <= dates[1]
                 and s.patient_id in ("", patient)}.values(),
                key=lambda s: (s.study_date, s.study_uid), reverse=True)
            for study in candidates:
                segmentations = query.segmentation_series(study.study_uid)
                if not segmentations:
                    lacking.append(f"{study.study_uid} ({study.study_date}): no SEG or RTSTRUCT")
                    continue
                found = self._pair(source, match, study.study_uid, segmentations, patient,
                                   folder)
                if found is not None:
                    return found, (f"prior study {study.study_uid} of {study.study_date} "
                                   f"from {source.name}: series {found.series_uid}, "
                                   f"segmentation {found.seg_sop_uid}")
                lacking.append(f"{study.study_uid} ({study.study_date}): no segmentation of a "
                               "series matching the rule")
        shown = "; ".join(lacking[:5]) + ("; ..." if len(lacking) > 5 else "")
        return None, (f"no prior study: {searched} other than this one: {len(candidates)} "
                      "found" + (f" ({shown})" if shown else ""))

    def _pair(self, source: RetrieveSource, match: SeriesMatch, study_uid: str,
              segmentations: list[str], patient: str, folder: Path) -> PriorFound | None:
        """Fetch each segmentation series of the study and the image series each of its
        segmentations references until one matches ``match``; None when none does."""
        now = self._index.clock.time
        seg_folder = _Folder(folder / "seg", self._config, now)
        images = _Folder(folder / "images", self._config, now)
        for seg_series in segmentations:
            if not is_uid(seg_series):
                continue
            for seg_path in self._fetch(source, seg_folder, {
                    "StudyInstanceUID": study_uid, "SeriesInstanceUID": seg_series,
                    "PatientID": patient}):
                segmentation = pydicom.dcmread(seg_path, stop_before_pixels=True)
                if (text(segmentation, "Manufacturer"),
                        text(segmentation, "ManufacturerModelName")) == (MANUFACTURER,
                                                                         MANUFACTURER):
                    continue  # the node's own derived SEG: its ROIs are not lesions
                if invalid_reference(segmentation) is not None:
                    continue
                for series_uid in sorted(referenced_series_uids(segmentation)):
                    paths = self._fetch(source, images, {
                        "StudyInstanceUID": source_study_uid(segmentation, series_uid),
                        "SeriesInstanceUID": series_uid, "PatientID": patient})
                    if not paths:
                        continue
                    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
                    if not mismatches(match, first,
                                      lambda p=paths: b_values_of(str(x) for x in p)):
                        return PriorFound(study_uid, series_uid,
                                          str(segmentation.SOPInstanceUID), folder)
            shutil.rmtree(images.path, ignore_errors=True)
        return None


def prior_files(folder: str, seg_sop_uid: str) -> tuple[tuple[str, ...], str] | None:
    """The image files and the segmentation file of a found prior in ``folder``; None when they
    are no longer there."""
    images = tuple(str(p) for p in sorted((Path(folder) / "images").glob("*.dcm")))
    seg = Path(folder) / "seg" / f"{seg_sop_uid}.dcm"
    return (images, str(seg)) if images and seg.is_file() else None
