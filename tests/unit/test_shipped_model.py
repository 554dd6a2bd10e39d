"""The demonstration model that ships: it loads with its pinned digest, says what it is, needs
the shipped ct-liver-crlm preset as it is now, and runs end to end on the synthetic study through
the job plan, QC and apply_model; outside its domain it is not applied."""

from __future__ import annotations

import pytest

from demo.synthetic import write_synthetic_study
from models.package import ModelPackage, load_package
from models.shipped import DEMO_PACKAGE, DEMO_SHA256
from node.flow.executor import run_in_process
from pipelines.io.series import SeriesVolume, read_series
from pipelines.outputs.result import PipelineResult
from pipelines.process import job_plan
from pipelines.science.inference import (
    ModelOutput,
    NotApplied,
    apply_model,
    lesion_features,
    seg_values,
)
from pipelines.science.presets import load_preset
from pipelines.science.qc import QCReport, assess_series

PACKAGE, SHA256 = DEMO_PACKAGE, DEMO_SHA256


@pytest.fixture(scope="module")
def package() -> ModelPackage:
    return load_package(PACKAGE, SHA256)


def test_card_says_what_it_is(package: ModelPackage) -> None:
    card = package.card
    assert card.not_for_clinical_use
    assert card.disclaimer == ("Demonstration model, trained on synthetic data, not for "
                               "clinical use.")
    assert [c.role for c in card.cohorts] == ["development", "internal", "external"]
    assert {m.ci_method for m in card.metrics if m.name == "AUC"} == {
        "DeLong, normal approximation", "percentile bootstrap"}


def test_needs_the_shipped_preset_as_it_is(package: ModelPackage) -> None:
    preset = load_preset("ct-liver-crlm")
    assert package.card.preset.name == preset.name
    assert package.card.preset.hash == preset.hash, (
        "ct-liver-crlm changed: rebuild the demo model (docs/model-card.md, 'The shipped model')")


@pytest.fixture(scope="module")
def processed(tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[PipelineResult, SeriesVolume, QCReport]:
    directory = tmp_path_factory.mktemp("study")
    study = write_synthetic_study(directory, shape=(24, 128, 128), seed=0)
    result = run_in_process(job_plan(study.ct_paths, study.seg_path, "ct-liver-crlm",
                                      directory / "out", models=[(PACKAGE, SHA256)]))
    volume = read_series(list(study.ct_paths))
    return result, volume, assess_series(volume)


def test_runs_on_the_synthetic_study(
    package: ModelPackage, processed: tuple[PipelineResult, SeriesVolume, QCReport]
) -> None:
    result, volume, qc = processed
    by_segment = lesion_features(result.lesions)
    assert set(by_segment) == {1, 2}
    for number, features in by_segment.items():
        output = apply_model(package, features=features, preset_hash=result.preset_hash,
                             qc_reports=[qc], headers=volume.datasets,
                             seg=seg_values(by_segment, number))
        assert isinstance(output, ModelOutput), output
        assert 0.0 < output.probability < 1.0
        assert output.model.disclaimer.startswith("Demonstration model")
        assert output.inputs["max_lesion_diameter_mm"] == pytest.approx(
            max(f["intra/original_shape_Maximum3DDiameter"] for f in by_segment.values()))


def test_not_applied_outside_its_domain(
    package: ModelPackage, processed: tuple[PipelineResult, SeriesVolume, QCReport]
) -> None:
    result, volume, qc = processed
    by_segment = lesion_features(result.lesions)
    headers = [ds.copy() for ds in volume.datasets]
    for ds in headers:
        ds.ConvolutionKernel = "LUNG"
        ds.SeriesDescription = "Arterial phase"
    output = apply_model(package, features=by_segment[1], preset_hash=load_preset(
        "ct-liver-basic").hash, qc_reports=[qc], headers=headers, seg=seg_values(by_segment, 1))
    assert isinstance(output, NotApplied)
    assert [r.condition for r in output.reasons] == ["preset", "domain", "domain"]


def test_a_job_runs_the_pinned_model_into_the_report_and_summary(
    processed: tuple[PipelineResult, SeriesVolume, QCReport]
) -> None:
    """The node's path: job_plan(models=...) applies the package to each lesion (series
    and lesion QC as gates) and writes the outcome into the lesion's group of the reading report
    and into its first (original image) group of the feature report."""
    import highdicom as hd
    import pydicom

    result, _, _ = processed
    assert result.model_errors == ()
    assert sorted(r.segment_number for r in result.models) == [1, 2]
    for path in (result.reading_report.path, result.report.path):
        dataset = pydicom.dcmread(path)
        [container] = [item for item in dataset.ContentSequence
                       if item.ConceptNameCodeSequence[0].CodeValue == "126010"]
        by_label: dict[str, list[pydicom.Dataset]] = {}
        for group in container.ContentSequence:
            label = next(item.TextValue for item in group.ContentSequence
                         if item.ConceptNameCodeSequence[0].CodeValue == "112039")
            by_label.setdefault(label, list(group.ContentSequence))  # a ROI's first group
        for lesion in result.models:
            items = by_label[f"Lesion {lesion.segment_number}"]
            codes = [item.ConceptNameCodeSequence[0].CodeValue for item in items]
            assert "model.identity" in codes and "model.disclaimer" in codes
            if isinstance(lesion.outcome, ModelOutput):
                [probability] = [item for item in items
                                 if item.ConceptNameCodeSequence[0].CodeValue == "model.prob"]
                assert float(probability.MeasuredValueSequence[0].NumericValue) == \
                    pytest.approx(lesion.outcome.probability, rel=1e-9)
            else:
                assert isinstance(lesion.outcome, NotApplied)
                assert "model.notapplied" in codes
        derived_groups = [label for label in by_label if " / " in label]
        # the reading report has no group for a derived ROI; the feature report has one
        assert bool(derived_groups) == (path == result.report.path) and all(
            "model.identity" not in [i.ConceptNameCodeSequence[0].CodeValue for i in by_label[g]]
            for g in derived_groups)
    hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(result.report.path))  # the whole one
    hd.sr.ComprehensiveSR.from_dataset(pydicom.dcmread(result.reading_report.path))
