"""What a job is given, and its plan: one image series and its segmentation
(``pipelines.process.job_plan``), or several series of one study by role, measured on the
segmentation drawn on one of them.

A role names what a series is for a rule (``arterial``, ``portal_venous``; ``t2``, ``dwi``):
seed 003 (multi-sequence MRI of HCC) combines T2WI with the contrast phases, seed 002 prefers
multi-phase CT over one phase. A job of one series has the role ``""``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipelines.plan import Plan
from pipelines.process import PipelineResult, ProcessError, job_plan
from pipelines.science.presets import Preset
from pipelines.science.qc import QCSettings

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
class JobInputs:
    """A job's inputs: its image series, the one the segmentation was drawn on first, and the
    segmentation's file (DICOM SEG or RT Structure Set)."""

    series: tuple[SeriesInput, ...]
    seg: str

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

    @property
    def files(self) -> tuple[str, ...]:
        """Every input file: the images of each series, then the segmentation."""
        return (*(path for item in self.series for path in item.paths), self.seg)


def one_series(images: Sequence[str | Path], seg: str | Path, preset: str | Preset
               ) -> JobInputs:
    """The inputs of a job of one series (role ``""``) and its segmentation."""
    return JobInputs((SeriesInput(SINGLE, tuple(str(p) for p in images), preset),), str(seg))


def study_plan(inputs: JobInputs, out_dir: str | Path, *, qc_settings: QCSettings | None = None,
               models: Sequence[tuple[str | Path, str]] = (), split_maps: bool = False
               ) -> Plan[PipelineResult]:
    """The plan (``pipelines.plan``) of a job: :func:`pipelines.process.job_plan` for a job of
    one series; a study job's plan measures the segmentation on every series of ``inputs``.
    ``qc_settings``, ``models`` and ``split_maps`` as for ``job_plan``."""
    if len(inputs.series) == 1:
        only = inputs.segmented
        return (yield from job_plan(only.paths, inputs.seg, only.preset, out_dir,
                                    qc_settings=qc_settings, models=models,
                                    split_maps=split_maps))
    raise ProcessError(f"{inputs.seg}: study jobs of roles "
                       f"{[item.role for item in inputs.series]} are not measured yet")
