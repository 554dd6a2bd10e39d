"""DICOM Segmentation (SEG) or RT Structure Set to one binary mask per segment on the grid of its
source series.

A SEG is decoded by geometry (PS3.3 A.51 Segmentation IOD, C.8.20 Segmentation Image Module).
Each frame carries its own geometry in the Plane Position (Patient), Plane Orientation (Patient)
and Pixel Measures functional groups (PS3.3 C.7.6.16.2.3, .2.4, .2.1; a per-frame item wins over
the shared one, PS3.3 C.7.6.16), in the Frame of Reference that the SEG shares with its source
series (PS3.3 C.7.4.1). A frame's Rows x Columns need not be the source's.

* Slice: the source slice that the frame's Derivation Image functional group names (PS3.3
  C.7.6.16.2.6, Source Image Sequence (0008,2112) > Referenced SOP Instance UID (0008,1155), and
  Referenced Frame Number (0008,1160) for a multi-frame source), when that slice is in the volume;
  otherwise (no reference: the group is Type 1C; or a reference to an image that is not a slice of
  the volume) the slice whose plane the frame's Image Position (Patient) lies on, along the slice
  normal. Either way the frame's position must lie on the slice's plane, within a tenth of the
  slice spacing along the normal.
* In-plane place: (frame position - slice position) on the row and column direction cosines,
  divided by the column and row spacings, is the frame's first pixel on the slice; it must be a
  whole number of pixels (within a tenth of a pixel). The frame's own position wins over a source
  reference in the plane, so a SEG cropped to the segmented region (Spatial Locations Preserved
  (0028,135A) NO, as highdicom writes it) lands where it lies. A frame without a Plane Position
  lies on its source slice pixel for pixel: it must then have the slice's Rows x Columns and
  Spatial Locations Preserved YES (or absent).
* The frame's Image Orientation (Patient) and Pixel Spacing must be the volume's (to rounding):
  a SEG of another resolution or orientation would need resampling and is refused.
* The frame is pasted at its place and clipped to the slice; a set pixel outside the volume is
  refused.

Source slices without a frame are empty for that segment (PS3.3 C.8.20.2: frames that hold no
segmented pixels may be omitted). Frames of one segment on one slice combine by maximum.
FRACTIONAL segmentations are thresholded on the fraction stored value / Maximum Fractional Value
(PS3.3 C.8.20.2.3). A LABELMAP segmentation (Label Map Segmentation Storage, or Segmentation Type
LABELMAP, PS3.3 C.8.20.2) stores in each pixel the number of its segment, so segments cannot
overlap there, while BINARY and FRACTIONAL segments may; its background is no segment: segment
number 0, the number that Pixel Padding Value (0028,0120) gives (which the standard uses to name
the background of a label map), and a segment whose Segmented Property Type is Background
(DCM 125040, as highdicom describes the segment 0 that it adds) are never returned.

Every refusal is a :class:`SegmentationError` whose one-line message names the file, the attribute
and the reason; errors of pydicom and highdicom are wrapped in one. RTSTRUCT objects are
rasterised by :mod:`pipelines.io.rtstruct`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.datadict import keyword_for_tag
from pydicom.sr.codedict import codes
from pydicom.tag import BaseTag

from pipelines.io.references import referenced_series_uids
from pipelines.io.rtstruct import RTSTRUCT_SOP_CLASS_UID, RTStructError, read_rtstruct
from pipelines.io.series import Grid, SeriesVolume, resample_stack, tag_name

# Segmentation Storage and Label Map Segmentation Storage (PS3.4 B.5).
SEGMENTATION_SOP_CLASS_UIDS = frozenset(
    {"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"}
)
# Frame geometry may differ from the source slice's by rounding only.
ORIENTATION_TOLERANCE = 1e-4
PIXEL_SPACING_TOLERANCE_MM = 1e-3
# A frame's Image Position (Patient) may lie this fraction of a pixel off the volume's pixel grid
# within the plane, and this fraction of the slice spacing off its slice's plane along the normal.
POSITION_TOLERANCE_FRACTION = 0.1
# Segmented Property Type of the background segment of a label map (highdicom writes DCM 125040).
BACKGROUND_CODES = frozenset({("125040", "DCM")})
# Library errors longer than this are cut in a refusal's message.
_MESSAGE_CHARACTERS = 300


class SegmentationError(ValueError):
    """A SEG cannot be placed on a volume; the message names file, tag and reason."""


@dataclass(frozen=True)
class Segment:
    """One segment of a SEG (or ROI of an RT Structure Set): a 0/1 sitkUInt8 mask on the grid of
    the source volume, with the Segment Description's number, label, category, type and
    algorithm type (PS3.3 C.8.20.2).

    ``region`` holds the mask on a region of the source grid whose voxel (0, 0, 0) is source voxel
    ``index``; ``grid`` is the source grid, and None when ``region`` is the whole of it. Only the
    bounding box of the mask's voxels is kept (an empty mask keeps one zero voxel): a full-grid
    mask of a 600-slice 512 x 512 CT is 157 MB, ten of them 1.5 GB, a lesion's box a few MB.
    ``mask`` rebuilds the full-grid image, a new one on each access, for callers that need one.
    """

    number: int
    label: str
    region: sitk.Image
    category: hd.sr.CodedConcept
    property_type: hd.sr.CodedConcept
    algorithm_type: str
    index: tuple[int, ...] = (0, 0, 0)
    grid: Grid | None = None

    def __post_init__(self) -> None:
        box = voxel_box(self.region)
        dimension = self.region.GetDimension()
        lower, size = box if box is not None else ([0] * dimension, [1] * dimension)
        region = sitk.Cast(sitk.RegionOfInterest(self.region, size, lower) > 0, sitk.sitkUInt8)
        object.__setattr__(self, "grid", self.grid or Grid.of(self.region))
        object.__setattr__(self, "index",
                           tuple(int(i) + lo for i, lo in zip(self.index, lower, strict=True)))
        object.__setattr__(self, "region", region)

    @property
    def mask(self) -> sitk.Image:
        """The 0/1 sitkUInt8 mask with the source volume's size and geometry (a new image)."""
        assert self.grid is not None  # set by __post_init__
        full = self.grid.blank()
        size = self.region.GetSize()
        full[tuple(slice(i, i + n) for i, n in zip(self.index, size, strict=True))] = self.region
        return full


def voxel_box(mask: sitk.Image) -> tuple[list[int], list[int]] | None:
    """(lower index, size) of the bounding box of the mask's nonzero voxels, or None when it has
    none."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(mask > 0, sitk.sitkUInt8))
    if not stats.HasLabel(1):
        return None
    box = stats.GetBoundingBox(1)
    dimension = mask.GetDimension()
    return list(box[:dimension]), list(box[dimension:])


@dataclass(frozen=True)
class DecodedSegmentation:
    """A SEG or RTSTRUCT and its segments (ROIs) decoded on the grid of one source volume.

    ``dataset`` is the source object: a highdicom Segmentation for a SEG, the pydicom Dataset of
    an RT Structure Set. ``not_measured`` holds one line for each ROI of an RT Structure Set that
    encloses no voxel (only point, open or no contours, :func:`pipelines.io.rtstruct.read_rtstruct`)
    and is not among ``segments``; it is empty for a SEG.
    """

    dataset: hd.seg.Segmentation | pydicom.Dataset
    path: Path
    segments: tuple[Segment, ...]
    not_measured: tuple[str, ...] = ()

    @property
    def sop_instance_uid(self) -> str:
        """SOP Instance UID (0008,0018) of the SEG."""
        return str(self.dataset.SOPInstanceUID)

    @property
    def series_instance_uid(self) -> str:
        """Series Instance UID (0020,000E) of the SEG."""
        return str(self.dataset.SeriesInstanceUID)

    @property
    def sop_class_uid(self) -> str:
        """SOP Class UID (0008,0016) of the SEG."""
        return str(self.dataset.SOPClassUID)

    @property
    def is_rtstruct(self) -> bool:
        """Whether the source object is an RT Structure Set rather than a SEG."""
        return self.sop_class_uid == RTSTRUCT_SOP_CLASS_UID


def read_segmentation(
    path: Path, volume: SeriesVolume, fractional_threshold: float = 0.5
) -> DecodedSegmentation:
    """Decode each segment of the SEG, or each ROI of the RT Structure Set, at ``path`` on
    ``volume``'s grid; the SOP Class UID (0008,0016) decides which (PS3.4 B.5).

    SEG (PS3.3 A.51, C.8.20): a FRACTIONAL segment's voxel is in the mask when its fraction is at
    least ``fractional_threshold``; a BINARY segment's voxel when it is set; a LABELMAP segment's
    voxel when its stored value is the segment number (PS3.3 C.8.20.2), the background of a label
    map being no segment. Each frame is placed by its own geometry (module docstring): on the
    source slice its Derivation Image functional group names, or else on the slice its Plane
    Position (Patient) lies on, at the whole-pixel offset that position gives within the plane
    (PS3.3 C.7.6.16.2); frames of any Rows x Columns are pasted there and clipped to the volume.
    On a volume resampled from an irregular stack, the masks are resampled with the image's
    interpolation and kept where they reach 0.5. RTSTRUCT: see :mod:`pipelines.io.rtstruct`.

    Raises:
        SegmentationError: when the file is neither, references another series or frame of
            reference, has frames on slices that are not in the volume, frames off the volume's
            pixel grid or of another pixel spacing or orientation, or set pixels outside the
            volume; also for any error pydicom or highdicom raise while reading it. The message
            is one line naming the file, the attribute and the reason.
    """
    path = Path(path)
    if not 0.0 < fractional_threshold <= 1.0:
        raise SegmentationError(
            f"{path}: fractional_threshold is {fractional_threshold}; it must be in (0, 1]"
        )
    dataset = _dataset(path)
    try:
        if str(dataset.get("SOPClassUID", "")) == RTSTRUCT_SOP_CLASS_UID:
            return _read_structure_set(path, dataset, volume)
        return _read_seg(path, dataset, volume, fractional_threshold)
    except SegmentationError:
        raise
    except MemoryError:
        raise
    except Exception as error:  # pydicom and highdicom raise many types on malformed objects
        raise SegmentationError(
            f"{path}: cannot be decoded ({type(error).__name__}: {_one_line(error)})"
        ) from error


def _read_structure_set(
    path: Path, dataset: pydicom.Dataset, volume: SeriesVolume
) -> DecodedSegmentation:
    """The ROIs of an RT Structure Set as segments (:mod:`pipelines.io.rtstruct`)."""
    try:
        rois, not_measured = read_rtstruct(path, dataset, volume)
    except RTStructError as error:
        raise SegmentationError(str(error)) from error
    return DecodedSegmentation(
        dataset=dataset,
        path=path,
        not_measured=tuple(not_measured),
        segments=tuple(
            Segment(
                number=roi.number,
                label=roi.name,
                region=roi.mask,
                category=roi.category,
                property_type=roi.property_type,
                algorithm_type=roi.algorithm_type,
            )
            for roi in rois
        ),
    )


@dataclass(frozen=True)
class _Placement:
    """Where one SEG frame lies on the volume: on acquired slice ``slice_index`` (an index into
    ``volume.slices``), with its first pixel at (``row``, ``column``) of that slice; either may
    be negative or put part of the frame past the slice's edge (the frame is then clipped)."""

    frame: int
    slice_index: int
    row: int
    column: int


def _read_seg(
    path: Path, dataset: pydicom.Dataset, volume: SeriesVolume, fractional_threshold: float
) -> DecodedSegmentation:
    """:func:`read_segmentation` for a Segmentation (PS3.3 A.51)."""
    seg = _read(path, dataset)
    _check_references(path, seg, volume)
    kind = seg.segmentation_type
    numbers = _segment_numbers(path, seg, kind)
    placements = _place_frames(path, seg, volume)
    frames = _frames(path, seg)
    if kind == hd.seg.SegmentationTypeValues.FRACTIONAL:
        maximum = _number(path, seg, "MaximumFractionalValue")
        frames = frames.astype(np.float32) / float(maximum)

    # The placements of each segment's frames: a BINARY or FRACTIONAL frame holds the segment its
    # Segment Identification names (PS3.3 C.8.20.3), a LABELMAP frame every value it holds.
    of_segment: dict[int, list[_Placement]] = {number: [] for number in numbers}
    for placement in placements:
        if kind == hd.seg.SegmentationTypeValues.LABELMAP:
            frame = frames[placement.frame]
            held = np.unique(frame[frame != 0])  # 0 is the background, never a segment
        else:
            held = [_frame_segment(path, seg, placement.frame)]
        for number in held:
            if int(number) in of_segment:
                of_segment[int(number)].append(placement)

    rows, columns = volume.image.GetSize()[1], volume.image.GetSize()[0]
    segments = []
    for number in numbers:
        # A voxel is in the segment when any frame of the segment on its slice sets it: the
        # maximum over those frames reaches the threshold exactly when one of them does.
        planes: dict[int, np.ndarray] = {}
        for placement in of_segment[number]:
            frame = frames[placement.frame]
            if kind == hd.seg.SegmentationTypeValues.LABELMAP:
                voxels = frame == number
            elif kind == hd.seg.SegmentationTypeValues.FRACTIONAL:
                voxels = frame >= fractional_threshold
            else:
                voxels = frame > 0
            plane = _pasted(path, placement, voxels, (rows, columns), number)
            index = placement.slice_index
            planes[index] = planes[index] | plane if index in planes else plane
        region, index = _segment_region(planes, volume)
        label, category, property_type, algorithm_type = _description(path, seg, number)
        segments.append(Segment(
            number, label, region, category, property_type, algorithm_type, index,
            Grid.of(volume.image),
        ))
    return DecodedSegmentation(dataset=seg, path=path, segments=tuple(segments))


def _pasted(path: Path, placement: _Placement, voxels: np.ndarray, shape: tuple[int, int],
            number: int) -> np.ndarray:
    """A frame's boolean ``voxels`` on a plane of ``shape`` (rows, columns) at its placement;
    refused when a set pixel falls outside the plane."""
    row, column = placement.row, placement.column
    if (row, column) == (0, 0) and voxels.shape == shape:
        return voxels
    top, left = max(row, 0), max(column, 0)
    bottom = min(row + voxels.shape[0], shape[0])
    right = min(column + voxels.shape[1], shape[1])
    plane = np.zeros(shape, dtype=bool)
    if bottom > top and right > left:
        plane[top:bottom, left:right] = voxels[top - row:bottom - row, left - column:right - column]
    outside = int(np.count_nonzero(voxels)) - int(np.count_nonzero(plane))
    if outside:
        raise SegmentationError(
            f"{path}: frame {placement.frame + 1}: {outside} pixels of segment {number} lie "
            f"outside the volume: its {tag_name('ImagePositionPatient')} puts its first pixel at "
            f"row {row}, column {column} of a {shape[0]} x {shape[1]} slice and its "
            f"{tag_name('Rows')} x {tag_name('Columns')} are {voxels.shape[0]} x {voxels.shape[1]}"
        )
    return plane


def _segment_region(planes: dict[int, np.ndarray],
                    volume: SeriesVolume) -> tuple[sitk.Image, tuple[int, ...]]:
    """The 0/1 sitkUInt8 bounding box of a segment given as (acquired slice index -> boolean
    plane), and its index on the volume's grid. On a volume resampled from an irregular stack
    the planes are resampled like the image and kept where they reach 0.5."""
    grid = Grid.of(volume.image)
    rows, columns = grid.size[1], grid.size[0]
    if volume.resampled and volume.grid is not None:
        stack = np.zeros((len(volume.slices), rows, columns), dtype=np.float32)
        for slice_index, voxels in planes.items():
            stack[slice_index] = voxels
        spacing = grid.spacing
        resampled = resample_stack(stack, volume.grid, (spacing[1], spacing[0]), spacing[2])
        planes = {k: plane for k, plane in enumerate(resampled >= 0.5) if plane.any()}
    planes = {k: plane for k, plane in planes.items() if plane.any()}
    if not planes:
        region = sitk.Image([1, 1, 1], sitk.sitkUInt8)
        index = (0, 0, 0)
    else:
        touched = np.logical_or.reduce(list(planes.values()))
        y = np.flatnonzero(touched.any(axis=1))
        x = np.flatnonzero(touched.any(axis=0))
        z = sorted(planes)
        box = np.zeros((z[-1] - z[0] + 1, y[-1] - y[0] + 1, x[-1] - x[0] + 1), dtype=np.uint8)
        for slice_index, voxels in planes.items():
            box[slice_index - z[0]] = voxels[y[0]:y[-1] + 1, x[0]:x[-1] + 1]
        region = sitk.GetImageFromArray(box)
        index = (int(x[0]), int(y[0]), int(z[0]))
    region.SetSpacing(grid.spacing)
    region.SetDirection(grid.direction)
    region.SetOrigin(volume.image.TransformIndexToPhysicalPoint(index))
    return region, index


def _one_line(error: BaseException) -> str:
    """A library error's text on one line, cut to a readable length; a missing attribute that
    pydicom reports as a KeyError of its tag is named as ``(gggg,eeee) Keyword is missing``."""
    if isinstance(error, KeyError) and len(error.args) == 1 and isinstance(error.args[0], BaseTag):
        tag = error.args[0]
        keyword = keyword_for_tag(tag)
        return f"({tag.group:04X},{tag.element:04X}) {keyword} is missing".replace("  ", " ")
    text = " ".join(str(error).split())
    return text if len(text) <= _MESSAGE_CHARACTERS else text[:_MESSAGE_CHARACTERS] + "..."


def _dataset(path: Path) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path)
    except MemoryError:
        raise
    except Exception as error:  # InvalidDicomError, OSError, and others on a truncated file
        raise SegmentationError(
            f"{path}: not a readable DICOM file ({type(error).__name__}: {_one_line(error)})"
        ) from error


def _frames(path: Path, seg: hd.seg.Segmentation) -> np.ndarray:
    """All frames as (frames, rows, columns) stored values (bit-packed BINARY unpacked)."""
    try:
        pixels = seg.pixel_array
        return pixels.reshape(_number_of_frames(seg), int(seg.Rows), int(seg.Columns))
    except MemoryError:
        raise
    except Exception as error:  # pydicom raises several types for undecodable pixel data
        raise SegmentationError(
            f"{path}: {tag_name('PixelData')} cannot be decoded: {_one_line(error)}"
        ) from error


def _number_of_frames(seg: pydicom.Dataset) -> int:
    return int(seg.get("NumberOfFrames", 1) or 1)


def _number(path: Path, seg: pydicom.Dataset, keyword: str) -> float:
    """A positive number that the SEG must carry (e.g. Maximum Fractional Value (0062,000E))."""
    value = seg.get(keyword)
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = float("nan")
    if not number > 0:
        raise SegmentationError(f"{path}: {tag_name(keyword)} is {value!r}: not a positive number")
    return number


def _frame_segment(path: Path, seg: hd.seg.Segmentation, frame: int) -> int:
    """Referenced Segment Number (0062,000B) of a BINARY or FRACTIONAL frame (PS3.3 C.8.20.3)."""
    item = _functional_group(seg, frame, "SegmentIdentificationSequence")
    if item is None or item.get("ReferencedSegmentNumber") in (None, ""):
        raise SegmentationError(
            f"{path}: frame {frame + 1} has no {tag_name('ReferencedSegmentNumber')} in its "
            f"{tag_name('SegmentIdentificationSequence')} (PS3.3 C.8.20.3)"
        )
    return int(item.ReferencedSegmentNumber)


def _segment_numbers(
    path: Path, seg: hd.seg.Segmentation, kind: hd.seg.SegmentationTypeValues
) -> list[int]:
    """Segment Number (0062,0004) of each item of Segment Sequence (0062,0002), in its order
    (PS3.3 C.8.20.2), leaving out the background of a LABELMAP segmentation: segment 0, the
    segment whose number is Pixel Padding Value (0028,0120), and a segment whose Segmented
    Property Type is Background (:data:`BACKGROUND_CODES`, or the meaning "Background")."""
    labelmap = kind == hd.seg.SegmentationTypeValues.LABELMAP
    padding = seg.get("PixelPaddingValue") if labelmap else None
    numbers = []
    for position, item in enumerate(seg.get("SegmentSequence", []), start=1):
        try:
            number = int(item.SegmentNumber)
        except (AttributeError, TypeError, ValueError) as error:
            raise SegmentationError(
                f"{path}: {tag_name('SegmentSequence')} item {position} has no valid "
                f"{tag_name('SegmentNumber')} ({_one_line(error)})"
            ) from error
        if labelmap and _is_background(item, number, padding):
            continue
        numbers.append(number)
    return numbers


def _is_background(item: pydicom.Dataset, number: int, padding: object) -> bool:
    """Whether a label map's segment description is its background (:func:`_segment_numbers`)."""
    if number == 0 or (isinstance(padding, int) and number == padding):
        return True
    for code in item.get("SegmentedPropertyTypeCodeSequence", []):
        value = str(code.get("CodeValue", "") or "").strip()
        scheme = str(code.get("CodingSchemeDesignator", "") or "").strip()
        meaning = str(code.get("CodeMeaning", "") or "").strip()
        if (value, scheme) in BACKGROUND_CODES or meaning.lower() == "background":
            return True
    return False


def _description(
    path: Path, seg: hd.seg.Segmentation, number: int
) -> tuple[str, hd.sr.CodedConcept, hd.sr.CodedConcept, str]:
    """Label, category, property type and algorithm type of one segment (PS3.3 C.8.20.2)."""
    try:
        description = seg.get_segment_description(number)
        return (
            str(description.segment_label),
            description.segmented_property_category,
            description.segmented_property_type,
            description.algorithm_type.value,
        )
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as error:
        raise SegmentationError(
            f"{path}: the {tag_name('SegmentSequence')} item of segment {number} cannot be "
            f"read: {_one_line(error)}"
        ) from error


def load_standard_tables() -> None:
    """Have highdicom read its tables of the standard's modules and attributes (PS3.3, shipped
    as JSON and parsed on first use: about 0.4 s) now, as :func:`read_segmentation` would on the
    first SEG it opens, by reading back one Segment Description (PS3.3 C.8.20.4). A job worker
    calls this when it starts, so that the first study after a start does not wait for it."""
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="tables",
        segmented_property_category=codes.SCT.Tissue, segmented_property_type=codes.SCT.Tissue,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    hd.seg.SegmentDescription.from_dataset(description)


def _read(path: Path, dataset: pydicom.Dataset) -> hd.seg.Segmentation:
    """Check that a dataset is a Segmentation (PS3.3 A.51) and open it with highdicom."""
    sop_class = str(dataset.get("SOPClassUID", ""))
    if sop_class not in SEGMENTATION_SOP_CLASS_UIDS:
        raise SegmentationError(
            f"{path}: {tag_name('SOPClassUID')} is {sop_class!r}: neither a Segmentation Storage "
            "SOP Class nor RT Structure Set Storage (PS3.4 B.5)"
        )
    if "PerFrameFunctionalGroupsSequence" not in dataset:
        raise SegmentationError(
            f"{path}: {tag_name('PerFrameFunctionalGroupsSequence')} is missing: the frames "
            "cannot be placed on source slices"
        )
    frames = _number_of_frames(dataset)
    if len(dataset.PerFrameFunctionalGroupsSequence) != frames:
        raise SegmentationError(
            f"{path}: {tag_name('PerFrameFunctionalGroupsSequence')} has "
            f"{len(dataset.PerFrameFunctionalGroupsSequence)} items for {frames} frames "
            f"({tag_name('NumberOfFrames')}); it needs one per frame (PS3.3 C.7.6.16)"
        )
    try:
        return hd.seg.Segmentation.from_dataset(dataset, copy=False)
    except MemoryError:
        raise
    except Exception as error:  # highdicom checks the IOD and raises several types
        raise SegmentationError(
            f"{path}: not a valid Segmentation ({type(error).__name__}: {_one_line(error)})"
        ) from error


def _check_references(path: Path, seg: hd.seg.Segmentation, volume: SeriesVolume) -> None:
    """The SEG must reference the volume's series (PS3.3 C.12.2) and share its Frame of
    Reference (PS3.3 C.7.4.1): its Plane Positions are in that patient coordinate system."""
    referenced = referenced_series_uids(seg)
    if volume.series_instance_uid not in referenced:
        raise SegmentationError(
            f"{path}: {tag_name('ReferencedSeriesSequence')} lists {sorted(referenced)}, not the "
            f"volume's series {volume.series_instance_uid}"
        )
    frame_of_reference = seg.get("FrameOfReferenceUID")
    if frame_of_reference is not None and frame_of_reference != volume.frame_of_reference_uid:
        raise SegmentationError(
            f"{path}: {tag_name('FrameOfReferenceUID')} is {frame_of_reference}, the volume's is "
            f"{volume.frame_of_reference_uid}: its segments lie in another patient coordinate "
            "system and cannot be placed on the volume"
        )


def _functional_group(seg: pydicom.Dataset, frame: int, keyword: str) -> pydicom.Dataset | None:
    """First item of a functional group macro for one frame, per-frame before shared
    (PS3.3 C.7.6.16)."""
    shared = seg.get("SharedFunctionalGroupsSequence") or [pydicom.Dataset()]
    for groups in (seg.PerFrameFunctionalGroupsSequence[frame], shared[0]):
        if keyword in groups and groups[keyword].value:
            return groups[keyword].value[0]
    return None


def _frame_values(
    where: str, seg: pydicom.Dataset, frame: int, group: str, keyword: str, count: int
) -> np.ndarray | None:
    """The ``count`` numbers of ``keyword`` in a frame's functional ``group`` (None when the
    group or the attribute is absent or empty); refused when they are not ``count`` numbers."""
    item = _functional_group(seg, frame, group)
    value = None if item is None else item.get(keyword)
    if value is None or value == "":
        return None
    try:
        values = np.array([float(v) for v in np.atleast_1d(value)], dtype=float)
    except (TypeError, ValueError):
        values = np.array([], dtype=float)
    if values.shape != (count,) or not np.isfinite(values).all():
        raise SegmentationError(
            f"{where}: {tag_name(keyword)} in its {tag_name(group)} is {value!r}: not {count} "
            "numbers"
        )
    return values


@dataclass(frozen=True)
class _Axes:
    """The volume's geometry as the frames are placed on it: direction cosines, spacings (mm),
    slice positions and their distance along the normal, tolerances."""

    row: np.ndarray  # row direction cosines (along a row: increasing column index)
    column: np.ndarray  # column direction cosines (down a column: increasing row index)
    normal: np.ndarray
    column_spacing: float
    row_spacing: float
    positions: np.ndarray  # (slices, 3) Image Position (Patient) of each acquired slice
    along: np.ndarray  # each slice's position on the normal
    normal_tolerance: float  # mm

    @classmethod
    def of(cls, volume: SeriesVolume) -> _Axes:
        direction = np.array(volume.image.GetDirection(), dtype=float).reshape(3, 3)
        spacing = volume.image.GetSpacing()
        positions = np.array([s.position for s in volume.slices], dtype=float).reshape(-1, 3)
        return cls(
            row=direction[:, 0], column=direction[:, 1], normal=direction[:, 2],
            column_spacing=float(spacing[0]), row_spacing=float(spacing[1]),
            positions=positions, along=positions @ direction[:, 2],
            normal_tolerance=POSITION_TOLERANCE_FRACTION * float(spacing[2]),
        )

    @property
    def orientation(self) -> np.ndarray:
        """Image Orientation (Patient): row cosines, then column cosines."""
        return np.concatenate([self.row, self.column])

    @property
    def pixel_spacing(self) -> np.ndarray:
        """Pixel Spacing: (row spacing, column spacing)."""
        return np.array([self.row_spacing, self.column_spacing])

    def nearest(self, position: np.ndarray) -> tuple[int, float]:
        """The slice nearest ``position`` along the normal, and the distance to its plane."""
        distances = np.abs(self.along - float(position @ self.normal))
        nearest = int(np.argmin(distances))
        return nearest, float(distances[nearest])


def _place_frames(path: Path, seg: hd.seg.Segmentation, volume: SeriesVolume) -> list[_Placement]:
    """Where each frame lies on the volume (module docstring), after checking its orientation and
    pixel spacing against the volume's (PS3.3 C.7.6.16.2.1, C.7.6.16.2.4); a frame that names
    several source slices is placed on each of them."""
    slices = volume.slices
    axes = _Axes.of(volume)
    by_source = {(s.sop_instance_uid, s.frame_number): k for k, s in enumerate(slices)}
    by_instance: dict[str, list[int]] = {}
    for k, s in enumerate(slices):
        by_instance.setdefault(s.sop_instance_uid, []).append(k)
    shape = (int(seg.Rows), int(seg.Columns))
    volume_shape = (volume.image.GetSize()[1], volume.image.GetSize()[0])
    placements = []
    for frame in range(_number_of_frames(seg)):
        where = f"{path}: frame {frame + 1}"
        orientation = _frame_values(where, seg, frame, "PlaneOrientationSequence",
                                    "ImageOrientationPatient", 6)
        if orientation is not None and (
            np.max(np.abs(orientation - axes.orientation)) > ORIENTATION_TOLERANCE
        ):
            raise SegmentationError(
                f"{where}: {tag_name('ImageOrientationPatient')} is {orientation.tolist()}, the "
                f"volume's is {axes.orientation.tolist()}"
            )
        pixel_spacing = _frame_values(where, seg, frame, "PixelMeasuresSequence", "PixelSpacing", 2)
        if pixel_spacing is not None and (
            np.max(np.abs(pixel_spacing - axes.pixel_spacing)) > PIXEL_SPACING_TOLERANCE_MM
        ):
            raise SegmentationError(
                f"{where}: {tag_name('PixelSpacing')} is {pixel_spacing.tolist()}, the volume's "
                f"is {axes.pixel_spacing.tolist()}: a SEG of another resolution is not resampled"
            )
        position = _frame_values(where, seg, frame, "PlanePositionSequence",
                                 "ImagePositionPatient", 3)
        targets = _referenced_slices(where, seg, frame, position, axes, by_source, by_instance,
                                     volume)
        if not targets:
            if position is None:
                raise SegmentationError(
                    f"{where} has neither a {tag_name('SourceImageSequence')} in its "
                    f"{tag_name('DerivationImageSequence')} nor a "
                    f"{tag_name('PlanePositionSequence')}: it cannot be placed on a source slice"
                )
            nearest, distance = axes.nearest(position)
            if distance > axes.normal_tolerance:
                raise SegmentationError(
                    f"{where}: {tag_name('ImagePositionPatient')} is {position.tolist()}, on no "
                    f"slice of the volume (nearest {list(slices[nearest].position)}, "
                    f"{distance:.3g} mm away along the normal); the frame names no source image "
                    f"of the volume in a {tag_name('DerivationImageSequence')}"
                )
            targets = [nearest]
        for target in targets:
            if position is None:
                if shape != volume_shape:
                    raise SegmentationError(
                        f"{where} has no {tag_name('PlanePositionSequence')} and its "
                        f"{tag_name('Rows')} x {tag_name('Columns')} are {shape[0]} x {shape[1]}, "
                        f"its source slice's {volume_shape[0]} x {volume_shape[1]}: it cannot be "
                        "placed on the slice"
                    )
                placements.append(_Placement(frame, target, 0, 0))
                continue
            row, column = _in_plane(where, position, target, axes, slices[target].sop_instance_uid)
            placements.append(_Placement(frame, target, row, column))
    return placements


def _referenced_slices(
    where: str, seg: hd.seg.Segmentation, frame: int, position: np.ndarray | None, axes: _Axes,
    by_source: dict[tuple[str, int | None], int], by_instance: dict[str, list[int]],
    volume: SeriesVolume,
) -> list[int]:
    """The volume's slices that a frame's Derivation Image functional group names
    (PS3.3 C.7.6.16.2.6): empty when it names none; when it names only images that are not
    slices of the volume, empty if the frame has a Plane Position to be placed by, refused
    otherwise. Without a Plane Position, Spatial Locations Preserved (0028,135A) must be YES or
    absent: the frame is then placed pixel for pixel on its source."""
    derivation = _functional_group(seg, frame, "DerivationImageSequence")
    sources = [] if derivation is None else list(derivation.get("SourceImageSequence", []))
    targets: list[int] = []
    missing: list[str] = []
    for source in sources:
        uid = str(source.get("ReferencedSOPInstanceUID", "") or "")
        numbers = source.get("ReferencedFrameNumber")
        if numbers in (None, ""):
            # No frame number: the whole instance (PS3.3 C.12.1.1.3.1); the plane position
            # picks the frame of a multi-frame source.
            found = by_instance.get(uid, [])
            if len(found) > 1 and position is not None:
                along = float(position @ axes.normal)
                found = [min(found, key=lambda k: abs(axes.along[k] - along))]
        else:
            keys = [(uid, int(n)) for n in _iterable(numbers)]
            found = [by_source[key] for key in keys if key in by_source]
        if not found:
            missing.append(uid + ("" if numbers in (None, "") else f" frame {numbers}"))
            continue
        preserved = source.get("SpatialLocationsPreserved")
        if preserved not in (None, "", "YES") and position is None:
            raise SegmentationError(
                f"{where}: {tag_name('SpatialLocationsPreserved')} is {preserved!r} and it has no "
                f"{tag_name('PlanePositionSequence')}: its pixels cannot be placed on its source "
                "slice"
            )
        targets.extend(k for k in found if k not in targets)
    if missing and not targets and position is None:
        raise SegmentationError(
            f"{where}: {tag_name('ReferencedSOPInstanceUID')} {', '.join(missing)} is not a slice "
            f"of the volume (series {volume.series_instance_uid}, {len(volume.slices)} slices) "
            f"and the frame has no {tag_name('PlanePositionSequence')}"
        )
    if missing and not targets and position is not None:
        nearest, distance = axes.nearest(position)
        if distance > axes.normal_tolerance:
            raise SegmentationError(
                f"{where}: {tag_name('ReferencedSOPInstanceUID')} {', '.join(missing)} is not a "
                f"slice of the volume (series {volume.series_instance_uid}, "
                f"{len(volume.slices)} slices) and its {tag_name('ImagePositionPatient')} "
                f"{position.tolist()} lies on no slice of it (nearest "
                f"{list(volume.slices[nearest].position)}, {distance:.3g} mm away along the normal)"
            )
    if position is not None:
        for target in targets:
            distance = abs(float(position @ axes.normal) - float(axes.along[target]))
            if distance > axes.normal_tolerance:
                raise SegmentationError(
                    f"{where}: {tag_name('ImagePositionPatient')} is {position.tolist()} but its "
                    f"source slice {volume.slices[target].sop_instance_uid} is at "
                    f"{list(volume.slices[target].position)}, {distance:.3g} mm away along the "
                    "normal"
                )
    return targets


def _iterable(value: object) -> Iterable[object]:
    """A multi-valued attribute's values, or a single value as a one-item list."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        return [value]
    return value


def _in_plane(
    where: str, position: np.ndarray, target: int, axes: _Axes, uid: str
) -> tuple[int, int]:
    """(row, column) of a frame's first pixel on its slice: its offset from the slice's Image
    Position (Patient) on the column and row direction cosines, in pixels; refused unless a whole
    number of pixels to a tenth of a pixel (PS3.3 C.7.6.2.1.1)."""
    offset = position - axes.positions[target]
    column = float(offset @ axes.row) / axes.column_spacing
    row = float(offset @ axes.column) / axes.row_spacing
    whole = (round(row), round(column))
    if max(abs(row - whole[0]), abs(column - whole[1])) > POSITION_TOLERANCE_FRACTION:
        raise SegmentationError(
            f"{where}: {tag_name('ImagePositionPatient')} is {position.tolist()}, {row:.3f} rows "
            f"and {column:.3f} columns from the first pixel of its slice {uid} at "
            f"{axes.positions[target].tolist()}: not on the volume's pixel grid (a tenth of a "
            "pixel allowed)"
        )
    return int(whole[0]), int(whole[1])
