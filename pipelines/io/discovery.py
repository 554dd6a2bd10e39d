"""A folder of DICOM files sorted into image series and the segmentations that belong to them.

Every file under the folder (recursively) is read header-only. Files that are not DICOM (no
"DICM" preamble and no parseable header) are skipped with a warning. Image instances are grouped
by Series Instance UID (0020,000E). Segmentations are recognised by SOP Class UID (PS3.4 B.5):
Segmentation and Label Map Segmentation Storage, paired with the series listed in their
Referenced Series Sequence (0008,1115, PS3.3 C.12.2); RT Structure Set Storage, paired through
Referenced Frame of Reference Sequence > RT Referenced Study Sequence > RT Referenced Series
Sequence (PS3.3 C.8.8.5). Objects without Rows (0028,0010), i.e. without an image (SR,
presentation states, key object selections, plans), are skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from pipelines.io import rtstruct
from pipelines.io.references import referenced_series_uids
from pipelines.io.segmentation import SEGMENTATION_SOP_CLASS_UIDS

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageSeries:
    """The files of one image series."""

    series_instance_uid: str
    modality: str
    paths: tuple[Path, ...]


@dataclass(frozen=True)
class SegmentationFile:
    """A SEG or RTSTRUCT and the series it references."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    referenced_series: frozenset[str]

    @property
    def kind(self) -> str:
        """``"RTSTRUCT"`` or ``"SEG"``."""
        return "RTSTRUCT" if self.sop_class_uid == rtstruct.RTSTRUCT_SOP_CLASS_UID else "SEG"


@dataclass(frozen=True)
class Pair:
    """A segmentation with its source series."""

    series: ImageSeries
    segmentation: SegmentationFile


@dataclass(frozen=True)
class Discovery:
    """What a folder holds: series by UID, pairs, segmentations without their series, skipped files.

    ``skipped`` holds (path, reason) for files that are not DICOM or not an image or segmentation.
    """

    series: dict[str, ImageSeries]
    pairs: tuple[Pair, ...]
    unpaired: tuple[SegmentationFile, ...]
    skipped: tuple[tuple[Path, str], ...] = field(default=())


def discover(folder: Path) -> Discovery:
    """Sort the DICOM files under ``folder`` into series and pair segmentations with them.

    A segmentation that references several series found here is paired with each. Pairs are
    sorted by series UID, then segmentation path, so the order does not depend on the file system.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a folder")
    images: dict[str, list[Path]] = {}
    modalities: dict[str, str] = {}
    segmentations: list[SegmentationFile] = []
    skipped: list[tuple[Path, str]] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError) as error:
            LOG.warning("%s: skipped, not a DICOM file (%s)", path, error)
            skipped.append((path, f"not a DICOM file ({error})"))
            continue
        sop_class = str(dataset.get("SOPClassUID", ""))
        series_uid = str(dataset.get("SeriesInstanceUID", ""))
        if sop_class in SEGMENTATION_SOP_CLASS_UIDS or sop_class == rtstruct.RTSTRUCT_SOP_CLASS_UID:
            referenced = referenced_series_uids(dataset)
            segmentations.append(
                SegmentationFile(
                    path, sop_class, str(dataset.get("SOPInstanceUID", "")), frozenset(referenced)
                )
            )
        elif "Rows" not in dataset:
            reason = f"SOP class {sop_class} has no image (no (0028,0010) Rows)"
            LOG.warning("%s: skipped, %s", path, reason)
            skipped.append((path, reason))
        elif not series_uid:
            LOG.warning("%s: skipped, (0020,000E) SeriesInstanceUID is missing", path)
            skipped.append((path, "(0020,000E) SeriesInstanceUID is missing"))
        else:
            images.setdefault(series_uid, []).append(path)
            modalities.setdefault(series_uid, str(dataset.get("Modality", "")))
    series = {
        uid: ImageSeries(uid, modalities[uid], tuple(paths))
        for uid, paths in sorted(images.items())
    }
    pairs, unpaired = [], []
    for segmentation in segmentations:
        found = sorted(segmentation.referenced_series & series.keys())
        if not found:
            unpaired.append(segmentation)
        pairs.extend(Pair(series[uid], segmentation) for uid in found)
    pairs.sort(key=lambda p: (p.series.series_instance_uid, str(p.segmentation.path)))
    return Discovery(series, tuple(pairs), tuple(unpaired), tuple(skipped))
