"""One job from files to result objects: read the series and its segmentation, preprocess, build
the preset's ROI variants of every lesion segment, extract their features, encode a TID 1500
report. No network, no database, no wall clock: the only time read is a monotonic counter, for
the duration of each stage (``StageTimes``).

A segment the preset's ``rois.liver`` rule recognises as the liver is not a lesion: it is the
reference region of a liver z-score and what rings are clipped to. Every other segment is a
lesion and gets every ROI variant of the preset.
"""

from __future__ import annotations

import csv
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Generic, TypeVar

import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.uid import Comprehensive3DSRStorage, ComprehensiveSRStorage

from models.package import ModelPackageError, load_package
from pipelines import iod_lookup
from pipelines.derived_seg import build_derived_segmentation
from pipelines.evaluations import model_line, qc_lines
from pipelines.feature_report import build_feature_report, feature_report_reference
from pipelines.features import FeatureError, RoiFeatures, TaskMap, extract_lesions
from pipelines.forked import ForkedCall, fork_available
from pipelines.inference import ModelOutput, NotApplied, apply_model, lesion_features, seg_values
from pipelines.parametric_map import (
    LesionMaps,
    build_parametric_maps,
    compute_maps,
    lesions_anatomic_region,
    map_feature_groups,
)
from pipelines.preprocess import apply_zscore, n4_correct, zscore_parameters
from pipelines.presets import Preset, RoiVariant, load_preset
from pipelines.qc import CSV_COLUMNS as QC_CSV_COLUMNS
from pipelines.qc import QCReport, QCSettings, assess_roi, assess_series, worst_status
from pipelines.qc.robustness import Perturbed, perturbed_features
from pipelines.reading_report import build_reading_report, reading_report_reference
from pipelines.results import RoiResult
from pipelines.rois import RoiMask, build_variants, is_liver
from pipelines.segmentation import DecodedSegmentation, Segment, read_segmentation
from pipelines.series import SeriesVolume, read_series
from pipelines.summary import build_summary_image

T = TypeVar("T")
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
class LesionSummary:
    """The features of one ROI variant of one segment, as plain values that cross process
    boundaries. ``roi_variant`` is the preset's variant name, e.g. "intra + 4 mm ring"."""

    segment_number: int
    label: str
    roi_variant: str
    features: dict[str, float]


@dataclass(frozen=True)
class LesionModelResult:
    """One model on one lesion: its output, or every reason it did not run."""

    segment_number: int
    outcome: ModelOutput | NotApplied


@dataclass(frozen=True)
class AppliedModels:
    results: tuple[LesionModelResult, ...]
    errors: tuple[str, ...]  # packages that failed their checks, one sentence each


def _apply_models(models: Sequence[tuple[str | Path, str]], preset: Preset,
                  lesions: Sequence[LesionSummary], series_qc: QCReport,
                  lesion_qc: dict[int, QCReport], volume: SeriesVolume) -> AppliedModels:
    """Load each pinned package (models.package checks it) and run those made for ``preset``
    on every lesion (pipelines.inference.apply_model gates them on preset hash, QC, acquisition
    domain and clinical inputs). A package that fails its checks is reported, not run."""
    results: list[LesionModelResult] = []
    errors: list[str] = []
    by_segment = lesion_features(lesions)
    for path, sha256 in models:
        try:
            package = load_package(path, sha256)
        except ModelPackageError as error:
            errors.append(f"model package not loaded: {error}")
            continue
        if package.card.preset.name != preset.name:
            continue
        for number, features in by_segment.items():
            results.append(LesionModelResult(number, apply_model(
                package, features=features, preset_hash=preset.hash,
                qc_reports=[series_qc, lesion_qc[number]], headers=volume.datasets,
                seg=seg_values(by_segment, number), external={})))
    return AppliedModels(tuple(results), tuple(errors))


@dataclass(frozen=True)
class OutputObject:
    """A DICOM object the pipeline wrote, with the identity the outbox needs."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class StageTimes:
    """Seconds each stage of one ``process_study`` call took (``time.perf_counter``), summed
    over the times a stage ran: the stages follow one another (``extraction``, ``encode_maps``
    and ``writing`` again for each feature class of the maps, which come after the other
    objects are written), so their sum is the call's duration.

    ``extraction`` is the feature computation (per-ROI features, the eroded and dilated lesions
    of the robustness check, and the voxel-wise maps); the ``encode_*`` stages build the DICOM
    objects in memory, ``writing`` saves them and the CSVs. When quality control, the models,
    the report, derived SEG, summary image and the maps of every feature class but the last
    ran beside the maps (``early_beside_maps``), their stages are in ``early_objects`` (seconds
    in the child processes, summed, not part of the call's duration) and ``beside_maps`` is
    what the call spent on them: starting the children, and waiting for them after the maps.
    """

    read_series: float
    read_segmentation: float
    preprocessing: float  # normalisation and the preset's ROI variants of every lesion
    extraction: float
    qc: float
    models: float
    encode_report: float
    encode_derived_seg: float
    encode_summary: float
    encode_maps: float
    writing: float
    beside_maps: float
    early_objects: Mapping[str, float] = field(default_factory=dict)

    @property
    def encoding(self) -> float:
        """The four ``encode_*`` stages together."""
        return (self.encode_report + self.encode_derived_seg + self.encode_summary
                + self.encode_maps)

    @property
    def total(self) -> float:
        """Every stage together: the duration of the call."""
        return sum(self.as_dict().values())

    def as_dict(self) -> dict[str, float]:
        """Stage name -> seconds, in stage order (for logs and the job index); the stages of
        ``early_objects`` are not among them (:meth:`with_early_objects`)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "early_objects"}

    def with_early_objects(self) -> dict[str, float]:
        """:meth:`as_dict`, then ``early_objects.<stage>`` -> seconds in the child processes."""
        return {**self.as_dict(),
                **{f"early_objects.{name}": value for name, value in self.early_objects.items()}}


class _Laps:
    """A stopwatch whose laps are stages: ``lap(name)`` adds the time since the previous lap."""

    def __init__(self) -> None:
        self._last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._last
        self._last = now


@dataclass(frozen=True)
class _Done(Generic[T]):
    """What was done in the job's own process: its stages are in the job's laps already."""

    value: T

    def result(self) -> tuple[T, dict[str, float]]:
        return self.value, {}


@dataclass(frozen=True)
class _Early:
    """The quality control, the models' outputs, and the objects written before the maps."""

    objects: tuple[OutputObject, ...]
    qc: tuple[QCReport, ...]
    models: AppliedModels


@dataclass(frozen=True)
class PipelineResult:
    """What one run produced, with the inputs and settings that make it traceable."""

    source_series_uid: str
    seg_sop_instance_uid: str
    study_instance_uid: str
    preset: str
    preset_hash: str
    lesions: tuple[LesionSummary, ...]
    objects: tuple[OutputObject, ...]
    features_csv: Path
    qc: tuple[QCReport, ...]
    qc_csv: Path
    timings: StageTimes
    models: tuple[LesionModelResult, ...] = ()
    model_errors: tuple[str, ...] = ()
    # one line for each ROI of the segmentation that was not measured, and why (an RT ROI of
    # only point or open contours)
    not_measured: tuple[str, ...] = ()

    @property
    def report(self) -> OutputObject:
        """The feature report (TID 1500 Comprehensive 3D SR, ``pipelines.feature_report``)."""
        [sr] = [o for o in self.objects if o.sop_class_uid == Comprehensive3DSRStorage]
        return sr

    @property
    def reading_report(self) -> OutputObject | None:
        """The reading report (TID 1500 Comprehensive SR, ``pipelines.reading_report``); None
        when no lesion as drawn was measured (a preset of derived ROIs only)."""
        found = [o for o in self.objects if o.sop_class_uid == ComprehensiveSRStorage]
        return found[0] if found else None

    @property
    def qc_status(self) -> str:
        """The worst QC status of the series and of every lesion (pass, warn or fail)."""
        return worst_status(report.status for report in self.qc)


def _write_atomically(path: Path, writer: Callable[[Path], None]) -> None:
    """Write through ``writer`` into a hidden temporary file, then rename it into place."""
    tmp = path.with_name(f".{path.name}.part")
    writer(tmp)
    os.replace(tmp, path)


def _write_features_csv(path: Path, preset: Preset, lesions: Sequence[LesionSummary],
                        source_series_uid: str) -> None:
    """One row per ROI and feature: long format, so presets with different features stack."""
    preset_hash = preset.hash  # 25 us each: once, not once per row

    def write(target: Path) -> None:
        with target.open("w", newline="", encoding="utf-8") as handle:
            out = csv.writer(handle)
            out.writerow(["source_series_uid", "segment_number", "segment_label", "roi_variant",
                          "preset", "preset_hash", "feature", "value"])
            for lesion in lesions:
                for name, value in lesion.features.items():
                    out.writerow([source_series_uid, lesion.segment_number, lesion.label,
                                  lesion.roi_variant, preset.name, preset_hash, name, repr(value)])
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


def _lesions_as_drawn(image: sitk.Image, lesions: Sequence[Segment],
                      features: Sequence[dict[str, RoiFeatures]], preset: Preset,
                      settings: QCSettings, zscores: Sequence[tuple[float, float] | None],
                      names: Sequence[str], workers: int, map_tasks: TaskMap | None
                      ) -> list[RoiFeatures | None]:
    """The features of each lesion as drawn, the reference of the robustness check: its
    ``intra`` variant, or, for a preset without one, extracted here from the same image with the
    same z-score (None when the check is off or pyradiomics refuses the lesion; the check then
    extracts it itself and reports why not)."""
    drawn = [by_name.get("intra") for by_name in features]
    missing = [n for n, original in enumerate(drawn) if original is None]
    if not settings.feature_robustness or not missing:
        return drawn
    try:
        extracted = extract_lesions(
            image, [[RoiMask("intra", lesions[n].region, lesions[n].index)] for n in missing],
            preset, zscore=[zscores[n] for n in missing], names=[names[n] for n in missing],
            workers=workers, map_tasks=map_tasks)
    except FeatureError:
        return drawn
    for n, by_name in zip(missing, extracted, strict=True):
        drawn[n] = by_name["intra"]
    return drawn


def process_study(image_paths: Sequence[str | Path], seg_path: str | Path,
                  preset: str | Path | Preset, out_dir: str | Path,
                  *, workers: int = 1, qc_settings: QCSettings | None = None,
                  models: Sequence[tuple[str | Path, str]] = (),
                  map_tasks: TaskMap | None = None,
                  on_early_objects: Callable[[tuple[OutputObject, ...]], None] | None = None,
                  early_beside_maps: bool = False,
                  ) -> PipelineResult:
    """Compute the features of every ROI variant of every lesion segment of ``seg_path`` on the
    series ``image_paths`` and write the TID 1500 SR (PS3.16 TID 1500) and a features CSV into
    ``out_dir``. ``workers`` > 1 extracts lesions and maps in that many processes (the node runs
    jobs in a process pool already and keeps 1); ``map_tasks`` runs extraction's per-lesion,
    per-image-type tasks and the maps' tasks (per lesion, feature class and voxel batches) instead
    (``pipelines.features.extract_lesions``, ``pipelines.parametric_map.compute_maps``; the
    node's Dask executor passes one that runs them on the cluster). Quality control
    (pipelines.qc) of the series and of each lesion, with ``qc_settings`` (defaults when None),
    goes into ``qc.csv`` and the result.
    ``models`` are (package path, pinned sha256) pairs: each package made for this preset runs
    on every lesion, or says why not, in the result, the report and the summary image. The
    result's ``timings`` give the seconds of each stage (``StageTimes``).

    The voxel-wise parametric maps depend on no feature, and no other object depends on them, so
    they are computed last: the report, the derived SEG and the summary image (and the CSVs) are
    written first, and ``on_early_objects`` is called with those objects then (when the preset
    computes maps), so that a caller can send them on while the maps are computed (the node's
    outbox delivers them; on the demo study the maps are three quarters of the extraction's
    time: docs/history/performance.md, "End to end", fifth round). The maps are then computed,
    encoded and written
    one pyradiomics feature class at a time (``pipelines.parametric_map.map_feature_groups``),
    and ``on_early_objects`` is called with each class's maps but the last, which go out with
    the result. The result lists every object, the early ones too.

    With ``early_beside_maps`` (the node's local job workers), quality control and the models
    run, the report, derived SEG, summary image and CSVs are encoded and written, and
    ``on_early_objects`` called, by a forked child process (``pipelines.forked``) while this one
    computes the maps, on another core (an error there fails the call once the maps are done),
    and each class's maps but the last are encoded, written and announced by another while
    the next class is computed; the result is the same (same objects and bytes, in the same
    order). Without maps, or where the platform does not fork, all is done here."""
    laps = _Laps()
    iod_lookup.memoise()  # highdicom's look-ups for each source image, once per SOP class
    preset = preset if isinstance(preset, Preset) else load_preset(preset)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    volume = read_series([Path(p) for p in image_paths],
                         irregular_grid=preset.series.irregular_spacing)
    laps.lap("read_series")
    if preset.modality is not None and volume.modality != preset.modality:
        raise ProcessError(
            f"{volume.paths[0]}: (0008,0060) Modality {volume.modality}; preset {preset.name} is "
            f"for {preset.modality}"
        )
    seg = read_segmentation(Path(seg_path), volume,
                            fractional_threshold=preset.segmentation.fractional_threshold)
    laps.lap("read_segmentation")
    liver = _liver_mask(seg, preset)
    livers = {s.number for s in seg.segments if is_liver(s, preset.rois.liver)}
    # the segments measured: every lesion, and the liver itself where the preset asks
    lesions = [s for s in seg.segments
               if s.number not in livers or preset.rois.liver.measure]
    if not lesions:
        raise ProcessError(_nothing_to_measure(seg, preset))
    image, zscores = _normalised(volume, lesions, liver, preset, Path(seg_path))
    variants = [
        build_variants(volume.image, lesion,
                       _ORGAN_VARIANTS if lesion.number in livers
                       else preset.rois.variants, preset.rois.hu_ranges, liver)
        for lesion in lesions
    ]
    laps.lap("preprocessing")
    names = [f"{seg_path}: segment {s.number} ({s.label})" for s in lesions]
    features = extract_lesions(image, variants, preset, zscore=zscores, workers=workers,
                               map_tasks=map_tasks, names=names)
    qc_settings = qc_settings or QCSettings()
    drawn = _lesions_as_drawn(image, lesions, features, preset, qc_settings, zscores, names,
                              workers, map_tasks)
    perturbed: list[Perturbed | None] = perturbed_features(
        image, [(lesion.region, lesion.index) for lesion in lesions], preset, qc_settings,
        zscore=zscores, names=names, workers=workers, map_tasks=map_tasks,
    ) if qc_settings.feature_robustness else [None] * len(lesions)
    laps.lap("extraction")
    rois = [
        RoiResult(lesion, by_name[roi.name], roi.name)
        for lesion, lesion_rois, by_name in zip(lesions, variants, features, strict=True)
        for roi in lesion_rois
    ]
    summaries = tuple(
        LesionSummary(r.segment.number, r.segment.label, str(r.roi_variant),
                      dict(r.features.values))
        for r in rois
    )
    masks = [mask for lesion_rois in variants for mask in lesion_rois]
    mapped = [lesion for lesion in lesions if lesion.number not in livers]
    groups = map_feature_groups(preset) if preset.maps.enabled and mapped else []
    features_csv = out / "features.csv"
    qc_csv = out / "qc.csv"

    def assess_and_write_early(stages: _Laps) -> tuple[_Early, dict[str, float]]:
        """Quality control and the models, then the report, derived SEG, summary image and
        CSVs, written and announced: none of it depends on the maps."""
        qc = (
            assess_series(volume, qc_settings),
            *(
                assess_roi(volume, lesion.mask, qc_settings, reference_mask=liver, preset=preset,
                           features=original, perturbed=lesion_perturbed,
                           subject=f"segment {lesion.number} ({lesion.label})",
                           organ=lesion.number in livers)
                for lesion, original, lesion_perturbed in zip(lesions, drawn, perturbed,
                                                              strict=True)
            ),
        )
        lesion_qc = {lesion.number: report for lesion, report in zip(lesions, qc[1:],
                                                                       strict=True)}
        stages.lap("qc")
        applied = _apply_models(models, preset,
                                [s for s in summaries if s.segment_number not in livers], qc[0],
                                lesion_qc, volume)
        stages.lap("models")
        derived = build_derived_segmentation(volume, seg, rois, masks, preset)
        stages.lap("encode_derived_seg")
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
        )
        stages.lap("encode_report")
        labels = {lesion.number: lesion.label for lesion in lesions}
        summary = build_summary_image(
            volume, rois, masks, preset_name=preset.name, preset_hash=preset.hash,
            seg_sop_instance_uid=seg.sop_instance_uid, qc_lines=qc_lines(qc),
            model_lines=[*(model_line(labels[r.segment_number], r.outcome)
                           for r in applied.results), *applied.errors]
            or [f"No model applied: none is configured for preset {preset.name}."],
            not_for_diagnostic_use=True,
            intensity_unit="HU" if volume.modality == "CT" and preset.preprocessing.zscore is None
            else "1",
        )
        stages.lap("encode_summary")
        written = tuple(_write_object(out, dataset)
                        for dataset in (*([reading] if reading else []), report,
                                        *([derived.dataset] if derived else []), summary))
        del reading, report, derived, summary  # written: not held while the maps are computed
        _write_features_csv(features_csv, preset, summaries, volume.series_instance_uid)
        _write_qc_csv(qc_csv, qc)
        if on_early_objects is not None and groups:
            on_early_objects(written)
        stages.lap("writing")
        return _Early(written, qc, applied), stages.seconds

    def write_maps(lesion_maps: list[LesionMaps], announce: bool,
                   stages: _Laps) -> tuple[tuple[OutputObject, ...], dict[str, float]]:
        """One feature class's maps, encoded, written and (but the last class's) announced."""
        maps = build_parametric_maps(
            volume, lesion_maps, preset, seg_sop_instance_uid=seg.sop_instance_uid,
            anatomic_region=lesions_anatomic_region(seg, [m.segment_number for m in lesion_maps]))
        stages.lap("encode_maps")
        written = tuple(_write_object(out, dataset) for dataset in maps)
        if on_early_objects is not None and announce:
            on_early_objects(written)
        stages.lap("writing")
        return written, stages.seconds

    # the report's batch first, then each class's maps: run here, or beside the maps by a
    # forked child
    beside = early_beside_maps and bool(groups) and fork_available()
    first: _Done[_Early] | ForkedCall[tuple[_Early, dict[str, float]]]
    if beside:
        first = ForkedCall(lambda: assess_and_write_early(_Laps()),
                           "quality control, the models, the report, derived SEG and summary")
        laps.lap("beside_maps")
    else:
        first = _Done(assess_and_write_early(laps)[0])
    batches: list[_Done[tuple[OutputObject, ...]]
                  | ForkedCall[tuple[tuple[OutputObject, ...], dict[str, float]]]] = []
    for position, group in enumerate(groups):
        lesion_maps = compute_maps(image, mapped, preset, features=group, workers=workers,
                                   map_tasks=map_tasks)
        laps.lap("extraction")
        last = position == len(groups) - 1
        if beside and not last:  # written while the next class is computed
            batches.append(ForkedCall(lambda maps=lesion_maps: write_maps(maps, True, _Laps()),
                                      f"the maps of {', '.join(group)}"))
            laps.lap("beside_maps")
        else:
            batches.append(_Done(write_maps(lesion_maps, not last, laps)[0]))
        del lesion_maps
    early, early_child_stages = first.result()
    outcomes = [batch.result() for batch in batches]
    if beside:
        laps.lap("beside_maps")
    early_stages = dict(early_child_stages)
    for _, child_stages in outcomes:
        for stage, seconds in child_stages.items():
            early_stages[stage] = early_stages.get(stage, 0.0) + seconds
    objects = (*early.objects, *(obj for written, _ in outcomes for obj in written))
    return PipelineResult(
        source_series_uid=volume.series_instance_uid,
        seg_sop_instance_uid=seg.sop_instance_uid,
        study_instance_uid=volume.study_instance_uid,
        preset=preset.name,
        preset_hash=preset.hash,
        lesions=summaries,
        objects=objects,
        features_csv=features_csv,
        qc=early.qc,
        qc_csv=qc_csv,
        timings=StageTimes(**{f.name: laps.seconds.get(f.name, 0.0) for f in fields(StageTimes)
                              if f.name != "early_objects"}, early_objects=early_stages),
        models=early.models.results,
        model_errors=early.models.errors,
        not_measured=seg.not_measured,
    )
