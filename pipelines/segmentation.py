"""DICOM Segmentation (SEG) or RT Structure Set to one binary mask per segment on the grid of its
source series.

A SEG frame belongs to the source slice that its Derivation Image Functional Group names
(PS3.3 C.7.6.16.2.6 and C.8.20.3, Source Image Sequence (0008,2112) > Referenced SOP Instance UID
(0008,1155), and Referenced Frame Number (0008,1160) for a multi-frame source). A frame that names
no source (allowed: the functional group is Type 1C) is placed on the source slice at its Plane
Position (Patient). Masks are placed slice by slice after checking that the frame's geometry
(Plane Position, Plane Orientation, Pixel Measures functional groups, PS3.3 C.7.6.16.2) is the
source slice's geometry; source slices without a frame are empty for that segment
(PS3.3 C.8.20.2: frames that hold no segmented pixels may be omitted). Frames of one segment on one
slice combine by maximum. FRACTIONAL segmentations are thresholded on the fraction stored value /
Maximum Fractional Value (PS3.3 C.8.20.2.3); a LABELMAP segmentation (Label Map Segmentation
Storage, PS3.3 C.8.20.2) stores in each pixel the number of its segment, so segments cannot
overlap there, while BINARY and FRACTIONAL segments may. RTSTRUCT objects are rasterised by
:mod:`pipelines.rtstruct`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes

from pipelines.preprocess import Grid
from pipelines.rtstruct import RTSTRUCT_SOP_CLASS_UID, RTStructError, read_rtstruct
from pipelines.rtstruct import referenced_series_uids as rtstruct_referenced_series_uids
from pipelines.series import SeriesVolume, resample_stack, tag_name

# Segmentation Storage and Label Map Segmentation Storage (PS3.4 B.5).
SEGMENTATION_SOP_CLASS_UIDS = frozenset(
    {"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"}
)
# Frame geometry may differ from the source slice's by rounding only.
ORIENTATION_TOLERANCE = 1e-4
PIXEL_SPACING_TOLERANCE_MM = 1e-3
# A frame's Image Position (Patient) may lie this fraction of a pixel off its source slice's.
POSITION_TOLERANCE_FRACTION = 0.1


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
    an RT Structure Set.
    """

    dataset: hd.seg.Segmentation | pydicom.Dataset
    path: Path
    segments: tuple[Segment, ...]

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


def referenced_series_uids(seg: pydicom.Dataset) -> set[str]:
    """Series that a SEG or an RT Structure Set references (empty UIDs dropped).

    SEG: Referenced Series Sequence (0008,1115) of the Common Instance Reference Module
    (PS3.3 C.12.2), which lists every series in the same study that holds an instance the SEG
    references. RTSTRUCT: Referenced Frame of Reference Sequence > RT Referenced Study
    Sequence > RT Referenced Series Sequence (PS3.3 C.8.8.5),
    :func:`pipelines.rtstruct.referenced_series_uids`.
    """
    if str(seg.get("SOPClassUID", "")) == RTSTRUCT_SOP_CLASS_UID:
        return rtstruct_referenced_series_uids(seg)
    return {
        str(item.get("SeriesInstanceUID", "") or "").strip()
        for item in seg.get("ReferencedSeriesSequence", [])
    } - {""}


def read_segmentation(
    path: Path, volume: SeriesVolume, fractional_threshold: float = 0.5
) -> DecodedSegmentation:
    """Decode each segment of the SEG, or each ROI of the RT Structure Set, at ``path`` on
    ``volume``'s grid; the SOP Class UID (0008,0016) decides which (PS3.4 B.5).

    SEG: a FRACTIONAL segment's voxel is in the mask when its fraction is at least
    ``fractional_threshold``; a BINARY segment's voxel when it is set; a LABELMAP segment's voxel
    when its stored value is the segment number (PS3.3 C.8.20.2). A frame is placed on the source
    slice its Derivation Image functional group names (SOP instance and, for a multi-frame source,
    Referenced Frame Number (0008,1160)); a frame that names no source is placed on the slice at its
    Plane Position (Patient). On a volume resampled from an irregular stack, the masks are
    resampled with the image's interpolation and kept where they reach 0.5.
    RTSTRUCT: see :mod:`pipelines.rtstruct`.

    Raises:
        SegmentationError: when the file is neither, references another series or frame of
            reference, has frames on slices that are not in the volume, or frames whose geometry
            is not their source slice's. The message names the file, the tag and the reason.
    """
    path = Path(path)
    if not 0.0 < fractional_threshold <= 1.0:
        raise SegmentationError(
            f"{path}: fractional_threshold is {fractional_threshold}; it must be in (0, 1]"
        )
    dataset = _dataset(path)
    if str(dataset.SOPClassUID) == RTSTRUCT_SOP_CLASS_UID:
        try:
            rois = read_rtstruct(path, dataset, volume)
        except RTStructError as error:
            raise SegmentationError(str(error)) from error
        return DecodedSegmentation(
            dataset=dataset,
            path=path,
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
    seg = _read(path, dataset)
    _check_references(path, seg, volume)
    placement = _place_frames(path, seg, volume)

    frames = _frames(path, seg)
    kind = seg.segmentation_type
    if kind == hd.seg.SegmentationTypeValues.FRACTIONAL:
        frames = frames.astype(np.float32) / float(seg.MaximumFractionalValue)
    segments = []
    for number in (int(n) for n in seg.segment_numbers):
        # A voxel is in the segment when any frame of the segment on its slice sets it: the
        # maximum over those frames reaches the threshold exactly when one of them does.
        planes: dict[int, np.ndarray] = {}
        for frame, slice_index in placement:
            if kind == hd.seg.SegmentationTypeValues.LABELMAP:
                voxels = frames[frame] == number
            elif _frame_segment(path, seg, frame) != number:
                continue
            elif kind == hd.seg.SegmentationTypeValues.FRACTIONAL:
                voxels = frames[frame] >= fractional_threshold
            else:
                voxels = frames[frame] > 0
            planes[slice_index] = planes[slice_index] | voxels if slice_index in planes \
                else voxels
        description = seg.get_segment_description(number)
        region, index = _segment_region(planes, volume)
        segments.append(Segment(
            number, str(description.segment_label), region,
            description.segmented_property_category, description.segmented_property_type,
            description.algorithm_type.value, index, Grid.of(volume.image),
        ))
    return DecodedSegmentation(dataset=seg, path=path, segments=tuple(segments))


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


def _dataset(path: Path) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path)
    except (InvalidDicomError, OSError) as error:
        raise SegmentationError(f"{path}: not a readable DICOM file ({error})") from error


def _frames(path: Path, seg: hd.seg.Segmentation) -> np.ndarray:
    """All frames as (frames, rows, columns) stored values (bit-packed BINARY unpacked)."""
    try:
        pixels = seg.pixel_array
    except Exception as error:  # pydicom raises several types for undecodable pixel data
        raise SegmentationError(
            f"{path}: {tag_name('PixelData')} cannot be decoded: {error}"
        ) from error
    return pixels.reshape(int(seg.get("NumberOfFrames", 1)), int(seg.Rows), int(seg.Columns))


def _frame_segment(path: Path, seg: hd.seg.Segmentation, frame: int) -> int:
    """Referenced Segment Number (0062,000B) of a BINARY or FRACTIONAL frame (PS3.3 C.8.20.3)."""
    item = _functional_group(seg, frame, "SegmentIdentificationSequence")
    if item is None or "ReferencedSegmentNumber" not in item:
        raise SegmentationError(
            f"{path}: frame {frame + 1} has no {tag_name('ReferencedSegmentNumber')} in its "
            f"{tag_name('SegmentIdentificationSequence')} (PS3.3 C.8.20.3)"
        )
    return int(item.ReferencedSegmentNumber)


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
    try:
        return hd.seg.Segmentation.from_dataset(dataset, copy=False)
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise SegmentationError(f"{path}: not a valid Segmentation: {error}") from error


def _check_references(path: Path, seg: hd.seg.Segmentation, volume: SeriesVolume) -> None:
    """The SEG must reference the volume's series and share its frame of reference."""
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
            f"{volume.frame_of_reference_uid}: the SEG is not in the volume's patient space"
        )
    rows, columns = volume.image.GetSize()[1], volume.image.GetSize()[0]
    if (int(seg.Rows), int(seg.Columns)) != (rows, columns):
        raise SegmentationError(
            f"{path}: {tag_name('Rows')} x {tag_name('Columns')} is {seg.Rows} x {seg.Columns}, "
            f"the volume's slices are {rows} x {columns}"
        )


def _functional_group(seg: pydicom.Dataset, frame: int, keyword: str) -> pydicom.Dataset | None:
    """First item of a functional group macro for one frame, per-frame before shared."""
    for groups in (
        seg.PerFrameFunctionalGroupsSequence[frame],
        seg.get("SharedFunctionalGroupsSequence", [pydicom.Dataset()])[0],
    ):
        if keyword in groups and len(groups[keyword].value) > 0:
            return groups[keyword].value[0]
    return None


def _place_frames(
    path: Path, seg: hd.seg.Segmentation, volume: SeriesVolume
) -> list[tuple[int, int]]:
    """(frame index, acquired slice index) of each frame, checked against the slice's geometry."""
    slices = volume.slices
    by_source = {(s.sop_instance_uid, s.frame_number): k for k, s in enumerate(slices)}
    positions = np.array([s.position for s in slices])
    spacing = volume.image.GetSpacing()
    position_tolerance = POSITION_TOLERANCE_FRACTION * min(spacing[0], spacing[1])
    orientation = np.array(volume.image.GetDirection()).reshape(3, 3)[:, :2].T.ravel()
    pixel_spacing = np.array([spacing[1], spacing[0]])
    placement = []
    for frame in range(int(seg.get("NumberOfFrames", 1))):
        where = f"{path}: frame {frame + 1}"
        plane = _functional_group(seg, frame, "PlanePositionSequence")
        position = (
            None if plane is None else np.array([float(v) for v in plane.ImagePositionPatient])
        )
        derivation = _functional_group(seg, frame, "DerivationImageSequence")
        sources = [] if derivation is None else derivation.get("SourceImageSequence", [])
        targets = set()
        for source in sources:
            uid = str(source.ReferencedSOPInstanceUID)
            numbers = source.get("ReferencedFrameNumber")
            if numbers in (None, ""):
                # No frame number: the whole instance (PS3.3 C.12.1.1.3.1); the plane position
                # picks the frame of a multi-frame source.
                found = [k for k, s in enumerate(slices) if s.sop_instance_uid == uid]
                if len(found) > 1 and position is not None:
                    found = [min(found, key=lambda k: np.linalg.norm(positions[k] - position))]
            else:
                keys = [(uid, int(n)) for n in np.atleast_1d(numbers)]
                found = [by_source[key] for key in keys if key in by_source]
            if not found:
                raise SegmentationError(
                    f"{where}: {tag_name('ReferencedSOPInstanceUID')} {uid}"
                    + ("" if numbers in (None, "") else f" frame {numbers}")
                    + f" is not a slice of the volume (series {volume.series_instance_uid}, "
                    f"{len(slices)} slices)"
                )
            preserved = source.get("SpatialLocationsPreserved")
            if preserved not in (None, "YES"):
                raise SegmentationError(
                    f"{where}: {tag_name('SpatialLocationsPreserved')} is {preserved!r}: its "
                    "pixels do not lie on the pixels of its source slice"
                )
            targets.update(found)
        if not sources and position is not None:
            distances = np.linalg.norm(positions - position, axis=1)
            nearest = int(np.argmin(distances))
            if distances[nearest] > position_tolerance:
                raise SegmentationError(
                    f"{where}: {tag_name('ImagePositionPatient')} is {position.tolist()}, on no "
                    f"slice of the volume (nearest {list(slices[nearest].position)}); the frame "
                    f"names no source image in a {tag_name('DerivationImageSequence')}"
                )
            targets.add(nearest)
        if not targets:
            raise SegmentationError(
                f"{where} has neither a {tag_name('SourceImageSequence')} in its "
                f"{tag_name('DerivationImageSequence')} nor a {tag_name('PlanePositionSequence')}: "
                "it cannot be placed on a source slice"
            )
        for target in targets:
            if position is not None:
                theirs = np.array(slices[target].position)
                if np.linalg.norm(position - theirs) > position_tolerance:
                    raise SegmentationError(
                        f"{where}: {tag_name('ImagePositionPatient')} is {position.tolist()} but "
                        f"its source slice {slices[target].sop_instance_uid} is at "
                        f"{theirs.tolist()}"
                    )
            placement.append((frame, target))
        plane_orientation = _functional_group(seg, frame, "PlaneOrientationSequence")
        if plane_orientation is not None:
            mine = np.array([float(v) for v in plane_orientation.ImageOrientationPatient])
            if np.max(np.abs(mine - orientation)) > ORIENTATION_TOLERANCE:
                raise SegmentationError(
                    f"{where}: {tag_name('ImageOrientationPatient')} is {mine.tolist()}, the "
                    f"volume's is {orientation.tolist()}"
                )
        measures = _functional_group(seg, frame, "PixelMeasuresSequence")
        if measures is not None and "PixelSpacing" in measures:
            mine = np.array([float(v) for v in measures.PixelSpacing])
            if np.max(np.abs(mine - pixel_spacing)) > PIXEL_SPACING_TOLERANCE_MM:
                raise SegmentationError(
                    f"{where}: {tag_name('PixelSpacing')} is {mine.tolist()}, the volume's is "
                    f"{pixel_spacing.tolist()}"
                )
    return placement
