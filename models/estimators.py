"""scikit-learn pieces of the radiomics recipe: feature selection by LASSO and by mRMR, the four
published classifier presets, and the nomogram that combines a radiomics score with clinical
variables.

Every selector is a transformer, so that it sits in one ``sklearn.pipeline.Pipeline`` and is
fitted inside the training folds of a cross-validation only (no information from a test fold
reaches the selection; Hastie et al., The Elements of Statistical Learning, 2nd ed., section
7.10.2 "The wrong and right way to do cross-validation").
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.feature_selection import (
    SelectorMixin,
    VarianceThreshold,
    mutual_info_classif,
    mutual_info_regression,
)
from sklearn.linear_model import Lasso, LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.utils.validation import check_is_fitted, validate_data

ClassifierName = Literal["svm", "random_forest", "mlp", "logistic"]
CLASSIFIERS: tuple[ClassifierName, ...] = ("svm", "random_forest", "mlp", "logistic")


def classifier(name: ClassifierName, random_state: int = 0) -> BaseEstimator:
    """A classifier with the published preset of the CRLM recurrence recipe:

    * ``svm``: RBF kernel, C 1.0, gamma 0.001, Platt-scaled probabilities (Platt 1999), what
      ``SVC(probability=True)`` gave before scikit-learn 1.9 deprecated it: a sigmoid fitted on
      5-fold cross-validated decision values, ``CalibratedClassifierCV(ensemble=False)``;
    * ``random_forest``: 200 trees, Gini impurity, maximum depth 3;
    * ``mlp``: two hidden layers of 64 units, logistic activation, Adam, learning rate 0.001,
      batch size 32, 200 epochs (``max_iter`` counts epochs for Adam);
    * ``logistic``: L2-penalised logistic regression (C 1.0, lbfgs).
    """
    if name == "svm":
        return CalibratedClassifierCV(SVC(kernel="rbf", C=1.0, gamma=0.001), method="sigmoid",
                                      cv=5, ensemble=False)
    if name == "random_forest":
        return RandomForestClassifier(n_estimators=200, criterion="gini", max_depth=3,
                                      random_state=random_state)
    if name == "mlp":
        return MLPClassifier(hidden_layer_sizes=(64, 64), activation="logistic", solver="adam",
                             learning_rate_init=0.001, batch_size=32, max_iter=200,
                             random_state=random_state)
    if name == "logistic":
        return LogisticRegression(C=1.0, max_iter=5000)
    raise ValueError(f"unknown classifier {name!r}; known: {list(CLASSIFIERS)}")


class LassoSelector(SelectorMixin, BaseEstimator):
    """Keep the features with a non-zero coefficient of a LASSO linear regression of the 0/1
    outcome (Tibshirani, J R Stat Soc B 1996; ``sklearn.linear_model.Lasso``, objective
    ``1/(2n) ||y - Xw||^2 + alpha ||w||_1``) on standardised features.

    LASSO regression on the binary outcome, not L1-penalised logistic regression: that is what
    the radiomics papers this recipe follows fit (scikit-learn ``Lasso(alpha=0.001)``). When the
    penalty zeroes every coefficient the single feature most correlated with the outcome is
    kept, so the steps after it always get a feature.
    """

    def __init__(self, alpha: float = 0.001, max_iter: int = 20000) -> None:
        self.alpha = alpha
        self.max_iter = max_iter

    def fit(self, X: Any, y: Any) -> LassoSelector:
        X, y = validate_data(self, X, y)
        lasso = Lasso(alpha=self.alpha, max_iter=self.max_iter).fit(X, y)
        self.coef_ = lasso.coef_
        support = self.coef_ != 0
        if not support.any():
            centred = X - X.mean(axis=0)
            scale = np.sqrt((centred**2).sum(axis=0)) * np.sqrt(((y - y.mean()) ** 2).sum())
            corr = np.abs(centred.T @ (y - y.mean())) / np.where(scale > 0, scale, np.inf)
            support[int(np.argmax(corr))] = True
        self.support_ = support
        return self

    def _get_support_mask(self) -> np.ndarray:
        check_is_fitted(self, "support_")
        return self.support_


class MRMRSelector(SelectorMixin, BaseEstimator):
    """Minimum redundancy maximum relevance, MID scheme (Peng, Long and Ding, IEEE TPAMI
    2005;27:1226-1238, eq. 6 and 8): greedily add the feature maximising
    ``I(f; y) - mean_{s in S} I(f; s)``.

    Relevance ``I(f; y)`` is ``mutual_info_classif`` and redundancy ``I(f; s)`` is
    ``mutual_info_regression``, both the k-nearest-neighbour estimators of Kraskov et al. (Phys
    Rev E 2004) and Ross (PLoS ONE 2014) with ``n_neighbors`` and a fixed ``random_state``.
    Written here rather than taken from the ``mrmr_selection`` package, which needs pandas and
    category_encoders for these twenty lines.
    """

    def __init__(self, k: int = 15, n_neighbors: int = 3, random_state: int = 0) -> None:
        self.k = k
        self.n_neighbors = n_neighbors
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> MRMRSelector:
        X, y = validate_data(self, X, y)
        n_features = X.shape[1]
        relevance = mutual_info_classif(X, y, n_neighbors=self.n_neighbors,
                                        random_state=self.random_state)
        selected = [int(np.argmax(relevance))]
        redundancy = np.zeros(n_features)
        while len(selected) < min(self.k, n_features):
            redundancy += mutual_info_regression(X, X[:, selected[-1]],
                                                 n_neighbors=self.n_neighbors,
                                                 random_state=self.random_state)
            score = relevance - redundancy / len(selected)
            score[selected] = -np.inf
            selected.append(int(np.argmax(score)))
        self.relevance_ = relevance
        self.order_ = np.array(selected)
        support = np.zeros(n_features, dtype=bool)
        support[selected] = True
        self.support_ = support
        return self

    def _get_support_mask(self) -> np.ndarray:
        check_is_fitted(self, "support_")
        return self.support_


def radiomics_pipeline(classifier_name: ClassifierName, *, lasso_alpha: float = 0.001,
                       mrmr_k: int = 15, random_state: int = 0) -> Pipeline:
    """Constant features dropped, standardisation, LASSO, mRMR, the classifier; one pipeline, so
    cross-validation fits every step inside the training folds."""
    return Pipeline([
        ("variance", VarianceThreshold(0.0)),
        ("scale", StandardScaler()),
        ("lasso", LassoSelector(alpha=lasso_alpha)),
        ("mrmr", MRMRSelector(k=mrmr_k, random_state=random_state)),
        ("classifier", classifier(classifier_name, random_state)),
    ])


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


class Nomogram(ClassifierMixin, BaseEstimator):
    """A logistic model of the radiomics score (the logit of the radiomics model's probability)
    and clinical variables, as in a radiomics nomogram (Huang et al., J Clin Oncol
    2016;34:2157-2164).

    The first ``n_radiomics`` columns of X go to ``radiomics``, the rest are clinical variables.
    The logistic model is fitted on out-of-fold radiomics scores (``cv`` stratified folds), so it
    weighs the score as it behaves on unseen cases, not on the cases the score was fitted on;
    the radiomics model is then refitted on all cases. Unpenalised logistic regression on
    standardised inputs.
    """

    def __init__(self, radiomics: BaseEstimator, n_radiomics: int, cv: int = 5,
                 random_state: int = 0) -> None:
        self.radiomics = radiomics
        self.n_radiomics = n_radiomics
        self.cv = cv
        self.random_state = random_state

    def _combined(self, score: np.ndarray, X: np.ndarray) -> np.ndarray:
        return np.column_stack([_logit(score), X[:, self.n_radiomics:]])

    def fit(self, X: Any, y: Any) -> Nomogram:
        X, y = validate_data(self, X, y)
        self.classes_ = np.unique(y)
        radiomic = X[:, : self.n_radiomics]
        folds = StratifiedKFold(self.cv, shuffle=True, random_state=self.random_state)
        oof = cross_val_predict(clone(self.radiomics), radiomic, y, cv=folds,
                                method="predict_proba")[:, 1]
        self.radiomics_ = clone(self.radiomics).fit(radiomic, y)
        self.combiner_ = Pipeline([
            ("scale", StandardScaler()),
            ("logistic", LogisticRegression(C=np.inf, max_iter=5000)),
        ]).fit(self._combined(oof, X), y)
        return self

    def radiomics_score(self, X: Any) -> np.ndarray:
        """The radiomics model's probability for each row (clinical columns ignored)."""
        check_is_fitted(self, "combiner_")
        X = validate_data(self, X, reset=False)
        return self.radiomics_.predict_proba(X[:, : self.n_radiomics])[:, 1]

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "combiner_")
        X = validate_data(self, X, reset=False)
        score = self.radiomics_.predict_proba(X[:, : self.n_radiomics])[:, 1]
        return self.combiner_.predict_proba(self._combined(score, X))

    def predict(self, X: Any) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]
