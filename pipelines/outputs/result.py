"""What one job produced (``pipelines.process.job_plan``, ``pipelines.study.study_plan``), as
plain values that cross process boundaries: each ROI's features (``LesionSummary``), each
model's output on a lesion, the objects written with the identity the outbox needs, the seconds
of each stage, and the whole result that the node records, delivers and turns into a FHIR
bundle (``pipelines.outputs.fhir_report``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from pydicom.uid import Comprehensive3DSRStorage, ComprehensiveSRStorage

from pipelines.science.inference import ModelOutput, NotApplied
from pipelines.science.qc import QCReport, worst_status


@dataclass(frozen=True)
class LesionSummary:
    """The features of one ROI variant of one segment, as plain values that cross process
    boundaries. ``roi_variant`` is the preset's variant name, e.g. "intra + 4 mm ring"; ``role``
    the series of a study job it was measured on, other than the one the lesion was drawn on."""

    segment_number: int
    label: str
    roi_variant: str
    features: dict[str, float]
    role: str = ""  # a study job's other series (pipelines.study); "": the segmented one


@dataclass(frozen=True)
class LesionModelResult:
    """One model on one lesion: its output, or every reason it did not run."""

    segment_number: int
    outcome: ModelOutput | NotApplied


@dataclass(frozen=True)
class OutputObject:
    """A DICOM object the pipeline wrote, with the identity the outbox needs."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class StageTimes:
    """Seconds each stage of one job (``pipelines.process.job_plan``) took (``time.perf_counter``),
    summed over the times a stage ran: the stages follow one another (``extraction``,
    ``encode_maps`` and ``writing`` again for each feature class of the maps, which come after the
    other objects are written), so their sum is the job's duration.

    ``extraction`` is the feature computation (per-ROI features, the eroded and dilated lesions
    of the robustness check, and the voxel-wise maps); the ``encode_*`` stages build the DICOM
    objects in memory, ``writing`` saves them and the CSVs. When quality control, the models,
    the report, derived SEG, summary image and the maps of every feature class but the last
    ran beside the maps (the ``beside`` writes of ``pipelines.process.job_plan``, run in another
    process), their stages are in ``early_objects`` (seconds in the child processes, summed, not
    part of the job's duration) and ``beside_maps`` is what the job spent on them: starting the
    children, and waiting for them after the maps.
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
    registration: float = 0.0  # a study job's propagation of its segmentation to other series
    delta: float = 0.0  # measuring the prior study, pairing its lesions, their changes
    early_objects: Mapping[str, float] = field(default_factory=dict)

    @property
    def encoding(self) -> float:
        """The four ``encode_*`` stages together."""
        return (self.encode_report + self.encode_derived_seg + self.encode_summary
                + self.encode_maps)

    @property
    def total(self) -> float:
        """Every stage together: the duration of the job."""
        return sum(self.as_dict().values())

    def as_dict(self) -> dict[str, float]:
        """Stage name -> seconds, in stage order (for logs and the job index); the stages of
        ``early_objects`` are not among them (:meth:`with_early_objects`), nor ``registration``
        and ``delta`` where they did not run (a job of one series, without prior)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "early_objects"
                and not (f.name in ("registration", "delta") and getattr(self, f.name) == 0.0)}

    def with_early_objects(self) -> dict[str, float]:
        """:meth:`as_dict`, then ``early_objects.<stage>`` -> seconds in the child processes."""
        return {**self.as_dict(),
                **{f"early_objects.{name}": value for name, value in self.early_objects.items()}}


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
    prior_study_uid: str | None = None  # the prior study of the delta radiomics, if any

    @property
    def report(self) -> OutputObject:
        """The feature report (TID 1500 Comprehensive 3D SR,
        ``pipelines.outputs.feature_report``)."""
        [sr] = [o for o in self.objects if o.sop_class_uid == Comprehensive3DSRStorage]
        return sr

    @property
    def reading_report(self) -> OutputObject | None:
        """The reading report (TID 1500 Comprehensive SR, ``pipelines.outputs.reading_report``);
        None when no lesion as drawn was measured (a preset of derived ROIs only)."""
        found = [o for o in self.objects if o.sop_class_uid == ComprehensiveSRStorage]
        return found[0] if found else None

    @property
    def qc_status(self) -> str:
        """The worst QC status of the series and of every lesion (pass, warn or fail)."""
        return worst_status(report.status for report in self.qc)
