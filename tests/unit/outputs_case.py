"""A small synthetic case for the tests of the node's image outputs (parametric maps, derived SEG,
summary image): the synthetic liver CT read back, its lesion segments, their ROI variants and
features, built the way pipelines.process builds them."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.filereader import read_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from demo.synthetic import SyntheticStudy, write_synthetic_study
from pipelines.io.segmentation import DecodedSegmentation, Segment, read_segmentation
from pipelines.io.series import SeriesVolume, read_series
from pipelines.science.features import extract_lesions
from pipelines.science.presets import Preset, RoiOptions, RoiVariant, load_preset
from pipelines.science.results import RoiResult
from pipelines.science.rois import RoiMask, build_variants

SHAPE = (20, 96, 96)


@dataclass(frozen=True)
class OutputsCase:
    study: SyntheticStudy
    volume: SeriesVolume
    seg: DecodedSegmentation
    preset: Preset
    lesions: tuple[Segment, ...]
    masks: tuple[RoiMask, ...]  # every ROI variant of every lesion, in ``rois`` order
    rois: tuple[RoiResult, ...]


def basic_with_rings() -> Preset:
    """ct-liver-basic (no resampling, no filters: fast) with an intra, a 4 mm ring without air
    and fat, an intra + 4 mm ring and a 1 mm erosion."""
    basic = load_preset("ct-liver-basic")
    rois = RoiOptions(
        hu_ranges={"air": (None, -500.0), "fat": (-190.0, -30.0)},
        variants=(
            RoiVariant(kind="intra"),
            RoiVariant(kind="ring", distance_mm=4, exclude=("air", "fat")),
            RoiVariant(kind="intra_ring", distance_mm=4),
            RoiVariant(kind="erosion", distance_mm=1),
        ),
    )
    return basic.model_copy(update={"rois": rois, "modality": "CT"})


def build_case(directory: Path, preset: Preset | None = None) -> OutputsCase:
    """Write the synthetic study into ``directory`` and compute its ROIs and features."""
    preset = preset or basic_with_rings()
    study = write_synthetic_study(directory, shape=SHAPE)
    volume = read_series(list(study.ct_paths))
    seg = read_segmentation(study.seg_path, volume)
    lesions = seg.segments
    variants = [build_variants(volume.image, lesion, preset.rois.variants, preset.rois.hu_ranges)
                for lesion in lesions]
    features = extract_lesions(volume.image, variants, preset)
    rois = tuple(
        RoiResult(lesion, by_name[roi.name], roi.name)
        for lesion, lesion_rois, by_name in zip(lesions, variants, features, strict=True)
        for roi in lesion_rois
    )
    masks = tuple(roi for lesion_rois in variants for roi in lesion_rois)
    return OutputsCase(study, volume, seg, preset, tuple(lesions), masks, rois)


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) that dicom3tools' ``dciodvfy`` reports for ``path``. dciodvfy (Debian
    12's dicom3tools) reads no deflated data set ("Dicom dataset read failed"): a Deflated
    Explicit VR Little Endian file (the parametric maps) is checked as the same data set written
    in Explicit VR Little Endian beside it."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        raise RuntimeError("dciodvfy not on PATH: run scripts/setup.sh --system-tools")
    if read_file_meta_info(path).TransferSyntaxUID == DeflatedExplicitVRLittleEndian:
        dataset = dcmread(path)
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = path.with_name(f"{path.stem}-inflated{path.suffix}")
        dataset.save_as(path, enforce_file_format=True)
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)
    lines = (run.stdout + run.stderr).splitlines()
    return ([line for line in lines if line.startswith("Error")],
            [line for line in lines if line.startswith("Warning")])
