"""What the two TID 1500 reports of a job share (``pipelines.outputs.reading_report``,
``pipelines.outputs.feature_report``): the observation context, the procedure reported, the
Algorithm Identification, each ROI's Tracking Identifier and Tracking Unique Identifier, its
Referenced Segment, Finding Type and Finding Site, and the checks of the inputs (PS3.16 TID 1500,
TID 1411, TID 4019).

The two reports give one ROI the same Tracking Unique Identifier, so that a reader joins a lesion's
reading group with its feature groups. UIDs are derived with ``pydicom.uid.generate_uid
(entropy_srcs=...)`` from the job's inputs (``pipelines.outputs.uids``): the same inputs always give
the same objects, and a series that grew (a late instance) gives new ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from pipelines.io.segmentation import DecodedSegmentation, Segment
from pipelines.io.series import SeriesVolume
from pipelines.outputs.codes import coding_schemes
from pipelines.outputs.derived_seg import DerivedSegmentation
from pipelines.outputs.result_attributes import copy_study_attributes
from pipelines.outputs.software import (
    ALGORITHM_NAME,
    MANUFACTURER,
    contributing_equipment,
    software_version,
)
from pipelines.outputs.sr_encoding import image_library
from pipelines.outputs.uids import result_uid
from pipelines.science.presets import Preset
from pipelines.science.results import RoiResult

# PS3.16 CID 100 "Quantitative Diagnostic Imaging Procedures"
_PROCEDURES = {
    "CT": codes.LN.CTUnspecifiedBodyRegion,
    "MR": codes.LN.MRIUnspecifiedBodyRegion,
    "PT": codes.LN.PETUnspecifiedBodyRegion,
}


class ReportError(ValueError):
    """Inputs that cannot be reported together (e.g. a SEG of another study)."""


@dataclass(frozen=True)
class ReportReference:
    """The identity of one of the job's reports, for the other to list."""

    sop_class_uid: str
    series_instance_uid: str
    sop_instance_uid: str


def refer_to(sr: Dataset, other: ReportReference) -> None:
    """List ``other`` (a report in the same study) in the Pertinent Other Evidence Sequence
    (0040,A385) of ``sr``, a Hierarchical SOP Instance Reference (PS3.3 C.17.2.3, C.17.2.1)."""
    instance = Dataset()
    instance.ReferencedSOPClassUID = other.sop_class_uid
    instance.ReferencedSOPInstanceUID = other.sop_instance_uid
    series = Dataset()
    series.SeriesInstanceUID = other.series_instance_uid
    series.ReferencedSOPSequence = [instance]
    study = Dataset()
    study.StudyInstanceUID = sr.StudyInstanceUID
    study.ReferencedSeriesSequence = [series]
    sr.PertinentOtherEvidenceSequence = [*sr.get("PertinentOtherEvidenceSequence", []), study]


def measurement_document(
    document: type[hd.sr.ComprehensiveSR] | type[hd.sr.Comprehensive3DSR],
    volume: SeriesVolume,
    groups: Sequence[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
                     | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations],
    *,
    identity: ReportReference,
    series_number: int,
    series_description: str,
    evidence: Sequence[Dataset],
    library_images: Sequence[Dataset],
    other: ReportReference | None,
    contribution: str,
) -> tuple[Dataset, tuple[str, ...]]:
    """A TID 1500 Measurement Report of ``groups`` as an SR ``document`` of class ``identity``
    in the study of ``volume`` (its General Study attributes,
    ``pipelines.outputs.result_attributes``), with the Image Library of ``library_images``,
    ``other`` (the job's other report) as pertinent other evidence and the node as contributing
    equipment (``contribution``); and the document's character set as pydicom encodings, for content
    items encoded afterwards."""
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(),
        procedure_reported=procedure_reported(volume),
        imaging_measurements=groups,
    )
    sr = document(
        evidence=evidence,
        content=report,
        series_instance_uid=identity.series_instance_uid,
        series_number=series_number,
        sop_instance_uid=identity.sop_instance_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=series_description[:64],
        software_versions=software_version(),
        coding_schemes=coding_schemes(),
    )
    copy_study_attributes(sr, volume.datasets[0])
    encodings = tuple(convert_encodings(sr.get("SpecificCharacterSet") or default_encoding))
    insert_image_library(sr, image_library(library_images, encodings))
    if other is not None:
        refer_to(sr, other)
    sr.ContributingEquipmentSequence = [*sr.get("ContributingEquipmentSequence", []),
                                        contributing_equipment(contribution)]
    return sr, encodings


def insert_image_library(sr: Dataset, library: Dataset) -> None:
    """Put the Image Library container (TID 1600, ``pipelines.outputs.sr_encoding.image_library``)
    where ``highdicom.sr.MeasurementReport`` puts it, before the Imaging Measurements container.
    Built apart from the report, because highdicom's SR constructor copies and searches the whole
    content tree, which for the ~25 content items per source image took 6 s of the 8 s of a
    300-slice report."""
    content = sr.ContentSequence
    position = next(i for i, item in enumerate(content)
                    if item.ConceptNameCodeSequence[0].CodeValue == "126010")
    content.insert(position, library)


def measurement_groups(sr: Dataset) -> Sequence[Dataset]:
    """The Measurement Group containers (DCM 125007) of the Imaging Measurements container
    (DCM 126010) of a TID 1500 report, in document order."""
    [measurements] = [item for item in sr.ContentSequence
                      if item.ConceptNameCodeSequence[0].CodeValue == "126010"]
    return [item for item in measurements.ContentSequence
            if item.ConceptNameCodeSequence[0].CodeValue == "125007"]


def check_inputs(volume: SeriesVolume, seg: DecodedSegmentation) -> None:
    """Refuse a segmentation of another study than the source series'."""
    seg_study = seg.dataset.StudyInstanceUID
    if seg_study != volume.study_instance_uid:
        raise ReportError(
            f"{seg.path}: (0020,000D) StudyInstanceUID {seg_study} differs from the source "
            f"series' {volume.study_instance_uid}"
        )


def check_finite(roi: RoiResult) -> None:
    """Refuse a non-finite feature value: PS3.3 C.18.1 would encode it as an empty Measured
    Value Sequence with a CID 42 Numeric Value Qualifier, which highdicom 0.28 cannot read back,
    and a NUM that hides the failure behind a number would be worse than no report."""
    for key, value in roi.features.values.items():
        if not math.isfinite(value):
            raise ReportError(
                f"segment {roi.segment.number} ({roi.tracking_identifier}): {key} is {value}, "
                "which a NUM content item cannot carry"
            )


def _settings_that_decide_values(preset: Preset) -> list[str]:
    """Discretisation, resampling and resegmentation of the preset, so that a reader sees them
    without looking the preset hash up; the hash covers every other setting."""
    settings = preset.settings
    shown = [f"{key} {settings[key]}" for key in ("binWidth", "binCount") if settings.get(key)]
    for key in ("resampledPixelSpacing", "interpolator", "resegmentRange"):
        if settings.get(key) is not None and (key != "interpolator"
                                              or settings.get("resampledPixelSpacing")):
            shown.append(f"{key} {settings[key]}")
    return shown


def algorithm_identification(preset: Preset) -> hd.sr.AlgorithmIdentification:
    """TID 4019 Algorithm Identification: radiomics-node, its version and one Algorithm
    Parameters item naming the preset, its sha256 and the settings that decide the values
    (``preset ct-liver-crlm; sha256 ...; binWidth 25; ...``). One item, not one per setting:
    dcmqi's ``tid1500reader`` keeps only the first."""
    parameters = "; ".join([f"preset {preset.name}", f"sha256 {preset.hash}",
                            *_settings_that_decide_values(preset)])
    return hd.sr.AlgorithmIdentification(name=ALGORITHM_NAME, version=software_version(),
                                         parameters=[parameters])


def observation_context() -> hd.sr.ObservationContext:
    """TID 1001 with the device observer radiomics-node (TID 1004)."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=[ALGORITHM_NAME, "device"]), name=ALGORITHM_NAME,
        manufacturer_name=MANUFACTURER,
    )
    return hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.cid270.Device, observer_identifying_attributes=device))


def procedure_reported(volume: SeriesVolume) -> hd.sr.CodedConcept:
    """CID 100 procedure of the source's modality (CT, MR or PET of an unspecified region)."""
    return _PROCEDURES.get(volume.modality, codes.cid100.ImagingProcedure)


def tracking_identifier(volume: SeriesVolume, seg: DecodedSegmentation, preset: Preset,
                        roi: RoiResult) -> hd.sr.TrackingIdentifier:
    """The ROI's Tracking Identifier (its label, ``RoiResult.tracking_identifier``) and Tracking
    Unique Identifier, the same in both reports and in the derived SEG's segment."""
    variant = (str(roi.roi_variant),) if roi.derived else ()
    return hd.sr.TrackingIdentifier(
        identifier=roi.tracking_identifier,
        uid=result_uid(volume, seg.sop_instance_uid, preset.hash, "tracking",
                       str(roi.segment.number), *variant),
    )


def referenced_segment(volume: SeriesVolume, seg: DecodedSegmentation, roi: RoiResult,
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


def finding_sites(seg: DecodedSegmentation, segment: Segment) -> list[hd.sr.FindingSite]:
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
