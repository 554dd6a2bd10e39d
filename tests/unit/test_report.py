"""TID 1500 feature report: written, read back with highdicom, and checked by dciodvfy and
dsr2xml."""

import copy
import dataclasses
import math
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from pipelines.io.segmentation import DecodedSegmentation, read_segmentation
from pipelines.io.series import SeriesVolume, read_series
from pipelines.outputs.codes import feature_concept
from pipelines.outputs.feature_report import build_feature_report
from pipelines.outputs.report_parts import ReportError
from pipelines.outputs.software import software_version
from pipelines.science.features import RoiFeatures, extract_features
from pipelines.science.presets import Preset, load_preset
from pipelines.science.results import RoiResult

CT_DIR = Path("pydicom/test_files/dicomdirtests/77654033/CT2")
# The SEG covers three of the four CT2 slices; the fourth (17106) lies 200 mm away.
SEG_SOURCE_SLICES = ("17136", "17166", "17196")
SEG_FILE = Path("highdicom/data/test_files/seg_image_ct_binary.dcm")
ALGORITHM_PARAMETERS = hd.sr.CodedConcept("111002", "DCM", "Algorithm Parameters")
IMAGE_LIBRARY = hd.sr.CodedConcept("111028", "DCM", "Image Library")
MEASUREMENT_METHOD = hd.sr.CodedConcept("370129005", "SCT", "Measurement Method")


@dataclasses.dataclass(frozen=True)
class Inputs:
    volume: SeriesVolume
    seg: DecodedSegmentation
    preset: Preset
    rois: tuple[RoiResult, ...]


@pytest.fixture(scope="module")
def inputs(refdata: Path) -> Inputs:
    volume = read_series([refdata / CT_DIR / name for name in SEG_SOURCE_SLICES])
    seg = read_segmentation(refdata / SEG_FILE, volume)
    preset = load_preset("ct-liver-basic")
    rois = tuple(
        RoiResult(segment, extract_features(volume.image, segment.mask, preset))
        for segment in seg.segments
    )
    return Inputs(volume, seg, preset, rois)


def _write(report: hd.sr.Comprehensive3DSR, directory: Path) -> Path:
    path = directory / "sr.dcm"
    report.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def written(inputs: Inputs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    report = build_feature_report(inputs.volume, inputs.seg, inputs.rois, inputs.preset)
    return _write(report, tmp_path_factory.mktemp("report"))


def _items(dataset: pydicom.Dataset):
    for item in dataset.get("ContentSequence", []):
        yield item
        yield from _items(item)


def _name(item: pydicom.Dataset) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept.from_dataset(item.ConceptNameCodeSequence[0])


def _assert_valid_dicom(path: Path) -> None:
    for tool in ("dciodvfy", "dsr2xml"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not on PATH")
    checked = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    errors = [line for line in (checked.stdout + checked.stderr).splitlines() if "Error" in line]
    assert errors == []
    as_xml = subprocess.run(["dsr2xml", str(path)], capture_output=True, text=True, check=False)
    assert as_xml.returncode == 0, as_xml.stderr
    assert "<report" in as_xml.stdout


def test_groups_tracking_and_referenced_segment_read_back(inputs: Inputs, written: Path) -> None:
    report = hd.sr.srread(written)
    groups = report.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(inputs.rois) == len(inputs.seg.segments)
    uids = set()
    for group, roi in zip(groups, inputs.rois, strict=True):
        assert group.tracking_identifier == roi.segment.label
        uids.add(group.tracking_uid)
        assert group.finding_type == roi.segment.property_type
        segment = group.referenced_segment
        assert segment.referenced_sop_instance_uid == inputs.seg.sop_instance_uid
        assert segment.referenced_sop_class_uid == inputs.seg.sop_class_uid
        assert segment.referenced_segment_numbers == [roi.segment.number]
        assert segment.source_series_for_segmentation.value == inputs.volume.series_instance_uid
    assert len(uids) == len(groups)
    assert report.content.get_volumetric_roi_measurement_groups(tracking_uid=uids.pop())


def test_values_units_and_method_read_back(inputs: Inputs, written: Path) -> None:
    report = hd.sr.srread(written)
    for group, roi in zip(
        report.content.get_volumetric_roi_measurement_groups(), inputs.rois, strict=True
    ):
        measurements = group.get_measurements()
        assert len(measurements) == len(roi.features.values) == 107
        for measurement, (key, value) in zip(
            measurements, roi.features.values.items(), strict=True
        ):
            concept = feature_concept(key, "CT")
            assert measurement.name == concept.name
            assert measurement.unit == concept.unit
            assert math.isclose(measurement.value, value, rel_tol=1e-12, abs_tol=0)
            assert measurement.method is None  # the group's Measurement Method, not the NUM's
        [method] = [item for item in group[0].ContentSequence
                    if _name(item) == MEASUREMENT_METHOD]
        assert method.value.value == "filter.original"
        assert method.RelationshipType == "HAS CONCEPT MOD"  # TID 1419 row 1
        mean = group.get_measurements(name=hd.sr.CodedConcept("Q4LE", "IBSI", "Mean"))[0]
        assert mean.unit.value == "[hnsf'U]"
        assert mean.value == roi.features.values["original_firstorder_Mean"]


def test_algorithm_identification_carries_version_preset_name_and_hash(
    inputs: Inputs, written: Path
) -> None:
    dataset = pydicom.dcmread(written)
    parameters = [item.TextValue for item in _items(dataset) if _name(item) == ALGORITHM_PARAMETERS]
    # TID 4019 in each TID 1411 group, for all its measurements; one parameter item (dcmqi's
    # tid1500reader keeps only the first)
    expected = f"preset {inputs.preset.name}; sha256 {inputs.preset.hash}; binWidth 25"
    assert parameters == [expected] * len(inputs.rois)
    versions = {item.TextValue for item in _items(dataset) if _name(item).value == "111003"}
    assert versions == {software_version()}


def test_study_patient_series_and_coding_schemes(inputs: Inputs, written: Path) -> None:
    report = pydicom.dcmread(written)
    source = inputs.volume.datasets[0]
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "StudyID", "StudyDate"):
        assert report[keyword].value == source[keyword].value, keyword
    assert report.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert report.Modality == "SR"
    assert report.SeriesDescription == "Radiomics features (ct-liver-basic)"
    assert report.Manufacturer == "radiomics-node"
    assert report.SeriesNumber == int(source.SeriesNumber) + 1000
    assert report.InstanceNumber == 1
    assert report.SeriesInstanceUID != inputs.volume.series_instance_uid
    designators = {
        item.CodingSchemeDesignator for item in report.CodingSchemeIdentificationSequence
    }
    assert {"IBSI", "99RADNODE"} <= designators


def test_image_library_lists_the_source_images(inputs: Inputs, written: Path) -> None:
    dataset = pydicom.dcmread(written)
    library = next(item for item in _items(dataset) if _name(item) == IMAGE_LIBRARY)
    referenced = {
        entry.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for entry in _items(library)
        if "ReferencedSOPSequence" in entry
    }
    assert referenced == set(inputs.volume.sop_instance_uids)
    # where highdicom's MeasurementReport puts it: after Procedure Reported, before the
    # Imaging Measurements, and what highdicom's ImageLibrary builds for these images
    names = [item.ConceptNameCodeSequence[0].CodeValue for item in dataset.ContentSequence]
    assert names.index("111028") == names.index("126010") - 1
    assert names.index("121058") < names.index("111028")  # Procedure reported
    expected = hd.sr.ImageLibrary(list(inputs.volume.datasets))[0]
    assert library.to_json_dict() == expected.to_json_dict()


def test_written_report_passes_dciodvfy_and_dsr2xml(written: Path) -> None:
    _assert_valid_dicom(written)


def test_uids_are_deterministic_and_depend_on_the_preset(inputs: Inputs) -> None:
    def uids(preset: Preset) -> tuple[str, str, list[str]]:
        built = build_feature_report(inputs.volume, inputs.seg, inputs.rois, preset)
        report = hd.sr.Comprehensive3DSR.from_dataset(built)
        groups = report.content.get_volumetric_roi_measurement_groups()
        return report.SeriesInstanceUID, report.SOPInstanceUID, [g.tracking_uid for g in groups]

    first = uids(inputs.preset)
    assert uids(inputs.preset) == first
    other = inputs.preset.model_copy(update={"description": "changed"})
    changed = uids(other)
    assert all(a != b for a, b in zip(first[:2], changed[:2], strict=True))
    assert changed[2] != first[2]


def test_each_image_filter_is_a_group_of_the_roi(inputs: Inputs, tmp_path: Path) -> None:
    segment = inputs.seg.segments[0]
    features = RoiFeatures(
        values={"log-sigma-1-0-mm-3D_firstorder_Mean": -12.5,
                "log-sigma-1-0-mm-3D_firstorder_Median": -11.0,
                "original_firstorder_Mean": 40.0},
        diagnostics={},
    )
    report = build_feature_report(
        inputs.volume, inputs.seg, [RoiResult(segment, features)], inputs.preset
    )
    path = _write(report, tmp_path)
    _assert_valid_dicom(path)
    filtered, original = hd.sr.srread(path).content.get_volumetric_roi_measurement_groups()
    # one ROI: the same tracking identifier, UID and segment in both groups
    assert filtered.tracking_uid == original.tracking_uid
    assert filtered.tracking_identifier == original.tracking_identifier == segment.label
    assert filtered.referenced_segment.referenced_segment_numbers == [segment.number]
    assert original.referenced_segment.referenced_segment_numbers == [segment.number]
    methods = [[item.value.value for item in group[0].ContentSequence
                if _name(item) == MEASUREMENT_METHOD] for group in (filtered, original)]
    assert methods == [["filter.log-sigma-1-0-mm-3D"], ["filter.original"]]
    mean = hd.sr.CodedConcept("Q4LE", "IBSI", "Mean")
    assert [m.value for m in filtered.get_measurements(name=mean)] == [-12.5]
    assert [m.value for m in original.get_measurements(name=mean)] == [40.0]
    assert len(filtered.get_measurements()) == 2
    assert filtered.get_measurements(name=mean)[0].unit.value == "[hnsf'U]"
    # no NUM has a child: a viewer (OHIF) takes any child of a NUM for a spatial reference
    nums = [item for item in _items(pydicom.dcmread(path))
            if item.ValueType == "NUM" and item.RelationshipType == "CONTAINS"]
    assert len(nums) == 3 and not any("ContentSequence" in item for item in nums)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_values_are_refused(inputs: Inputs, value: float) -> None:
    segment = inputs.seg.segments[0]
    features = RoiFeatures(values={"original_glcm_Correlation": value}, diagnostics={})
    with pytest.raises(ReportError, match=r"segment 1 \(first segment\): original_glcm_Corr"):
        build_feature_report(
            inputs.volume, inputs.seg, [RoiResult(segment, features)], inputs.preset
        )


def test_segmentation_of_another_study_is_refused(inputs: Inputs) -> None:
    other = copy.deepcopy(inputs.seg.dataset)
    other.StudyInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["another study"])
    seg = dataclasses.replace(inputs.seg, dataset=other)
    with pytest.raises(ReportError, match=r"\(0020,000D\) StudyInstanceUID .* differs"):
        build_feature_report(inputs.volume, seg, inputs.rois, inputs.preset)


def test_finding_site_comes_from_the_segments_anatomic_region(inputs: Inputs) -> None:
    with_site = copy.deepcopy(inputs.seg.dataset)
    liver = hd.sr.CodedConcept("10200004", "SCT", "Liver")
    with_site.SegmentSequence[0].AnatomicRegionSequence = [liver]
    seg = dataclasses.replace(inputs.seg, dataset=with_site)
    built = build_feature_report(inputs.volume, seg, inputs.rois, inputs.preset)
    group = hd.sr.Comprehensive3DSR.from_dataset(
        built
    ).content.get_volumetric_roi_measurement_groups()
    assert [site.value for site in group[0].finding_sites] == [liver]

    stray = dataclasses.replace(inputs.rois[0].segment, number=9)
    with pytest.raises(ReportError, match=r"SegmentNumber 9 not in \(0062,0002\) SegmentSequence"):
        build_feature_report(
            inputs.volume, seg, [RoiResult(stray, inputs.rois[0].features)], inputs.preset
        )


def test_header_names_the_processing_equipment_and_library_versions(
    inputs: Inputs, written: Path
) -> None:
    report = pydicom.dcmread(written)
    [equipment] = [item for item in report.ContributingEquipmentSequence
                   if item.Manufacturer == "radiomics-node"]  # beside highdicom's own item
    assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    versions = list(equipment.SoftwareVersions)
    assert versions[0] == f"radiomics-node {software_version()}"
    assert any(v.startswith("pyradiomics-bhklab 3.1") for v in versions)
    assert any(v.startswith("highdicom ") for v in versions)
    assert inputs.preset.hash in equipment.ContributionDescription


def test_discretisation_and_resampling_are_algorithm_parameters(inputs: Inputs) -> None:
    crlm = load_preset("ct-liver-crlm")
    report = build_feature_report(inputs.volume, inputs.seg, inputs.rois, crlm)
    parameters = {item.TextValue for item in _items(report)
                  if _name(item) == ALGORITHM_PARAMETERS}
    assert parameters == {f"preset ct-liver-crlm; sha256 {crlm.hash}; binWidth 25; "
                          "resampledPixelSpacing [1, 1, 1]; interpolator sitkBSpline"}
