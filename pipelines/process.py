"""One job from files to result objects: read the series and its segmentation, extract features of
every segment with a preset, encode a TID 1500 report. No network, no database, no clock."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipelines.features import extract_features
from pipelines.presets import Preset, load_preset
from pipelines.report import RoiResult, build_measurement_report
from pipelines.segmentation import read_segmentation
from pipelines.series import read_series


@dataclass(frozen=True)
class LesionSummary:
    """The features of one segment, as plain values that cross process boundaries."""

    segment_number: int
    label: str
    features: dict[str, float]


@dataclass(frozen=True)
class OutputObject:
    """A DICOM object the pipeline wrote, with the identity the outbox needs."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str


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


def _write_atomically(path: Path, writer: Callable[[Path], None]) -> None:
    """Write through ``writer`` into a hidden temporary file, then rename it into place."""
    tmp = path.with_name(f".{path.name}.part")
    writer(tmp)
    os.replace(tmp, path)


def _write_features_csv(path: Path, preset: Preset, lesions: Sequence[LesionSummary],
                        source_series_uid: str) -> None:
    """One row per segment and feature: long format, so presets with different features stack."""
    def write(target: Path) -> None:
        with target.open("w", newline="", encoding="utf-8") as handle:
            out = csv.writer(handle)
            out.writerow(["source_series_uid", "segment_number", "segment_label", "preset",
                          "preset_hash", "feature", "value"])
            for lesion in lesions:
                for name, value in lesion.features.items():
                    out.writerow([source_series_uid, lesion.segment_number, lesion.label,
                                  preset.name, preset.hash, name, repr(value)])
    _write_atomically(path, write)


def process_study(image_paths: Sequence[str | Path], seg_path: str | Path,
                  preset: str | Path | Preset, out_dir: str | Path) -> PipelineResult:
    """Compute features of every segment of ``seg_path`` on the series ``image_paths`` and write the
    TID 1500 SR (PS3.16 TID 1500) and a features CSV into ``out_dir``."""
    preset = preset if isinstance(preset, Preset) else load_preset(preset)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    volume = read_series([Path(p) for p in image_paths])
    seg = read_segmentation(Path(seg_path), volume)
    rois = [RoiResult(segment, extract_features(volume.image, segment.mask, preset))
            for segment in seg.segments]
    report = build_measurement_report(volume, seg, rois, preset)
    sr_path = out / f"{report.SOPInstanceUID}.dcm"
    _write_atomically(sr_path, lambda target: report.save_as(target, enforce_file_format=True))
    lesions = tuple(LesionSummary(r.segment.number, r.segment.label, dict(r.features.values))
                    for r in rois)
    features_csv = out / "features.csv"
    _write_features_csv(features_csv, preset, lesions, volume.series_instance_uid)
    return PipelineResult(
        source_series_uid=volume.series_instance_uid,
        seg_sop_instance_uid=seg.sop_instance_uid,
        study_instance_uid=volume.study_instance_uid,
        preset=preset.name,
        preset_hash=preset.hash,
        lesions=lesions,
        objects=(OutputObject(sr_path, str(report.SOPClassUID), str(report.SOPInstanceUID)),),
        features_csv=features_csv,
    )
