"""What a job is given, and its plan: one image series and its segmentation
(``pipelines.process.job_plan``), or several series of one study by role, measured on the
segmentation drawn on one of them.

A role names what a series is for a rule (``arterial``, ``portal_venous``; ``t2``, ``dwi``):
seed 003 (multi-sequence MRI of HCC) combines T2WI with the contrast phases, seed 002 prefers
multi-phase CT over one phase. A job of one series has the role ``""``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import SimpleITK as sitk

from pipelines.io.dwi import DwiError, b_value, read_dwi
from pipelines.io.segmentation import DecodedSegmentation, read_segmentation
from pipelines.io.series import SeriesVolume
from pipelines.outputs.result import PipelineResult
from pipelines.outputs.uids import result_uid
from pipelines.plan import Laps, Plan, Tasks
from pipelines.process import (
    Measured,
    PriorMeasured,
    RoleMeasured,
    Study,
    finish_plan,
    job_plan,
    measure,
    preprocess,
    read_source,
)
from pipelines.science.adc import AdcMethod, adc_map
from pipelines.science.delta import changes_by_roi, pair_lesions, segment_tracking_uids
from pipelines.science.features import TaskResult
from pipelines.science.presets import Preset, load_preset
from pipelines.science.qc import QCCheck, QCReport, QCSettings
from pipelines.science.qc.registration import describe, registration_report
from pipelines.science.registration import RegistrationSettings, propagate

SINGLE = ""
"""The role of the one series of a job that is not a study job."""


@dataclass(frozen=True)
class SeriesInput:
    """One image series of a job: its role, its instances' files and the preset measured on it
    (a shipped preset's name, a preset file's path, or a loaded :class:`Preset`)."""

    role: str
    paths: tuple[str, ...]
    preset: str | Preset


@dataclass(frozen=True)
class PriorInputs:
    """The patient's prior study, for delta radiomics: the image series its segmentation was
    drawn on (its instances' files) and that segmentation's file, measured with the preset of
    the job's segmented series."""

    paths: tuple[str, ...]
    seg: str


@dataclass(frozen=True)
class JobInputs:
    """A job's inputs: its image series, the one the segmentation was drawn on first, the
    segmentation's file (DICOM SEG or RT Structure Set) and, where one was found, the patient's
    prior study (delta radiomics)."""

    series: tuple[SeriesInput, ...]
    seg: str
    prior: PriorInputs | None = None

    def __post_init__(self) -> None:
        roles = [item.role for item in self.series]
        if not roles or len(set(roles)) != len(roles):
            raise ValueError(f"a job needs one series per role, given roles {roles}")

    @property
    def segmented(self) -> SeriesInput:
        """The series the segmentation was drawn on."""
        return self.series[0]

    @property
    def others(self) -> tuple[SeriesInput, ...]:
        """The series the segmentation is propagated to."""
        return self.series[1:]


def one_series(images: Sequence[str | Path], seg: str | Path, preset: str | Preset
               ) -> JobInputs:
    """The inputs of a job of one series (role ``""``) and its segmentation."""
    return JobInputs((SeriesInput(SINGLE, tuple(str(p) for p in images), preset),), str(seg))


@dataclass(frozen=True)
class RoleSeries:
    """A study job's other series as read: the volume measured (for a diffusion series of
    several b-values, its ADC map on the grid and headers of the highest b-value), the image its
    segmentation is registered to (the lowest b-value's, with the most anatomy), and the ADC's
    method where one was computed."""

    volume: SeriesVolume
    registered_to: sitk.Image
    adc: AdcMethod | None = None


def _b_values(files: Sequence[Path]) -> set[float]:
    """The b-values of an MR diffusion series' first instances, up to the second distinct one
    (``read_dwi`` reads them all); none for another series: one whose first instance is no MR
    image or has no b-value."""
    found: set[float] = set()
    for path in files:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        if header.get("Modality") != "MR":
            return set()
        try:
            found.add(b_value(header, path))
        except DwiError:
            return found
        if len(found) > 1:
            break
    return found


def read_role(paths: Sequence[str], preset: Preset) -> RoleSeries:
    """Another series of a study job, read with its role's preset (``read_source``); an MR
    series of several Diffusion b-values (0018,9087, or the vendors' private elements:
    ``pipelines.io.dwi``) becomes its ADC map (``pipelines.science.adc.adc_map``: when no ADC
    series is sent, seed 003's ADC is computed from the b-values), measured in 10^-6 mm2/s.

    Raises:
        ProcessError, SeriesError and DwiError: a series the preset cannot read, naming file,
            attribute and reason.
    """
    files = [Path(p) for p in paths]
    if preset.modality in (None, "MR") and len(_b_values(files)) > 1:
        diffusion = read_dwi(files)
        adc = adc_map(diffusion)
        highest = diffusion.volumes[max(diffusion.b_values)]
        lowest = diffusion.volumes[min(diffusion.b_values)]
        return RoleSeries(dataclasses.replace(highest, image=adc.image), lowest.image,
                          adc.method)
    volume = read_source(paths, preset)
    return RoleSeries(volume, volume.image)


def propagate_onto(study: Study, volume: SeriesVolume, role: str,
                   settings: RegistrationSettings, registered_to: sitk.Image | None = None
                   ) -> tuple[DecodedSegmentation | None, QCReport, str]:
    """The segmentation of ``study`` on the series ``volume`` of ``role``
    (``pipelines.science.registration.propagate``: copied on an identical grid in the same
    frame of reference, else registered, to ``registered_to`` where given, an image on
    ``volume``'s grid), the checks of that propagation as a series QC report, and the method in
    words. The segmentation is None where the checks failed: the series is then not measured,
    and the job goes on without it."""
    segments = study.seg.segments
    propagation = propagate(
        study.volume.image, volume.image if registered_to is None else registered_to,
        [segment.mask for segment in segments],
        same_frame_of_reference=study.volume.frame_of_reference_uid
        == volume.frame_of_reference_uid, settings=settings)
    report = registration_report(role, volume.series_instance_uid, propagation.qc,
                                 [f"segment {s.number} ({s.label})" for s in segments], settings)
    method = describe(propagation.qc)
    if report.status == "fail":
        return None, report, method
    propagated = tuple(dataclasses.replace(segment, region=mask, index=(0, 0, 0), grid=None)
                       for segment, mask in zip(segments, propagation.masks, strict=True))
    return (DecodedSegmentation(study.seg.dataset, study.seg.path, propagated,
                                study.seg.not_measured), report, method)


def measure_prior(prior: PriorInputs, study: Study, measured: Measured, preset: Preset,
                  qc_settings: QCSettings, settings: RegistrationSettings
                  ) -> Generator[Tasks[Any, TaskResult], list[TaskResult], PriorMeasured]:
    """The patient's prior study measured with the job's ``preset`` (without the robustness
    check, whose perturbed ROIs the change does not use), its lesions paired with ``study``'s
    and the change of every paired ROI's features (``pipelines.science.delta``). The prior's
    lesions are carried onto the current series by registration (always: another study, even
    in the same frame of reference, has the patient lying differently); its checks join the
    QC as ``warn`` where they fail, pairing then only by Tracking UID.

    Raises:
        ProcessError, FeatureError and the readers' errors for a prior that cannot be measured:
            the job then fails, like for its own inputs.
    """
    volume = read_source(prior.paths, preset)
    seg = read_segmentation(Path(prior.seg), volume,
                            fractional_threshold=preset.segmentation.fractional_threshold)
    prior_study = preprocess(volume, seg, preset)
    prior_measured = yield from measure(
        prior_study, preset, qc_settings.model_copy(update={"feature_robustness": False}),
        "prior")
    lesions = [s for s in prior_study.lesions if s.number not in prior_study.livers]
    current = [s for s in study.lesions if s.number not in study.livers]
    propagation = propagate(volume.image, study.volume.image, [s.mask for s in lesions],
                            same_frame_of_reference=False, settings=settings)
    checked = registration_report("prior", volume.series_instance_uid, propagation.qc,
                                  [f"segment {s.number} ({s.label})" for s in lesions], settings)
    report = QCReport(checked.subject, "series", tuple(
        dataclasses.replace(check, status="warn") if check.status == "fail" else check
        for check in checked.checks))
    own = segment_tracking_uids(study.seg.dataset)
    theirs = segment_tracking_uids(seg.dataset)
    pairs, unpaired = pair_lesions(
        {s.number: frozenset({own[s.number]} if s.number in own else ()) for s in current},
        {s.number: frozenset({result_uid(volume, seg.sop_instance_uid, preset.hash, "tracking",
                                         str(s.number)),
                              *([theirs[s.number]] if s.number in theirs else [])})
         for s in lesions},
        {s.number: s.mask for s in current},
        None if checked.status == "fail" else {
            s.number: mask for s, mask in zip(lesions, propagation.masks, strict=True)})
    changes = changes_by_roi(
        pairs, {(s.segment_number, s.roi_variant): s.features
                for s in prior_measured.summaries},
        {(s.segment_number, s.roi_variant): s.features for s in measured.summaries})
    return PriorMeasured(volume, seg, report, tuple(pairs), unpaired, changes)


def study_plan(inputs: JobInputs, out_dir: str | Path, *, qc_settings: QCSettings | None = None,
               models: Sequence[tuple[str | Path, str]] = (), split_maps: bool = False,
               registration: RegistrationSettings | None = None) -> Plan[PipelineResult]:
    """The plan (``pipelines.plan``) of a job: :func:`pipelines.process.job_plan` for a job of
    one series; ``qc_settings``, ``models`` and ``split_maps`` as there.

    A study job's plan reads the series the segmentation was drawn on and the segmentation, and
    measures it as ``job_plan`` does; then, for each other series in ``inputs`` order, reads it
    with its role's preset, propagates the segmentation onto it (:func:`propagate_onto`, with
    ``registration`` settings) and, where the propagation passes its checks, measures every ROI
    variant of every lesion on it (``pipelines.process.measure``). One write then encodes the
    reports, the derived SEGs (one per series) and the summary for all series together
    (``pipelines.process.write_early``), and the maps of the series the lesions were drawn on
    follow, one feature class at a time, as in ``job_plan``. A series whose propagation failed
    is reported (its checks in the QC, the reports and the summary), not measured.

    Raises:
        ProcessError, FeatureError, MapError and the readers' errors, as ``job_plan``; a series
            of another role that cannot be read fails the job the same way.
    """
    if len(inputs.series) == 1 and inputs.prior is None:
        only = inputs.segmented
        return (yield from job_plan(only.paths, inputs.seg, only.preset, out_dir,
                                    qc_settings=qc_settings, models=models,
                                    split_maps=split_maps))
    laps = Laps()
    qc_settings = qc_settings or QCSettings()
    registration = registration or RegistrationSettings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    segmented = inputs.segmented
    preset = load_preset(segmented.preset)
    volume = read_source(segmented.paths, preset)
    laps.lap("read_series")
    seg = read_segmentation(Path(inputs.seg), volume,
                            fractional_threshold=preset.segmentation.fractional_threshold)
    laps.lap("read_segmentation")
    study = preprocess(volume, seg, preset)
    laps.lap("preprocessing")
    measured = yield from measure(study, preset, qc_settings)
    laps.lap("extraction")
    roles: list[RoleMeasured] = []
    for other in inputs.others:
        role_preset = load_preset(other.preset)
        read = read_role(other.paths, role_preset)
        role_volume = read.volume
        laps.lap("read_series")
        role_seg, report, method = propagate_onto(study, role_volume, other.role, registration,
                                                  read.registered_to)
        if read.adc is not None:
            report = QCReport(report.subject, "series", (QCCheck(
                "ADC", "series", "info", read.adc.model, "10-6.mm2/s", "",
                read.adc.describe()), *report.checks))
            method = f"{method}, onto the b = {min(read.adc.b_values):g} s/mm2 image"
        laps.lap("registration")
        if role_seg is None:
            roles.append(RoleMeasured(other.role, role_preset, role_volume, report, method,
                                      None, None))
            continue
        role_study = preprocess(role_volume, role_seg, role_preset)
        laps.lap("preprocessing")
        role_measured = yield from measure(role_study, role_preset, qc_settings, other.role)
        laps.lap("extraction")
        roles.append(RoleMeasured(other.role, role_preset, role_volume, report, method,
                                  role_study, role_measured))
    prior = None
    if inputs.prior is not None:
        prior = yield from measure_prior(inputs.prior, study, measured, preset, qc_settings,
                                         registration)
        laps.lap("delta")
    return (yield from finish_plan(study, measured, preset, out, laps, qc_settings=qc_settings,
                                   models=models, split_maps=split_maps,
                                   role=segmented.role or None, roles=roles, prior=prior))


