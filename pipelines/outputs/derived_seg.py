"""The ROIs the node derived from each lesion, as a DICOM Segmentation of the source series.

The features of a ring or an eroded core describe tissue that nobody drew; this SEG (PS3.3 A.51,
BINARY) shows the radiologist exactly which voxels they are. It holds one segment per ROI variant
that ``pipelines.science.rois`` derived (rings, lesion + ring, eroded cores, with their HU
exclusions and liver clipping applied); the unchanged lesion (variant ``intra``) is left out,
because it is the input SEG's own segment and the report references that one.

Each segment (PS3.3 C.8.20.2, Segment Description):

* Segment Label and Tracking ID: ``"<lesion label> / <variant>"``, e.g.
  ``"Lesion 2 / intra + 4 mm ring"``, the Tracking Identifier the TID 1500 report gives the same
  ROI; Tracking UID equal to the report's Tracking Unique Identifier for it (both from
  ``pipelines.outputs.uids`` with ``"tracking"``, the segment number and the variant), so the SR's
  measurement group and this segment are linked by UID;
* Segmented Property Category and Type: a ring is tissue around the lesion, category SCT
  85756007 "Tissue" (CID 7150) and type ``99RADNODE`` ``ROI.PeriLesional`` "Perilesional tissue"
  (no SNOMED CT or DCM concept for a peritumoral region exists); lesion + ring and an eroded core
  keep the input segment's category and type (e.g. Neoplasm) with a Segmented Property Type
  Modifier (0062,0011) ``ROI.WithRing`` "Lesion with perilesional ring" or ``ROI.Eroded``
  "Eroded lesion core";
* Anatomic Region Sequence copied from the input segment (e.g. Liver);
* Segment Algorithm Type AUTOMATIC with Segmentation Algorithm Identification radiomics-node, its
  version, family DCM "Morphological operations" (CID 7162) and the preset name and hash;
* Recommended Display CIELab Value (0062,000D) :func:`display_color` of its segment number: every
  segment its own colour, the same in every SEG the node writes.

The SEG's Content Creator's Name (0070,0084, PS3.3 C.10.9) is the node's and its General Study
attributes are the source's (``pipelines.outputs.result_attributes``).

Only the source slices that hold a derived voxel are given to highdicom, each with its Plane
Position (Patient), and it omits the empty frames among them. UIDs follow
``pipelines.outputs.uids``.
"""

from __future__ import annotations

import colorsys
import copy
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import SimpleITK as sitk
from pydicom.sr.codedict import codes

from pipelines.io.segmentation import DecodedSegmentation
from pipelines.io.series import SeriesVolume
from pipelines.outputs.codes import PRIVATE_SCHEME, coding_schemes
from pipelines.outputs.parametric_map import slab_geometry
from pipelines.outputs.result_attributes import (
    CONTENT_CREATOR_NAME,
    copy_study_attributes,
    fill_unknown_slice_thickness,
)
from pipelines.outputs.software import ALGORITHM_NAME, MANUFACTURER, software_version
from pipelines.outputs.uids import result_uid
from pipelines.science.presets import Preset
from pipelines.science.results import LABEL_LENGTH, RoiResult
from pipelines.science.rois import RoiMask

SEG_SERIES_NUMBER_OFFSET = 1002  # derived SEG series number = source SeriesNumber + this offset
GOLDEN_ANGLE = 360.0 * (1.0 - 2.0 / (1.0 + 5.0 ** 0.5))  # degrees, about 137.5
DISPLAY_SATURATION, DISPLAY_VALUE = 0.75, 1.0  # HSV saturation and value of segment colours

TISSUE = hd.sr.CodedConcept("85756007", "SCT", "Tissue")
PERILESIONAL = hd.sr.CodedConcept("ROI.PeriLesional", PRIVATE_SCHEME, "Perilesional tissue")
WITH_RING = hd.sr.CodedConcept("ROI.WithRing", PRIVATE_SCHEME, "Lesion with perilesional ring")
ERODED = hd.sr.CodedConcept("ROI.Eroded", PRIVATE_SCHEME, "Eroded lesion core")
# ROI Generation Algorithm (3006,0036) of an RT ROI -> Segment Algorithm Type (PS3.3 C.8.20.2)
_RT_ALGORITHM_TYPES = {
    "AUTOMATIC": hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
    "SEMIAUTOMATIC": hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
    "MANUAL": hd.seg.SegmentAlgorithmTypeValues.MANUAL,
}


class DerivedSegmentationError(ValueError):
    """ROIs and masks that do not belong together, or a label too long; names the ROI."""


@dataclass(frozen=True)
class Propagated:
    """How a segmentation came onto another series of the study, of ``role``: the series it was
    drawn on
    (whose UIDs, with the preset hash measured there, name each ROI's Tracking UID, the same on
    every series) and the ``method`` in words (e.g. "rigid registration")."""

    role: str
    tracking_volume: SeriesVolume
    tracking_preset_hash: str
    method: str


@dataclass(frozen=True)
class DerivedSegmentation:
    """The derived SEG and, for each ROI it holds, its segment number, keyed by
    (input segment number, ROI variant name)."""

    dataset: hd.seg.Segmentation
    segment_numbers: dict[tuple[int, str], int]


def _kind(preset: Preset, variant: str) -> str:
    """The ``RoiVariant.kind`` of the preset's variant called ``variant``."""
    kinds = {"intra": "intra", **{v.name: v.kind for v in preset.rois.variants}}
    if variant not in kinds:
        raise DerivedSegmentationError(
            f"ROI variant {variant!r} is not among preset {preset.name}'s {sorted(kinds)}")
    return kinds[variant]


def display_color(number: int) -> hd.color.CIELabColor:
    """Recommended Display CIELab Value (0062,000D, PS3.3 C.8.20.2) of segment ``number`` (from
    1): the sRGB colour of hue ``(number - 1)`` golden angles round the colour wheel, saturation
    :data:`DISPLAY_SATURATION`, value :data:`DISPLAY_VALUE`, in DICOM's scaled CIELab (PS3.3
    C.10.7.1.1, highdicom's ``CIELabColor.from_rgb``). The golden angle puts consecutive segments
    (the overlapping ROI variants of one lesion) far apart in hue and never repeats a hue, so no
    two segments share a colour; it depends on the number alone, so a rerun gives the same one.
    """
    hue = (number - 1) * GOLDEN_ANGLE % 360.0 / 360.0
    red, green, blue = colorsys.hsv_to_rgb(hue, DISPLAY_SATURATION, DISPLAY_VALUE)
    return hd.color.CIELabColor.from_rgb(red * 255.0, green * 255.0, blue * 255.0)


def _anatomic_regions(seg: DecodedSegmentation, number: int) -> list[hd.sr.CodedConcept]:
    if seg.is_rtstruct:
        return []  # an RT ROI has no anatomic region (PS3.3 C.8.8.5)
    for item in seg.dataset.get("SegmentSequence", []):
        if int(item.SegmentNumber) == number:
            return [hd.sr.CodedConcept.from_dataset(region)
                    for region in item.get("AnatomicRegionSequence", [])]
    raise DerivedSegmentationError(
        f"{seg.path}: (0062,0004) SegmentNumber {number} not in (0062,0002) SegmentSequence")


def _description(number: int, roi: RoiResult, seg: DecodedSegmentation, preset: Preset,
                 volume: SeriesVolume, algorithm: hd.AlgorithmIdentificationSequence,
                 propagated: Propagated | None = None) -> hd.seg.SegmentDescription:
    label = roi.tracking_identifier
    if len(label) > LABEL_LENGTH:
        raise DerivedSegmentationError(
            f"{label!r}: (0062,0005) Segment Label longer than {LABEL_LENGTH} characters")
    variant = str(roi.roi_variant)
    kind = _kind(preset, variant)
    segment = roi.segment
    # Copies: a modifier is added inside the type's item, which must not reach the input segment
    category, property_type = copy.deepcopy(
        (TISSUE, PERILESIONAL) if kind == "ring" else (segment.category, segment.property_type)
    )
    algorithm_type = hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
    if kind == "intra" and propagated is None:
        # an RT ROI as drawn, rasterised: its provenance is the structure set's
        algorithm_type = _RT_ALGORITHM_TYPES.get(segment.algorithm_type,
                                                 hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=label,
        segmented_property_category=category,
        segmented_property_type=property_type,
        algorithm_type=algorithm_type,
        algorithm_identification=(
            algorithm if algorithm_type != hd.seg.SegmentAlgorithmTypeValues.MANUAL else None),
        tracking_uid=result_uid(
            propagated.tracking_volume if propagated else volume, seg.sop_instance_uid,
            propagated.tracking_preset_hash if propagated else preset.hash, "tracking",
            str(segment.number), *((variant,) if roi.derived else ())),
        tracking_id=label,
        anatomic_regions=_anatomic_regions(seg, segment.number) or None,
        display_color=display_color(number),
    )
    if propagated is not None:
        # Segment Description (0062,0006), PS3.3 C.8.20.4: where the ROI was drawn, and how it
        # came onto this series
        description.SegmentDescription = (
            f"{'RT Structure Set' if seg.is_rtstruct else 'Segmentation'} "
            f"{seg.sop_instance_uid} segment {segment.number} on series "
            f"{propagated.tracking_volume.series_instance_uid}, {propagated.method}")[:1024]
    elif kind == "intra":
        # Segment Description (0062,0006), PS3.3 C.8.20.4: which RT ROI this segment rasterises
        description.SegmentDescription = (
            f"RT Structure Set {seg.sop_instance_uid} ROI Number {segment.number} "
            f"(ROI Name {segment.label})")[:1024]
    if kind not in ("intra", "ring"):
        modifier = WITH_RING if kind == "intra_ring" else ERODED
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence \
            = [modifier]
    return description


def build_derived_segmentation(
    volume: SeriesVolume,
    seg: DecodedSegmentation,
    rois: Sequence[RoiResult],
    masks: Sequence[RoiMask],
    preset: Preset,
    propagated: Propagated | None = None,
) -> DerivedSegmentation | None:
    """The SEG of the derived ROIs among ``rois`` (module docstring); None when every ROI is an
    unchanged lesion. With ``propagated`` (a study job's other series, ``pipelines.study``),
    ``seg`` is the segmentation propagated onto ``volume`` and every ROI is in the SEG, the
    lesions as drawn too: nobody drew them on this series. ``masks[k]`` is the mask of ``rois[k]``
    (``pipelines.science.rois.build_variants`` output, flattened in the order
    ``pipelines.process.measure`` builds ``rois``).

    Raises:
        DerivedSegmentationError: ``rois`` and ``masks`` differ in length or variant names.
    """
    if len(rois) != len(masks):
        raise DerivedSegmentationError(f"{len(rois)} ROIs but {len(masks)} masks")
    for roi, mask in zip(rois, masks, strict=True):
        if str(roi.roi_variant) != mask.name and roi.roi_variant is not None:
            raise DerivedSegmentationError(
                f"segment {roi.segment.number}: ROI {roi.roi_variant!r} paired with mask "
                f"{mask.name!r}")
    derived = [(roi, mask) for roi, mask in zip(rois, masks, strict=True)
               if roi.derived or seg.is_rtstruct or propagated is not None]
    if not derived:
        return None
    # Only the source slices that hold a derived voxel go to highdicom, each with its plane
    # position: it omits empty frames anyway, and a dense array of the whole slab would take
    # slices x rows x columns x ROIs bytes (3 GB for 30 ROIs over 380 slices of 512 x 512).
    # Each ROI's planes are contiguous (highdicom gets a view with the ROIs last), so writing a
    # mask touches the memory of that mask's box, not of every ROI's pixels between its rows.
    planes = sorted({
        mask.index[2] + int(k)
        for _, mask in derived
        for k in np.flatnonzero(sitk.GetArrayViewFromImage(mask.mask).any(axis=(1, 2)))
    })
    row_of = {z: row for row, z in enumerate(planes)}
    size = volume.image.GetSize()
    by_segment = np.zeros((len(derived), len(planes), size[1], size[0]), dtype=bool)
    for number, (_, mask) in enumerate(derived):
        voxels = sitk.GetArrayViewFromImage(mask.mask)
        x, y, z = mask.index
        _, ny, nx = voxels.shape
        for k in np.flatnonzero(voxels.any(axis=(1, 2))):
            by_segment[number, row_of[z + int(k)], y:y + ny, x:x + nx] = voxels[k]
    array = np.moveaxis(by_segment, 0, -1)

    sw_version = software_version()
    algorithm = hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME, family=codes.cid7162.MorphologicalOperations, version=sw_version,
        parameters={"preset": preset.name, "preset_hash": preset.hash},
    )
    descriptions = [
        _description(number, roi, seg, preset, volume, algorithm, propagated)
        for number, (roi, _) in enumerate(derived, start=1)
    ]
    geometry = slab_geometry(volume, (planes[0], planes[-1] + 1))
    positions = geometry.get_plane_positions()
    dataset = hd.seg.Segmentation(
        source_images=list(volume.datasets),
        pixel_array=array,
        plane_positions=[positions[z - planes[0]] for z in planes],
        plane_orientation=geometry.get_plane_orientation(),
        pixel_measures=geometry.get_pixel_measures(),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=result_uid(volume, seg.sop_instance_uid, preset.hash,
                                       "derived seg", "series"),
        series_number=volume.series_number + SEG_SERIES_NUMBER_OFFSET,
        sop_instance_uid=result_uid(volume, seg.sop_instance_uid, preset.hash,
                                    "derived seg", "instance"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MANUFACTURER,
        software_versions=sw_version,
        device_serial_number="0",
        content_label="RADIOMICS_ROIS",
        content_description=f"ROIs measured by {ALGORITHM_NAME} ({preset.name})"[:64],
        series_description=(f"Radiomics ROIs {propagated.role} ({preset.name})" if propagated
                            else f"Radiomics ROIs ({preset.name})")[:64],
    )
    dataset.ContentCreatorName = CONTENT_CREATOR_NAME  # Type 2 (PS3.3 C.10.9); highdicom sets none
    copy_study_attributes(dataset, volume.datasets[0])
    fill_unknown_slice_thickness(dataset, geometry.spacing_between_slices)
    body_part = volume.datasets[0].get("BodyPartExamined")
    if body_part:
        # Laterality (0020,0060) is required for a paired body part (PS3.3 C.7.3.1)
        dataset.BodyPartExamined = body_part
    # Non-standard designators are declared (PS3.3 C.12.1.1.5)
    dataset.CodingSchemeIdentificationSequence = [
        item for item in coding_schemes() if item.CodingSchemeDesignator == PRIVATE_SCHEME
    ]
    numbers = {(roi.segment.number, str(roi.roi_variant)): number
               for number, (roi, _) in enumerate(derived, start=1)}
    return DerivedSegmentation(dataset, numbers)
