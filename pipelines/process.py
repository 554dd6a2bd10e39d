"""One job from files to result objects: read the series and its segmentation, preprocess, build
the preset's ROI variants of every lesion segment, extract their features, encode a TID 1500
report. No network, no database, no wall clock: the only time read is a monotonic counter, for
the duration of each stage (``StageTimes``).

A segment the preset's ``rois.liver`` rule recognises as the liver is not a lesion: it is the
reference region of a liver z-score and what rings are clipped to. Every other segment is a
lesion and gets every ROI variant of the preset.

A job is a plan (``pipelines.plan``, :func:`job_plan`) of stages: :func:`read_source`,
:func:`preprocess`, :func:`measure` (the feature tasks), :func:`write_early` and
:func:`write_maps`. The plan yields its tasks and writes and never runs anything concurrently,
starts a process or calls back into the node: whoever runs it (``node.flow.executor``) chooses where
tasks and writes run, and what to do with the objects of an announced write.
"""

from __future__ import annotations

import csv
import functools
import os
import warnings
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import SimpleITK as sitk
from pydicom.dataset import Dataset

from models.package import ModelPackageError, load_package
from pipelines.io.segmentation import DecodedSegmentation, Segment, read_segmentation
from pipelines.io.series import SeriesVolume, read_series
from pipelines.outputs.derived_seg import Propagated, build_derived_segmentation
from pipelines.outputs.evaluations import model_line, qc_lines
from pipelines.outputs.feature_report import (
    DeltaGroups,
    RoleGroups,
    build_feature_report,
    feature_report_reference,
)
from pipelines.outputs.parametric_map import (
    LesionMaps,
    build_parametric_maps,
    lesions_anatomic_region,
    map_feature_groups,
    maps_plan,
)
from pipelines.outputs.reading_report import build_reading_report, reading_report_reference
from pipelines.outputs.result import (
    LesionModelResult,
    LesionSummary,
    OutputObject,
    PipelineResult,
    StageTimes,
)
from pipelines.outputs.summary import build_summary_image
from pipelines.plan import Gather, Laps, Pending, Plan, Tasks, Write, Written
from pipelines.science.delta import FeatureChange, LesionPair
from pipelines.science.features import FeatureError, RoiFeatures, TaskResult, features_plan
from pipelines.science.inference import (
    apply_model,
    lesion_features,
    seg_values,
)
from pipelines.science.preprocess import apply_zscore, n4_correct, zscore_parameters
from pipelines.science.presets import Preset, RoiVariant, load_preset
from pipelines.science.qc import CSV_COLUMNS as QC_CSV_COLUMNS
from pipelines.science.qc import QCReport, QCSettings, assess_roi, assess_series
from pipelines.science.qc.robustness import Perturbed, perturbed_plan
from pipelines.science.results import RoiResult
from pipelines.science.rois import RoiMask, build_variants, is_liver

# The ROI variants of a measured liver segment: as drawn only (rings around an organ are not
# perilesional tissue, and an organ is not eroded for a lesion's core).
_ORGAN_VARIANTS = (RoiVariant(kind="intra"),)

# highdicom warns about a one-component Patient's Name (0010,0010) of a source image by quoting
# it: the name would reach stderr and the node's log, which never carry it.
warnings.filterwarnings("ignore", message=r"The string .* is unlikely to represent the intended "
                        "person name", category=UserWarning)


class ProcessError(ValueError):
    """Inputs the preset cannot process (modality, missing liver segment); names both."""


@dataclass(frozen=True)
class AppliedModels:
    results: tuple[LesionModelResult, ...]
    errors: tuple[str, ...]  # packages that failed their checks, one sentence each


def _apply_models(models: Sequence[tuple[str | Path, str]], preset: Preset,
                  lesions: Sequence[LesionSummary], series_qc: QCReport,
                  lesion_qc: dict[int, QCReport], volume: SeriesVolume,
                  roles: Sequence[RoleMeasured] = (),
                  role_reports: Sequence[Sequence[QCReport]] = ()) -> AppliedModels:
    """Load each pinned package (models.package checks it) and run those made for ``preset``
    on every lesion (pipelines.science.inference.apply_model gates them on preset hash, QC,
    acquisition domain and clinical inputs). A package that fails its checks is reported, not
    run. A study job's other series (``roles``, with their QC reports ``role_reports``) add
    their lesions' features by role; a package that needs roles is also gated on their QC (a
    role whose propagation failed has no features: the package says which are missing)."""
    results: list[LesionModelResult] = []
    errors: list[str] = []
    by_segment = lesion_features([*lesions, *(
        summary for other in roles if other.measured is not None
        for summary in other.measured.summaries)])
    reports_of = {other.role: reports for other, reports in zip(roles, role_reports,
                                                                  strict=True)}
    for path, sha256 in models:
        try:
            package = load_package(path, sha256)
        except ModelPackageError as error:
            errors.append(f"model package not loaded: {error}")
            continue
        if package.card.preset.name != preset.name:
            continue
        for number, features in by_segment.items():
            if number not in lesion_qc:
                continue  # the liver, measured on another series
            needed = [report for role in package.card.roles for report in reports_of.get(role, ())
                      if report.scope == "series"
                      or report.subject == f"{role}: {lesion_qc[number].subject}"]
            results.append(LesionModelResult(number, apply_model(
                package, features=features, preset_hash=preset.hash,
                qc_reports=[series_qc, lesion_qc[number], *needed], headers=volume.datasets,
                seg=seg_values(by_segment, number), external={})))
    return AppliedModels(tuple(results), tuple(errors))


@dataclass(frozen=True)
class _Early:
    """The quality control, the models' outputs, and the objects written before the maps."""

    objects: tuple[OutputObject, ...]
    qc: tuple[QCReport, ...]
    models: AppliedModels


def _write_atomically(path: Path, writer: Callable[[Path], None]) -> None:
    """Write through ``writer`` into a hidden temporary file, then rename it into place."""
    tmp = path.with_name(f".{path.name}.part")
    writer(tmp)
    os.replace(tmp, path)


def _write_features_csv(path: Path, preset: Preset, lesions: Sequence[LesionSummary],
                        source_series_uid: str, role: str | None = None,
                        roles: Sequence[RoleMeasured] = ()) -> None:
    """One row per ROI and feature: long format, so presets with different features stack. A
    study job's table has a ``role`` column, and the rows of its other series (``roles``) after
    those of the series the lesions were drawn on (of ``role``)."""
    blocks = [(role or "", source_series_uid, preset, lesions),
              *((other.role, other.volume.series_instance_uid, other.preset,
                 other.measured.summaries) for other in roles if other.measured is not None)]

    def write(target: Path) -> None:
        with target.open("w", newline="", encoding="utf-8") as handle:
            out = csv.writer(handle)
            out.writerow([*(["role"] if role is not None else []), "source_series_uid",
                          "segment_number", "segment_label", "roi_variant", "preset",
                          "preset_hash", "feature", "value"])
            for name_of_role, series_uid, measured_with, summaries in blocks:
                preset_hash = measured_with.hash  # 25 us each: once, not once per row
                first = [name_of_role] if role is not None else []
                for lesion in summaries:
                    for name, value in lesion.features.items():
                        out.writerow([*first, series_uid, lesion.segment_number, lesion.label,
                                      lesion.roi_variant, measured_with.name, preset_hash, name,
                                      repr(value)])
    _write_atomically(path, write)


def _write_object(out: Path, dataset: Dataset) -> OutputObject:
    """Save a result object as ``<SOP Instance UID>.dcm`` (Part 10, atomically)."""
    path = out / f"{dataset.SOPInstanceUID}.dcm"
    _write_atomically(path, lambda target: dataset.save_as(target, enforce_file_format=True))
    return OutputObject(path, str(dataset.SOPClassUID), str(dataset.SOPInstanceUID))


def _write_qc_csv(path: Path, reports: Sequence[QCReport]) -> None:
    def write(target: Path) -> None:
        with target.open("w", newline="", encoding="utf-8") as handle:
            out = csv.DictWriter(handle, fieldnames=QC_CSV_COLUMNS)
            out.writeheader()
            for report in reports:
                out.writerows(report.to_rows())
    _write_atomically(path, write)


def _liver_mask(seg: DecodedSegmentation, preset: Preset) -> sitk.Image | None:
    """Union of the segments the preset's liver rule recognises, or None."""
    livers = [segment.mask for segment in seg.segments if is_liver(segment, preset.rois.liver)]
    if not livers:
        return None
    union = livers[0]
    for mask in livers[1:]:
        union = union | mask
    return union


def _nothing_to_measure(seg: DecodedSegmentation, preset: Preset) -> str:
    """The one-line refusal of a segmentation whose every segment is the liver under the
    preset's ``rois.liver`` rule (or that has none), and which the preset does not measure."""
    kind = "RTSTRUCT" if seg.is_rtstruct else "SEG"
    found = ", ".join(f"{s.number} ({s.label})" for s in seg.segments) or "none"
    return (f"{seg.path}: the {kind} has no lesion to measure under preset {preset.name}: its "
            f"segments [{found}] are all the liver by rois.liver, the reference region, not a "
            "lesion (set rois.liver.measure: true to measure the liver itself)")


def _normalised(
    volume: SeriesVolume, lesions: Sequence[Segment], liver: sitk.Image | None, preset: Preset,
    seg_path: Path,
) -> tuple[sitk.Image, list[tuple[float, float] | None]]:
    """The image after N4 and a liver z-score, and each lesion's z-score for an ROI reference."""
    image = volume.image
    options = preset.preprocessing
    if options.n4 is not None:
        image = n4_correct(image, options.n4)
    per_lesion: list[tuple[float, float] | None] = [None] * len(lesions)
    if options.zscore is None:
        return image, per_lesion
    if options.zscore.reference == "liver":
        if liver is None:
            raise ProcessError(
                f"{seg_path}: preset {preset.name} normalises against the liver segment, and no "
                f"segment matches rois.liver (labels {[s.label for s in lesions]})"
            )
        return apply_zscore(image, *zscore_parameters(image, liver)), per_lesion
    return image, [zscore_parameters(image, lesion.mask) for lesion in lesions]


@dataclass(frozen=True)
class Study:
    """A job's inputs, read and preprocessed: what every later stage reads.

    ``lesions`` are the segments measured (every lesion, and a liver segment where the preset's
    ``rois.liver.measure`` asks), ``livers`` the numbers of the segments the preset's liver rule
    recognises, ``liver`` their union (None: no liver segment); ``image`` is the series after
    N4 and a liver z-score, ``zscores`` each lesion's own z-score for an ROI reference, and
    ``variants`` each lesion's ROI variants (``pipelines.science.rois.build_variants``)."""

    volume: SeriesVolume
    seg: DecodedSegmentation
    liver: sitk.Image | None
    livers: frozenset[int]
    lesions: tuple[Segment, ...]
    image: sitk.Image
    zscores: tuple[tuple[float, float] | None, ...]
    variants: tuple[tuple[RoiMask, ...], ...]
    names: tuple[str, ...]  # each lesion as error messages name it

    @property
    def mapped(self) -> list[Segment]:
        """The lesions the maps are computed around: every measured segment but the liver."""
        return [lesion for lesion in self.lesions if lesion.number not in self.livers]


def read_source(image_paths: Sequence[str | Path], preset: Preset) -> SeriesVolume:
    """The series (``pipelines.io.series.read_series``), read as the preset asks; its SEG or
    RTSTRUCT is read on its grid next (``pipelines.io.segmentation.read_segmentation``).

    Raises:
        ProcessError: the series' Modality (0008,0060) is not the preset's.
    """
    volume = read_series([Path(p) for p in image_paths],
                         irregular_grid=preset.series.irregular_spacing)
    if preset.modality is not None and volume.modality != preset.modality:
        raise ProcessError(
            f"{volume.paths[0]}: (0008,0060) Modality {volume.modality}; preset {preset.name} is "
            f"for {preset.modality}"
        )
    return volume


def preprocess(volume: SeriesVolume, seg: DecodedSegmentation, preset: Preset) -> Study:
    """The lesions to measure, the normalised image and every lesion's ROI variants (module
    docstring: a liver segment is the reference region, and gets only its ROI as drawn).

    Raises:
        ProcessError: no segment to measure, or a liver z-score without a liver segment.
    """
    liver = _liver_mask(seg, preset)
    livers = frozenset(s.number for s in seg.segments if is_liver(s, preset.rois.liver))
    lesions = [s for s in seg.segments if s.number not in livers or preset.rois.liver.measure]
    if not lesions:
        raise ProcessError(_nothing_to_measure(seg, preset))
    image, zscores = _normalised(volume, lesions, liver, preset, seg.path)
    variants = tuple(
        tuple(build_variants(volume.image, lesion,
                             _ORGAN_VARIANTS if lesion.number in livers
                             else preset.rois.variants, preset.rois.hu_ranges, liver))
        for lesion in lesions
    )
    return Study(volume, seg, liver, livers, tuple(lesions), image, tuple(zscores), variants,
                 tuple(f"{seg.path}: segment {s.number} ({s.label})" for s in lesions))


@dataclass(frozen=True)
class Measured:
    """The features of a study: every ROI variant's (``rois``, ``summaries``), each lesion's as
    drawn (the robustness check's reference) and its eroded and dilated ROIs' (None where the
    check is off)."""

    rois: tuple[RoiResult, ...]
    summaries: tuple[LesionSummary, ...]
    drawn: tuple[RoiFeatures | None, ...]
    perturbed: tuple[Perturbed | None, ...]


@dataclass(frozen=True)
class RoleMeasured:
    """Another series of a study job (``pipelines.study``): its ``role`` and ``preset``, the
    series, the checks of the segmentation's propagation onto it (``registration``, a series QC
    report) and how it was propagated (``method``, in words), and, where the propagation passed
    its checks, the study on that series (the propagated segmentation) and its features."""

    role: str
    preset: Preset
    volume: SeriesVolume
    registration: QCReport
    method: str
    study: Study | None
    measured: Measured | None


@dataclass(frozen=True)
class PriorMeasured:
    """The patient's prior study, for delta radiomics (``pipelines.science.delta``): its series
    and segmentation, the checks of the registration that carried its lesions onto the current
    series (failed checks as ``warn``: they only keep lesions from pairing by position), the
    lesion pairs and the unpaired current lesions with why, and each paired ROI's feature
    changes by (current segment number, ROI variant)."""

    volume: SeriesVolume
    seg: DecodedSegmentation
    registration: QCReport
    pairs: tuple[LesionPair, ...]
    unpaired: Mapping[int, str]
    changes: Mapping[tuple[int, str], Sequence[FeatureChange]]

    @property
    def study_date(self) -> str:
        """Study Date (0008,0020) of the prior study, DA."""
        return str(self.volume.datasets[0].get("StudyDate", ""))


def measure(study: Study, preset: Preset, qc_settings: QCSettings, role: str = ""
            ) -> Generator[Tasks[Any, TaskResult], list[TaskResult], Measured]:
    """A plan (``pipelines.plan``) of the study's feature tasks: every ROI variant of every
    lesion (``pipelines.science.features.lesion_features``), the lesion as drawn where the preset
    has no ``intra`` variant, and the eroded and dilated lesions of the robustness check
    (``pipelines.science.qc.robustness.perturbed_plan``). ``role``: the series of a study job
    the study is on, where it is not the one the lesions were drawn on (``LesionSummary.role``).

    Raises:
        FeatureError: pyradiomics refused a ROI variant.
    """
    features = yield from features_plan(study.image, study.variants, preset,
                                          zscore=study.zscores, names=study.names)
    drawn = yield from _lesions_as_drawn(study, features, preset, qc_settings)
    perturbed: list[Perturbed | None] = (yield from perturbed_plan(
        study.image, [(lesion.region, lesion.index) for lesion in study.lesions], preset,
        qc_settings, zscore=study.zscores, names=study.names,
    )) if qc_settings.feature_robustness else [None] * len(study.lesions)
    rois = tuple(
        RoiResult(lesion, by_name[roi.name], roi.name)
        for lesion, lesion_rois, by_name in zip(study.lesions, study.variants, features,
                                                strict=True)
        for roi in lesion_rois
    )
    summaries = tuple(
        LesionSummary(r.segment.number, r.segment.label, str(r.roi_variant),
                      dict(r.features.values), role)
        for r in rois
    )
    return Measured(rois, summaries, tuple(drawn), tuple(perturbed))


def _lesions_as_drawn(study: Study, features: Sequence[dict[str, RoiFeatures]], preset: Preset,
                      settings: QCSettings
                      ) -> Generator[Tasks[Any, TaskResult], list[TaskResult],
                                     list[RoiFeatures | None]]:
    """The features of each lesion as drawn, the reference of the robustness check: its
    ``intra`` variant, or, for a preset without one, extracted here from the same image with the
    same z-score (None when the check is off or pyradiomics refuses the lesion; the check then
    extracts it itself and reports why not)."""
    drawn = [by_name.get("intra") for by_name in features]
    missing = [n for n, original in enumerate(drawn) if original is None]
    if not settings.feature_robustness or not missing:
        return drawn
    lesions = study.lesions
    try:
        extracted = yield from features_plan(
            study.image,
            [[RoiMask("intra", lesions[n].region, lesions[n].index)] for n in missing],
            preset, zscore=[study.zscores[n] for n in missing],
            names=[study.names[n] for n in missing])
    except FeatureError:
        return drawn
    for n, by_name in zip(missing, extracted, strict=True):
        drawn[n] = by_name["intra"]
    return drawn


VOLUME = "original_shape_MeshVolume"


def delta_lines(prior: PriorMeasured, labels: Mapping[int, str]) -> list[str]:
    """One line per lesion for the summary image: its prior lesion and the change of its volume
    as drawn (``intra``), or why it has no prior lesion."""
    since = f"{prior.study_date[:4]}-{prior.study_date[4:6]}-{prior.study_date[6:8]}"
    lines = []
    for pair in prior.pairs:
        volume = next((c for c in prior.changes.get((pair.current, "intra"), ())
                       if c.key == VOLUME), None)
        grown = "" if volume is None or volume.relative_percent is None \
            else f", volume {volume.relative_percent:+.1f} %"
        lines.append(f"{labels[pair.current]}: prior {pair.prior} by {pair.by}{grown} since "
                     f"{since}")
    lines += [f"{labels[number]}: no prior lesion ({why})"
              for number, why in prior.unpaired.items()]
    return lines


def _write_delta_csv(path: Path, prior: PriorMeasured, labels: Mapping[int, str]) -> None:
    """One row per paired ROI and feature (prior and current value, absolute change, relative
    change in percent, empty where the prior value is 0), and one row per unpaired lesion with
    the reason."""
    by_current = {pair.current: pair for pair in prior.pairs}

    def write(target: Path) -> None:
        with target.open("w", newline="", encoding="utf-8") as handle:
            out = csv.writer(handle)
            out.writerow(["segment_number", "segment_label", "roi_variant", "prior_study_date",
                          "prior_segment_number", "paired_by", "feature", "prior", "current",
                          "absolute_change", "relative_change_percent", "reason"])
            for (number, variant), changes in prior.changes.items():
                pair = by_current[number]
                for c in changes:
                    out.writerow([number, labels[number], variant, prior.study_date, pair.prior,
                                  pair.by, c.key, repr(c.prior), repr(c.current),
                                  repr(c.absolute), "" if c.relative_percent is None
                                  else repr(c.relative_percent), ""])
            for number, why in prior.unpaired.items():
                out.writerow([number, labels[number], "", prior.study_date, "", "", "", "", "",
                              "", "", why])
    _write_atomically(path, write)


def _role_qc(other: RoleMeasured, qc_settings: QCSettings) -> tuple[QCReport, ...]:
    """A study job's other series: its series checks, the propagation's, and each lesion's ROI
    checks on it where it was measured."""
    checked = assess_series(other.volume, qc_settings)
    series = QCReport(f"{other.role}: series", "series", checked.checks)
    if other.study is None or other.measured is None:
        return (series, other.registration)
    study = other.study
    return (
        series, other.registration,
        *(assess_roi(other.volume, lesion.mask, qc_settings, reference_mask=study.liver,
                     preset=other.preset, features=drawn, perturbed=perturbed,
                     subject=f"{other.role}: segment {lesion.number} ({lesion.label})",
                     organ=lesion.number in study.livers)
          for lesion, drawn, perturbed in zip(study.lesions, other.measured.drawn,
                                              other.measured.perturbed, strict=True)),
    )


def _role_groups(other: RoleMeasured, reports: Sequence[QCReport], study: Study, preset: Preset
                 ) -> RoleGroups | None:
    """The feature report's groups of a study job's other series, with its derived SEG (every
    ROI propagated onto it); None where its propagation failed its checks."""
    if other.study is None or other.measured is None:
        return None
    rois = list(other.measured.rois)
    masks = [mask for lesion_rois in other.study.variants for mask in lesion_rois]
    derived = build_derived_segmentation(
        other.volume, other.study.seg, rois, masks, other.preset,
        propagated=Propagated(other.role, study.volume, preset.hash, other.method))
    series, registration = reports[0], reports[1]
    series_qc = QCReport(series.subject, "series", (*series.checks, *registration.checks))
    return RoleGroups(other.role, other.volume, other.study.seg, rois, derived,
                      series_qc=series_qc, registration=registration,
                      lesion_qc={lesion.number: report for lesion, report
                                 in zip(other.study.lesions, reports[2:], strict=True)})


def write_early(study: Study, measured: Measured, preset: Preset, qc_settings: QCSettings,
                models: Sequence[tuple[str | Path, str]], out: Path, laps: Laps,
                role: str | None = None, roles: Sequence[RoleMeasured] = (),
                prior: PriorMeasured | None = None) -> Written[_Early]:
    """Quality control (``pipelines.science.qc``) and the models, then the reading and feature
    reports (PS3.16 TID 1500), the derived SEG, the summary image and the CSVs, written into
    ``out``: none of it depends on the maps. Stages are lapped on ``laps``.

    A study job (``pipelines.study``) names the ``role`` of the series the lesions were drawn on
    and gives its other series in ``roles``: their checks (series, propagation, each lesion) join
    the QC, their features the models' inputs (``models.card.feature_name``), the feature report
    and features.csv, and each gets a derived SEG of the ROIs propagated onto it. With
    ``prior``, the feature report has each paired lesion's changes since the prior study, the
    summary image a line per lesion and ``delta.csv`` every change."""
    volume, seg, lesions, livers = study.volume, study.seg, study.lesions, study.livers
    qc = (
        assess_series(volume, qc_settings),
        *(
            assess_roi(volume, lesion.mask, qc_settings, reference_mask=study.liver,
                       preset=preset, features=original, perturbed=lesion_perturbed,
                       subject=f"segment {lesion.number} ({lesion.label})",
                       organ=lesion.number in livers)
            for lesion, original, lesion_perturbed in zip(lesions, measured.drawn,
                                                          measured.perturbed, strict=True)
        ),
    )
    lesion_qc = {lesion.number: report for lesion, report in zip(lesions, qc[1:], strict=True)}
    role_reports = [_role_qc(other, qc_settings) for other in roles]
    laps.lap("qc")
    applied = _apply_models(models, preset,
                            [s for s in measured.summaries if s.segment_number not in livers],
                            qc[0], lesion_qc, volume, roles, role_reports)
    laps.lap("models")
    rois = list(measured.rois)
    masks = [mask for lesion_rois in study.variants for mask in lesion_rois]
    derived = build_derived_segmentation(volume, seg, rois, masks, preset)
    role_groups = [groups for other, reports in zip(roles, role_reports, strict=True)
                   if (groups := _role_groups(other, reports, study, preset)) is not None]
    laps.lap("encode_derived_seg")
    outputs = {number: [r.outcome for r in applied.results if r.segment_number == number]
               for number in lesion_qc}
    reading = build_reading_report(
        volume, seg, rois, preset, series_qc=qc[0], lesion_qc=lesion_qc, models=outputs,
        feature_report=feature_report_reference(volume, seg.sop_instance_uid, preset),
    )
    report = build_feature_report(
        volume, seg, rois, preset, series_qc=qc[0], lesion_qc=lesion_qc, derived=derived,
        models=outputs,
        reading_report=None if reading is None
        else reading_report_reference(volume, seg.sop_instance_uid, preset),
        role=role, roles=role_groups, delta=None if prior is None else DeltaGroups(
            prior.study_date, [*prior.volume.datasets, prior.seg.dataset],
            [(roi, prior.changes[(roi.segment.number, str(roi.roi_variant))]) for roi in rois
             if (roi.segment.number, str(roi.roi_variant)) in prior.changes]),
    )
    laps.lap("encode_report")
    every_qc = (*qc, *(report for reports in role_reports for report in reports),
                *([prior.registration] if prior is not None else []))
    labels = {lesion.number: lesion.label for lesion in lesions}
    summary = build_summary_image(
        volume, rois, masks, preset_name=preset.name, preset_hash=preset.hash,
        seg_sop_instance_uid=seg.sop_instance_uid, qc_lines=qc_lines(every_qc),
        model_lines=[*([*(model_line(labels[r.segment_number], r.outcome)
                          for r in applied.results), *applied.errors]
                       or [f"No model applied: none is configured for preset {preset.name}."]),
                     *(delta_lines(prior, labels) if prior is not None else ())],
        not_for_diagnostic_use=True,
        intensity_unit="HU" if volume.modality == "CT" and preset.preprocessing.zscore is None
        else "1",
    )
    laps.lap("encode_summary")
    written = tuple(_write_object(out, dataset)
                    for dataset in (*([reading] if reading else []), report,
                                    *([derived.dataset] if derived else []),
                                    *(groups.derived.dataset for groups in role_groups
                                      if groups.derived is not None), summary))
    del reading, report, derived, summary, role_groups  # not held while the maps are computed
    _write_features_csv(out / "features.csv", preset, measured.summaries,
                        volume.series_instance_uid, role, roles)
    _write_qc_csv(out / "qc.csv", every_qc)
    if prior is not None:
        _write_delta_csv(out / "delta.csv", prior, labels)
    laps.lap("writing")
    return Written(written, _Early(written, every_qc, applied))


def write_maps(study: Study, lesion_maps: Sequence[LesionMaps], preset: Preset, out: Path,
               laps: Laps) -> Written[tuple[OutputObject, ...]]:
    """One feature class's Parametric Maps (PS3.3 A.75), encoded
    (``pipelines.outputs.parametric_map.build_parametric_maps``) and written into ``out``."""
    maps = build_parametric_maps(
        study.volume, list(lesion_maps), preset, seg_sop_instance_uid=study.seg.sop_instance_uid,
        anatomic_region=lesions_anatomic_region(study.seg,
                                                [m.segment_number for m in lesion_maps]))
    laps.lap("encode_maps")
    written = tuple(_write_object(out, dataset) for dataset in maps)
    laps.lap("writing")
    return Written(written, written)


def job_plan(image_paths: Sequence[str | Path], seg_path: str | Path,
             preset: str | Path | Preset, out_dir: str | Path, *,
             qc_settings: QCSettings | None = None,
             models: Sequence[tuple[str | Path, str]] = (),
             split_maps: bool = False) -> Plan[PipelineResult]:
    """The plan (``pipelines.plan``) of one job: compute the features of every ROI variant of
    every lesion segment of ``seg_path`` on the series ``image_paths`` and write the TID 1500
    reports (PS3.16 TID 1500), derived SEG, summary image, Parametric Maps and the features and
    QC CSVs into ``out_dir``. Quality control (``pipelines.science.qc``) uses ``qc_settings``
    (defaults when None). ``models`` are (package path, pinned sha256) pairs: each package made
    for this preset runs on every lesion, or says why not, in the result, the reports and the
    summary image. ``split_maps`` splits each lesion's maps into runs of voxel batches, for a
    runner that runs tasks side by side (``pipelines.outputs.parametric_map.lesion_map_tasks``).

    Stages, in order: :func:`read_source`, ``read_segmentation``, :func:`preprocess`,
    :func:`measure` (feature tasks), then the objects that do not depend on the maps
    (:func:`write_early`: QC, models, reports, derived SEG, summary image, CSVs), then per
    pyradiomics feature class (``pipelines.outputs.parametric_map.map_feature_groups``) the map
    tasks and :func:`write_maps`.
    The voxel-wise maps depend on no feature and no other object depends on them, so the early
    objects and each class's maps but the last are :class:`pipelines.plan.Write` steps with
    ``beside`` (a runner may write them while the next maps are computed) and ``announce`` (a
    runner may deliver them at once) where the preset computes maps. Every runner writes the
    same objects, with the same bytes, in the same order. The result's ``timings`` give the
    seconds of each stage (``StageTimes``).

    Raises:
        ProcessError, FeatureError, MapError and the readers' errors: inputs the preset cannot
            process, each naming file, attribute and reason.
    """
    laps = Laps()
    preset = load_preset(preset)
    qc_settings = qc_settings or QCSettings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    volume = read_source(image_paths, preset)
    laps.lap("read_series")
    seg = read_segmentation(Path(seg_path), volume,
                            fractional_threshold=preset.segmentation.fractional_threshold)
    laps.lap("read_segmentation")
    study = preprocess(volume, seg, preset)
    laps.lap("preprocessing")
    measured = yield from measure(study, preset, qc_settings)
    laps.lap("extraction")
    return (yield from finish_plan(study, measured, preset, out, laps, qc_settings=qc_settings,
                                   models=models, split_maps=split_maps))


def finish_plan(study: Study, measured: Measured, preset: Preset, out: Path, laps: Laps, *,
                qc_settings: QCSettings, models: Sequence[tuple[str | Path, str]],
                split_maps: bool, role: str | None = None, roles: Sequence[RoleMeasured] = (),
                prior: PriorMeasured | None = None) -> Plan[PipelineResult]:
    """The rest of a job's plan once its features are measured (:func:`job_plan`, and a study
    job's, ``pipelines.study.study_plan``, with the ``role`` of the series the lesions were
    drawn on, its other series, ``roles``, and the patient's ``prior`` study):
    :func:`write_early`, then the maps of
    ``study``'s series per feature class and :func:`write_maps`, then the result."""
    volume, seg = study.volume, study.seg
    mapped = study.mapped
    groups = map_feature_groups(preset) if preset.maps.enabled and mapped else []
    early = yield Write(
        "quality control, the models, the report, derived SEG and summary",
        functools.partial(write_early, study, measured, preset, qc_settings, models, out,
                          role=role, roles=roles, prior=prior),
        laps, beside=bool(groups), announce=bool(groups))
    if early.beside:
        laps.lap("beside_maps")
    pending: list[Pending[Any]] = [early]
    for position, group in enumerate(groups):
        lesion_maps = yield from maps_plan(study.image, mapped, preset, features=group,
                                           split=split_maps)
        laps.lap("extraction")
        last = position == len(groups) - 1
        written = yield Write(f"the maps of {', '.join(group)}",
                              functools.partial(write_maps, study, lesion_maps, preset, out),
                              laps, beside=not last, announce=not last)
        if written.beside:
            laps.lap("beside_maps")
        pending.append(written)
        del lesion_maps
    (qc_models, early_child_stages), *outcomes = yield Gather(pending)
    if any(p.beside for p in pending):
        laps.lap("beside_maps")
    early_stages = dict(early_child_stages)
    for _, child_stages in outcomes:
        for stage, seconds in child_stages.items():
            early_stages[stage] = early_stages.get(stage, 0.0) + seconds
    objects = (*qc_models.objects, *(obj for written, _ in outcomes for obj in written))
    return PipelineResult(
        source_series_uid=volume.series_instance_uid,
        seg_sop_instance_uid=seg.sop_instance_uid,
        study_instance_uid=volume.study_instance_uid,
        preset=preset.name,
        preset_hash=preset.hash,
        lesions=(*measured.summaries, *(summary for other in roles if other.measured is not None
                                        for summary in other.measured.summaries)),
        objects=objects,
        features_csv=out / "features.csv",
        qc=qc_models.qc,
        qc_csv=out / "qc.csv",
        timings=StageTimes(**{f.name: laps.seconds.get(f.name, 0.0) for f in fields(StageTimes)
                              if f.name != "early_objects"}, early_objects=early_stages),
        models=qc_models.models.results,
        model_errors=qc_models.models.errors,
        not_measured=seg.not_measured,
        prior_study_uid=prior.volume.study_instance_uid if prior is not None else None,
    )
