"""Small numeric cohorts for the model toolkit tests: feature tables whose first features carry a
latent risk, outcome tables with survival columns and a clinical variable, and a trained package
(logistic preset, few bootstrap replicates) that the package and inference tests share."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from models.card import AcquisitionDomain, ClinicalInput, Outcome, Range
from models.package import write_package
from models.tables import read_feature_table, read_outcome_table, write_feature_table
from models.training import CardTemplate, Options, TrainingResult, train

PRESET_HASH = "ab" * 32
N_FEATURES = 40
INFORMATIVE = 6


def feature_names(n: int = N_FEATURES) -> list[str]:
    """Card names over two ROI variants, one of which contains a '/' like the crlm preset's."""
    variants = ("intra", "intra + 2 mm ring, without air/fat")
    return [f"{variants[j % 2]}/original_firstorder_F{j}" for j in range(n)]


def write_cohort(directory: Path, tag: str, n: int, seed: int, noise: float = 0.3,
                 reader2_noise: float | None = None) -> dict[str, Path]:
    """Features (informative first columns), outcomes (outcome, time, event, diameter_mm) and,
    with ``reader2_noise``, a second reader's table whose later columns are noisier."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(n)
    y = (z + 0.6 * rng.standard_normal(n) > 0).astype(int)
    X = rng.standard_normal((n, N_FEATURES)) * noise
    X[:, :INFORMATIVE] += z[:, None]
    ids = [f"{tag}-{i:03d}" for i in range(n)]
    meta = {"preset": ["test-preset"] * n, "preset_hash": [PRESET_HASH] * n}
    paths = {"features": directory / f"{tag}-features.csv",
             "outcomes": directory / f"{tag}-outcomes.csv"}
    write_feature_table(paths["features"], ids, meta, feature_names(), X)
    if reader2_noise is not None:
        spread = np.linspace(0.01, reader2_noise, N_FEATURES)
        paths["reader2"] = directory / f"{tag}-reader2.csv"
        write_feature_table(paths["reader2"], ids, meta, feature_names(),
                            X + rng.standard_normal(X.shape) * spread)
    time = np.exp(-z) * 12 + rng.uniform(0, 1, n)
    with paths["outcomes"].open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["case_id", "outcome", "time", "event", "diameter_mm"])
        for i in range(n):
            out.writerow([ids[i], y[i], round(time[i], 3), int(rng.random() < 0.8),
                          round(20 + 4 * z[i] + rng.standard_normal(), 3)])
    return paths


def template(clinical: bool = True) -> CardTemplate:
    return CardTemplate(
        name="test-model", version="0.1", description="unit-test model",
        intended_use="tests only", not_for_clinical_use=True,
        disclaimer="Test model, synthetic data, not for clinical use.",
        outcome=Outcome(name="event", definition="synthetic"),
        domain=AcquisitionDomain(modality=("CT",), series_description="(?i)venous",
                                 convolution_kernels=("STANDARD", "B40f"),
                                 slice_thickness_mm=Range(min=1.0, max=3.0),
                                 manufacturers=("radiomics-node",)),
        clinical_inputs=(ClinicalInput(name="diameter_mm", source="seg",
                                       key="max_lesion_diameter_mm", unit="mm"),)
        if clinical else (),
        development_cohort="site A", external_cohort="site B",
    )


FAST = Options(classifier="logistic", mrmr_k=4, bootstrap_replicates=200, folds=4)


def trained(directory: Path, clinical: bool = True, options: Options = FAST
            ) -> tuple[TrainingResult, Path, str]:
    """Train on site A (with a second reader), validate on site B, write the package;
    return the result, the package directory and its digest."""
    a = write_cohort(directory, "A", 80, seed=1, reader2_noise=2.0)
    b = write_cohort(directory, "B", 60, seed=2, noise=0.5)
    names = ["diameter_mm"] if clinical else []
    result = train(
        template(clinical), read_feature_table(a["features"]),
        read_outcome_table(a["outcomes"], names),
        stability=read_feature_table(a["reader2"]),
        external=(read_feature_table(b["features"]), read_outcome_table(b["outcomes"], names)),
        options=options,
    )
    package = directory / "package"
    digest = write_package(package, result.card, result.estimator, result.validation,
                           result.selftest_rows)
    return result, package, digest


def two_role_model(tmp_path: Path, preset_name: str, features: tuple[str, str]
                   ) -> tuple[Path, str]:
    """A logistic model of two features, one of them measured on another series of a study job
    (``"<role>:<roi_variant>/<key>"``), made for shipped preset ``preset_name``, any CT; the
    package directory and its digest."""
    from sklearn.linear_model import LogisticRegression

    from models.card import PresetRef, role_of
    from pipelines.science.presets import load_preset

    (tmp_path / "toolkit").mkdir(parents=True)
    result, _, _ = trained(tmp_path / "toolkit", clinical=False)
    preset = load_preset(preset_name)
    card = result.card.model_copy(update={
        "features": features, "roles": tuple(sorted({role_of(f) for f in features} - {""})),
        "clinical_inputs": (), "preset": PresetRef(name=preset.name, hash=preset.hash),
        "domain": AcquisitionDomain(modality=("CT",))})
    rng = np.random.default_rng(3)
    X = rng.normal(60, 20, (40, 2))
    estimator = LogisticRegression().fit(X, (X.sum(axis=1) > 120).astype(int))
    package = tmp_path / "two-roles"
    digest = write_package(package, card.model_validate(card.model_dump()), estimator,
                           result.validation,
                           [dict(zip(features, row, strict=True)) for row in X[:3]])
    return package, digest
