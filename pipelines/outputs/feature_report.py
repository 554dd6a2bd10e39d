"""The feature report: a TID 1500 Measurement Report (Comprehensive 3D SR) of every feature of
every ROI, for machines (dcmqi, a research database); the radiologist reads
``pipelines.outputs.reading_report``.

Structure (PS3.16 TID 1500 "Measurement Report"):

* Observation context (TID 1001/1004): the device observer radiomics-node.
* Image Library (TID 1600): the source images the features were computed on.
* One Volumetric ROI Measurements group (TID 1411) per ROI and image filter (pyradiomics image
  type: Original, LoG sigma, wavelet band), in the order of the features, with:
  the ROI's Tracking Identifier and Tracking Unique Identifier, shared by the ROI's groups and
  with its group of the reading report (the segment label for the segment as drawn,
  "<label> / <ROI variant>" such as "Lesion 2 / intra + 4 mm ring" for a region the preset
  derived from it, see pipelines.science.rois); the Referenced Segment (SEG SOP instance, segment
  number and the source series, DCM 121232 "Source series for segmentation"; a derived ROI's segment
  is in the derived SEG); Finding Type (the segment's Segmented Property Type) and, where the SEG
  gives one, the segment's Anatomic Region as Finding Site; the image filter as the group's
  Measurement Method (a ``99RADNODE`` ``filter.<image type>`` code); Algorithm Identification
  (TID 4019, ``pipelines.outputs.report_parts``); one NUM (TID 1419 / TID 300) per feature, concept
  and UCUM unit from :mod:`pipelines.outputs.codes`, without children. The filter is a property of
  the group, not a modifier of each NUM: dcmqi's ``tid1500reader`` reads the Measurement Method of
  groups only, and OHIF takes any child of a NUM for a spatial reference.
* The group of the original image of each ROI also carries the quality control evaluations and
  findings (``pipelines.outputs.evaluations``) and, for a lesion as drawn, the models' outputs.

highdicom builds the document, each group and its first NUM; the other NUMs of a group are
encoded to bytes by :func:`pipelines.outputs.sr_encoding.num_item`, which writes the same content
item as ``highdicom.sr.Measurement`` (a test compares the two), and inserted after that first one.
highdicom's constructors check every content item against the whole tree, which takes minutes
for the thousands of NUMs of a preset with filters and rings (1037 features x 4 ROI variants per
lesion for ct-liver-crlm), and pydicom datasets of them took seconds to build and to write.

A non-finite value is refused (``pipelines.outputs.report_parts.check_finite``). The General Study
attributes are the source's (``pipelines.outputs.result_attributes``). The reading report is listed
in the Pertinent Other Evidence Sequence (PS3.3 C.17.2.3), as this report is in the reading
report's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import Comprehensive3DSRStorage

from pipelines.io.segmentation import DecodedSegmentation
from pipelines.io.series import SeriesVolume
from pipelines.outputs.codes import feature_concept, image_filter_concept
from pipelines.outputs.derived_seg import DerivedSegmentation
from pipelines.outputs.evaluations import (
    check_findings,
    model_items,
    qc_evaluations,
    qc_findings,
)
from pipelines.outputs.report_parts import (
    ReportReference,
    algorithm_identification,
    check_finite,
    check_inputs,
    finding_sites,
    measurement_document,
    measurement_groups,
    referenced_segment,
    tracking_identifier,
)
from pipelines.outputs.sr_encoding import (
    encoded_items,
    num_item,
    prepare_templates,
    raw_content_sequence,
    written_as_is_throughout,
)
from pipelines.outputs.uids import result_uid
from pipelines.science.delta import FeatureChange
from pipelines.science.features import feature_keys
from pipelines.science.inference import ModelOutput, NotApplied
from pipelines.science.presets import Preset
from pipelines.science.qc import QCReport
from pipelines.science.results import RoiResult

SR_SERIES_NUMBER_OFFSET = 1000  # feature report series number = source SeriesNumber + this

_CONTENT_SEQUENCE = 0x0040A730


def feature_report_reference(volume: SeriesVolume, seg_sop_instance_uid: str,
                             preset: Preset) -> ReportReference:
    """The identity of the feature report of these inputs (a Comprehensive 3D SR)."""
    return ReportReference(str(Comprehensive3DSRStorage),
                           result_uid(volume, seg_sop_instance_uid, preset.hash, "series"),
                           result_uid(volume, seg_sop_instance_uid, preset.hash, "instance"))


def _measurement(key: str, value: float, modality: str, unit: Code | None = None
                 ) -> hd.sr.Measurement:
    """One NUM of TID 1419 without children, built by highdicom; ``unit`` replaces the
    feature's."""
    concept = feature_concept(key, modality)
    return hd.sr.Measurement(name=concept.name, value=value, unit=unit or concept.unit)


def _method_modifies(
    group: hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """The group with its Measurement Method item related by HAS CONCEPT MOD, as TID 1419 row 1
    (included by TID 1411) has it; highdicom 0.28 relates a group's method by CONTAINS, which
    PixelMed's SR validator reports as an error."""
    for item in group[0].ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue == "370129005":
            item.RelationshipType = "HAS CONCEPT MOD"
    return group


def by_image_filter(values: Mapping[str, float], modality: str) -> list[tuple[str, list[str]]]:
    """The feature keys of ``values`` grouped by image filter (pyradiomics image type), in the
    order of their first feature."""
    groups: dict[str, list[str]] = {}
    for key in values:
        groups.setdefault(feature_concept(key, modality).image_filter, []).append(key)
    return list(groups.items())


def _complete_groups(sr: hd.sr.Comprehensive3DSR, made: Sequence[_Group], modality: str,
                     encodings: tuple[str, ...]) -> None:
    """Insert each group's ``rest`` of NUMs (every one but the first, in its ``unit`` when it
    has one) right after the group's first NUM, and append the group's ``appended`` items (e.g.
    QC findings) at its end.

    The group's Content Sequence becomes one raw element (:mod:`pipelines.outputs.sr_encoding`): the
    items highdicom built and ``appended`` encoded by pydicom, the NUMs from templates, in the
    report's character set ``encodings``."""
    for group, ours in zip(measurement_groups(sr), made, strict=True):
        items = list(group.ContentSequence)
        first = next(i for i, item in enumerate(items) if item.ValueType == "NUM")
        content = b"".join([
            encoded_items(items[:first + 1], encodings),
            *(num_item(key, value, modality, encodings, ours.unit) for key, value in ours.rest),
            encoded_items([*items[first + 1:], *ours.appended], encodings),
        ])
        group[_CONTENT_SEQUENCE] = raw_content_sequence(content)


def prepare_report(preset: Preset) -> int:
    """Make the NUM templates of every feature ``preset`` extracts
    (:func:`pipelines.science.features.feature_keys`), for its modality (CT and MR when it names
    none), so that the first report of a process does not (``pipelines.outputs.sr_encoding``); a job
    worker calls this when it starts. Returns the number of templates made."""
    keys = feature_keys(preset)
    return sum(prepare_templates(keys, modality)
               for modality in ([preset.modality] if preset.modality else ["CT", "MR"]))


@dataclass(frozen=True)
class RoleGroups:
    """The ROIs of one other series of a study job (``pipelines.study``): its ``role``, the
    series, the segmentation propagated onto it, its ROIs with their features, the SEG of
    those ROIs on it, and its QC (``series_qc`` with the registration's checks,
    ``lesion_qc`` by segment number); every check of ``registration`` (the propagation onto the
    series, passed or not) is a QC finding of each ROI's first group on it."""

    role: str
    volume: SeriesVolume
    seg: DecodedSegmentation
    rois: Sequence[RoiResult]
    derived: DerivedSegmentation | None
    series_qc: QCReport | None = None
    lesion_qc: Mapping[int, QCReport] | None = None
    registration: QCReport | None = None


@dataclass(frozen=True)
class DeltaGroups:
    """The change of each paired lesion's features since the patient's prior study
    (``pipelines.science.delta``): the prior's Study Date (DA), its images and segmentation (the
    report's Pertinent Other Evidence, PS3.3 C.17.2.3), and per current ROI (of the series the
    lesions were drawn on) the absolute and relative changes of its features."""

    prior_date: str
    evidence: Sequence[Dataset]
    rois: Sequence[tuple[RoiResult, Sequence[FeatureChange]]]


PERCENT = Code("%", "UCUM", "percent")


@dataclass(frozen=True)
class _Group:
    """One TID 1411 group as highdicom builds it, the NUMs after its first, their unit where it
    is not each feature's, and the items appended at its end."""

    group: hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    rest: list[tuple[str, float]]
    unit: Code | None
    appended: list[Dataset]


def _groups(volume: SeriesVolume, seg: DecodedSegmentation,
            rois: Sequence[tuple[RoiResult, Mapping[str, float]]],
            algorithm: hd.sr.AlgorithmIdentification, *,
            tracking: Callable[[RoiResult], hd.sr.TrackingIdentifier],
            series_qc: QCReport | None = None, lesion_qc: Mapping[int, QCReport] | None = None,
            derived: DerivedSegmentation | None,
            models: Mapping[int, Sequence[ModelOutput | NotApplied]] | None = None,
            session: str | None, time_point: str | None = None, unit: Code | None = None,
            notes: Sequence[Dataset] = ()) -> list[_Group]:
    """Each ROI's TID 1411 groups of ``values`` on ``volume``, one per image filter: QC
    evaluations and findings, and the models' outputs, in the first; the group's TID 1502 Time
    Point and the values' ``unit`` where given."""
    made = []
    context = hd.sr.TimePointContext(time_point=time_point) if time_point else None
    for roi, values in rois:
        check_finite(roi)
        segment = roi.segment
        evaluations = None
        appended: list[Dataset] = []
        if series_qc is not None and lesion_qc is not None:
            evaluations = qc_evaluations(series_qc, lesion_qc[segment.number])
            appended += qc_findings(series_qc, lesion_qc[segment.number])
        appended += notes
        if models and not roi.derived:
            appended += [item for result in models.get(segment.number, ())
                         for item in model_items(result)]
        for position, (image_filter, keys) in enumerate(
                by_image_filter(values, volume.modality)):
            group = _method_modifies(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking(roi),
                referenced_segment=referenced_segment(volume, seg, roi, derived),
                time_point_context=context,
                finding_type=segment.property_type,
                finding_sites=finding_sites(seg, segment) or None,
                method=image_filter_concept(image_filter),
                algorithm_id=algorithm,
                session=session,
                measurements=[_measurement(keys[0], values[keys[0]], volume.modality, unit)],
                qualitative_evaluations=evaluations if position == 0 else None,
            ))
            made.append(_Group(group, [(key, values[key]) for key in keys[1:]], unit,
                               appended if position == 0 else []))
    return made


def _changes(delta: DeltaGroups, relative: bool) -> list[tuple[RoiResult, dict[str, float]]]:
    return [(roi, {c.key: c.relative_percent for c in changes
                   if c.relative_percent is not None} if relative
                  else {c.key: c.absolute for c in changes})
            for roi, changes in delta.rois]


def build_feature_report(
    volume: SeriesVolume,
    seg: DecodedSegmentation,
    rois: Sequence[RoiResult],
    preset: Preset,
    *,
    series_qc: QCReport | None = None,
    lesion_qc: Mapping[int, QCReport] | None = None,
    derived: DerivedSegmentation | None = None,
    models: Mapping[int, Sequence[ModelOutput | NotApplied]] | None = None,
    reading_report: ReportReference | None = None,
    role: str | None = None,
    roles: Sequence[RoleGroups] = (),
    delta: DeltaGroups | None = None,
) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 feature report of ``rois`` (module docstring), in the study of ``volume``.

    With ``series_qc`` and ``lesion_qc`` (the QC report of each lesion by segment number), the
    first group of each ROI carries the quality control evaluations of
    :mod:`pipelines.outputs.evaluations`. With ``derived`` (the node's SEG of the ROI variants it
    built), a derived ROI's groups reference its segment there; otherwise the input segment it
    was derived from. ``models`` (by segment number) go into the first group of the lesion as
    drawn (:func:`pipelines.outputs.evaluations.model_items`). ``reading_report`` is listed as
    pertinent other evidence.

    A study job (``pipelines.study``) names the ``role`` of ``volume`` and gives the groups of
    its other series in ``roles``: every group then carries its series' role as TID 1411 Session
    (row 3b), each ROI keeps one Tracking Identifier and UID across roles (those of ``volume``
    and ``seg``), and references the segment it was measured in (the role's propagated ROIs are
    in the role's derived SEG); the Image Library holds the images of every series.

    With ``delta``, each paired lesion's ROIs get two more groups per image filter after all the
    others, with the same Tracking Identifier and UID, whose TID 1502 Time Point says "change
    since prior study of <date>" (NUMs in each feature's unit) and "relative change (%) since
    prior study of <date>" (NUMs in percent; a feature whose prior value is 0 has none); the
    prior's images and segmentation are Pertinent Other Evidence (PS3.3 C.17.2.3)."""
    check_inputs(volume, seg)
    algorithm = algorithm_identification(preset)
    def tracking(roi: RoiResult) -> hd.sr.TrackingIdentifier:
        return tracking_identifier(volume, seg, preset, roi)

    made = _groups(volume, seg, [(roi, roi.features.values) for roi in rois], algorithm,
                   tracking=tracking, series_qc=series_qc, lesion_qc=lesion_qc,
                   derived=derived, models=models, session=role)
    for other in roles:
        made += _groups(other.volume, other.seg, [(roi, roi.features.values)
                                                  for roi in other.rois], algorithm,
                        tracking=tracking, series_qc=other.series_qc,
                        lesion_qc=other.lesion_qc, derived=other.derived, session=other.role,
                        notes=check_findings(other.registration.checks)
                        if other.registration is not None else ())
    if delta is not None:
        since = f"{delta.prior_date[:4]}-{delta.prior_date[4:6]}-{delta.prior_date[6:8]}"
        made += _groups(volume, seg, _changes(delta, relative=False), algorithm,
                        tracking=tracking, derived=derived, session=role,
                        time_point=f"change since prior study of {since}")
        made += _groups(volume, seg, [(roi, values) for roi, values
                                      in _changes(delta, relative=True) if values],
                        algorithm, tracking=tracking, derived=derived, session=role,
                        time_point=f"relative change (%) since prior study of {since}",
                        unit=PERCENT)
    groups = [made_group.group for made_group in made]
    images = [*volume.datasets, *(ds for other in roles for ds in other.volume.datasets)]
    segs = [derived, *(other.derived for other in roles)]
    sr, encodings = measurement_document(
        hd.sr.Comprehensive3DSR, volume, groups,
        identity=feature_report_reference(volume, seg.sop_instance_uid, preset),
        series_number=volume.series_number + SR_SERIES_NUMBER_OFFSET,
        series_description=f"Radiomics features ({preset.name})",
        evidence=[*images, seg.dataset, *(s.dataset for s in segs if s is not None),
                  *(delta.evidence if delta is not None else ())],
        library_images=images, other=reading_report,
        contribution=f"radiomics features, preset {preset.name} (sha256 {preset.hash})",
    )
    _complete_groups(sr, made, volume.modality, encodings)
    return written_as_is_throughout(sr)  # the raw Content Sequences are written as they are
