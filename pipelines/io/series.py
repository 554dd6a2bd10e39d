"""A DICOM image series as one SimpleITK volume.

Two kinds of instances are read, and may be mixed in one series:

* single-frame images (e.g. CT Image, MR Image Storage): geometry from the Image Plane Module
  (PS3.3 C.7.6.2), values through the Modality LUT Module (PS3.3 C.11.1);
* multi-frame Enhanced and Legacy Converted Enhanced CT/MR images (PS3.3 A.38, A.36, A.70, A.71):
  each frame's geometry from its Plane Position (Patient), Plane Orientation (Patient) and Pixel
  Measures functional groups (PS3.3 C.7.6.16.2.3, .2.4, .2.1), its values through the Pixel Value
  Transformation functional group (PS3.3 C.7.6.16.2.9); per-frame items win over shared ones
  (PS3.3 C.7.6.16). A frame without a Pixel Value Transformation keeps its stored values.

Image Orientation (Patient) gives the row and column direction cosines, Image Position (Patient)
the centre of each slice's first pixel, Pixel Spacing the in-plane spacing as (row spacing, column
spacing). The slice order and the slice spacing come from the positions projected on the slice
normal (row x column), never from Instance Number, Slice Location or Slice Thickness
(PS3.3 C.7.6.2.1.1 says those do not define the geometry). Values are modality values, i.e.
Hounsfield units for CT (PS3.3 C.8.2.1.1.3). Compressed transfer syntaxes are decoded by pydicom's
pixel decoders (with pylibjpeg for JPEG, JPEG-LS and JPEG 2000; RLE natively).

Duplicate positions: when several slices lie at the same place along the normal, the newest
acquisition is kept and the others are reported as dropped. "Newest" orders by, in turn:
Frame Acquisition DateTime (0018,9074) of the frame (multi-frame only), else Acquisition DateTime
(0008,002A), else Acquisition Date (0008,0022) with Acquisition Time (0008,0032) (a missing date
sorts first); then Instance
Number (0020,0013); then frame number. A slice without any of these is the oldest.

Irregular stacks: gaps between slices that differ (missing slices, variable spacing) and slices
shifted within the plane as they advance (gantry tilt, PS3.3 C.7.6.2.1.1 notes that a tilted
acquisition has positions off the normal) are measured and reported in :class:`GridReport`. By
default such a stack is refused with a :class:`SeriesError`. With ``irregular_grid="resample"``
it is resampled onto the regular grid whose axes are the row, column and normal directions, whose
origin is the first slice's position, and whose slice spacing is the median gap: each acquired
slice is first shifted within its plane onto the regular grid's columns (bilinear,
``scipy.ndimage.shift`` order 1, edges continued with their nearest value), then each regular slice
is interpolated linearly along the normal between the two acquired slices around it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut
from pydicom.tag import Tag
from scipy import ndimage

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
# Geometry of a multi-frame image lives in functional groups (PS3.3 C.7.6.16.2).
_FRAME_GEOMETRY = {
    "ImagePositionPatient": "PlanePositionSequence",
    "ImageOrientationPatient": "PlaneOrientationSequence",
    "PixelSpacing": "PixelMeasuresSequence",
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

# Values longer than this (Pixel Data) are read from the file when first used (pydicom defer_size).
DEFER_BYTES = 64 * 1024

IrregularGrid = Literal["refuse", "resample"]


@dataclass(frozen=True)
class Grid:
    """Geometry of a SimpleITK image: origin and spacing (mm), direction cosines, size."""

    origin: tuple[float, ...]
    spacing: tuple[float, ...]
    direction: tuple[float, ...]
    size: tuple[int, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> Grid:
        """The grid of ``image``."""
        return cls(image.GetOrigin(), image.GetSpacing(), image.GetDirection(), image.GetSize())

    def blank(self, pixel_id: int = sitk.sitkUInt8) -> sitk.Image:
        """A zero image on this grid."""
        image = sitk.Image([int(n) for n in self.size], pixel_id)
        image.SetOrigin(self.origin)
        image.SetSpacing(self.spacing)
        image.SetDirection(self.direction)
        return image


class SeriesError(ValueError):
    """A set of files is not one readable image volume; the message names file, tag and reason."""


def tag_name(keyword: str) -> str:
    """``"(0020,0032) ImagePositionPatient"`` for ``"ImagePositionPatient"``."""
    tag = Tag(tag_for_keyword(keyword))
    return f"({tag.group:04X},{tag.element:04X}) {keyword}"


@dataclass(frozen=True)
class SliceSource:
    """Where one acquired slice came from: an instance, and its frame for a multi-frame image.

    ``frame_number`` counts from 1 (PS3.3 C.7.6.6, Frame Increment Pointer) and is None for a
    single-frame image; ``position`` is the slice's Image Position (Patient) in mm.
    """

    sop_instance_uid: str
    frame_number: int | None
    position: tuple[float, float, float]


@dataclass(frozen=True)
class DroppedSlice:
    """A slice left out because a newer acquisition lies at the same position."""

    path: Path
    source: SliceSource
    kept: SliceSource


@dataclass(frozen=True)
class GridReport:
    """How the acquired slices lie: gaps, tilt, duplicates, and whether the image was resampled.

    ``along_normal_mm`` and ``in_plane_offsets_mm`` are, for each kept acquired slice in stack
    order, its distance from the first slice along the normal and its offset from the normal
    through the first slice, as (along the row direction, along the column direction) in mm.
    ``tilt_degrees`` is the angle between the stack's axis (first to last slice) and the normal.
    """

    along_normal_mm: tuple[float, ...]
    in_plane_offsets_mm: tuple[tuple[float, float], ...]
    uniform_spacing: bool
    tilted: bool
    tilt_degrees: float
    resampled: bool
    dropped: tuple[DroppedSlice, ...] = ()

    @property
    def slice_gaps_mm(self) -> tuple[float, ...]:
        """Distances along the normal between consecutive acquired slices."""
        return tuple(float(g) for g in np.diff(self.along_normal_mm))


@dataclass(frozen=True)
class SeriesVolume:
    """One image series on a regular grid, with the headers of its instances.

    ``image`` is sitkFloat32 holding modality values (HU for CT). Its origin is the Image Position
    (Patient) of the first slice, its spacing (column spacing, row spacing, slice spacing) in mm,
    its direction the row cosines, column cosines and slice normal as columns. ``datasets`` and
    ``paths`` hold each instance once, ordered by its first slice along the normal; the datasets
    carry no Pixel Data. ``sources`` lists the acquired slices that were kept, in stack order:
    for a volume that was not resampled, ``sources[k]`` is the image's slice k. ``grid`` says how
    the acquired slices lay. Volumes built by hand may leave both out: each dataset is then one
    single-frame slice on the image's grid.
    """

    image: sitk.Image
    datasets: tuple[pydicom.Dataset, ...]
    paths: tuple[Path, ...]
    sources: tuple[SliceSource, ...] = field(default=())
    grid: GridReport | None = None

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
    def series_number(self) -> int:
        """Series Number (0020,0011) of the first instance, 0 when it has none (Type 2)."""
        return int(self.datasets[0].get("SeriesNumber") or 0)

    @property
    def modality(self) -> str:
        """Modality (0008,0060) shared by all slices."""
        return str(self.datasets[0].Modality)

    @property
    def sop_instance_uids(self) -> tuple[str, ...]:
        """SOP Instance UID (0008,0018) of each instance, in the order of ``datasets``."""
        return tuple(str(ds.SOPInstanceUID) for ds in self.datasets)

    @property
    def slices(self) -> tuple[SliceSource, ...]:
        """The acquired slices in stack order (``sources``, or one per single-frame dataset)."""
        if self.sources:
            return self.sources
        return tuple(
            SliceSource(
                str(ds.SOPInstanceUID),
                None,
                tuple(float(v) for v in ds.ImagePositionPatient),  # type: ignore[arg-type]
            )
            for ds in self.datasets
        )

    @property
    def resampled(self) -> bool:
        """Whether the image was resampled from an irregular stack (``slices`` are not its z)."""
        return self.grid is not None and self.grid.resampled


@dataclass
class _Slice:
    path: Path
    dataset: pydicom.Dataset  # the instance's header, shared by the frames of one instance
    frame: int | None  # 0-based frame index of a multi-frame instance
    position: np.ndarray  # Image Position (Patient), mm
    orientation: np.ndarray  # Image Orientation (Patient), 6 values
    pixel_spacing: np.ndarray  # (row spacing, column spacing), mm
    newest_key: tuple[str, int, int]
    values: np.ndarray | None = None  # modality values, filled when the pixels are decoded

    @property
    def where(self) -> str:
        return str(self.path) if self.frame is None else f"{self.path} frame {self.frame + 1}"

    @property
    def source(self) -> SliceSource:
        position = (float(self.position[0]), float(self.position[1]), float(self.position[2]))
        frame_number = None if self.frame is None else self.frame + 1
        return SliceSource(str(self.dataset.SOPInstanceUID), frame_number, position)


def read_series(paths: Sequence[Path], irregular_grid: IrregularGrid = "refuse") -> SeriesVolume:
    """Read the images of one series into a volume on a regular grid.

    The files may come in any order and may be single-frame or multi-frame (module docstring).
    Their slices must share series, study, frame of reference, modality, matrix size, pixel
    spacing and orientation. Slices at the same position along the normal keep the newest
    acquisition (module docstring) and the others are reported in ``grid.dropped``. The kept slices
    must lie on one regular grid along the normal with no gap or in-plane shift (gantry tilt),
    unless ``irregular_grid`` is ``"resample"``. A single slice takes its slice spacing from
    Spacing Between Slices (0018,0088) or else Slice Thickness (0018,0050).

    Raises:
        SeriesError: naming the file, the tag and the reason, for the first rule a file breaks.
    """
    if len(paths) == 0:
        raise SeriesError("no files given: a series needs at least one image")
    if irregular_grid not in ("refuse", "resample"):
        raise SeriesError(f"irregular_grid is {irregular_grid!r}; it must be refuse or resample")
    slices = [item for path in paths for item in _read_instance(Path(path))]
    first = slices[0]
    for other in slices[1:]:
        _check_same_volume(first, other)

    row, col, normal = _direction_cosines(first)
    slices.sort(key=lambda s: float(np.dot(s.position, normal)))
    slices, dropped = _drop_duplicates(slices, normal)
    pixel_spacing = [float(v) for v in first.pixel_spacing]
    grid, slice_spacing = _grid(slices, row, col, normal, min(pixel_spacing), dropped)
    if (not grid.uniform_spacing or grid.tilted) and irregular_grid == "refuse":
        _refuse_irregular(slices, grid, slice_spacing, min(pixel_spacing))

    # Slice by slice into one float32 stack; an instance's Pixel Data (and pydicom's decoded
    # array) is dropped once its last slice is in, so the encoded series, its decoded copy and the
    # stack are never held together.
    last_slice = {id(item.dataset): k for k, item in enumerate(slices)}
    stack = np.empty((len(slices), int(first.dataset.Rows), int(first.dataset.Columns)),
                     dtype=np.float32)
    for k, item in enumerate(slices):
        stack[k] = _decoded(item)
        if last_slice[id(item.dataset)] == k:
            del item.dataset.PixelData
    if not grid.uniform_spacing or grid.tilted:
        grid = replace(grid, resampled=True)
        stack = resample_stack(stack, grid, pixel_spacing, slice_spacing, order=1)
    instances: dict[str, _Slice] = {}
    for item in slices:
        instances.setdefault(str(item.dataset.SOPInstanceUID), item)

    image = sitk.GetImageFromArray(stack, isVector=False)
    image.SetOrigin(tuple(float(v) for v in slices[0].position))
    image.SetSpacing((pixel_spacing[1], pixel_spacing[0], slice_spacing))
    image.SetDirection(tuple(float(v) for v in np.column_stack([row, col, normal]).ravel()))
    return SeriesVolume(
        image=image,
        datasets=tuple(item.dataset for item in instances.values()),
        paths=tuple(item.path for item in instances.values()),
        sources=tuple(item.source for item in slices),
        grid=grid,
    )


def resample_stack(
    stack: np.ndarray,
    grid: GridReport,
    pixel_spacing: Sequence[float],
    slice_spacing: float,
    order: int = 1,
) -> np.ndarray:
    """Values of acquired slices (``stack``, in stack order) on the regular grid (module docstring).

    ``pixel_spacing`` is (row spacing, column spacing) in mm; ``order`` 1 is linear (images and
    masks before thresholding). The result has ``round(extent / slice_spacing) + 1`` slices.
    """
    along = np.asarray(grid.along_normal_mm, dtype=float)
    shifted = np.empty(stack.shape, dtype=np.float32)
    for k, (along_row, along_col) in enumerate(grid.in_plane_offsets_mm):
        # Acquired pixel (i, j) lies at regular-grid pixel (i + dc / row spacing, j + dr / col sp.).
        shift = (along_col / pixel_spacing[0], along_row / pixel_spacing[1])
        if abs(shift[0]) < 1e-9 and abs(shift[1]) < 1e-9:
            shifted[k] = stack[k]
        else:
            shifted[k] = ndimage.shift(stack[k], shift, order=order, mode="nearest")
    count = round(float(along[-1]) / slice_spacing) + 1
    targets = np.minimum(np.arange(count) * slice_spacing, along[-1])
    upper = np.clip(np.searchsorted(along, targets, side="right"), 1, len(along) - 1)
    lower = upper - 1
    weight = ((targets - along[lower]) / (along[upper] - along[lower])).astype(np.float32)
    return (1 - weight)[:, None, None] * shifted[lower] + weight[:, None, None] * shifted[upper]


def _functional_group(dataset: pydicom.Dataset, frame: int, keyword: str) -> pydicom.Dataset | None:
    """First item of a functional group macro for one frame, per-frame before shared."""
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence", [])
    shared = dataset.get("SharedFunctionalGroupsSequence", [])
    own = per_frame[frame] if frame < len(per_frame) else None
    for groups in (own, shared[0] if shared else None):
        if groups is not None and keyword in groups and len(groups[keyword].value) > 0:
            return groups[keyword].value[0]
    return None


def _datetime_key(value: object) -> str:
    """A DT or DA+TM value as YYYYMMDDHHMMSS.FFFFFF so that strings compare in time order."""
    text = str(value or "").split("+")[0].split("-")[0].strip()
    if not text:
        return ""
    whole, _, fraction = text.partition(".")
    return f"{whole.ljust(14, '0')}.{fraction.ljust(6, '0')}"


def _acquisition_key(dataset: pydicom.Dataset) -> str:
    if dataset.get("AcquisitionDateTime"):
        return _datetime_key(dataset.AcquisitionDateTime)
    if dataset.get("AcquisitionDate") or dataset.get("AcquisitionTime"):
        date = dataset.get("AcquisitionDate") or "00000000"
        return _datetime_key(f"{date}{dataset.get('AcquisitionTime', '')}")
    return ""


def _empty(dataset: pydicom.Dataset, keyword: str) -> bool:
    """Whether the attribute is missing or has no value, without reading a deferred value."""
    element = dataset.get_item(keyword, keep_deferred=True)
    if isinstance(element, RawDataElement) and element.value is None:  # deferred, not read yet
        return element.length == 0
    return dataset.get(keyword) in (None, "")


def _require(path: Path, dataset: pydicom.Dataset, keywords: Sequence[str]) -> None:
    for keyword in keywords:
        if _empty(dataset, keyword):
            raise SeriesError(
                f"{path}: {tag_name(keyword)} is missing or empty; it is required by "
                f"{_REQUIRED_BY[keyword]}"
            )


def _vector(path: str, keyword: str, value: object, size: int) -> np.ndarray:
    values = np.array([float(v) for v in value], dtype=float)  # type: ignore[attr-defined]
    if values.shape != (size,):
        raise SeriesError(f"{path}: {tag_name(keyword)} must have {size} values, has {values.size}")
    return values


def tolerate_empty_character_set(dataset: pydicom.Dataset) -> pydicom.Dataset:
    """Remove a Specific Character Set (0008,0005) that is present but empty, as some converters
    write it: an empty value means the default repertoire, as an absent one does
    (PS3.3 C.12.1.1.2), and highdicom refuses to copy the empty value into a result object.
    Returns ``dataset``."""
    value = dataset.get("SpecificCharacterSet")
    if value is not None and not any(str(v).strip() for v in _as_values(value)):
        del dataset.SpecificCharacterSet
    return dataset


# Type 2 attributes (present, possibly empty) of the Patient (PS3.3 C.7.1.1), General Study
# (C.7.2.1), General Equipment (C.7.5.1) and Image Plane (C.7.6.2) modules, which the result
# objects copy from the source
_TYPE_2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
           "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber", "Manufacturer",
           "SliceThickness")


def tolerate_absent_type_2(dataset: pydicom.Dataset) -> pydicom.Dataset:
    """Give each Type 2 attribute of ``_TYPE_2`` that ``dataset`` lacks its empty value, as a
    conformant writer would have (PS3.5 7.4.5: Type 2, zero length when unknown): converters
    that leave them out write files that highdicom refuses to copy into a result object.
    Changes the dataset in memory only; returns it."""
    for keyword in _TYPE_2:
        if keyword not in dataset:
            setattr(dataset, keyword, "")
    return dataset


def _as_values(value: object) -> list[object]:
    """A value or multi-value as a list."""
    return list(value) if isinstance(value, list | tuple | MultiValue) else [value]


def _read_instance(path: Path) -> list[_Slice]:
    """The slices of one file: one for a single-frame image, one per frame for a multi-frame."""
    try:
        # Pixel Data stays on disk until the slice is decoded (read_series): the whole encoded
        # series is never in memory at once.
        dataset = tolerate_absent_type_2(tolerate_empty_character_set(
            pydicom.dcmread(path, defer_size=DEFER_BYTES)))
    except (InvalidDicomError, OSError) as error:
        raise SeriesError(f"{path}: not a readable DICOM file ({error})") from error
    samples = int(dataset.get("SamplesPerPixel", 1))
    if samples != 1:
        raise SeriesError(
            f"{path}: {tag_name('SamplesPerPixel')} is {samples}: only greyscale images are read"
        )
    instance_number = int(dataset.get("InstanceNumber", 0) or 0)
    if "PerFrameFunctionalGroupsSequence" not in dataset:
        _require(path, dataset, list(_REQUIRED_BY))
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        if frames != 1:
            raise SeriesError(
                f"{path}: {tag_name('NumberOfFrames')} is {frames} without a "
                f"{tag_name('PerFrameFunctionalGroupsSequence')}: the frames have no geometry"
            )
        where = str(path)
        return [
            _Slice(
                path=path,
                dataset=dataset,
                frame=None,
                position=_vector(where, "ImagePositionPatient", dataset.ImagePositionPatient, 3),
                orientation=_vector(
                    where, "ImageOrientationPatient", dataset.ImageOrientationPatient, 6
                ),
                pixel_spacing=_vector(where, "PixelSpacing", dataset.PixelSpacing, 2),
                newest_key=(_acquisition_key(dataset), instance_number, 0),
            )
        ]
    _require(
        path,
        dataset,
        [k for k in _REQUIRED_BY if k not in _FRAME_GEOMETRY],
    )
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if len(dataset.PerFrameFunctionalGroupsSequence) != frames:
        raise SeriesError(
            f"{path}: {tag_name('PerFrameFunctionalGroupsSequence')} has "
            f"{len(dataset.PerFrameFunctionalGroupsSequence)} items for "
            f"{tag_name('NumberOfFrames')} {frames} (PS3.3 C.7.6.16)"
        )
    instance_key = _acquisition_key(dataset)
    slices = []
    for frame in range(frames):
        where = f"{path} frame {frame + 1}"
        values = {}
        for keyword, group in _FRAME_GEOMETRY.items():
            item = _functional_group(dataset, frame, group)
            if item is None or item.get(keyword) in (None, ""):
                raise SeriesError(
                    f"{where}: {tag_name(keyword)} is missing from {tag_name(group)} in both the "
                    "per-frame and shared functional groups (PS3.3 C.7.6.16.2)"
                )
            values[keyword] = item.get(keyword)
        content = _functional_group(dataset, frame, "FrameContentSequence")
        frame_time = content.get("FrameAcquisitionDateTime") if content is not None else None
        slices.append(
            _Slice(
                path=path,
                dataset=dataset,
                frame=frame,
                position=_vector(where, "ImagePositionPatient", values["ImagePositionPatient"], 3),
                orientation=_vector(
                    where, "ImageOrientationPatient", values["ImageOrientationPatient"], 6
                ),
                pixel_spacing=_vector(where, "PixelSpacing", values["PixelSpacing"], 2),
                newest_key=(_datetime_key(frame_time) or instance_key, instance_number, frame),
            )
        )
    return slices


def _check_same_volume(first: _Slice, other: _Slice) -> None:
    """Refuse a slice that does not share the first slice's series, grid and orientation."""
    for keyword in _SHARED_EXACTLY:
        mine, theirs = other.dataset.get(keyword), first.dataset.get(keyword)
        if str(mine) != str(theirs):
            raise SeriesError(
                f"{other.where}: {tag_name(keyword)} is {str(mine)!r} but {first.where} has "
                f"{str(theirs)!r}: the files are not one image volume"
            )
    for keyword, mine, theirs, tolerance in (
        ("ImageOrientationPatient", other.orientation, first.orientation, ORIENTATION_TOLERANCE),
        ("PixelSpacing", other.pixel_spacing, first.pixel_spacing, PIXEL_SPACING_TOLERANCE_MM),
    ):
        if np.max(np.abs(mine - theirs)) > tolerance:
            raise SeriesError(
                f"{other.where}: {tag_name(keyword)} is {mine.tolist()} but {first.where} has "
                f"{theirs.tolist()}: the files are not one image volume"
            )


def _direction_cosines(first: _Slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row cosines, column cosines and their cross product, the slice normal (PS3.3 C.7.6.2.1.1)."""
    values = first.orientation
    row, col = values[:3], values[3:]
    if (
        abs(np.linalg.norm(row) - 1) > 1e-3
        or abs(np.linalg.norm(col) - 1) > 1e-3
        or abs(float(np.dot(row, col))) > 1e-3
    ):
        raise SeriesError(
            f"{first.where}: {tag_name('ImageOrientationPatient')} is {values.tolist()}: "
            "row and column direction cosines must be orthogonal unit vectors"
        )
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    return row, col, np.cross(row, col)


def _drop_duplicates(
    slices: list[_Slice], normal: np.ndarray
) -> tuple[list[_Slice], tuple[DroppedSlice, ...]]:
    """Keep the newest slice of each position along the normal (module docstring)."""
    groups: list[list[_Slice]] = []
    for item in slices:
        along = float(np.dot(item.position, normal))
        if groups and along - float(np.dot(groups[-1][0].position, normal)) < (
            DUPLICATE_POSITION_TOLERANCE_MM
        ):
            groups[-1].append(item)
        else:
            groups.append([item])
    kept, dropped = [], []
    for group in groups:
        newest = max(group, key=lambda s: s.newest_key)
        kept.append(newest)
        dropped.extend(
            DroppedSlice(item.path, item.source, newest.source)
            for item in group
            if item is not newest
        )
    return kept, tuple(dropped)


def _grid(
    slices: list[_Slice],
    row: np.ndarray,
    col: np.ndarray,
    normal: np.ndarray,
    pixel_spacing: float,
    dropped: tuple[DroppedSlice, ...],
) -> tuple[GridReport, float]:
    """Measure how the sorted, unique slices lie, and the regular grid's slice spacing."""
    if len(slices) == 1:
        report = GridReport((0.0,), ((0.0, 0.0),), True, False, 0.0, False, dropped)
        return report, _single_slice_spacing(slices[0])
    offsets = np.array([s.position - slices[0].position for s in slices])
    along = offsets @ normal
    in_plane = np.column_stack([offsets @ row, offsets @ col])
    spacing = float(along[-1] / (len(slices) - 1))
    off_grid = np.abs(along - spacing * np.arange(len(slices)))
    uniform = bool(off_grid.max() <= GRID_TOLERANCE_FRACTION * spacing)
    if not uniform:
        spacing = float(np.median(np.diff(along)))
    tilted = bool(np.linalg.norm(in_plane, axis=1).max() > GRID_TOLERANCE_FRACTION * pixel_spacing)
    axis = offsets[-1] / np.linalg.norm(offsets[-1])
    tilt = float(np.degrees(np.arccos(np.clip(np.dot(axis, normal), -1.0, 1.0))))
    report = GridReport(
        along_normal_mm=tuple(float(v) for v in along),
        in_plane_offsets_mm=tuple((float(a), float(b)) for a, b in in_plane),
        uniform_spacing=uniform,
        tilted=tilted,
        tilt_degrees=tilt,
        resampled=False,
        dropped=dropped,
    )
    return report, spacing


def _single_slice_spacing(item: _Slice) -> float:
    measures = (
        _functional_group(item.dataset, item.frame, "PixelMeasuresSequence")
        if item.frame is not None
        else None
    )
    for source in (measures, item.dataset):
        for keyword in ("SpacingBetweenSlices", "SliceThickness"):
            value = None if source is None else source.get(keyword)
            if value not in (None, "") and float(value) > 0:
                return float(value)
    raise SeriesError(
        f"{item.where}: a single slice needs {tag_name('SpacingBetweenSlices')} or "
        f"{tag_name('SliceThickness')} for its slice spacing; both are missing"
    )


def _refuse_irregular(
    slices: list[_Slice], grid: GridReport, spacing: float, pixel_spacing: float
) -> None:
    along = np.asarray(grid.along_normal_mm)
    if not grid.uniform_spacing:
        regular = along[-1] / (len(slices) - 1)
        off_grid = np.abs(along - regular * np.arange(len(slices)))
        worst = int(np.argmax(off_grid))
        gaps = ", ".join(f"{gap:.3f}" for gap in grid.slice_gaps_mm)
        raise SeriesError(
            f"{slices[worst].where}: {tag_name('ImagePositionPatient')} is "
            f"{off_grid[worst]:.3f} mm off a regular grid of {regular:.3f} mm along the slice "
            f"normal (gaps between slices in mm: {gaps}): missing slices or irregular spacing; "
            "read with irregular_grid='resample' to resample"
        )
    shifts = np.linalg.norm(np.asarray(grid.in_plane_offsets_mm), axis=1)
    worst = int(np.argmax(shifts))
    raise SeriesError(
        f"{slices[worst].where}: {tag_name('ImagePositionPatient')} is {shifts[worst]:.3f} "
        f"mm off the slice normal through {slices[0].where} within the image plane: the "
        f"slices are not stacked along the normal of {tag_name('ImageOrientationPatient')} "
        f"(gantry tilt of {grid.tilt_degrees:.2f} degrees or sheared stack); read with "
        "irregular_grid='resample' to resample"
    )


def _decoded(item: _Slice) -> np.ndarray:
    """Modality values of one slice (PS3.3 C.11.1 or, for a frame, C.7.6.16.2.9)."""
    try:
        stored = item.dataset.pixel_array
    except Exception as error:  # pydicom raises several types for undecodable pixel data
        syntax = item.dataset.file_meta.get("TransferSyntaxUID", "unknown")
        raise SeriesError(
            f"{item.path}: {tag_name('PixelData')} cannot be decoded (transfer syntax "
            f"{syntax}): {error}"
        ) from error
    rows, columns = int(item.dataset.Rows), int(item.dataset.Columns)
    if item.frame is None:
        if stored.shape != (rows, columns):
            raise SeriesError(
                f"{item.path}: {tag_name('PixelData')} has shape {stored.shape}, expected "
                f"{(rows, columns)} from {tag_name('Rows')} and {tag_name('Columns')}"
            )
        return np.asarray(apply_modality_lut(stored, item.dataset), dtype=np.float32)
    frames = stored.reshape(-1, rows, columns)
    if item.frame >= frames.shape[0]:
        raise SeriesError(
            f"{item.where}: {tag_name('PixelData')} holds {frames.shape[0]} frames of "
            f"{rows} x {columns}"
        )
    values = frames[item.frame].astype(np.float64)
    transform = _functional_group(item.dataset, item.frame, "PixelValueTransformationSequence")
    if transform is not None:
        values = values * float(transform.get("RescaleSlope", 1.0)) + float(
            transform.get("RescaleIntercept", 0.0)
        )
    return values.astype(np.float32)
