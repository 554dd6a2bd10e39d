"""DICOM Segmentation (SEG) to one binary mask per segment on the grid of its source series.

A SEG frame belongs to the source slice that its Derivation Image Functional Group names
(PS3.3 C.7.6.16.2.6 and C.8.20.3, Source Image Sequence (0008,2112) > Referenced SOP Instance UID
(0008,1155)). Masks are placed by that reference, slice by slice, after checking that the frame's
geometry (Plane Position, Plane Orientation, Pixel Measures functional groups, PS3.3 C.7.6.16.2)
is the source slice's geometry; source slices without a frame are empty for that segment
(PS3.3 C.8.20.2: frames that hold no segmented pixels may be omitted). FRACTIONAL segmentations
are thresholded on the fraction stored value / Maximum Fractional Value (PS3.3 C.8.20.2.3).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

from pipelines.series import SeriesVolume, tag_name

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
    """One segment of a SEG as a 0/1 sitkUInt8 mask with the volume's size and geometry."""

    number: int
    label: str
    mask: sitk.Image
    category: hd.sr.CodedConcept
    property_type: hd.sr.CodedConcept
    algorithm_type: str


@dataclass(frozen=True)
class DecodedSegmentation:
    """A SEG and its segments decoded on the grid of one source volume."""

    dataset: hd.seg.Segmentation
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


def referenced_series_uids(seg: pydicom.Dataset) -> set[str]:
    """Series that a SEG references, from Referenced Series Sequence (0008,1115).

    The sequence is in the Common Instance Reference Module (PS3.3 C.12.2) and lists every series
    in the same study that holds an instance the SEG references.
    """
    return {str(item.SeriesInstanceUID) for item in seg.get("ReferencedSeriesSequence", [])}


def read_segmentation(
    path: Path, volume: SeriesVolume, fractional_threshold: float = 0.5
) -> DecodedSegmentation:
    """Decode each segment of the SEG at ``path`` into a mask on ``volume``'s grid.

    A FRACTIONAL segment's voxel is in the mask when its fraction is at least
    ``fractional_threshold``; a BINARY or LABELMAP segment's voxel when it is set.

    Raises:
        SegmentationError: when the file is not a SEG, references another series or frame of
            reference, has frames on slices that are not in the volume, or frames whose geometry
            is not their source slice's. The message names the file, the tag and the reason.
    """
    path = Path(path)
    if not 0.0 < fractional_threshold <= 1.0:
        raise SegmentationError(
            f"{path}: fractional_threshold is {fractional_threshold}; it must be in (0, 1]"
        )
    seg = _read(path)
    _check_references(path, seg, volume)
    _check_frames(path, seg, volume)

    fractional = seg.segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL
    uids = list(volume.sop_instance_uids)
    segments = []
    for number in seg.segment_numbers:
        # Geometry and references are checked above; source slices without frames are empty.
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=uids,
            segment_numbers=[number],
            combine_segments=False,
            ignore_spatial_locations=True,
            assert_missing_frames_are_empty=True,
            rescale_fractional=True,
        )[..., 0]
        voxels = pixels >= fractional_threshold if fractional else pixels > 0
        mask = sitk.GetImageFromArray(voxels.astype(np.uint8))
        mask.CopyInformation(volume.image)
        description = seg.get_segment_description(number)
        segments.append(
            Segment(
                number=int(number),
                label=str(description.segment_label),
                mask=mask,
                category=description.segmented_property_category,
                property_type=description.segmented_property_type,
                algorithm_type=description.algorithm_type.value,
            )
        )
    return DecodedSegmentation(dataset=seg, path=path, segments=tuple(segments))


def _read(path: Path) -> hd.seg.Segmentation:
    """Read a file and check that it is a Segmentation (PS3.3 A.51)."""
    try:
        dataset = pydicom.dcmread(path)
    except (InvalidDicomError, OSError) as error:
        raise SegmentationError(f"{path}: not a readable DICOM file ({error})") from error
    sop_class = str(dataset.get("SOPClassUID", ""))
    if sop_class not in SEGMENTATION_SOP_CLASS_UIDS:
        raise SegmentationError(
            f"{path}: {tag_name('SOPClassUID')} is {sop_class!r}: not a Segmentation Storage "
            "SOP Class (PS3.4 B.5)"
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


def _check_frames(path: Path, seg: hd.seg.Segmentation, volume: SeriesVolume) -> None:
    """Each frame must come from a slice of the volume and lie where that slice lies."""
    slices = dict(zip(volume.sop_instance_uids, volume.datasets, strict=True))
    spacing = volume.image.GetSpacing()
    position_tolerance = POSITION_TOLERANCE_FRACTION * min(spacing[0], spacing[1])
    orientation = np.array(volume.image.GetDirection()).reshape(3, 3)[:, :2].T.ravel()
    pixel_spacing = np.array([spacing[1], spacing[0]])
    for frame in range(int(seg.get("NumberOfFrames", 1))):
        where = f"{path}: frame {frame + 1}"
        derivation = _functional_group(seg, frame, "DerivationImageSequence")
        sources = [] if derivation is None else derivation.get("SourceImageSequence", [])
        if len(sources) == 0:
            raise SegmentationError(
                f"{where} has no {tag_name('SourceImageSequence')} in its "
                f"{tag_name('DerivationImageSequence')}: it cannot be placed on a source slice"
            )
        for source in sources:
            uid = str(source.ReferencedSOPInstanceUID)
            if uid not in slices:
                raise SegmentationError(
                    f"{where}: {tag_name('ReferencedSOPInstanceUID')} {uid} is not a slice of "
                    f"the volume (series {volume.series_instance_uid}, {len(slices)} slices)"
                )
            preserved = source.get("SpatialLocationsPreserved")
            if preserved not in (None, "YES"):
                raise SegmentationError(
                    f"{where}: {tag_name('SpatialLocationsPreserved')} is {preserved!r}: its "
                    "pixels do not lie on the pixels of its source slice"
                )
            plane = _functional_group(seg, frame, "PlanePositionSequence")
            if plane is not None:
                mine = np.array([float(v) for v in plane.ImagePositionPatient])
                theirs = np.array([float(v) for v in slices[uid].ImagePositionPatient])
                if np.linalg.norm(mine - theirs) > position_tolerance:
                    raise SegmentationError(
                        f"{where}: {tag_name('ImagePositionPatient')} is {mine.tolist()} but its "
                        f"source slice {uid} is at {theirs.tolist()}"
                    )
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
