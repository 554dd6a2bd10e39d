"""A one-page summary of a job as an image every viewer shows: a Secondary Capture in the study.

Many PACS viewers show no SR; every viewer shows an image. The page (1200 x 1200 RGB, matplotlib
with the Agg backend, no display) holds:

* a title with the preset and software version, and a red "NOT FOR DIAGNOSTIC USE" banner when
  the caller says the results carry that restriction (e.g. the model card says so);
* one panel per lesion (up to :data:`MAX_PANELS`): its key slice, the axial slice with the largest
  cross-section of the lesion's segment, cropped around the lesion, in a liver window for CT
  (level 60 HU, width 200 HU) or the 1st to 99th percentile of the crop otherwise, with the
  contour of the lesion and of each ROI variant the node measured;
* a table of the main features of each ROI (volume, maximum 3D diameter, mean, entropy, GLCM
  contrast), rounded for reading; the exact values are in the SR and the features CSV;
* the QC summary lines and the model output lines (with the model's intended use) the caller
  passes.

The Secondary Capture Image (PS3.3 A.8.1) is written by highdicom in the source study, in a new
series, with Burned In Annotation YES (PS3.3 C.7.6.1.1.3: the page is all annotation) and
Conversion Type WSD ("workstation"), and the source's General Study attributes
(``pipelines.outputs.result_attributes``: highdicom's ``SCImage.from_ref_dataset`` copies no Study
Description). Its UIDs follow ``pipelines.outputs.uids``.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
import SimpleITK as sitk
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from pipelines.io.series import SeriesVolume
from pipelines.outputs.result_attributes import copy_study_attributes
from pipelines.outputs.software import MANUFACTURER, software_version
from pipelines.outputs.uids import result_uid
from pipelines.science.results import RoiResult
from pipelines.science.rois import RoiMask

SC_SERIES_NUMBER_OFFSET = 1001  # summary series number = source SeriesNumber + this offset
SIZE_PX = 1200
MAX_PANELS = 4
MAX_TABLE_ROWS = 16
LIVER_WINDOW_HU = (60.0, 200.0)  # level, width
PANEL_MARGIN_MM = 15.0
# Rounded columns of the table: (pyradiomics key, header, digits, divide by)
TABLE_COLUMNS = (
    ("original_shape_MeshVolume", "Volume (mL)", 2, 1000.0),
    ("original_shape_Maximum3DDiameter", "Max 3D diam. (mm)", 1, 1.0),
    ("original_firstorder_Mean", "Mean", 1, 1.0),
    ("original_firstorder_Entropy", "Entropy", 2, 1.0),
    ("original_glcm_Contrast", "GLCM contrast", 2, 1.0),
)
_LESION_COLOUR = "#ffd700"
_VARIANT_COLOURS = ("#00e5ff", "#ff4fd8", "#7CFC00", "#ff8c00", "#b388ff", "#ff5252")


class SummaryError(ValueError):
    """Inputs the summary cannot show together; names the ROI."""


def _key_slice(mask: sitk.Image) -> int:
    """The axial slice (index along the stack) with the most voxels of ``mask``."""
    counts = sitk.GetArrayViewFromImage(mask).reshape(mask.GetSize()[2], -1).sum(axis=1)
    return int(np.argmax(counts))


def _window(pixels: np.ndarray, modality: str) -> tuple[float, float]:
    if modality == "CT":
        level, width = LIVER_WINDOW_HU
        return level - width / 2, level + width / 2
    low, high = np.percentile(pixels, [1, 99])
    return float(low), float(max(high, low + 1e-6))


def _formatted(value: float | None, digits: int, scale: float) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value / scale:.{digits}f}"


def _panel(axes, volume: SeriesVolume, lesion_rois: Sequence[tuple[RoiResult, RoiMask]],
           colours: dict[str, str]) -> None:
    """Key slice of one lesion with the contours of its ROIs."""
    segment = lesion_rois[0][0].segment
    x_low, y_low, z_low = segment.index
    z = z_low + _key_slice(segment.region)
    image = sitk.GetArrayViewFromImage(volume.image)[z]
    rows, columns = np.nonzero(sitk.GetArrayViewFromImage(segment.region)[z - z_low] > 0)
    rows, columns = rows + y_low, columns + x_low
    spacing_x, spacing_y = volume.image.GetSpacing()[:2]
    margin_x = int(np.ceil(PANEL_MARGIN_MM / spacing_x))
    margin_y = int(np.ceil(PANEL_MARGIN_MM / spacing_y))
    y0, y1 = max(rows.min() - margin_y, 0), min(rows.max() + margin_y + 1, image.shape[0])
    x0, x1 = max(columns.min() - margin_x, 0), min(columns.max() + margin_x + 1, image.shape[1])
    crop = image[y0:y1, x0:x1]
    low, high = _window(crop, volume.modality)
    extent = (0, (x1 - x0) * spacing_x, (y1 - y0) * spacing_y, 0)
    axes.imshow(crop, cmap="gray", vmin=low, vmax=high, extent=extent, interpolation="nearest")
    # derived ROIs first, the lesion last and thicker: a ring's inner edge is the lesion's edge
    for roi, mask in sorted(lesion_rois, key=lambda item: not item[0].derived):
        full = sitk.GetArrayViewFromImage(mask.mask)
        x, y, zi = mask.index
        k = z - zi
        if not 0 <= k < full.shape[0]:
            continue
        plane = np.zeros(image.shape, dtype=float)
        plane[y:y + full.shape[1], x:x + full.shape[2]] = full[k]
        plane = plane[y0:y1, x0:x1]
        if plane.any():
            xs = (np.arange(plane.shape[1]) + 0.5) * spacing_x
            ys = (np.arange(plane.shape[0]) + 0.5) * spacing_y
            axes.contour(xs, ys, plane, levels=[0.5], colors=colours[str(roi.roi_variant)],
                         linewidths=1.4 if roi.derived else 2.2)
    axes.set_title(f"{segment.label}: key slice {z + 1} of {volume.image.GetSize()[2]}",
                   fontsize=12)
    axes.set_xticks([])
    axes.set_yticks([])
    axes.text(0.02, 0.02, f"{extent[1]:.0f} x {extent[2]:.0f} mm",
              transform=axes.transAxes, color="white", fontsize=9)


def render_summary(
    volume: SeriesVolume,
    rois: Sequence[RoiResult],
    masks: Sequence[RoiMask],
    *,
    title: str,
    subtitle: str,
    qc_lines: Sequence[str],
    model_lines: Sequence[str],
    not_for_diagnostic_use: bool,
    intensity_unit: str,
) -> np.ndarray:
    """The summary page (module docstring) as a uint8 RGB array of SIZE_PX x SIZE_PX."""
    if len(rois) != len(masks) or not rois:
        raise SummaryError(f"{len(rois)} ROIs and {len(masks)} masks: need as many, at least one")
    by_lesion: dict[int, list[tuple[RoiResult, RoiMask]]] = {}
    for roi, mask in zip(rois, masks, strict=True):
        if roi.roi_variant is not None and str(roi.roi_variant) != mask.name:
            raise SummaryError(f"segment {roi.segment.number}: ROI {roi.roi_variant!r} paired "
                               f"with mask {mask.name!r}")
        by_lesion.setdefault(roi.segment.number, []).append((roi, mask))
    variants = list(dict.fromkeys(str(roi.roi_variant) for roi in rois))
    colours = {name: (_LESION_COLOUR if name in ("intra", "None")
                      else _VARIANT_COLOURS[k % len(_VARIANT_COLOURS)])
               for k, name in enumerate(v for v in variants)}

    figure = Figure(figsize=(SIZE_PX / 100, SIZE_PX / 100), dpi=100, facecolor="black")
    canvas = FigureCanvasAgg(figure)
    text = {"color": "white", "family": "DejaVu Sans"}
    top = 0.975
    figure.text(0.02, top, title, fontsize=16, weight="bold", va="top", **text)
    figure.text(0.02, top - 0.03, subtitle, fontsize=11, va="top", color="#cccccc")
    if not_for_diagnostic_use:
        figure.text(0.98, top, "NOT FOR DIAGNOSTIC USE", fontsize=16, weight="bold", va="top",
                    ha="right", color="white",
                    bbox={"facecolor": "#c62828", "edgecolor": "none", "pad": 4})

    lesions = list(by_lesion.values())[:MAX_PANELS]
    width = 0.96 / len(lesions)
    for k, lesion_rois in enumerate(lesions):
        axes = figure.add_axes((0.02 + k * width + 0.01, 0.52, width - 0.02, 0.39))
        _panel(axes, volume, lesion_rois, colours)
    handles = [Line2D([], [], color=colours[name], lw=2, label=name) for name in variants]
    legend = figure.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.515),
                           ncol=min(len(handles), 4), frameon=False, fontsize=11)
    for label in legend.get_texts():
        label.set_color("white")
    if len(by_lesion) > MAX_PANELS:
        figure.text(0.98, 0.92, f"{len(by_lesion) - MAX_PANELS} more lesions: see the SR",
                    ha="right", fontsize=11, **text)

    headers = ["ROI", *(f"Mean ({intensity_unit})" if key.endswith("_Mean") else header
                        for key, header, _, _ in TABLE_COLUMNS)]
    cells = [[roi.tracking_identifier,
              *(_formatted(roi.features.values.get(key), digits, scale)
                for key, _, digits, scale in TABLE_COLUMNS)]
             for roi in rois[:MAX_TABLE_ROWS]]
    table_axes = figure.add_axes((0.02, 0.25, 0.96, 0.22))
    table_axes.axis("off")
    table = table_axes.table(cellText=cells, colLabels=headers, loc="upper center",
                             cellLoc="right", colLoc="center",
                             colWidths=[0.34, *[0.132] * len(TABLE_COLUMNS)])
    table.auto_set_font_size(False)
    table.set_fontsize(11)
    for (row, column), cell in table.get_celld().items():
        cell.set_facecolor("#202020" if row else "#37474f")
        cell.set_edgecolor("#555555")
        cell.get_text().set_color("white")
        if column == 0:
            cell.get_text().set_ha("left")
    if len(rois) > MAX_TABLE_ROWS:
        figure.text(0.02, 0.245, f"{len(rois) - MAX_TABLE_ROWS} more ROIs: see the SR",
                    fontsize=10, **text)

    figure.text(0.02, 0.215, "Quality control", fontsize=13, weight="bold", **text)
    figure.text(0.02, 0.205, "\n".join(qc_lines) or "no QC results", fontsize=11, va="top",
                linespacing=1.35, **text)
    figure.text(0.52, 0.215, "Model", fontsize=13, weight="bold", **text)
    figure.text(0.52, 0.205, "\n".join(model_lines) or "no model applied", fontsize=11,
                va="top", linespacing=1.35, wrap=True, **text)
    figure.text(0.02, 0.012, f"radiomics-node {software_version()}: research software. Exact "
                "values, units and settings are in the structured report (SR) of this study.",
                fontsize=10, color="#bbbbbb")
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def build_summary_image(
    volume: SeriesVolume,
    rois: Sequence[RoiResult],
    masks: Sequence[RoiMask],
    *,
    preset_name: str,
    preset_hash: str,
    seg_sop_instance_uid: str,
    qc_lines: Sequence[str],
    model_lines: Sequence[str],
    not_for_diagnostic_use: bool,
    intensity_unit: str = "HU",
    series_number: int | None = None,
) -> hd.sc.SCImage:
    """The summary page (module docstring) as an RGB Secondary Capture in ``volume``'s study.

    ``rois`` are the ROIs the report holds and ``masks[k]`` the mask of ``rois[k]``
    (``pipelines.science.rois.build_variants`` output in the same order); ``qc_lines`` and
    ``model_lines`` are printed as given, one line each; ``intensity_unit`` labels the mean
    column ("HU" for CT, "1" after a z-score, ...). ``series_number`` defaults to the source's
    SeriesNumber + :data:`SC_SERIES_NUMBER_OFFSET`.
    """
    reference = volume.datasets[0]
    title = f"Radiomics summary: {preset_name}"
    series = f"{reference.get('SeriesNumber', '')} {reference.get('SeriesDescription', '')}"
    lesions = len({roi.segment.number for roi in rois})
    subtitle = (f"Series {series.strip()} ({volume.modality}), {lesions} lesion(s), "
                f"preset hash {preset_hash[:12]}")
    pixels = render_summary(volume, rois, masks, title=title, subtitle=subtitle,
                            qc_lines=qc_lines,
                            model_lines=model_lines,
                            not_for_diagnostic_use=not_for_diagnostic_use,
                            intensity_unit=intensity_unit)
    if series_number is None:
        series_number = int(reference.get("SeriesNumber") or 0) + SC_SERIES_NUMBER_OFFSET
    parts = (seg_sop_instance_uid, preset_hash, "summary")
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=reference,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=result_uid(volume, *parts, "series"),
        series_number=series_number,
        sop_instance_uid=result_uid(volume, *parts, "instance"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "P"),
        series_description=f"Radiomics summary ({preset_name})"[:64],
    )
    copy_study_attributes(image, reference)
    if reference.get("BodyPartExamined"):
        # Laterality (0020,0060) is required for a paired body part (PS3.3 C.7.3.1)
        image.BodyPartExamined = reference.BodyPartExamined
    image.BurnedInAnnotation = "YES"
    image.ConversionType = "WSD"
    image.ImageType = ["DERIVED", "SECONDARY"]
    image.SoftwareVersions = software_version()
    return image
