"""TID 1500 Measurement Report (Comprehensive 3D SR) of the features of each segmented ROI.

Structure (PS3.16 TID 1500 "Measurement Report"):

* Observation context (TID 1001/1004): the device observer radiomics-node.
* Image Library (TID 1600): the source images the features were computed on.
* One Volumetric ROI Measurements group (TID 1411) per ROI with its Tracking Identifier and
  Tracking UID (the segment label for the segment as drawn, "<label> / <ROI variant>" such as
  "Lesion 2 / intra + 4 mm ring" for a region the preset derived from it, see pipelines.rois;
  its Referenced Segment is then the segment it was derived from), the Referenced Segment (SEG
  SOP instance, segment number and the source series, DCM 121232 "Source series for
  segmentation" as TID 1411 spells it),
  Finding Type (the segment's Segmented Property Type) and, where the SEG gives one, the
  segment's Anatomic Region as Finding Site.
* Algorithm Identification (TID 4019) of each group, naming radiomics-node, its version and, as
  Algorithm Parameters, the preset name and the preset hash.
* One NUM (TID 1419 / TID 300) per feature: concept and UCUM unit from :mod:`pipelines.codes`,
  the image filter as Measurement Method (a ``99RADNODE`` ``filter.<image type>`` code).

highdicom builds the document, each group and its first NUM; the other NUMs of a group are
encoded to bytes by :func:`pipelines.sr_encoding.num_item`, which writes the same content item
as ``highdicom.sr.Measurement`` (a test compares the two), and inserted after that first one.
highdicom's constructors check every content item against the whole tree, which takes minutes
for the thousands of NUMs of a preset with filters and rings (1037 features x 4 ROI variants per
lesion for ct-liver-crlm), and pydicom datasets of them took seconds to build and to write.

A non-finite value is refused: PS3.3 C.18.1 would encode it as an empty Measured Value Sequence
with a CID 42 Numeric Value Qualifier, which highdicom 0.28 cannot read back, and a NUM that
hides the failure behind a number would be worse than no report.

The General Study attributes are the source's (``pipelines.result_attributes``).

Series/SOP Instance UIDs and Tracking UIDs are derived with
``pydicom.uid.generate_uid(entropy_srcs=...)`` from the source series and every one of its
instances, the SEG, the preset hash and the software version: the same inputs always give the same
objects, and a series that grew (a late instance) gives new ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import highdicom as hd
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from pipelines.codes import coding_schemes, feature_concept, image_filter_concept
from pipelines.derived_seg import DerivedSegmentation
from pipelines.evaluations import model_items, qc_evaluations, qc_findings
from pipelines.features import feature_keys
from pipelines.inference import ModelOutput, NotApplied
from pipelines.presets import Preset
from pipelines.qc import QCReport
from pipelines.result_attributes import copy_study_attributes
from pipelines.results import RoiResult
from pipelines.segmentation import DecodedSegmentation, Segment
from pipelines.series import SeriesVolume
from pipelines.software import (
    ALGORITHM_NAME,
    MANUFACTURER,
    contributing_equipment,
    software_version,
)
from pipelines.sr_encoding import (
    encoded_items,
    image_library,
    num_item,
    prepare_templates,
    raw_content_sequence,
    written_as_is_throughout,
)
from pipelines.uids import result_uid

SR_SERIES_NUMBER_OFFSET = 1000  # SR series number = source SeriesNumber + this offset

# PS3.16 CID 100 "Quantitative Diagnostic Imaging Procedures"
_PROCEDURES = {
    "CT": codes.LN.CTUnspecifiedBodyRegion,
    "MR": codes.LN.MRIUnspecifiedBodyRegion,
    "PT": codes.LN.PETUnspecifiedBodyRegion,
}


_CONTENT_SEQUENCE = 0x0040A730


class ReportError(ValueError):
    """Inputs that cannot be reported together (e.g. a SEG of another study)."""



def _measurement(key: str, value: float, modality: str) -> hd.sr.Measurement:
    """One NUM of TID 1419 with the image filter as Measurement Method, built by highdicom."""
    concept = feature_concept(key, modality)
    return hd.sr.Measurement(
        name=concept.name,
        value=value,
        unit=concept.unit,
        method=image_filter_concept(concept.image_filter),
    )


def _insert_image_library(sr: hd.sr.Comprehensive3DSR, images: Sequence[Dataset],
                          encodings: tuple[str, ...]) -> None:
    """Put the Image Library (TID 1600) of ``images`` (:func:`pipelines.sr_encoding.image_library`,
    what highdicom's ``ImageLibrary`` builds) where ``MeasurementReport`` puts it, before the
    Imaging Measurements container. Built apart from the report, because highdicom's SR
    constructor copies and searches the whole content tree, which for the ~25 content items per
    source image took 6 s of the 8 s of a 300-slice report."""
    content = sr.ContentSequence
    position = next(i for i, item in enumerate(content)
                    if item.ConceptNameCodeSequence[0].CodeValue == "126010")
    content.insert(position, image_library(images, encodings))


def _complete_groups(sr: hd.sr.Comprehensive3DSR, rois: Sequence[RoiResult], modality: str,
                     appended: Sequence[Sequence[Dataset]], encodings: tuple[str, ...]) -> None:
    """Insert every NUM but the first of each group right after the group's first NUM, and
    append the group's ``appended`` items (e.g. QC findings) at its end.

    The group's Content Sequence becomes one raw element (:mod:`pipelines.sr_encoding`): the
    items highdicom built and ``appended`` encoded by pydicom, the NUMs from templates, in the
    report's character set ``encodings``."""
    [measurements] = [item for item in sr.ContentSequence
                      if item.ConceptNameCodeSequence[0].CodeValue == "126010"]
    groups = [item for item in measurements.ContentSequence
              if item.ConceptNameCodeSequence[0].CodeValue == "125007"]
    for group, roi, extra in zip(groups, rois, appended, strict=True):
        items = list(group.ContentSequence)
        first = next(i for i, item in enumerate(items) if item.ValueType == "NUM")
        rest = list(roi.features.values.items())[1:]
        content = b"".join([
            encoded_items(items[:first + 1], encodings),
            *(num_item(key, value, modality, encodings) for key, value in rest),
            encoded_items([*items[first + 1:], *extra], encodings),
        ])
        group[_CONTENT_SEQUENCE] = raw_content_sequence(content)


def _referenced_segment(volume: SeriesVolume, seg: DecodedSegmentation, roi: RoiResult,
                        derived: DerivedSegmentation | None) -> hd.sr.ReferencedSegment:
    """TID 1411 Referenced Segment: the derived SEG's segment of the ROI when it holds one (a
    derived ROI, or any ROI of an RT Structure Set, whose contours the derived SEG carries
    rasterised: TID 1411 references segments, not contours), else the input SEG's segment."""
    key = (roi.segment.number, str(roi.roi_variant))
    source = hd.sr.SourceSeriesForSegmentation(volume.series_instance_uid)
    # highdicom 0.28 writes the meaning "Source Series for Segmentation"; TID 1411 and PS3.16
    # Annex D spell DCM 121232 "Source series for segmentation" (pydicom's dictionary of them)
    source.ConceptNameCodeSequence[0].CodeMeaning = codes.DCM.SourceSeriesForSegmentation.meaning
    if derived is not None and key in derived.segment_numbers:
        return hd.sr.ReferencedSegment(
            sop_class_uid=str(derived.dataset.SOPClassUID),
            sop_instance_uid=str(derived.dataset.SOPInstanceUID),
            segment_number=derived.segment_numbers[key], source_series=source)
    return hd.sr.ReferencedSegment(
        sop_class_uid=seg.sop_class_uid, sop_instance_uid=seg.sop_instance_uid,
        segment_number=roi.segment.number, source_series=source)


def _settings_that_decide_values(preset: Preset) -> list[str]:
    """Discretisation, resampling and resegmentation of the preset as Algorithm Parameters
    (TID 4019), so that a reader sees them without looking the preset hash up; the hash covers
    every other setting."""
    settings = preset.settings
    shown = [f"{key} {settings[key]}" for key in ("binWidth", "binCount") if settings.get(key)]
    for key in ("resampledPixelSpacing", "interpolator", "resegmentRange"):
        if settings.get(key) is not None and (key != "interpolator"
                                              or settings.get("resampledPixelSpacing")):
            shown.append(f"{key} {settings[key]}")
    return shown


def _check_finite(roi: RoiResult) -> None:
    for key, value in roi.features.values.items():
        if not math.isfinite(value):
            raise ReportError(
                f"segment {roi.segment.number} ({roi.tracking_identifier}): {key} is {value}, "
                "which a NUM content item cannot carry"
            )


def _finding_sites(seg: DecodedSegmentation, segment: Segment) -> list[hd.sr.FindingSite]:
    """Anatomic Region Sequence (0008,2218) of the segment's SEG item, if any (PS3.3 C.8.20.4);
    none for an RT Structure Set, whose ROIs carry no anatomic region (PS3.3 C.8.8.5)."""
    if seg.is_rtstruct:
        return []
    for item in seg.dataset.get("SegmentSequence", []):
        if int(item.SegmentNumber) == segment.number:
            return [
                hd.sr.FindingSite(anatomic_location=hd.sr.CodedConcept.from_dataset(region))
                for region in item.get("AnatomicRegionSequence", [])
            ]
    raise ReportError(
        f"{seg.path}: (0062,0004) SegmentNumber {segment.number} not in (0062,0002) SegmentSequence"
    )


def _check_inputs(volume: SeriesVolume, seg: DecodedSegmentation) -> None:
    seg_study = seg.dataset.StudyInstanceUID
    if seg_study != volume.study_instance_uid:
        raise ReportError(
            f"{seg.path}: (0020,000D) StudyInstanceUID {seg_study} differs from the source "
            f"series' {volume.study_instance_uid}"
        )


def prepare_report(preset: Preset) -> int:
    """Make the NUM templates of every feature ``preset`` extracts
    (:func:`pipelines.features.feature_keys`), for its modality (CT and MR when it names none),
    so that the first report of a process does not (``pipelines.sr_encoding``); a job worker
    calls this when it starts. Returns the number of templates made."""
    keys = feature_keys(preset)
    return sum(prepare_templates(keys, modality)
               for modality in ([preset.modality] if preset.modality else ["CT", "MR"]))


def build_measurement_report(
    volume: SeriesVolume,
    seg: DecodedSegmentation,
    rois: Sequence[RoiResult],
    preset: Preset,
    *,
    series_qc: QCReport | None = None,
    lesion_qc: Mapping[int, QCReport] | None = None,
    derived: DerivedSegmentation | None = None,
    models: Mapping[int, Sequence[ModelOutput | NotApplied]] | None = None,
) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 report of ``rois`` (module docstring), in the study of ``volume``.

    With ``series_qc`` and ``lesion_qc`` (the QC report of each lesion by segment number), each
    group carries the quality control evaluations of :mod:`pipelines.evaluations`. With
    ``derived`` (the node's SEG of the ROI variants it built), a derived ROI's group references
    its segment there; otherwise the input segment it was derived from. ``models`` (by segment
    number) go into the group of the lesion as drawn (:func:`pipelines.evaluations.model_items`)."""
    _check_inputs(volume, seg)
    sw_version = software_version()
    algorithm = hd.sr.AlgorithmIdentification(
        name=ALGORITHM_NAME, version=sw_version,
        parameters=[preset.name, preset.hash, *_settings_that_decide_values(preset)],
    )
    groups = []
    findings: list[list[Dataset]] = []
    for roi in rois:
        _check_finite(roi)
        segment = roi.segment
        evaluations = None
        appended: list[Dataset] = []
        if series_qc is not None and lesion_qc is not None:
            evaluations = qc_evaluations(series_qc, lesion_qc[segment.number])
            appended += qc_findings(series_qc, lesion_qc[segment.number])
        if models and not roi.derived:
            appended += [item for result in models.get(segment.number, ())
                         for item in model_items(result)]
        findings.append(appended)
        variant = (str(roi.roi_variant),) if roi.derived else ()
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    identifier=roi.tracking_identifier,
                    uid=result_uid(volume, seg.sop_instance_uid, preset.hash, "tracking",
                                   str(segment.number), *variant),
                ),
                referenced_segment=_referenced_segment(volume, seg, roi, derived),
                finding_type=segment.property_type,
                finding_sites=_finding_sites(seg, segment) or None,
                algorithm_id=algorithm,
                measurements=[
                    _measurement(key, value, volume.modality)
                    for key, value in list(roi.features.values.items())[:1]
                ],
                qualitative_evaluations=evaluations,
            )
        )
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=[ALGORITHM_NAME, "device"]), name=ALGORITHM_NAME,
        manufacturer_name=MANUFACTURER,
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(
                observer_type=codes.cid270.Device,
                observer_identifying_attributes=device,
            )
        ),
        procedure_reported=_PROCEDURES.get(volume.modality, codes.cid100.ImagingProcedure),
        imaging_measurements=groups,
    )
    source_series_number = volume.datasets[0].get("SeriesNumber")
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*volume.datasets, seg.dataset, *([derived.dataset] if derived else [])],
        content=report,
        series_instance_uid=result_uid(volume, seg.sop_instance_uid, preset.hash, "series"),
        series_number=int(source_series_number or 0) + SR_SERIES_NUMBER_OFFSET,
        sop_instance_uid=result_uid(volume, seg.sop_instance_uid, preset.hash, "instance"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=f"Radiomics ({preset.name})",
        software_versions=sw_version,
        coding_schemes=coding_schemes(),
    )
    copy_study_attributes(sr, volume.datasets[0])
    encodings = tuple(convert_encodings(sr.get("SpecificCharacterSet") or default_encoding))
    _insert_image_library(sr, volume.datasets, encodings)
    _complete_groups(sr, rois, volume.modality, findings, encodings)
    sr.ContributingEquipmentSequence = [
        *sr.get("ContributingEquipmentSequence", []),
        contributing_equipment(f"radiomics features, preset {preset.name} (sha256 {preset.hash})"),
    ]
    return written_as_is_throughout(sr)  # the raw Content Sequences are written as they are
