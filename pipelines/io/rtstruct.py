"""RT Structure Set (RTSTRUCT) contours rasterised into one mask per ROI on a source volume's grid.

Structure (PS3.3 A.19 RT Structure Set IOD): each ROI is an item of Structure Set ROI Sequence
(3006,0020) with ROI Number, ROI Name, its Frame of Reference and ROI Generation Algorithm
(PS3.3 C.8.8.5); its contours are in the ROI Contour Sequence (3006,0039) item with the same
Referenced ROI Number, as Contour Data (3006,0050) triplets in mm in the patient coordinate system
(PS3.3 C.8.8.6); its kind is RT ROI Interpreted Type (3006,00A4) of RT ROI Observations
(PS3.3 C.8.8.8), its identity optionally RT ROI Identification Code Sequence (3006,0086).

Rasterisation: only CLOSED_PLANAR contours enclose voxels (POINT, OPEN_PLANAR and OPEN_NONPLANAR
contours do not, PS3.3 C.8.8.6.1). Each contour is assigned to the acquired slice on whose plane it
lies (within a tenth of the slice spacing along the normal) and a pixel is inside when its centre
is inside the polygon by the even-odd rule; several contours of one ROI on one slice combine by
exclusive or, so that a contour inside another cuts a hole (PS3.3 C.8.8.6.3 allows holes drawn as
separate contours; a "keyhole" contour is one polygon and needs no special case). On a volume
resampled from an irregular stack the slice masks are resampled like the image and kept where they
reach 0.5.

Codes: the RT ROI Identification Code, when present, is the property type. Otherwise the type and
the category follow the interpreted type: GTV, CTV, PTV as SNOMED CT target volumes in the
category Spatial and Relational Concept; ORGAN as Organ in Anatomical Structure; anything else
as DCM Image Region in Spatial and Relational Concept. ROI Generation Algorithm's defined terms
AUTOMATIC, SEMIAUTOMATIC and MANUAL are the algorithm types of a SEG segment (PS3.3 C.8.20.2);
an empty or other value stays as given (upper-cased), since guessing would misreport provenance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.sr.codedict import codes

from pipelines.io.references import RTSTRUCT_SOP_CLASS_UID, referenced_series_uids
from pipelines.io.series import SeriesVolume, resample_stack, tag_name

# A contour lies on a slice when it is this fraction of the slice spacing from its plane.
PLANE_TOLERANCE_FRACTION = 0.1
ALGORITHM_TYPES = ("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL")
_TYPE_CODES = {
    "GTV": (codes.SCT.SpatialAndRelationalConcept, codes.SCT.GrossTumorVolume),
    "CTV": (codes.SCT.SpatialAndRelationalConcept, codes.SCT.ClinicalTargetVolume),
    "PTV": (codes.SCT.SpatialAndRelationalConcept, codes.SCT.PlanningTargetVolume),
    "ORGAN": (codes.SCT.AnatomicalStructure, codes.SCT.Organ),
}
_OTHER_CODES = (codes.SCT.SpatialAndRelationalConcept, codes.DCM.ImageRegion)


class RTStructError(ValueError):
    """An RTSTRUCT cannot be read or placed on a volume; the message names file, tag and reason."""


@dataclass(frozen=True)
class RoiContours:
    """One ROI of a structure set with its closed planar contours (each an (N, 3) array, mm)."""

    number: int
    name: str
    interpreted_type: str
    algorithm_type: str
    category: hd.sr.CodedConcept
    property_type: hd.sr.CodedConcept
    frame_of_reference_uid: str
    contours: tuple[np.ndarray, ...]
    other_contours: tuple[str, ...] = ()  # Contour Geometric Type of each contour left out

    def not_measured(self, path: Path) -> str | None:
        """Why this ROI encloses no voxel and is not measured (one line naming the file, the ROI
        and the attribute), or None when it has a closed planar contour."""
        if self.contours:
            return None
        where = f"{path}: ROI {self.number} ({self.name})"
        if not self.other_contours:
            return (f"{where}: no contour in {tag_name('ROIContourSequence')}: nothing to "
                    "measure, not measured")
        kinds = ", ".join(sorted(set(self.other_contours)))
        return (f"{where}: {tag_name('ContourGeometricType')} is {kinds} for all "
                f"{len(self.other_contours)} contour(s); only CLOSED_PLANAR contours enclose "
                "voxels (PS3.3 C.8.8.6.1): not measured")


@dataclass(frozen=True)
class RasterisedRoi:
    """An ROI as a 0/1 sitkUInt8 mask with the volume's size and geometry."""

    number: int
    name: str
    interpreted_type: str
    algorithm_type: str
    category: hd.sr.CodedConcept
    property_type: hd.sr.CodedConcept
    mask: sitk.Image


def _code(item: pydicom.Dataset) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(
        value=str(item.CodeValue),
        scheme_designator=str(item.CodingSchemeDesignator),
        meaning=str(item.CodeMeaning),
    )


def parse_rtstruct(path: Path, dataset: pydicom.Dataset) -> tuple[RoiContours, ...]:
    """The ROIs of a structure set, in Structure Set ROI Sequence order, with their contours."""
    if str(dataset.get("SOPClassUID", "")) != RTSTRUCT_SOP_CLASS_UID:
        raise RTStructError(
            f"{path}: {tag_name('SOPClassUID')} is {dataset.get('SOPClassUID')!r}: not RT "
            "Structure Set Storage (PS3.4 B.5)"
        )
    observations = {
        int(item.ReferencedROINumber): item for item in dataset.get("RTROIObservationsSequence", [])
    }
    contours: dict[int, list[np.ndarray]] = {}
    others: dict[int, list[str]] = {}
    for item in dataset.get("ROIContourSequence", []):
        number = int(item.ReferencedROINumber)
        for index, contour in enumerate(item.get("ContourSequence", []), start=1):
            kind = str(contour.get("ContourGeometricType", "") or "").strip().upper()
            if kind != "CLOSED_PLANAR":
                others.setdefault(number, []).append(kind or "empty")
                continue
            points = np.array([float(v) for v in contour.ContourData], dtype=float)
            if points.size < 9 or points.size % 3:
                raise RTStructError(
                    f"{path}: ROI {number} contour {index}: {tag_name('ContourData')} has "
                    f"{points.size} values; a closed planar contour needs 3 or more x, y, z "
                    "triplets (PS3.3 C.8.8.6)"
                )
            contours.setdefault(number, []).append(points.reshape(-1, 3))
    rois = []
    for item in dataset.get("StructureSetROISequence", []):
        number = int(item.ROINumber)
        observation = observations.get(number, pydicom.Dataset())
        interpreted = str(observation.get("RTROIInterpretedType", "") or "").upper()
        category, property_type = _TYPE_CODES.get(interpreted, _OTHER_CODES)
        identification = observation.get("RTROIIdentificationCodeSequence", [])
        rois.append(
            RoiContours(
                number=number,
                name=str(item.get("ROIName", "") or f"ROI {number}"),
                interpreted_type=interpreted,
                algorithm_type=str(item.get("ROIGenerationAlgorithm", "") or "").upper(),
                category=hd.sr.CodedConcept.from_code(category),
                property_type=(
                    _code(identification[0])
                    if len(identification) > 0
                    else hd.sr.CodedConcept.from_code(property_type)
                ),
                frame_of_reference_uid=str(item.get("ReferencedFrameOfReferenceUID", "")),
                contours=tuple(contours.get(number, [])),
                other_contours=tuple(others.get(number, [])),
            )
        )
    if not rois:
        raise RTStructError(f"{path}: {tag_name('StructureSetROISequence')} is missing or empty")
    return tuple(rois)


def _inside(polygon: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """Pixels whose centres lie inside ``polygon`` ((N, 2) as (column, row) indices), even-odd."""
    inside = np.zeros((rows, columns), dtype=bool)
    low = np.maximum(np.floor(polygon.min(axis=0)).astype(int), 0)
    high = np.minimum(np.ceil(polygon.max(axis=0)).astype(int), [columns - 1, rows - 1])
    if np.any(high < low):
        return inside
    r, c = np.mgrid[low[1] : high[1] + 1, low[0] : high[0] + 1]
    box = np.zeros(r.shape, dtype=bool)
    x1, y1 = polygon[:, 0], polygon[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    for ax, ay, bx, by in zip(x1, y1, x2, y2, strict=True):
        if ay == by:
            continue
        crosses = (ay > r) != (by > r)
        x_cross = ax + (r - ay) * (bx - ax) / (by - ay)
        box ^= crosses & (c < x_cross)
    inside[low[1] : high[1] + 1, low[0] : high[0] + 1] = box
    return inside


def rasterise(
    path: Path, rois: Sequence[RoiContours], volume: SeriesVolume
) -> tuple[RasterisedRoi, ...]:
    """Masks of ``rois`` on ``volume``'s grid (module docstring)."""
    direction = np.array(volume.image.GetDirection()).reshape(3, 3)
    row, col, normal = direction[:, 0], direction[:, 1], direction[:, 2]
    column_spacing, row_spacing, slice_spacing = volume.image.GetSpacing()
    columns, rows = volume.image.GetSize()[:2]
    positions = np.array([s.position for s in volume.slices])
    along = (positions - positions[0]) @ normal
    tolerance = PLANE_TOLERANCE_FRACTION * slice_spacing
    result = []
    for roi in rois:
        if roi.frame_of_reference_uid not in ("", volume.frame_of_reference_uid):
            raise RTStructError(
                f"{path}: ROI {roi.number} ({roi.name}): "
                f"{tag_name('ReferencedFrameOfReferenceUID')} is {roi.frame_of_reference_uid}, "
                f"the volume's is {volume.frame_of_reference_uid}"
            )
        stack = np.zeros((len(positions), rows, columns), dtype=bool)
        for index, points in enumerate(roi.contours, start=1):
            offsets = (points - positions[0]) @ normal
            if np.ptp(offsets) > tolerance:
                raise RTStructError(
                    f"{path}: ROI {roi.number} ({roi.name}) contour {index}: "
                    f"{tag_name('ContourData')} spans {np.ptp(offsets):.3f} mm along the slice "
                    "normal: a CLOSED_PLANAR contour must lie in one image plane"
                )
            k = int(np.argmin(np.abs(along - offsets.mean())))
            if abs(along[k] - offsets.mean()) > tolerance:
                raise RTStructError(
                    f"{path}: ROI {roi.number} ({roi.name}) contour {index}: "
                    f"{tag_name('ContourData')} lies {offsets.mean():.3f} mm along the normal, on "
                    f"no slice of the volume (nearest at {along[k]:.3f} mm)"
                )
            relative = points - positions[k]
            polygon = np.column_stack(
                [relative @ row / column_spacing, relative @ col / row_spacing]
            )
            stack[k] ^= _inside(polygon, rows, columns)
        voxels = stack
        if volume.resampled and volume.grid is not None:
            resampled = resample_stack(
                stack.astype(np.float32), volume.grid, (row_spacing, column_spacing), slice_spacing
            )
            voxels = resampled >= 0.5
        mask = sitk.GetImageFromArray(voxels.astype(np.uint8))
        mask.CopyInformation(volume.image)
        result.append(
            RasterisedRoi(
                number=roi.number,
                name=roi.name,
                interpreted_type=roi.interpreted_type,
                algorithm_type=roi.algorithm_type,
                category=roi.category,
                property_type=roi.property_type,
                mask=mask,
            )
        )
    return tuple(result)


def read_rtstruct(
    path: Path, dataset: pydicom.Dataset, volume: SeriesVolume
) -> tuple[tuple[RasterisedRoi, ...], tuple[str, ...]]:
    """Parse the structure set ``dataset`` read from ``path`` and rasterise it on ``volume``:
    the ROIs that have a closed planar contour, and one line for each other ROI saying why it is
    not measured (:meth:`RoiContours.not_measured`: only point, open or no contours).

    Raises:
        RTStructError: when it is not an RTSTRUCT, does not reference the volume's series, no ROI
            has a closed planar contour, or a contour is off the volume's frame of reference or
            slices.
    """
    parsed = parse_rtstruct(path, dataset)
    not_measured = tuple(line for roi in parsed if (line := roi.not_measured(path)) is not None)
    rois = [roi for roi in parsed if roi.contours]
    if not rois:
        raise RTStructError(
            f"{path}: no ROI has a closed planar contour, nothing to measure ("
            + "; ".join(line.removeprefix(f"{path}: ") for line in not_measured) + ")")
    referenced = referenced_series_uids(dataset)
    if volume.series_instance_uid not in referenced:
        raise RTStructError(
            f"{path}: {tag_name('RTReferencedSeriesSequence')} lists {sorted(referenced)}, not the "
            f"volume's series {volume.series_instance_uid}"
        )
    return rasterise(path, rois, volume), not_measured
