"""A series of single-frame DICOM images as one SimpleITK volume.

Geometry comes from the Image Plane Module (PS3.3 C.7.6.2): Image Orientation (Patient) gives the
row and column direction cosines, Image Position (Patient) the centre of each slice's first pixel,
Pixel Spacing the in-plane spacing as (row spacing, column spacing). The slice order and the slice
spacing come from the positions projected on the slice normal (row x column), never from Instance
Number, Slice Location or Slice Thickness (PS3.3 C.7.6.2.1.1 says those do not define the geometry).
Values are modality values after the Modality LUT Module (PS3.3 C.11.1): Rescale Slope and Rescale
Intercept, i.e. Hounsfield units for CT (PS3.3 C.8.2.1.1.3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.datadict import tag_for_keyword
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut
from pydicom.tag import Tag

# Where each attribute that read_series needs is required, for the error messages.
_REQUIRED_BY = {
    "SOPInstanceUID": "PS3.3 C.12.1 SOP Common Module",
    "StudyInstanceUID": "PS3.3 C.7.2.1 General Study Module",
    "SeriesInstanceUID": "PS3.3 C.7.3.1 General Series Module",
    "Modality": "PS3.3 C.7.3.1 General Series Module",
    "FrameOfReferenceUID": "PS3.3 C.7.4.1 Frame of Reference Module",
    "ImagePositionPatient": "PS3.3 C.7.6.2 Image Plane Module",
    "ImageOrientationPatient": "PS3.3 C.7.6.2 Image Plane Module",
    "PixelSpacing": "PS3.3 C.7.6.2 Image Plane Module",
    "Rows": "PS3.3 C.7.6.3 Image Pixel Module",
    "Columns": "PS3.3 C.7.6.3 Image Pixel Module",
    "PixelData": "PS3.3 C.7.6.3 Image Pixel Module",
}
# Attributes that every slice of one volume must share exactly.
_SHARED_EXACTLY = (
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "FrameOfReferenceUID",
    "Modality",
    "Rows",
    "Columns",
)
# Direction cosines may differ between slices by rounding only.
ORIENTATION_TOLERANCE = 1e-4
# Pixel spacings (mm) may differ between slices by rounding only.
PIXEL_SPACING_TOLERANCE_MM = 1e-3
# Two slices closer than this along the normal (mm) are at the same position.
DUPLICATE_POSITION_TOLERANCE_MM = 1e-3
# A slice may lie off its place on the regular grid by this fraction of the slice spacing, along the
# normal; and off the stack's axis by this fraction of the smallest pixel spacing, within the plane.
GRID_TOLERANCE_FRACTION = 0.1


class SeriesError(ValueError):
    """A set of files is not one readable image volume; the message names file, tag and reason."""


def tag_name(keyword: str) -> str:
    """``"(0020,0032) ImagePositionPatient"`` for ``"ImagePositionPatient"``."""
    tag = Tag(tag_for_keyword(keyword))
    return f"({tag.group:04X},{tag.element:04X}) {keyword}"


@dataclass(frozen=True)
class SeriesVolume:
    """One image series on a regular grid, with the headers of its slices.

    ``image`` is sitkFloat32 holding modality values (HU for CT). Its origin is the Image Position
    (Patient) of the first slice, its spacing (column spacing, row spacing, slice spacing) in mm,
    its direction the row cosines, column cosines and slice normal as columns. ``datasets`` and
    ``paths`` are in the image's z order; the datasets carry no Pixel Data.
    """

    image: sitk.Image
    datasets: tuple[pydicom.Dataset, ...]
    paths: tuple[Path, ...]

    @property
    def series_instance_uid(self) -> str:
        """Series Instance UID (0020,000E) shared by all slices."""
        return str(self.datasets[0].SeriesInstanceUID)

    @property
    def study_instance_uid(self) -> str:
        """Study Instance UID (0020,000D) shared by all slices."""
        return str(self.datasets[0].StudyInstanceUID)

    @property
    def frame_of_reference_uid(self) -> str:
        """Frame of Reference UID (0020,0052) shared by all slices."""
        return str(self.datasets[0].FrameOfReferenceUID)

    @property
    def modality(self) -> str:
        """Modality (0008,0060) shared by all slices."""
        return str(self.datasets[0].Modality)

    @property
    def sop_instance_uids(self) -> tuple[str, ...]:
        """SOP Instance UID (0008,0018) of each slice, in image z order."""
        return tuple(str(ds.SOPInstanceUID) for ds in self.datasets)


@dataclass(frozen=True)
class _Slice:
    path: Path
    dataset: pydicom.Dataset
    position: np.ndarray  # Image Position (Patient), mm


def read_series(paths: Sequence[Path]) -> SeriesVolume:
    """Read single-frame images of one series into a volume on a regular grid.

    The files may come in any order. They must share series, study, frame of reference, modality,
    matrix size, pixel spacing and orientation; their positions must lie on one regular grid along
    the slice normal with no gap, duplicate or in-plane shift (a gantry-tilted or sheared stack
    does not fit a SimpleITK image). A single slice takes its slice spacing from Spacing Between
    Slices (0018,0088) or else Slice Thickness (0018,0050).

    Raises:
        SeriesError: naming the file, the tag and the reason, for the first rule a file breaks.
    """
    if len(paths) == 0:
        raise SeriesError("no files given: a series needs at least one image")
    slices = [_read_slice(Path(path)) for path in paths]
    first = slices[0]
    for other in slices[1:]:
        _check_same_volume(first, other)

    row, col, normal = _direction_cosines(first)
    slices.sort(key=lambda s: float(np.dot(s.position, normal)))
    pixel_spacing = [float(v) for v in first.dataset.PixelSpacing]
    slice_spacing = _slice_spacing(slices, normal, min(pixel_spacing))

    volume = np.empty(
        (len(slices), int(first.dataset.Rows), int(first.dataset.Columns)), dtype=np.float32
    )
    for index, item in enumerate(slices):
        volume[index] = _modality_values(item)
        del item.dataset.PixelData

    image = sitk.GetImageFromArray(volume, isVector=False)
    image.SetOrigin(tuple(float(v) for v in slices[0].position))
    image.SetSpacing((pixel_spacing[1], pixel_spacing[0], slice_spacing))
    image.SetDirection(tuple(float(v) for v in np.column_stack([row, col, normal]).ravel()))
    return SeriesVolume(
        image=image,
        datasets=tuple(item.dataset for item in slices),
        paths=tuple(item.path for item in slices),
    )


def _read_slice(path: Path) -> _Slice:
    """Read one file and check that it is a single-frame greyscale image with a position."""
    try:
        dataset = pydicom.dcmread(path)
    except (InvalidDicomError, OSError) as error:
        raise SeriesError(f"{path}: not a readable DICOM file ({error})") from error
    for keyword, required_by in _REQUIRED_BY.items():
        if dataset.get(keyword) in (None, ""):
            raise SeriesError(
                f"{path}: {tag_name(keyword)} is missing or empty; it is required by {required_by}"
            )
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise SeriesError(
            f"{path}: {tag_name('NumberOfFrames')} is {frames}: only single-frame images are read"
        )
    samples = int(dataset.get("SamplesPerPixel", 1))
    if samples != 1:
        raise SeriesError(
            f"{path}: {tag_name('SamplesPerPixel')} is {samples}: only greyscale images are read"
        )
    position = np.array([float(v) for v in dataset.ImagePositionPatient], dtype=float)
    if position.shape != (3,):
        raise SeriesError(f"{path}: {tag_name('ImagePositionPatient')} must have 3 values")
    return _Slice(path=path, dataset=dataset, position=position)


def _check_same_volume(first: _Slice, other: _Slice) -> None:
    """Refuse a slice that does not share the first slice's series, grid and orientation."""
    for keyword in _SHARED_EXACTLY:
        mine, theirs = other.dataset.get(keyword), first.dataset.get(keyword)
        if str(mine) != str(theirs):
            raise SeriesError(
                f"{other.path}: {tag_name(keyword)} is {str(mine)!r} but {first.path} has "
                f"{str(theirs)!r}: the files are not one image volume"
            )
    for keyword, tolerance in (
        ("ImageOrientationPatient", ORIENTATION_TOLERANCE),
        ("PixelSpacing", PIXEL_SPACING_TOLERANCE_MM),
    ):
        mine = np.array([float(v) for v in other.dataset.get(keyword)])
        theirs = np.array([float(v) for v in first.dataset.get(keyword)])
        if mine.shape != theirs.shape or np.max(np.abs(mine - theirs)) > tolerance:
            raise SeriesError(
                f"{other.path}: {tag_name(keyword)} is {mine.tolist()} but {first.path} has "
                f"{theirs.tolist()}: the files are not one image volume"
            )


def _direction_cosines(first: _Slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row cosines, column cosines and their cross product, the slice normal (PS3.3 C.7.6.2.1.1)."""
    values = np.array([float(v) for v in first.dataset.ImageOrientationPatient], dtype=float)
    if values.shape != (6,):
        raise SeriesError(
            f"{first.path}: {tag_name('ImageOrientationPatient')} must have 6 values, "
            f"has {values.size}"
        )
    row, col = values[:3], values[3:]
    if (
        abs(np.linalg.norm(row) - 1) > 1e-3
        or abs(np.linalg.norm(col) - 1) > 1e-3
        or abs(float(np.dot(row, col))) > 1e-3
    ):
        raise SeriesError(
            f"{first.path}: {tag_name('ImageOrientationPatient')} is {values.tolist()}: "
            "row and column direction cosines must be orthogonal unit vectors"
        )
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    return row, col, np.cross(row, col)


def _slice_spacing(slices: list[_Slice], normal: np.ndarray, pixel_spacing: float) -> float:
    """Slice spacing of slices sorted along the normal, checked against a regular grid."""
    if len(slices) == 1:
        dataset = slices[0].dataset
        for keyword in ("SpacingBetweenSlices", "SliceThickness"):
            if dataset.get(keyword) not in (None, "") and float(dataset.get(keyword)) > 0:
                return float(dataset.get(keyword))
        raise SeriesError(
            f"{slices[0].path}: a single slice needs {tag_name('SpacingBetweenSlices')} or "
            f"{tag_name('SliceThickness')} for its slice spacing; both are missing"
        )
    offsets = np.array([s.position - slices[0].position for s in slices])
    along = offsets @ normal
    for index in range(1, len(slices)):
        if along[index] - along[index - 1] < DUPLICATE_POSITION_TOLERANCE_MM:
            raise SeriesError(
                f"{slices[index].path}: {tag_name('ImagePositionPatient')} puts it at the "
                f"position of {slices[index - 1].path} along the slice normal "
                f"({along[index]:.3f} mm): two images of the same slice"
            )
    spacing = float(along[-1] / (len(slices) - 1))
    off_grid = np.abs(along - spacing * np.arange(len(slices)))
    worst = int(np.argmax(off_grid))
    if off_grid[worst] > GRID_TOLERANCE_FRACTION * spacing:
        gaps = ", ".join(f"{gap:.3f}" for gap in np.diff(along))
        raise SeriesError(
            f"{slices[worst].path}: {tag_name('ImagePositionPatient')} is "
            f"{off_grid[worst]:.3f} mm off a regular grid of {spacing:.3f} mm along the slice "
            f"normal (gaps between slices in mm: {gaps}): missing slices or irregular spacing"
        )
    in_plane = np.linalg.norm(offsets - np.outer(along, normal), axis=1)
    worst = int(np.argmax(in_plane))
    if in_plane[worst] > GRID_TOLERANCE_FRACTION * pixel_spacing:
        raise SeriesError(
            f"{slices[worst].path}: {tag_name('ImagePositionPatient')} is {in_plane[worst]:.3f} "
            f"mm off the slice normal through {slices[0].path} within the image plane: the "
            f"slices are not stacked along the normal of {tag_name('ImageOrientationPatient')} "
            "(gantry tilt or sheared stack)"
        )
    return spacing


def _modality_values(item: _Slice) -> np.ndarray:
    """Stored values through the Modality LUT or Rescale Slope/Intercept (PS3.3 C.11.1)."""
    try:
        stored = item.dataset.pixel_array
    except Exception as error:  # pydicom raises several types for undecodable pixel data
        syntax = item.dataset.file_meta.get("TransferSyntaxUID", "unknown")
        raise SeriesError(
            f"{item.path}: {tag_name('PixelData')} cannot be decoded (transfer syntax "
            f"{syntax}): {error}"
        ) from error
    expected = (int(item.dataset.Rows), int(item.dataset.Columns))
    if stored.shape != expected:
        raise SeriesError(
            f"{item.path}: {tag_name('PixelData')} has shape {stored.shape}, expected {expected} "
            f"from {tag_name('Rows')} and {tag_name('Columns')}"
        )
    return np.asarray(apply_modality_lut(stored, item.dataset), dtype=np.float32)
