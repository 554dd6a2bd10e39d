"""The training toolkit end to end on small numeric cohorts: `models train`, `models validate`,
the card filled from the run, the HTML report, `export features`, and the synthetic cohort."""

from __future__ import annotations

import base64
import csv
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from demo.cohort import write_cohort as write_synthetic_cohort
from models.package import load_package
from models.tables import TableError, read_feature_table, read_outcome_table
from node.cli import main
from node.ops.model_commands import export_features
from tests.unit.model_helpers import PRESET_HASH, template, write_cohort


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("cohorts")
    a = write_cohort(directory, "A", 80, seed=1, reader2_noise=2.0)
    b = write_cohort(directory, "B", 60, seed=2, noise=0.5)
    card = directory / "template.yaml"
    card.write_text(yaml.safe_dump(template().model_dump(mode="json")))
    return {"features": a["features"], "outcomes": a["outcomes"], "reader2": a["reader2"],
            "external_features": b["features"], "external_outcomes": b["outcomes"],
            "template": card, "dir": directory}


@pytest.fixture(scope="module")
def trained_cli(cohorts: dict[str, Path]) -> Path:
    out = cohorts["dir"] / "pkg"
    code = main(["models", "train", "--features", str(cohorts["features"]),
                 "--outcomes", str(cohorts["outcomes"]), "--reader2", str(cohorts["reader2"]),
                 "--external-features", str(cohorts["external_features"]),
                 "--external-outcomes", str(cohorts["external_outcomes"]),
                 "--template", str(cohorts["template"]), "--out", str(out),
                 "--classifier", "logistic", "--mrmr-k", "4", "--folds", "4",
                 "--bootstrap", "200", "--icc-threshold", "0.8"])
    assert code == 0
    return out


def test_train_fills_the_card(trained_cli: Path) -> None:
    package = load_package(trained_cli)
    card = package.card
    assert card.preset.hash == PRESET_HASH and card.preset.name == "test-preset"
    assert len(card.features) == 4
    # The informative features are the first six; the stability filter drops the noisiest
    # second-reader columns (the spread grows with the column index).
    assert all(int(re.search(r"F(\d+)$", f).group(1)) < 6 for f in card.features)  # type: ignore[union-attr]
    stability = package.validation["stability"]
    assert stability["features_kept"] < stability["features_assessed"] == 40
    assert [c.role for c in card.cohorts] == ["development", "internal", "external"]
    names = {(m.cohort, m.name, m.ci_method) for m in card.metrics}
    assert ("site B", "AUC", "DeLong, normal approximation") in names
    assert ("site B", "AUC", "percentile bootstrap") in names
    assert ("site A (internal 4-fold CV)", "Harrell's C", "") in names
    external_auc = next(m for m in card.metrics if m.cohort == "site B" and m.name == "AUC")
    assert 0.8 < external_auc.value <= 1.0 and external_auc.ci_low < external_auc.value
    assert card.training.algorithm == "nomogram (logistic + diameter_mm)"
    assert card.input_names[-1] == "diameter_mm"


def test_report_is_self_contained(trained_cli: Path) -> None:
    report = (trained_cli.parent / "pkg-report.html").read_text()
    assert "Summary (TRIPOD)" in report and "Test model, synthetic data" in report
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", report)
    assert len(images) == 1 and base64.b64decode(images[0])[:8] == b"\x89PNG\r\n\x1a\n"
    # The nomogram is compared with its radiomics-only model on the same out-of-fold cases.
    assert "<td>nomogram (logistic + diameter_mm)</td><td>logistic</td>" in report
    assert "src='http" not in report and "<script" not in report


def test_validate(trained_cli: Path, cohorts: dict[str, Path], tmp_path: Path,
                  capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "validation.html"
    assert main(["models", "validate", str(trained_cli), "--features",
                 str(cohorts["external_features"]), "--outcomes",
                 str(cohorts["external_outcomes"]), "--cohort", "site B again",
                 "--bootstrap", "200", "--report", str(report)]) == 0
    printed = capsys.readouterr().out
    card = load_package(trained_cli).card
    external = next(m for m in card.metrics if m.cohort == "site B" and m.name == "AUC")
    assert f"AUC {external.value:.3f}" in printed  # same cases, same model: same AUC
    assert "validation on site B again" in report.read_text()


def test_tables_refuse_bad_input(cohorts: dict[str, Path], tmp_path: Path) -> None:
    mixed = tmp_path / "mixed.csv"
    rows = list(csv.reader(cohorts["features"].open()))
    rows[2][rows[0].index("preset_hash")] = "ef" * 32
    with mixed.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    with pytest.raises(TableError, match="different presets"):
        read_feature_table(mixed)
    outcomes = tmp_path / "outcomes.csv"
    outcomes.write_text("case_id,outcome\nA-000,2\n")
    with pytest.raises(TableError, match="must be 0 or 1; lines \\[2\\]"):
        read_outcome_table(outcomes)
    with pytest.raises(TableError, match="no column 'diameter'"):
        read_outcome_table(cohorts["outcomes"], ["diameter"])


def test_train_with_every_classifier_compares_them_by_delong(cohorts: dict[str, Path]) -> None:
    from models.training import Options, train

    result = train(template(clinical=False), read_feature_table(cohorts["features"]),
                   read_outcome_table(cohorts["outcomes"]),
                   options=Options(mrmr_k=3, folds=3, bootstrap_replicates=100))
    record = result.validation
    assert set(record["classifiers_cv_auc"]) == {"svm", "random_forest", "mlp", "logistic"}
    assert record["chosen_classifier"] == max(record["classifiers_cv_auc"],
                                              key=record["classifiers_cv_auc"].get)
    assert len(record["delong_comparisons"]) == 3
    assert all(0 <= c["p_value"] <= 1 for c in record["delong_comparisons"])


def _long_csv(path: Path, series: str, lesions: dict[int, dict[str, dict[str, float]]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["source_series_uid", "segment_number", "segment_label", "roi_variant",
                      "preset", "preset_hash", "feature", "value"])
        for number, variants in lesions.items():
            for variant, features in variants.items():
                for key, value in features.items():
                    out.writerow([series, number, f"Lesion {number}", variant, "p", PRESET_HASH,
                                  key, repr(value)])


def test_export_features(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "state" / "results"
    _long_csv(results / "job-1" / "features.csv", "1.2.1", {
        1: {"intra": {"original_firstorder_Mean": 1.5},
            "intra + 2 mm ring, without air/fat": {"original_firstorder_Mean": 2.5}},
        2: {"intra": {"original_firstorder_Mean": 3.5}},
    })
    _long_csv(results / "job-2" / "features.csv", "1.2.2", {
        1: {"intra": {"original_firstorder_Mean": 4.5}}})
    out = tmp_path / "wide.csv"
    config = tmp_path / "node.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n")
    assert main(["export", "features", "--config", str(config), "--out", str(out)]) == 0
    assert "3 lesion(s), 2 feature column(s)" in capsys.readouterr().out
    table = read_feature_table(out)
    assert table.case_ids == ("job-1/1", "job-1/2", "job-2/1")
    assert table.names == ("intra/original_firstorder_Mean",
                           "intra + 2 mm ring, without air/fat/original_firstorder_Mean")
    assert table.values[0].tolist() == [1.5, 2.5]
    assert np.isnan(table.values[1, 1]) and table.preset_hash == PRESET_HASH
    bad = tmp_path / "bad" / "x" / "features.csv"
    bad.parent.mkdir(parents=True)
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"features\.csv: columns"):
        export_features(tmp_path / "bad", tmp_path / "wide2.csv")


def test_synthetic_cohort_is_reproducible(tmp_path: Path) -> None:
    first = write_synthetic_cohort(tmp_path / "one", lesions=3, stability_cases=1,
                                   preset="ct-liver-basic", seed=5)
    second = write_synthetic_cohort(tmp_path / "two", lesions=3, stability_cases=1,
                                    preset="ct-liver-basic", seed=5)
    for key in ("features_a", "features_b", "reader2", "outcomes_a", "outcomes_b"):
        assert first[key].read_bytes() == second[key].read_bytes()
    table = read_feature_table(first["features_a"])
    assert table.case_ids == ("A-001", "A-002") and table.preset == "ct-liver-basic"
    assert "intra/original_glcm_Contrast" in table.names
    reader2 = read_feature_table(first["reader2"])
    column = table.names.index("intra/original_shape_MeshVolume")
    assert reader2.values[0, column] != table.values[0, column]  # the contour was perturbed
    outcomes = read_outcome_table(first["outcomes_b"], ["max_lesion_diameter_mm"])
    assert outcomes.case_ids == ("B-001",) and outcomes.time is not None
    assert yaml.safe_load(first["domain"].read_text())["convolution_kernels"] == ["STANDARD",
                                                                                  "B40f"]
