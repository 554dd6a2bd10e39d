"""Series integrity from the slice headers, and the plausibility of the CT values.

The geometry rules are those of the Image Plane Module (PS3.3 C.7.6.2): one Frame of Reference
(C.7.4.1), one orientation, one matrix and pixel spacing, slice positions on one regular grid
along the slice normal. They are measured on the headers (``SeriesVolume.datasets``), not on the
volume, so that a reader that resampled an irregular stack still gets it reported. The HU check
holds CT values after the Modality LUT (PS3.3 C.11.1, C.8.2.1.1.3) against the range of matter in
a patient: air is -1000 HU and dense cortical bone stays below about 3000 HU, so values far outside
point at a wrong Rescale Slope or Intercept rather than at anatomy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pydicom
import SimpleITK as sitk

from pipelines.io.series import SeriesVolume, tag_name
from pipelines.science.qc.report import QCCheck, Status
from pipelines.science.qc.settings import QCSettings

_SCOPE = "series"
# Padding without Pixel Padding Value: the image minimum is taken as padding when it is below the
# plausible range, every other value is within it, and at least this fraction of the voxels hold
# it (outside a circular reconstruction field of view, 1 - pi/4 = 21 % of a square image).
_PADDING_MIN_FRACTION = 0.01


def _vectors(datasets: Sequence[pydicom.Dataset], keyword: str) -> list[np.ndarray | None]:
    out: list[np.ndarray | None] = []
    for ds in datasets:
        value = ds.get(keyword)
        out.append(None if value in (None, "") else np.array([float(v) for v in value]))
    return out


def integrity_checks(datasets: Sequence[pydicom.Dataset], settings: QCSettings) -> list[QCCheck]:
    """Frame of reference, orientation, matrix, slice grid and stack alignment of the headers."""
    checks = [_frame_of_reference(datasets), _orientation(datasets, settings), _matrix(datasets)]
    if any(c.status == "fail" for c in checks):
        return checks  # positions cannot be compared in different frames or orientations
    checks.extend(_positions(datasets, settings))
    return checks


def _frame_of_reference(datasets: Sequence[pydicom.Dataset]) -> QCCheck:
    uids = {str(ds.get("FrameOfReferenceUID", "")) for ds in datasets}
    name, rule = "integrity.frame_of_reference", "one Frame of Reference UID"
    if "" in uids:
        return QCCheck(name, _SCOPE, "fail", len(uids - {""}), "", rule,
                       f"{tag_name('FrameOfReferenceUID')} is missing on some slices")
    status: Status = "pass" if len(uids) == 1 else "fail"
    return QCCheck(name, _SCOPE, status, len(uids), "", rule,
                   f"{len(uids)} distinct {tag_name('FrameOfReferenceUID')}: {sorted(uids)}"
                   if len(uids) > 1 else f"{tag_name('FrameOfReferenceUID')} is shared")


def _orientation(datasets: Sequence[pydicom.Dataset], settings: QCSettings) -> QCCheck:
    name = "integrity.orientation"
    rule = f"deviation <= {settings.orientation_tolerance:g}"
    vectors = _vectors(datasets, "ImageOrientationPatient")
    if any(v is None or v.shape != (6,) for v in vectors):
        return QCCheck(name, _SCOPE, "fail", None, "", rule,
                       f"{tag_name('ImageOrientationPatient')} is missing or malformed on some "
                       "slices")
    stacked = np.stack(vectors)  # type: ignore[arg-type]
    deviation = float(np.max(np.abs(stacked - stacked[0])))
    ok = deviation <= settings.orientation_tolerance
    return QCCheck(name, _SCOPE, "pass" if ok else "fail", deviation, "", rule,
                   f"{tag_name('ImageOrientationPatient')} varies by up to {deviation:g} "
                   f"between slices" + ("" if ok else ": the slices are not one volume"))


def _matrix(datasets: Sequence[pydicom.Dataset]) -> QCCheck:
    shapes = {(ds.get("Rows"), ds.get("Columns"),
               _text_spacing(ds.get("PixelSpacing"))) for ds in datasets}
    name, rule = "integrity.matrix", "one Rows x Columns and Pixel Spacing"
    text = "; ".join(f"{r} x {c} at {s} mm" for r, c, s in sorted(shapes, key=str))
    ok = len(shapes) == 1
    return QCCheck(name, _SCOPE, "pass" if ok else "fail", text, "", rule,
                   f"{tag_name('Rows')}, {tag_name('Columns')} and {tag_name('PixelSpacing')}: "
                   + (text if ok else f"differ between slices: {text}"))


def _text_spacing(value: object) -> str:
    if value in (None, ""):
        return "?"
    return "\\".join(f"{float(v):.4g}" for v in value)  # type: ignore[attr-defined]


def _positions(datasets: Sequence[pydicom.Dataset], settings: QCSettings) -> list[QCCheck]:
    """Duplicate, missing and irregular slices along the normal; in-plane shift (gantry tilt)."""
    names = ("integrity.duplicate_slices", "integrity.missing_slices",
             "integrity.uniform_spacing", "integrity.stack_alignment")
    positions = _vectors(datasets, "ImagePositionPatient")
    if any(p is None or p.shape != (3,) for p in positions) or len(datasets) < 2:
        reason = (f"{tag_name('ImagePositionPatient')} is missing on some slices"
                  if len(datasets) >= 2 else "a single slice has no slice grid")
        status: Status = "fail" if len(datasets) >= 2 else "info"
        return [QCCheck(n, _SCOPE, status, None, "", "", reason) for n in names]
    orientation = np.array([float(v) for v in datasets[0].ImageOrientationPatient])
    normal = np.cross(orientation[:3], orientation[3:])
    points = np.stack(positions)  # type: ignore[arg-type]
    along = points @ normal
    order = np.argsort(along, kind="stable")
    along, points = along[order], points[order]
    gaps = np.diff(along)
    tolerance = settings.spacing_tolerance_fraction
    nominal = float(np.median(gaps[gaps > 1e-3])) if np.any(gaps > 1e-3) else 0.0
    if nominal == 0.0:
        return [QCCheck(n, _SCOPE, "fail", None, "", "",
                        "all slices lie at one position along the normal") for n in names]
    ratio = gaps / nominal
    duplicates = int(np.count_nonzero(ratio < tolerance))
    steps = np.rint(ratio)
    off = np.abs(ratio - steps)
    regular = (ratio >= tolerance) & (off <= tolerance)
    missing = int(np.sum(steps[regular & (steps >= 2)] - 1))
    irregular = (ratio >= tolerance) & (off > tolerance)
    worst_mm = float(np.max(np.abs(gaps - steps * nominal)[ratio >= tolerance], initial=0.0))
    spacing_text = f"nominal spacing {nominal:.4g} mm along the normal"
    checks = [
        QCCheck(names[0], _SCOPE, "pass" if duplicates == 0 else "fail", duplicates, "", "0",
                f"{duplicates} slices at the position of another ({spacing_text})"),
        QCCheck(names[1], _SCOPE, "pass" if missing == 0 else "fail", missing, "", "0",
                f"{missing} slices missing from gaps of "
                f"{', '.join(f'{g:.4g}' for g in gaps[regular & (steps >= 2)])} mm "
                f"({spacing_text})" if missing else f"no gap in the stack ({spacing_text})"),
        QCCheck(names[2], _SCOPE, "warn" if np.any(irregular) else "pass", worst_mm, "mm",
                f"<= {tolerance:g} x spacing off the grid",
                f"{int(np.count_nonzero(irregular))} gaps off a regular grid, worst by "
                f"{worst_mm:.4g} mm ({spacing_text})"),
    ]
    shift = np.linalg.norm((points - points[0]) - np.outer(along - along[0], normal), axis=1)
    pixel = min(float(v) for v in datasets[0].PixelSpacing)
    extent = float(along[-1] - along[0])
    angle = math.degrees(math.atan2(float(shift[-1]), extent))
    tilts = {str(ds.get("GantryDetectorTilt")) for ds in datasets
             if ds.get("GantryDetectorTilt") not in (None, "")}
    tilt_text = f"; {tag_name('GantryDetectorTilt')} is {', '.join(sorted(tilts))}" if tilts else ""
    aligned = float(np.max(shift)) <= tolerance * pixel
    checks.append(QCCheck(
        names[3], _SCOPE, "pass" if aligned else "warn", angle, "deg",
        f"in-plane shift <= {tolerance:g} pixel",
        f"slices shift up to {float(np.max(shift)):.4g} mm within the plane along the stack "
        f"({angle:.3g} deg)" + ("" if aligned else ": gantry tilt or sheared stack") + tilt_text))
    return checks


def hu_range_check(volume: SeriesVolume, settings: QCSettings) -> list[QCCheck]:
    """For CT: lowest and highest value against the plausible range, and air present.

    Padding outside the reconstructed field of view is left out: voxels equal to Pixel Padding
    Value (0028,0120) through the rescale, or, without that attribute, the image minimum when it
    is below the range, fills at least 1 % of the volume and every other value is in the range.
    """
    if volume.modality != "CT":
        return []
    values = sitk.GetArrayViewFromImage(volume.image)
    low, high = settings.ct_hu_range
    first = volume.datasets[0]
    slope = float(first.get("RescaleSlope", 1) or 1)
    intercept = float(first.get("RescaleIntercept", 0) or 0)
    padding: float | None = None
    if first.get("PixelPaddingValue") is not None:
        padding = float(first.PixelPaddingValue) * slope + intercept
    else:
        minimum = float(values.min())
        at_minimum = values == minimum
        if (
            minimum < low
            and np.count_nonzero(at_minimum) >= _PADDING_MIN_FRACTION * values.size
            and not at_minimum.all()
            and float(values[~at_minimum].min()) >= low
        ):
            padding = minimum
    kept = values if padding is None else values[np.abs(values - padding) > 0.5 * abs(slope)]
    name, rule = "integrity.hu_range", f"{low:g} to {high:g} [hnsf'U]"
    padding_text = "" if padding is None else f", padding {padding:g} HU left out"
    if kept.size == 0:
        return [QCCheck(name, _SCOPE, "fail", None, "[hnsf'U]", rule,
                        f"every voxel holds the padding value {padding:g} HU")]
    lowest, highest = float(kept.min()), float(kept.max())
    ok = low <= lowest and highest <= high
    checks = [QCCheck(
        name, _SCOPE, "pass" if ok else "fail", f"{lowest:g} to {highest:g}", "[hnsf'U]", rule,
        f"values {lowest:g} to {highest:g} HU{padding_text}"
        + ("" if ok else f"; outside {rule}: wrong {tag_name('RescaleSlope')} or "
           f"{tag_name('RescaleIntercept')} ({slope:g}, {intercept:g})?"))]
    if settings.ct_air_max_hu is not None:
        air = settings.ct_air_max_hu
        has_air = lowest <= air
        checks.append(QCCheck(
            "integrity.hu_air", _SCOPE, "pass" if has_air else "warn", lowest, "[hnsf'U]",
            f"lowest value <= {air:g} [hnsf'U]",
            f"lowest value {lowest:g} HU" + ("" if has_air else
            f": no air in the field of view, or a missing {tag_name('RescaleIntercept')}")))
    return checks
