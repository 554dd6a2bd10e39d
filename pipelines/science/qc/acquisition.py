"""The acquisition record of a series, from its headers, with warnings outside the settings.

Which parameters to record follows the reporting items on image acquisition of IBSI 1
(Zwanenburg et al., Radiology 2020;295:328-338, reporting guidelines, "Image acquisition") and of
the CLEAR checklist (Kocak et al., Insights Imaging 2023;14:75, items on imaging protocol): scanner
make and model, software, reconstruction kernel, tube voltage, slice thickness and spacing, pixel
spacing, contrast agent and timing; for MR field strength, sequence, TR, TE, flip angle and
b-values. The attributes are those of the General Equipment (PS3.3 C.7.5.1), Image Plane
(C.7.6.2), Contrast/Bolus (C.7.6.4), CT Image (C.8.2.1), MR Image (C.8.3.1) and Acquisition
(C.7.10.1) modules; DiffusionBValue (0018,9087) is recorded when present in a single-frame header.
"""

from __future__ import annotations

from collections.abc import Sequence

import pydicom
from pydicom.multival import MultiValue
from pydicom.valuerep import TM

from pipelines.io.series import SeriesVolume, tag_name
from pipelines.science.qc.report import QCCheck, Status
from pipelines.science.qc.settings import QCSettings

_SCOPE = "series"


def _text(value: object) -> str:
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


def _distinct(datasets: Sequence[pydicom.Dataset], keyword: str) -> list[str]:
    """Distinct non-empty values of ``keyword`` across the slices, in first-seen order."""
    seen: list[str] = []
    for ds in datasets:
        value = ds.get(keyword)
        if value in (None, ""):
            continue
        text = _text(value)
        if text not in seen:
            seen.append(text)
    return seen


def _record(
    datasets: Sequence[pydicom.Dataset], name: str, keyword: str, unit: str = "",
    *, numeric: bool = False
) -> QCCheck:
    """An ``info`` check of one attribute; ``warn`` when the slices disagree on it."""
    values = _distinct(datasets, keyword)
    if not values:
        return QCCheck(name, _SCOPE, "info", None, unit, "",
                       f"{tag_name(keyword)} is not recorded")
    if len(values) > 1:
        return QCCheck(name, _SCOPE, "warn", ", ".join(values), unit, "one value for the series",
                       f"{tag_name(keyword)} differs between slices: {', '.join(values)}")
    value: float | str = values[0]
    if numeric:
        try:
            value = float(values[0])
        except ValueError:
            return QCCheck(name, _SCOPE, "warn", values[0], unit, "a number",
                           f"{tag_name(keyword)} is {values[0]!r}, not a number")
    return QCCheck(name, _SCOPE, "info", value, unit, "", f"{tag_name(keyword)} is {values[0]}")


def _bounded(check: QCCheck, keyword: str, maximum: float | None = None,
             bounds: tuple[float, float] | None = None) -> QCCheck:
    """Turn a numeric ``info`` record into pass/warn against a maximum or a range."""
    if check.status != "info" or not isinstance(check.value, float):
        return check
    value = check.value
    if maximum is not None:
        ok, rule = value <= maximum, f"<= {maximum:g} {check.unit}".strip()
    elif bounds is not None:
        ok = bounds[0] <= value <= bounds[1]
        rule = f"{bounds[0]:g} to {bounds[1]:g} {check.unit}".strip()
    else:
        return check
    status: Status = "pass" if ok else "warn"
    verdict = "within" if ok else "outside"
    return QCCheck(check.name, _SCOPE, status, value, check.unit, rule,
                   f"{tag_name(keyword)} is {value:g} {check.unit}, {verdict} {rule}")


def acquisition_checks(volume: SeriesVolume, settings: QCSettings) -> list[QCCheck]:
    """Record the acquisition parameters of ``volume``; warn where the settings bound them."""
    datasets = volume.datasets
    modality = volume.modality
    checks = [
        _record(datasets, "acquisition.modality", "Modality"),
        _record(datasets, "acquisition.manufacturer", "Manufacturer"),
        _record(datasets, "acquisition.model", "ManufacturerModelName"),
        _record(datasets, "acquisition.software", "SoftwareVersions"),
    ]
    if modality == "CT":
        max_thickness = settings.ct_max_slice_thickness_mm
        max_pixel = settings.ct_max_pixel_spacing_mm
    elif modality == "MR":
        max_thickness = settings.mr_max_slice_thickness_mm
        max_pixel = settings.mr_max_pixel_spacing_mm
    else:
        max_thickness = max_pixel = None
    if modality == "CT":
        checks.append(_record(datasets, "acquisition.convolution_kernel", "ConvolutionKernel"))
        checks.append(_bounded(
            _record(datasets, "acquisition.kvp", "KVP", "kV", numeric=True),
            "KVP", bounds=settings.ct_kvp_range))
    thickness = _bounded(
        _record(datasets, "acquisition.slice_thickness", "SliceThickness", "mm", numeric=True),
        "SliceThickness", maximum=max_thickness)
    checks.append(thickness)
    checks.append(_slice_spacing(volume, thickness))
    checks.append(_pixel_spacing(volume, max_pixel))
    checks.extend(_contrast(datasets, settings))
    if modality == "MR":
        checks.append(_record(datasets, "acquisition.field_strength", "MagneticFieldStrength",
                              "T", numeric=True))
        checks.append(_sequence(datasets))
        checks.append(_record(datasets, "acquisition.repetition_time", "RepetitionTime", "ms",
                              numeric=True))
        checks.append(_record(datasets, "acquisition.echo_time", "EchoTime", "ms", numeric=True))
        checks.append(_record(datasets, "acquisition.flip_angle", "FlipAngle", "deg",
                              numeric=True))
        b_values = _distinct(datasets, "DiffusionBValue")
        checks.append(QCCheck(
            "acquisition.b_values", _SCOPE, "info", ", ".join(b_values) or None, "s/mm2", "",
            f"{tag_name('DiffusionBValue')}: {', '.join(b_values)}" if b_values
            else f"{tag_name('DiffusionBValue')} is not recorded (not a diffusion series)"))
    return checks


def _slice_spacing(volume: SeriesVolume, thickness: QCCheck) -> QCCheck:
    """Spacing of the slice centres along the normal, from the volume's grid.

    Spacing above the slice thickness leaves tissue between slices unimaged (PS3.3 C.7.6.2.1.1
    defines neither from the other, so both are reported).
    """
    spacing = float(volume.image.GetSpacing()[2])
    name = "acquisition.slice_spacing"
    recorded = _distinct(volume.datasets, "SpacingBetweenSlices")
    note = f"; {tag_name('SpacingBetweenSlices')} is {recorded[0]}" if recorded else ""
    if isinstance(thickness.value, float) and spacing > thickness.value * 1.001:
        return QCCheck(name, _SCOPE, "warn", spacing, "mm", f"<= slice thickness "
                       f"{thickness.value:g} mm",
                       f"slices are {spacing:g} mm apart but {thickness.value:g} mm thick: "
                       f"gaps between slices{note}")
    return QCCheck(name, _SCOPE, "info", spacing, "mm", "",
                   f"slice centres are {spacing:g} mm apart along the normal{note}")


def _pixel_spacing(volume: SeriesVolume, maximum: float | None) -> QCCheck:
    """Larger of the row and column spacing of Pixel Spacing (0028,0030)."""
    column_spacing, row_spacing = volume.image.GetSpacing()[:2]
    value = float(max(column_spacing, row_spacing))
    name = "acquisition.pixel_spacing"
    text = f"{tag_name('PixelSpacing')} is {row_spacing:g} x {column_spacing:g} mm"
    if maximum is None:
        return QCCheck(name, _SCOPE, "info", value, "mm", "", text)
    ok = value <= maximum
    return QCCheck(name, _SCOPE, "pass" if ok else "warn", value, "mm", f"<= {maximum:g} mm",
                   f"{text}, {'within' if ok else 'above'} {maximum:g} mm")


def _sequence(datasets: Sequence[pydicom.Dataset]) -> QCCheck:
    """Sequence Name, Scanning Sequence, Sequence Variant and MR Acquisition Type together."""
    parts = []
    for keyword in ("SequenceName", "ScanningSequence", "SequenceVariant", "MRAcquisitionType"):
        values = _distinct(datasets, keyword)
        if values:
            parts.append(f"{keyword}={'|'.join(values)}")
    if not parts:
        return QCCheck("acquisition.sequence", _SCOPE, "info", None, "", "",
                       f"{tag_name('SequenceName')} and {tag_name('ScanningSequence')} "
                       "are not recorded")
    text = "; ".join(parts)
    return QCCheck("acquisition.sequence", _SCOPE, "info", text, "", "", text)


def _seconds(value: str) -> float:
    time = TM(value)
    return time.hour * 3600 + time.minute * 60 + time.second + time.microsecond / 1e6


def _contrast(datasets: Sequence[pydicom.Dataset], settings: QCSettings) -> list[QCCheck]:
    """Contrast Bolus Agent (0018,0010) and the delay from Contrast Bolus Start Time (0018,1042)
    to the earliest Acquisition Time (0008,0032) of the series (PS3.3 C.7.6.4)."""
    agents = _distinct(datasets, "ContrastBolusAgent")
    given = bool(agents)
    text = (f"{tag_name('ContrastBolusAgent')} is {', '.join(agents)}" if given
            else f"{tag_name('ContrastBolusAgent')} is not recorded: no contrast")
    expected = settings.expect_contrast
    if expected is None:
        agent = QCCheck("acquisition.contrast_agent", _SCOPE, "info", ", ".join(agents) or None,
                        "", "", text)
    else:
        ok = given == expected
        agent = QCCheck("acquisition.contrast_agent", _SCOPE, "pass" if ok else "warn",
                        ", ".join(agents) or None, "",
                        "contrast given" if expected else "no contrast", text)
    name, rule = "acquisition.contrast_delay", ""
    if settings.contrast_delay_s is not None:
        low, high = settings.contrast_delay_s
        rule = f"{low:g} to {high:g} s"
    starts = _distinct(datasets, "ContrastBolusStartTime")
    acquired = _distinct(datasets, "AcquisitionTime")
    if not starts or not acquired:
        missing = "ContrastBolusStartTime" if not starts else "AcquisitionTime"
        status: Status = "warn" if rule and given else "info"
        return [agent, QCCheck(name, _SCOPE, status, None, "s", rule,
                               f"{tag_name(missing)} is not recorded: contrast timing unknown")]
    try:
        delay = min(_seconds(t) for t in acquired) - _seconds(starts[0])
    except ValueError as error:
        return [agent, QCCheck(name, _SCOPE, "warn", None, "s", rule,
                               f"{tag_name('ContrastBolusStartTime')} {starts[0]!r} or "
                               f"{tag_name('AcquisitionTime')} is not a valid TM: {error}")]
    text = (f"acquisition starts {delay:g} s after {tag_name('ContrastBolusStartTime')} "
            f"{starts[0]}")
    if delay < 0:
        return [agent, QCCheck(name, _SCOPE, "warn", delay, "s", rule or ">= 0 s",
                               f"{text}: the bolus starts after the acquisition")]
    if settings.contrast_delay_s is None:
        return [agent, QCCheck(name, _SCOPE, "info", delay, "s", "", text)]
    ok = low <= delay <= high
    return [agent, QCCheck(name, _SCOPE, "pass" if ok else "warn", delay, "s", rule,
                           f"{text}, {'within' if ok else 'outside'} {rule}")]
