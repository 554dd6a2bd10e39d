"""The recipe's selectors and pipeline: what LASSO and mRMR keep, and that cross-validation of
the whole pipeline does not leak the outcome through feature selection."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.svm import SVC

from models.estimators import (
    LassoSelector,
    MRMRSelector,
    Nomogram,
    classifier,
    radiomics_pipeline,
)
from models.stats import auc_delong


def test_lasso_keeps_the_informative_feature_and_falls_back_to_one() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 30))
    y = (X[:, 3] + 0.3 * rng.standard_normal(120) > 0).astype(float)
    selector = LassoSelector(alpha=0.05).fit(X, y)
    assert selector.get_support()[3]
    assert selector.get_support().sum() < 30
    everything_zero = LassoSelector(alpha=100.0).fit(X, y)
    assert everything_zero.get_support().tolist() == [j == 3 for j in range(30)]


def test_mrmr_skips_a_redundant_copy() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(300), rng.standard_normal(300)
    y = (a + b > 0).astype(int)
    X = np.column_stack([a, a + 1e-3 * rng.standard_normal(300), b, rng.standard_normal(300)])
    selector = MRMRSelector(k=2).fit(X, y)
    assert sorted(selector.order_.tolist()) in ([0, 2], [1, 2])  # a (or its copy), then b


def test_pipeline_cross_validation_does_not_leak() -> None:
    # Pure noise: selection fitted inside the folds gives a chance-level AUC; selecting the
    # features on all cases first (the wrong way) gives an optimistic one.
    rng = np.random.default_rng(2)
    X = rng.standard_normal((60, 400))
    y = np.repeat([0, 1], 30)
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    right = cross_val_predict(radiomics_pipeline("logistic", mrmr_k=5), X, y, cv=folds,
                              method="predict_proba")[:, 1]
    honest = auc_delong(y, right)[0]
    assert honest.low < 0.5 < honest.high
    fitted = radiomics_pipeline("logistic", mrmr_k=5).fit(X, y)
    kept = fitted[:-1].transform(X)
    wrong = cross_val_predict(classifier("logistic"), kept, y, cv=folds,
                              method="predict_proba")[:, 1]
    leaked = auc_delong(y, wrong)[0]
    assert leaked.low > 0.5 and leaked.value > honest.value + 0.15


def test_classifier_presets() -> None:
    svm = classifier("svm")
    assert svm.estimator.get_params()["C"] == 1.0 and svm.estimator.gamma == 0.001
    assert isinstance(svm.estimator, SVC) and svm.method == "sigmoid"
    forest = classifier("random_forest")
    assert (forest.n_estimators, forest.max_depth, forest.criterion) == (200, 3, "gini")
    mlp = classifier("mlp")
    assert (mlp.hidden_layer_sizes, mlp.activation, mlp.solver, mlp.learning_rate_init,
            mlp.batch_size, mlp.max_iter) == ((64, 64), "logistic", "adam", 0.001, 32, 200)


def test_nomogram_uses_the_clinical_column() -> None:
    rng = np.random.default_rng(4)
    n = 200
    radiomic = rng.standard_normal((n, 5))
    clinical = rng.standard_normal(n)
    y = (radiomic[:, 0] + 2 * clinical + 0.5 * rng.standard_normal(n) > 0).astype(int)
    X = np.column_stack([radiomic, clinical])
    model = Nomogram(radiomics_pipeline("logistic", mrmr_k=2), n_radiomics=5).fit(X, y)
    p = model.predict_proba(X)[:, 1]
    assert auc_delong(y, p)[0].value > auc_delong(y, model.radiomics_score(X))[0].value + 0.1
    coefficients = model.combiner_.named_steps["logistic"].coef_[0]
    assert coefficients[1] > coefficients[0] > 0  # clinical weighs more than the score
