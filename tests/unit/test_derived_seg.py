"""Derived SEG: every ring, lesion + ring and eroded core the node measured, read back onto the
source grid with the same voxels, linked to the report by tracking UID, accepted by dciodvfy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pipelines.io.segmentation import read_segmentation
from pipelines.outputs.derived_seg import (
    DerivedSegmentation,
    DerivedSegmentationError,
    build_derived_segmentation,
)
from pipelines.outputs.feature_report import build_feature_report
from pipelines.science.rois import on_full_grid
from tests.unit.outputs_case import OutputsCase, build_case, dciodvfy


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> OutputsCase:
    return build_case(tmp_path_factory.mktemp("derived-seg"))


@pytest.fixture(scope="module")
def derived(case: OutputsCase) -> DerivedSegmentation:
    result = build_derived_segmentation(case.volume, case.seg, case.rois, case.masks, case.preset)
    assert result is not None
    return result


def test_segments_are_the_derived_rois_with_their_masks(
    case: OutputsCase, derived: DerivedSegmentation, tmp_path: Path
) -> None:
    path = tmp_path / "derived-seg.dcm"
    derived.dataset.save_as(path, enforce_file_format=True)
    errors, _ = dciodvfy(path)
    assert errors == []
    read = read_segmentation(path, case.volume)
    assert read.dataset.StudyInstanceUID == case.volume.study_instance_uid
    assert [s.SeriesInstanceUID for s in read.dataset.ReferencedSeriesSequence] == [
        case.volume.series_instance_uid]
    by_number = {segment.number: segment for segment in read.segments}
    derived_rois = [(roi, mask) for roi, mask in zip(case.rois, case.masks, strict=True)
                    if roi.roi_variant != "intra"]
    assert sorted(by_number) == list(range(1, len(derived_rois) + 1)) == sorted(
        derived.segment_numbers.values())
    for roi, mask in derived_rois:
        number = derived.segment_numbers[(roi.segment.number, str(roi.roi_variant))]
        segment = by_number[number]
        assert segment.label == f"{roi.segment.label} / {roi.roi_variant}"
        assert segment.algorithm_type == "AUTOMATIC"
        want = sitk.GetArrayFromImage(on_full_grid(mask, case.volume.image))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(segment.mask), want)


def test_codes_say_what_each_region_is(derived: DerivedSegmentation) -> None:
    items = {item.SegmentLabel: item for item in derived.dataset.SegmentSequence}
    ring = items["Lesion 2 / 4 mm ring, without air/fat"]
    assert ring.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "85756007"
    assert ring.SegmentedPropertyTypeCodeSequence[0].CodeValue == "ROI.PeriLesional"
    assert ring.AnatomicRegionSequence[0].CodeMeaning == "Liver"
    with_ring = items["Lesion 2 / intra + 4 mm ring"].SegmentedPropertyTypeCodeSequence[0]
    eroded = items["Lesion 2 / eroded 1 mm"].SegmentedPropertyTypeCodeSequence[0]
    assert with_ring.CodeValue == eroded.CodeValue == "108369006"  # the input's Neoplasm
    assert with_ring.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "ROI.WithRing"
    assert eroded.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "ROI.Eroded"
    algorithm = ring.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "radiomics-node"
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Morphological Operations"
    assert [i.CodingSchemeDesignator
            for i in derived.dataset.CodingSchemeIdentificationSequence] == ["99RADNODE"]


def test_tracking_uids_are_the_reports(case: OutputsCase, derived: DerivedSegmentation) -> None:
    report = build_feature_report(case.volume, case.seg, list(case.rois), case.preset)
    uids = {}
    for group in report.ContentSequence:
        for item in group.get("ContentSequence", []):
            identifiers = {c.ConceptNameCodeSequence[0].CodeMeaning: c
                           for c in item.get("ContentSequence", [])}
            if "Tracking Identifier" in identifiers:
                uids[identifiers["Tracking Identifier"].TextValue] = \
                    identifiers["Tracking Unique Identifier"].UID
    segments = {item.TrackingID: item.TrackingUID for item in derived.dataset.SegmentSequence}
    assert segments
    assert all(uids[label] == uid for label, uid in segments.items())


def test_only_intra_makes_no_derived_seg(case: OutputsCase) -> None:
    intra = [(r, m) for r, m in zip(case.rois, case.masks, strict=True) if r.roi_variant == "intra"]
    rois, masks = zip(*intra, strict=True)
    assert build_derived_segmentation(case.volume, case.seg, rois, masks, case.preset) is None


def test_rois_and_masks_must_pair(case: OutputsCase) -> None:
    with pytest.raises(DerivedSegmentationError, match="paired with mask"):
        build_derived_segmentation(case.volume, case.seg, case.rois, case.masks[::-1],
                                   case.preset)


def test_node_recognises_its_own_derived_seg(derived: DerivedSegmentation) -> None:
    """node.flow.router skips SEGs whose Manufacturer and model are the node's, so a PACS that sends
    the derived SEG back does not get rings processed as lesions."""
    from pipelines.outputs.software import MANUFACTURER

    dataset = derived.dataset
    assert (dataset.Manufacturer, dataset.ManufacturerModelName) == (MANUFACTURER, MANUFACTURER)


def test_a_long_label_is_cut_so_that_label_and_variant_fit_a_segment_label() -> None:
    """An RT ROI Name or Segment Label may use all 64 characters of its LO; with the variant
    appended, the label part is cut, never the variant."""
    from pydicom.sr.codedict import codes

    from pipelines.io.segmentation import Segment
    from pipelines.science.features import RoiFeatures
    from pipelines.science.results import LABEL_LENGTH, RoiResult

    segment = Segment(1, "L" * 64, sitk.Image([2, 2, 2], sitk.sitkUInt8), codes.SCT.Tissue,
                      codes.SCT.Tissue, "MANUAL")
    features = RoiFeatures(values={}, diagnostics={})
    derived = RoiResult(segment, features, "intra + 4 mm ring").tracking_identifier
    assert len(derived) == LABEL_LENGTH and derived.endswith(" / intra + 4 mm ring")
    assert RoiResult(segment, features, "intra").tracking_identifier == "L" * 64
