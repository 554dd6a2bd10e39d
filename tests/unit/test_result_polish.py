"""What every result object carries besides its content: the source's General Study attributes on
the SR, the derived SEG, the summary image and the parametric maps; a display colour of its own for
each derived segment, read back by highdicom; the node as Content Creator on the SEG and the maps;
the SR's DCM 121232 spelled as TID 1411 spells it; and dciodvfy no more warnings than before."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset

from pipelines.outputs.derived_seg import build_derived_segmentation, display_color
from pipelines.outputs.feature_report import build_feature_report
from pipelines.outputs.parametric_map import LesionMaps, build_parametric_maps
from pipelines.outputs.result_attributes import CONTENT_CREATOR_NAME, STUDY_ATTRIBUTES
from pipelines.outputs.summary import build_summary_image
from pipelines.science.presets import MapOptions
from tests.unit.outputs_case import OutputsCase, build_case, dciodvfy

MAP_FEATURE = "firstorder_Mean"
# dciodvfy warnings the objects had before (docs/outputs.md, "Proof that real software reads them")
KNOWN_WARNINGS = ("<99RADNODE> for value 1 of attribute <Coding Scheme Designator>",
                  "<QUANTITY> for value 4 of attribute <Image Type>",
                  "<QUANTITY> for value 4 of attribute <Frame Type>")
# PS3.16 TID 1411 "Volumetric ROI Measurements", row "Source series for segmentation"
TID_1411_SOURCE_SERIES = ("121232", "DCM", "Source series for segmentation")


def _issuer() -> Dataset:
    item = Dataset()
    item.LocalNamespaceEntityID = "RIS-NORTH"
    return item


STUDY = {
    "StudyDate": "20240317",
    "StudyTime": "083000",
    "AccessionNumber": "ACC-4711",
    "IssuerOfAccessionNumberSequence": [_issuer()],
    "ReferringPhysicianName": "Referrer^Rita^^Dr.",
    "StudyID": "CRLM-7",
    "StudyDescription": "CT liver, portal venous (follow-up)",
}


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> OutputsCase:
    """The outputs case with every study attribute of the source series set, to values the
    synthetic study does not use."""
    built = build_case(tmp_path_factory.mktemp("polish"))
    for dataset in built.volume.datasets:
        for keyword, value in STUDY.items():
            setattr(dataset, keyword, value)
    return built


def _lesion_maps(case: OutputsCase) -> list[LesionMaps]:
    """A small made-up map around each lesion: the header is what is tested, not the values."""
    maps = []
    for lesion in case.lesions:
        values = np.arange(1, 1 + 3 * 6 * 6, dtype=np.float32).reshape(3, 6, 6)
        image = sitk.GetImageFromArray(values)
        maps.append(LesionMaps(lesion.number, lesion.label, lesion.index,
                               {MAP_FEATURE: image}, values.size))
    return maps


@pytest.fixture(scope="module")
def written(case: OutputsCase, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The SR, the derived SEG, the summary and a parametric map of ``case``, as files."""
    derived = build_derived_segmentation(case.volume, case.seg, case.rois, case.masks,
                                         case.preset)
    assert derived is not None
    report = build_feature_report(case.volume, case.seg, case.rois, case.preset,
                                      derived=derived)
    summary = build_summary_image(
        case.volume, case.rois, case.masks, preset_name=case.preset.name,
        preset_hash=case.preset.hash, seg_sop_instance_uid=case.seg.sop_instance_uid,
        qc_lines=[], model_lines=[], not_for_diagnostic_use=False)
    maps = MapOptions(enabled=True, features=(MAP_FEATURE,), kernel_radius=1, margin_mm=2.0)
    [parametric_map] = build_parametric_maps(
        case.volume, _lesion_maps(case), case.preset.model_copy(update={"maps": maps}),
        seg_sop_instance_uid=case.seg.sop_instance_uid)
    directory = tmp_path_factory.mktemp("polish-out")
    objects = {"sr": report, "seg": derived.dataset, "summary": summary, "map": parametric_map}
    paths = {}
    for name, dataset in objects.items():
        paths[name] = directory / f"{name}.dcm"
        dataset.save_as(paths[name], enforce_file_format=True)
    return paths


@pytest.mark.parametrize("name", ["sr", "seg", "summary", "map"])
def test_study_attributes_are_the_sources(case: OutputsCase, written: dict[str, Path],
                                          name: str) -> None:
    source = case.volume.datasets[0]
    read = pydicom.dcmread(written[name], stop_before_pixels=True)
    for keyword in STUDY_ATTRIBUTES:
        assert keyword in read, keyword
        assert read[keyword].value == source[keyword].value, keyword
    assert read.IssuerOfAccessionNumberSequence[0].LocalNamespaceEntityID == "RIS-NORTH"


def test_each_derived_segment_has_its_own_display_colour(written: dict[str, Path]) -> None:
    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(written["seg"]))
    numbers = list(seg.segment_numbers)
    assert len(numbers) == 6  # 2 lesions x (ring, lesion + ring, erosion)
    colours = [
        hd.color.CIELabColor.from_dicom_value(
            seg.get_segment_description(number).RecommendedDisplayCIELabValue)
        for number in numbers
    ]
    assert [colour.value for colour in colours] == [display_color(n).value for n in numbers]
    assert len({colour.value for colour in colours}) == len(numbers)
    # every colour a viewer can show as it is: inside sRGB, neither black nor white
    for colour in colours:
        assert 40 < colour.l_star < 95
        assert max(colour.to_rgb()) == 255


def test_display_colours_never_repeat_and_are_stable() -> None:
    values = [display_color(n).value for n in range(1, 1001)]
    assert len(set(values)) == len(values)
    assert values == [display_color(n).value for n in range(1, 1001)]


def test_seg_and_maps_name_the_node_as_content_creator(written: dict[str, Path]) -> None:
    for name in ("seg", "map"):
        read = pydicom.dcmread(written[name], stop_before_pixels=True)
        assert read.ContentCreatorName == CONTENT_CREATOR_NAME == "radiomics-node^", name
    for name in ("sr", "summary"):  # their IODs have no Content Identification (PS3.3 C.10.9)
        assert "ContentCreatorName" not in pydicom.dcmread(written[name], stop_before_pixels=True)


def _coded(dataset: Dataset) -> list[Dataset]:
    """Every item of every sequence in ``dataset`` that holds a Code Value, depth first."""
    found = []
    for element in dataset:
        if element.VR == "SQ":
            for item in element.value:
                if "CodeValue" in item:
                    found.append(item)
                found.extend(_coded(item))
    return found


def test_source_series_for_segmentation_is_spelled_as_tid_1411(
    case: OutputsCase, written: dict[str, Path]
) -> None:
    read = pydicom.dcmread(written["sr"])
    items = [item for item in _coded(read) if item.CodeValue == TID_1411_SOURCE_SERIES[0]]
    assert len(items) == len(case.rois)
    assert {(i.CodeValue, i.CodingSchemeDesignator, i.CodeMeaning) for i in items} == {
        TID_1411_SOURCE_SERIES}
    groups = hd.sr.srread(written["sr"]).content.get_volumetric_roi_measurement_groups()
    assert {group.referenced_segment.source_series_for_segmentation.value
            for group in groups} == {case.volume.series_instance_uid}


@pytest.mark.parametrize("name", ["sr", "seg", "summary", "map"])
def test_dciodvfy_finds_no_error_and_no_new_warning(written: dict[str, Path], name: str) -> None:
    errors, warnings = dciodvfy(written[name])
    assert errors == []
    assert [w for w in warnings if not w.endswith(KNOWN_WARNINGS)] == []
