"""The reading report: a small TID 1500 Measurement Report (Comprehensive SR) of the numbers a
radiologist reads, which a TID 1500-aware viewer places on the image; every feature is in the
feature report (``pipelines.outputs.feature_report``), which this one lists as pertinent other
evidence (PS3.3 C.17.2.3) and shares each ROI's Tracking Unique Identifier with.

Structure (PS3.16 TID 1500):

* Observation context (TID 1001/1004): the device observer radiomics-node; Image Library
  (TID 1600) of the source images the outlines are drawn on.
* One Planar ROI Measurements group (TID 1410) per lesion (or measured organ) as drawn, in the
  order of the ROIs, whose Image Region is its outline (SCOORD, closed POLYLINE) on the slice
  where it is largest, SELECTED FROM the source image of that slice (``pipelines.outputs.outline``),
  so that a viewer draws it there; with the ROI's Tracking Identifier and Tracking Unique
  Identifier, Finding Type and Finding Site, Algorithm Identification (TID 4019), then its key
  numbers, NUMs without children (a viewer takes a NUM's child for a spatial reference): Volume
  (IBSI RNU0, the mesh volume), Maximum 3D diameter (IBSI L0JK), Mean (IBSI Q4LE) and Standard
  Deviation (SCT 386136009, the square root of the IBSI ECT3 variance) of the original image's
  intensities (HU on CT), those of them the preset extracts; then each model's output
  (``pipelines.outputs.evaluations.model_items``: the probability as a NUM, the category); then the
  quality control status of the series and of the lesion (coded) and the findings that warned
  or failed.
* No group for a ROI the preset derived from a lesion (a ring, the lesion plus a ring, an
  erosion): its own outline would lie around the lesion's, its label stacked on the lesion's,
  and a group with no image region makes OHIF 3.13's SR viewport fail for every group (it reads
  the first coordinate of each measurement); their values are in the feature report, their
  voxels in the derived SEG, their key numbers in the summary image.

The values are the feature report's doubles. The General Study attributes are the source's
(``pipelines.outputs.result_attributes``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ComprehensiveSRStorage

from pipelines.io.segmentation import DecodedSegmentation
from pipelines.io.series import SeriesVolume
from pipelines.outputs.codes import feature_concept
from pipelines.outputs.evaluations import model_items, qc_evaluations, qc_findings
from pipelines.outputs.outline import Outline, largest_slice_outline
from pipelines.outputs.report_parts import (
    ReportReference,
    algorithm_identification,
    check_finite,
    check_inputs,
    finding_sites,
    measurement_document,
    measurement_groups,
    tracking_identifier,
)
from pipelines.outputs.uids import result_uid
from pipelines.science.inference import ModelOutput, NotApplied
from pipelines.science.presets import Preset
from pipelines.science.qc import QCReport
from pipelines.science.results import RoiResult

READING_SERIES_NUMBER_OFFSET = 1003  # reading report series number = source SeriesNumber + this

KEY_FEATURES = ("original_shape_MeshVolume", "original_shape_Maximum3DDiameter",
                "original_firstorder_Mean")
"""The features a reading group shows, in order, when the preset extracts them."""
_MEAN, _VARIANCE = "original_firstorder_Mean", "original_firstorder_Variance"


def reading_report_reference(volume: SeriesVolume, seg_sop_instance_uid: str,
                             preset: Preset) -> ReportReference:
    """The identity of the reading report of these inputs (a Comprehensive SR)."""
    return ReportReference(str(ComprehensiveSRStorage),
                           result_uid(volume, seg_sop_instance_uid, preset.hash, "reading series"),
                           result_uid(volume, seg_sop_instance_uid, preset.hash, "reading"))


def key_measurements(roi: RoiResult, modality: str) -> list[hd.sr.Measurement]:
    """The key numbers of ``roi`` (module docstring) as NUMs without children."""
    values = roi.features.values
    measurements = []
    for key in KEY_FEATURES:
        if key in values:
            concept = feature_concept(key, modality)
            measurements.append(hd.sr.Measurement(name=concept.name, value=values[key],
                                                  unit=concept.unit))
    if _VARIANCE in values:
        measurements.append(hd.sr.Measurement(
            name=codes.SCT.StandardDeviation, value=math.sqrt(values[_VARIANCE]),
            unit=feature_concept(_MEAN, modality).unit))
    return measurements


def _image_region(outline: Outline) -> hd.sr.ImageRegion:
    """The outline as a TID 1410 Image Region: a closed 2D POLYLINE SELECTED FROM its image
    (and frame, for a multi-frame image)."""
    frames = [outline.source.frame_number] if outline.source.frame_number is not None else None
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=outline.points,
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=outline.sop_class_uid,
            referenced_sop_instance_uid=outline.source.sop_instance_uid,
            referenced_frame_numbers=frames))


def build_reading_report(
    volume: SeriesVolume,
    seg: DecodedSegmentation,
    rois: Sequence[RoiResult],
    preset: Preset,
    *,
    series_qc: QCReport | None = None,
    lesion_qc: Mapping[int, QCReport] | None = None,
    models: Mapping[int, Sequence[ModelOutput | NotApplied]] | None = None,
    feature_report: ReportReference | None = None,
) -> hd.sr.ComprehensiveSR | None:
    """The TID 1500 reading report of the ROIs as drawn among ``rois`` (module docstring), in
    the study of ``volume``; None when there is none (a preset of derived ROIs only), or none
    has a voxel to outline.

    ``series_qc`` and ``lesion_qc`` (by segment number) and ``models`` (by segment number) as for
    :func:`pipelines.outputs.feature_report.build_feature_report`; ``feature_report`` is listed as
    pertinent other evidence."""
    check_inputs(volume, seg)
    algorithm = algorithm_identification(preset)
    groups = []
    appended: list[list[Dataset]] = []
    outlined: dict[str, Dataset] = {}
    datasets = {str(ds.SOPInstanceUID): ds for ds in volume.datasets}
    for roi in rois:
        outline = None if roi.derived else largest_slice_outline(volume, roi.segment)
        if outline is None:
            continue
        check_finite(roi)
        segment = roi.segment
        outlined[outline.source.sop_instance_uid] = datasets[outline.source.sop_instance_uid]
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking_identifier(volume, seg, preset, roi),
            referenced_region=_image_region(outline),
            finding_type=segment.property_type,
            finding_sites=finding_sites(seg, segment) or None,
            algorithm_id=algorithm,
            measurements=key_measurements(roi, volume.modality),
        ))
        extra: list[Dataset] = [item for result in (models or {}).get(segment.number, ())
                                for item in model_items(result)]
        if series_qc is not None and lesion_qc is not None:
            extra += [item for evaluation in qc_evaluations(series_qc, lesion_qc[segment.number])
                      for item in evaluation]
            extra += qc_findings(series_qc, lesion_qc[segment.number])
        appended.append(extra)
    if not groups:
        return None
    sr, _ = measurement_document(
        hd.sr.ComprehensiveSR, volume, groups,
        identity=reading_report_reference(volume, seg.sop_instance_uid, preset),
        series_number=volume.series_number + READING_SERIES_NUMBER_OFFSET,
        series_description=f"Radiomics reading report ({preset.name})",
        evidence=[*volume.datasets, seg.dataset], library_images=list(outlined.values()),
        other=feature_report,
        contribution=f"radiomics reading report, preset {preset.name} (sha256 {preset.hash})",
    )
    for group, extra in zip(measurement_groups(sr), appended, strict=True):
        group.ContentSequence.extend(extra)
    return sr
