"""ROI variants end to end: the full ct-liver-crlm preset on a small synthetic CT gives, through
extract_lesions (cropped resampling, shared filters, two worker processes), for every lesion and ROI
variant the values of plain pyradiomics (RadiomicsFeatureExtractor.execute on the whole image with
that ROI's mask) to 1e-6 relative; a job writes one TID 1411 group and one CSV ROI per
variant."""

import csv
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from demo.synthetic import SyntheticStudy, write_synthetic_study
from node.flow.executor import run_in_process
from pipelines.io.segmentation import read_segmentation
from pipelines.io.series import read_series
from pipelines.process import ProcessError, job_plan
from pipelines.science.features import extract_features, extract_lesions
from pipelines.science.presets import load_preset
from pipelines.science.rois import build_variants, on_full_grid

RELATIVE_TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    return write_synthetic_study(tmp_path_factory.mktemp("crlm"), shape=(10, 48, 48))


def _relative(got: float, want: float) -> float:
    return abs(got - want) if want == 0 else abs(got / want - 1)


def test_crlm_variants_equal_plain_pyradiomics_per_roi(study: SyntheticStudy) -> None:
    preset = load_preset("ct-liver-crlm")
    volume = read_series(list(study.ct_paths))
    seg = read_segmentation(study.seg_path, volume)
    lesions = [
        build_variants(volume.image, segment, preset.rois.variants, preset.rois.hu_ranges)
        for segment in seg.segments
    ]
    got = extract_lesions(volume.image, lesions, preset)
    assert [list(by_name) for by_name in got] == [[r.name for r in rois] for rois in lesions]
    for rois, by_name in zip(lesions, got, strict=True):
        for roi in rois:
            plain = extract_features(volume.image, on_full_grid(roi, volume.image), preset).values
            values = by_name[roi.name].values
            assert set(values) == set(plain)
            assert len(plain) == 14 + 93 * 11  # shape + (Original, 2 LoG, 8 wavelet) x 93
            worst = max(plain, key=lambda name: _relative(values[name], plain[name]))
            assert _relative(values[worst], plain[worst]) < RELATIVE_TOLERANCE, (roi.name, worst)


def test_each_roi_variant_is_a_measurement_group_and_a_csv_roi(
    study: SyntheticStudy, tmp_path: Path
) -> None:
    crlm = load_preset("ct-liver-crlm")
    preset = crlm.model_copy(update={
        "name": "crlm-firstorder",
        "radiomics": {**crlm.radiomics, "imageType": {"Original": {}},
                      "featureClass": {"firstorder": ["Mean", "Median"]}},
    })
    result = run_in_process(job_plan(study.ct_paths, study.seg_path, preset, tmp_path))
    names = [v.name for v in preset.rois.variants]
    expected = [(label, name) for label in ("Lesion 1", "Lesion 2") for name in names]
    assert [(lesion.label, lesion.roi_variant) for lesion in result.lesions] == expected
    assert [lesion.segment_number for lesion in result.lesions] == [1] * 4 + [2] * 4

    report = hd.sr.srread(result.report.path)
    groups = report.content.get_volumetric_roi_measurement_groups()
    assert [str(g.tracking_identifier) for g in groups] == [
        label if name == "intra" else f"{label} / {name}" for label, name in expected
    ]
    assert "Lesion 2 / intra + 4 mm ring, without air/fat" in [
        str(g.tracking_identifier) for g in groups
    ]
    assert len({g.tracking_uid for g in groups}) == len(groups)
    # the lesion itself: the input SEG's segment; a derived ROI: its segment in the node's SEG
    input_seg = pydicom.dcmread(study.seg_path, stop_before_pixels=True)
    [derived] = [pydicom.dcmread(o.path) for o in result.objects
                 if o.sop_class_uid == pydicom.uid.SegmentationStorage]
    derived_labels = {int(item.SegmentNumber): item.SegmentLabel
                      for item in derived.SegmentSequence}
    for group, lesion in zip(groups, result.lesions, strict=True):
        reference = group.referenced_segment
        if lesion.roi_variant == "intra":
            assert reference.referenced_sop_instance_uid == input_seg.SOPInstanceUID
            assert reference.referenced_segment_numbers == [lesion.segment_number]
        else:
            assert reference.referenced_sop_instance_uid == derived.SOPInstanceUID
            [number] = reference.referenced_segment_numbers
            assert derived_labels[number] == str(group.tracking_identifier)
    for group, lesion in zip(groups, result.lesions, strict=True):
        [mean] = group.get_measurements(name=hd.sr.CodedConcept("Q4LE", "IBSI", "Mean"))
        assert mean.value == pytest.approx(lesion.features["original_firstorder_Mean"])

    with result.features_csv.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["segment_label"], r["roi_variant"]) for r in rows[::2]] == expected
    assert {r["feature"] for r in rows} == {
        "original_firstorder_Mean", "original_firstorder_Median"}


def test_preset_for_another_modality_is_refused(study: SyntheticStudy, tmp_path: Path) -> None:
    with pytest.raises(ProcessError, match=r"\(0008,0060\) Modality CT; preset mr-liver-hcc is"):
        run_in_process(job_plan(study.ct_paths, study.seg_path, "mr-liver-hcc", tmp_path))


def test_quality_control_of_series_and_each_lesion_is_in_the_result_and_qc_csv(
    study: SyntheticStudy, tmp_path: Path
) -> None:
    import csv

    result = run_in_process(job_plan(study.ct_paths, study.seg_path, "ct-liver-basic", tmp_path))
    assert [r.scope for r in result.qc] == ["series", "roi", "roi"]
    assert result.qc[0].subject == study.ct_series_uid
    assert [r.subject for r in result.qc[1:]] == ["segment 1 (Lesion 1)", "segment 2 (Lesion 2)"]
    assert result.qc_status in ("pass", "warn", "fail")
    lesion = result.qc[1]
    assert lesion.check("mask.voxels").status == "pass"  # a sphere of thousands of voxels
    assert any(c.name.startswith("robustness.") for c in lesion.checks)
    with result.qc_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == sum(len(r.checks) for r in result.qc)
    assert {row["subject"] for row in rows} == {r.subject for r in result.qc}


def test_quality_control_is_in_each_measurement_group(study: SyntheticStudy,
                                                       tmp_path: Path) -> None:
    import subprocess

    import highdicom as hd
    import pydicom

    result = run_in_process(job_plan(study.ct_paths, study.seg_path, "ct-liver-basic", tmp_path))
    path = result.report.path
    dataset = pydicom.dcmread(path)
    sr = hd.sr.Comprehensive3DSR.from_dataset(dataset)
    groups = sr.content.get_volumetric_roi_measurement_groups()
    [container] = [item for item in dataset.ContentSequence
                   if item.ConceptNameCodeSequence[0].CodeValue == "126010"]
    by_lesion = {r.subject: r for r in result.qc[1:]}
    for group, raw in zip(groups, container.ContentSequence, strict=True):
        evaluations = {e.name.value: e.value.value for e in group.get_qualitative_evaluations()}
        lesion = by_lesion[f"segment {group.referenced_segment.referenced_segment_numbers[0]} "
                           f"({str(group.tracking_identifier).split(' / ')[0]})"]
        assert evaluations == {"qc.series": f"qc.{result.qc[0].status}",
                               "qc.roi": f"qc.{lesion.status}"}
        texts = [item.TextValue for item in raw.ContentSequence
                 if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue
                 == "qc.finding"]
        reported = [c.name for c in (*result.qc[0].checks, *lesion.checks)
                    if (c.status in ("warn", "fail") and not (
                        c.name.startswith("robustness.") and "_" in c.name))
                    or (c.name == "robustness.unstable" and c.value)]
        assert [t.split(":")[0] for t in texts] == reported
        assert "robustness.unstable" in reported  # a 10-slice phantom: many features move
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    assert [line for line in (run.stdout + run.stderr).splitlines()
            if line.startswith("Error")] == []


def test_robustness_compares_with_the_lesion_as_drawn_in_a_preset_without_intra(
    study: SyntheticStudy, tmp_path: Path
) -> None:
    """The robustness check's reference is the lesion's own features, extracted like the
    perturbed ROIs (here on the image z-scored in the lesion) even when no ROI variant is the
    lesion as drawn."""
    from pipelines.science.preprocess import apply_zscore, zscore_parameters
    from pipelines.science.presets import PreprocessingOptions, RoiVariant, ZScoreOptions
    from pipelines.science.qc import QCSettings, feature_robustness

    basic = load_preset("ct-liver-basic")
    preset = basic.model_copy(update={
        "name": "ring-only-zscore",
        "preprocessing": PreprocessingOptions(zscore=ZScoreOptions(reference="roi")),
        "radiomics": {**basic.radiomics,
                      "setting": {**basic.radiomics["setting"], "binWidth": 0.1}},
        "rois": basic.rois.model_copy(
            update={"variants": (RoiVariant(kind="ring", distance_mm=2.0),)})})
    result = run_in_process(job_plan(study.ct_paths, study.seg_path, preset, tmp_path))
    volume = read_series(list(study.ct_paths))
    seg = read_segmentation(study.seg_path, volume)
    for segment, report in zip(seg.segments, result.qc[1:], strict=True):
        zscored = apply_zscore(volume.image, *zscore_parameters(volume.image, segment.mask))
        expected = feature_robustness(zscored, segment.mask, preset, QCSettings())
        got = {c.name: c.value for c in report.checks if c.name.startswith("robustness.")}
        want = {c.name: c.value for c in expected.checks}
        assert "robustness.original" not in got and len(got) > 100
        assert got.keys() == want.keys()
        assert all(got[k] == pytest.approx(want[k], rel=1e-6, abs=1e-9) for k in got)


def test_report_seg_and_summary_are_written_and_announced_before_the_maps(
    study: SyntheticStudy, tmp_path: Path
) -> None:
    """The runner is told the plan's announced writes: the report, the derived SEG and the
    summary image already on disk and no parametric map yet, then the first feature class's map
    (firstorder entropy) before the last class's (GLCM contrast) is on disk; the last map is
    not announced (it goes out with the result); the result lists every object in that order."""
    crlm = load_preset("ct-liver-crlm")
    preset = crlm.model_copy(update={
        "name": "crlm-firstorder-maps",
        "radiomics": {**crlm.radiomics, "imageType": {"Original": {}},
                      "featureClass": {"firstorder": ["Mean"]}},
    })
    assert preset.maps.enabled
    calls = []

    def early(objects: tuple) -> None:
        on_disk = {p.name for p in tmp_path.glob("*.dcm")}
        calls.append(([o.sop_class_uid for o in objects], on_disk,
                      {f"{o.sop_instance_uid}.dcm" for o in objects}))

    result = run_in_process(job_plan(study.ct_paths, study.seg_path, preset, tmp_path),
                            announce=early)
    assert tuple(preset.maps.features) == ("firstorder_Entropy", "glcm_Contrast")
    [(classes, on_disk, announced), (map_classes, on_disk_then, announced_map)] = calls
    assert classes == [pydicom.uid.ComprehensiveSRStorage, pydicom.uid.Comprehensive3DSRStorage,
                       pydicom.uid.SegmentationStorage, pydicom.uid.SecondaryCaptureImageStorage]
    assert on_disk == announced  # written, and nothing else yet: no map
    assert map_classes == [pydicom.uid.ParametricMapStorage]
    assert on_disk_then == announced | announced_map  # the entropy map, not yet the contrast one
    maps = [o for o in result.objects if o.sop_class_uid == pydicom.uid.ParametricMapStorage]
    assert len(maps) == 2 and f"{maps[0].sop_instance_uid}.dcm" in announced_map
    assert pydicom.dcmread(maps[0].path).ContentDescription == "firstorder_Entropy map"
    assert pydicom.dcmread(maps[1].path).ContentDescription == "glcm_Contrast map"
    assert [o.sop_class_uid for o in result.objects] == [*classes, *(m.sop_class_uid
                                                                     for m in maps)]
