"""Train and validate a radiomics model the way the papers do, and make a model package of it.

The recipe (``train``):

1. cases of the feature and outcome tables are matched on ``case_id``; features with a missing
   or non-finite value in any training case are dropped;
2. feature stability: with a second table of the same cases (a second reader's contours, or the
   pipeline run on perturbed masks), features whose ICC between the two tables is below a
   threshold are dropped (:func:`models.stats.icc`, ICC(3,1) by default, ICC(2,1) on request).
   The ICC never sees the outcome, so computing it on all training cases leaks nothing about
   the outcome into the cross-validation; the external cohort is never used;
3. one scikit-learn pipeline (``models.estimators.radiomics_pipeline``): constant features
   dropped, standardisation, LASSO, mRMR, classifier, cross-validated with stratified folds, so
   every selection is fitted inside the training folds only; each of the four published
   classifier presets is cross-validated, and the one with the best internal AUC is kept
   unless the caller names one;
4. optional clinical variables: a :class:`models.estimators.Nomogram` on the radiomics score and
   those variables, cross-validated the same way;
5. the decision threshold maximises Youden's J on the out-of-fold probabilities;
6. the final model is the pipeline fitted on all training cases; the package stores only what
   it needs: standardisation and classifier refitted on the features LASSO and mRMR selected
   (the same numbers the full pipeline gives, with a card that lists 15 features, not 4000);
7. evaluation (:func:`evaluate`) on the internal out-of-fold predictions and on the external
   cohort: AUC with DeLong and bootstrap intervals, sensitivity and specificity at the threshold
   with Wilson intervals, Hosmer-Lemeshow, calibration curve, decision curve, and Harrell's C
   when the outcome table has ``time`` and ``event``. DeLong's test compares every classifier,
   and the nomogram, with the kept model on the same out-of-fold predictions.
"""

from __future__ import annotations

import platform
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sklearn
import skops
from pydantic import BaseModel, ConfigDict
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import roc_curve
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from models.card import (
    AcquisitionDomain,
    ClinicalInput,
    Cohort,
    Decision,
    Metric,
    ModelCard,
    Outcome,
    PresetRef,
    Training,
    role_of,
)
from models.estimators import (
    CLASSIFIERS,
    ClassifierName,
    Nomogram,
    classifier,
    radiomics_pipeline,
)
from models.stats import (
    auc_bootstrap,
    auc_delong,
    calibration,
    decision_curve,
    delong_test,
    harrell_c,
    hosmer_lemeshow,
    icc,
    sensitivity_specificity,
    youden_threshold,
)
from models.tables import FeatureTable, OutcomeTable, TableError


@dataclass(frozen=True)
class Options:
    """Parameters of the recipe; the defaults are the published ones."""

    classifier: ClassifierName | None = None  # None: best internal AUC of the four
    lasso_alpha: float = 0.001
    mrmr_k: int = 15
    icc_threshold: float = 0.75
    icc_form: str = "3,1"
    folds: int = 5
    seed: int = 0
    bootstrap_replicates: int = 2000
    hl_groups: int = 10


class CardTemplate(BaseModel):
    """What the run cannot know: the model's identity, use, outcome, clinical inputs (columns of
    the outcome table of the same names) and acquisition domain; read from a YAML file by
    ``models train --template``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: str
    description: str
    intended_use: str
    not_for_clinical_use: bool
    disclaimer: str = ""
    outcome: Outcome
    domain: AcquisitionDomain
    clinical_inputs: tuple[ClinicalInput, ...] = ()
    categories: tuple[str, str] = ("low risk", "high risk")
    development_cohort: str = "development"
    external_cohort: str = "external"


@dataclass
class CohortData:
    """Matched cases of one cohort: features (all table columns), outcome, clinical columns."""

    name: str
    case_ids: list[str]
    features: FeatureTable
    X: np.ndarray
    y: np.ndarray
    clinical: np.ndarray  # n x len(clinical inputs)
    time: np.ndarray | None
    event: np.ndarray | None


def match(name: str, features: FeatureTable, outcomes: OutcomeTable,
          clinical: Sequence[str] = ()) -> CohortData:
    """The cases present in both tables, in the feature table's order; TableError if none,
    or if a matched case lacks a clinical value."""
    known = set(outcomes.case_ids)
    ids = [case for case in features.case_ids if case in known]
    if not ids:
        raise TableError(f"{features.path} and {outcomes.path}: no case_id in common")
    where = {case: i for i, case in enumerate(outcomes.case_ids)}
    rows = [where[c] for c in ids]
    columns = [outcomes.clinical[c][rows] for c in clinical]
    clinical_matrix = np.column_stack(columns) if columns else np.empty((len(ids), 0))
    if not np.isfinite(clinical_matrix).all():
        bad = sorted({clinical[j] for j in np.argwhere(~np.isfinite(clinical_matrix))[:, 1]})
        raise TableError(f"{outcomes.path}: clinical columns {bad} have missing values; the "
                         "toolkit does not impute")
    return CohortData(
        name=name, case_ids=ids, features=features, X=features.rows(ids),
        y=outcomes.outcome[rows], clinical=clinical_matrix,
        time=None if outcomes.time is None else outcomes.time[rows],
        event=None if outcomes.event is None else outcomes.event[rows],
    )


def stable_features(names: Sequence[str], first: FeatureTable, second: FeatureTable,
                    threshold: float, form: str) -> tuple[list[str], dict[str, float]]:
    """Features of ``names`` whose ICC between the two tables (their common cases) is at least
    ``threshold``; also every feature's ICC."""
    common = [case for case in first.case_ids if case in set(second.case_ids)]
    if len(common) < 2:
        raise TableError(f"{first.path} and {second.path}: fewer than 2 cases in common for ICC")
    a = first.rows(common)
    b = second.rows(common)
    b_names = {n: j for j, n in enumerate(second.names)}
    a_names = {n: j for j, n in enumerate(first.names)}
    values: dict[str, float] = {}
    for name in names:
        if name not in b_names:
            continue
        pair = np.column_stack([a[:, a_names[name]], b[:, b_names[name]]])
        values[name] = icc(pair, form) if np.isfinite(pair).all() else float("nan")
    kept = [n for n in names if values.get(n, float("nan")) >= threshold]
    return kept, values


@dataclass
class Evaluation:
    """Performance of probabilities on one cohort."""

    cohort: str
    n: int
    positives: int
    auc_delong: dict[str, float]
    auc_bootstrap: dict[str, float]
    sensitivity: dict[str, float]
    specificity: dict[str, float]
    hosmer_lemeshow: dict[str, float]
    calibration: dict[str, list[float]]
    decision_curve: dict[str, list[float]]
    roc: dict[str, list[float]]
    c_index: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def evaluate(cohort: str, y: np.ndarray, probability: np.ndarray, threshold: float,
             options: Options, time: np.ndarray | None = None,
             event: np.ndarray | None = None) -> Evaluation:
    """Every measure of :mod:`models.stats` for ``probability`` against outcome ``y``."""
    delong, se = auc_delong(y, probability)
    boot = auc_bootstrap(y, probability, replicates=options.bootstrap_replicates,
                         seed=options.seed)
    sens, spec = sensitivity_specificity(y, probability, threshold)
    hl = hosmer_lemeshow(y, probability, groups=min(options.hl_groups, len(y) // 2))
    predicted, observed = calibration(y, probability)
    curve = decision_curve(y, probability)
    fpr, tpr, _ = roc_curve(y, probability)
    c_index = None
    if time is not None and event is not None and bool(np.asarray(event).any()):
        c_index = harrell_c(time, event, probability)
    return Evaluation(
        cohort=cohort, n=len(y), positives=int(np.sum(y)),
        auc_delong={"value": delong.value, "low": delong.low, "high": delong.high, "se": se},
        auc_bootstrap={"value": boot.value, "low": boot.low, "high": boot.high},
        sensitivity={"value": sens.value, "low": sens.low, "high": sens.high, "k": sens.k,
                     "n": sens.n},
        specificity={"value": spec.value, "low": spec.low, "high": spec.high, "k": spec.k,
                     "n": spec.n},
        hosmer_lemeshow={"statistic": hl.statistic, "dof": hl.dof, "p_value": hl.p_value,
                         "groups": hl.groups},
        calibration={"predicted": predicted.tolist(), "observed": observed.tolist()},
        decision_curve={"threshold": curve.thresholds.tolist(), "model": curve.model.tolist(),
                        "treat_all": curve.treat_all.tolist()},
        roc={"fpr": fpr.tolist(), "tpr": tpr.tolist()},
        c_index=c_index,
    )


@dataclass
class TrainingResult:
    """The fitted package estimator, its card, the validation record and the report's data."""

    card: ModelCard
    estimator: Any
    validation: dict[str, Any]
    selftest_rows: list[dict[str, float]]
    evaluations: list[Evaluation] = field(default_factory=list)


def _quiet_fit_predict(estimator: Any, X: np.ndarray, y: np.ndarray,
                       folds: StratifiedKFold) -> np.ndarray:
    with warnings.catch_warnings():
        # The MLP preset stops at 200 epochs as published, converged or not.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return cross_val_predict(estimator, X, y, cv=folds, method="predict_proba")[:, 1]


def _selected(pipeline: Pipeline, names: Sequence[str]) -> list[str]:
    """Feature names kept by the fitted pipeline's variance, LASSO and mRMR steps, in mRMR's
    order of selection."""
    kept = np.asarray(names)[pipeline.named_steps["variance"].get_support()]
    kept = kept[pipeline.named_steps["lasso"].get_support()]
    return [str(kept[i]) for i in pipeline.named_steps["mrmr"].order_]


def _metrics(evaluation: Evaluation) -> list[Metric]:
    e = evaluation
    return [
        Metric(cohort=e.cohort, name="AUC", value=e.auc_delong["value"],
               ci_low=e.auc_delong["low"], ci_high=e.auc_delong["high"],
               ci_method="DeLong, normal approximation"),
        Metric(cohort=e.cohort, name="AUC", value=e.auc_bootstrap["value"],
               ci_low=e.auc_bootstrap["low"], ci_high=e.auc_bootstrap["high"],
               ci_method="percentile bootstrap"),
        Metric(cohort=e.cohort, name="sensitivity", value=e.sensitivity["value"],
               ci_low=e.sensitivity["low"], ci_high=e.sensitivity["high"], ci_method="Wilson"),
        Metric(cohort=e.cohort, name="specificity", value=e.specificity["value"],
               ci_low=e.specificity["low"], ci_high=e.specificity["high"], ci_method="Wilson"),
        Metric(cohort=e.cohort, name="Hosmer-Lemeshow p", value=e.hosmer_lemeshow["p_value"]),
        *([Metric(cohort=e.cohort, name="Harrell's C", value=e.c_index)]
          if e.c_index is not None else []),
    ]


def train(template: CardTemplate, features: FeatureTable, outcomes: OutcomeTable, *,
          stability: FeatureTable | None = None,
          external: tuple[FeatureTable, OutcomeTable] | None = None,
          options: Options = Options()) -> TrainingResult:
    """Run the recipe of the module docstring and return what makes the package and report.

    Raises:
        TableError: the tables cannot be matched, lack a preset hash, or leave no feature.
    """
    if features.preset is None or features.preset_hash is None:
        raise TableError(f"{features.path}: needs preset and preset_hash columns: a model is "
                         "tied to the preset its features came from")
    clinical = template.clinical_inputs
    clinical_names = [c.name for c in clinical]
    dev = match(template.development_cohort, features, outcomes, clinical_names)
    finite = np.isfinite(dev.X).all(axis=0)
    names = [n for n, ok in zip(features.names, finite, strict=True) if ok]
    record: dict[str, Any] = {
        "options": options.__dict__,
        "features_in_table": len(features.names),
        "features_finite": len(names),
    }
    if stability is not None:
        names, iccs = stable_features(names, features, stability, options.icc_threshold,
                                      options.icc_form)
        record["stability"] = {
            "table": stability.path.name, "form": f"ICC({options.icc_form})",
            "threshold": options.icc_threshold, "cases": len(
                set(features.case_ids) & set(stability.case_ids)),
            "features_kept": len(names), "features_assessed": len(iccs),
        }
    if not names:
        raise TableError(f"{features.path}: no feature left after the finite-value and ICC "
                         "filters")
    X = features.rows(dev.case_ids)[:, [features.names.index(n) for n in names]]
    y = dev.y
    folds = StratifiedKFold(options.folds, shuffle=True, random_state=options.seed)

    def pipeline(name: ClassifierName) -> Pipeline:
        return radiomics_pipeline(name, lasso_alpha=options.lasso_alpha, mrmr_k=options.mrmr_k,
                                  random_state=options.seed)

    candidates = [options.classifier] if options.classifier else list(CLASSIFIERS)
    oof = {name: _quiet_fit_predict(pipeline(name), X, y, folds) for name in candidates}
    cv_auc = {name: auc_delong(y, p)[0].value for name, p in oof.items()}
    chosen: ClassifierName = max(cv_auc, key=lambda n: cv_auc[n])
    final_oof = oof[chosen]
    model_label = f"radiomics ({chosen})"
    with_clinical = np.column_stack([X, dev.clinical])
    if clinical:
        nomogram = Nomogram(pipeline(chosen), n_radiomics=X.shape[1], cv=options.folds,
                            random_state=options.seed)
        final_oof = _quiet_fit_predict(nomogram, with_clinical, y, folds)
        oof[f"nomogram ({chosen} + {', '.join(clinical_names)})"] = final_oof
        model_label = f"nomogram ({chosen} + {', '.join(clinical_names)})"
    comparisons = [
        {"a": model_label, "b": name, **delong_test(y, final_oof, p).__dict__}
        for name, p in oof.items() if p is not final_oof
    ]
    threshold = youden_threshold(y, final_oof)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        full = pipeline(chosen).fit(X, y)
        selected = _selected(full, names)
        columns = [names.index(n) for n in selected]
        deploy: Any = Pipeline([("scale", StandardScaler()),
                                ("classifier", clone(classifier(chosen, options.seed)))])
        if clinical:
            deploy = Nomogram(deploy, n_radiomics=len(selected), cv=options.folds,
                              random_state=options.seed)
            deploy.fit(np.column_stack([X[:, columns], dev.clinical]), y)
        else:
            deploy.fit(X[:, columns], y)

    evaluations = [evaluate(f"{template.development_cohort} (internal {options.folds}-fold CV)",
                            y, final_oof, threshold, options, dev.time, dev.event)]
    cohorts = [
        Cohort(name=template.development_cohort, role="development",
               description="training cases; every fit and selection", cases=len(y),
               positives=int(y.sum())),
        Cohort(name=evaluations[0].cohort, role="internal",
               description=f"out-of-fold predictions of stratified {options.folds}-fold "
               "cross-validation of the whole pipeline", cases=len(y), positives=int(y.sum())),
    ]
    if external is not None:
        ext = match(template.external_cohort, external[0], external[1], clinical_names)
        ext_X = external[0].rows(ext.case_ids)[:, [external[0].names.index(n) for n in selected]]
        if external[0].preset_hash not in (None, features.preset_hash):
            raise TableError(f"{external[0].path}: preset hash {external[0].preset_hash} differs "
                             f"from the training table's {features.preset_hash}")
        ext_p = deploy.predict_proba(np.column_stack([ext_X, ext.clinical]))[:, 1]
        evaluations.append(evaluate(template.external_cohort, ext.y, ext_p, threshold, options,
                                    ext.time, ext.event))
        cohorts.append(Cohort(name=template.external_cohort, role="external",
                              description="never used in fitting or selection",
                              cases=len(ext.y), positives=int(ext.y.sum())))

    card = ModelCard(
        name=template.name, version=template.version, description=template.description,
        intended_use=template.intended_use, not_for_clinical_use=template.not_for_clinical_use,
        disclaimer=template.disclaimer, outcome=template.outcome,
        preset=PresetRef(name=features.preset, hash=features.preset_hash),
        features=tuple(selected), clinical_inputs=tuple(clinical),
        roles=tuple(sorted({role_of(name) for name in selected} - {""})),
        decision=Decision(threshold=threshold, categories=template.categories,
                          threshold_method="Youden's J on internal out-of-fold probabilities"),
        domain=template.domain,
        training=Training(
            algorithm=model_label,
            steps=(
                "drop features with missing or non-finite values",
                *((f"ICC({options.icc_form}) >= {options.icc_threshold} against "
                   f"{stability.path.name}",) if stability is not None else ()),
                "drop constant features", "standardise (z-score)",
                f"LASSO regression of the 0/1 outcome, alpha {options.lasso_alpha}",
                f"mRMR (MID), top {options.mrmr_k}",
                f"classifier: {chosen}",
                *(("logistic nomogram of the radiomics score and clinical inputs",)
                  if clinical else ()),
            ),
            parameters={"lasso_alpha": options.lasso_alpha, "mrmr_k": options.mrmr_k,
                        "icc_threshold": options.icc_threshold if stability else None,
                        "folds": options.folds, "seed": options.seed,
                        "classifier": chosen, "classifier_params": repr(
                            classifier(chosen, options.seed))},
            software={"python": platform.python_version(), "scikit-learn": sklearn.__version__,
                      "skops": skops.__version__, "numpy": np.__version__},
        ),
        cohorts=tuple(cohorts),
        metrics=tuple(m for e in evaluations for m in _metrics(e)),
    )
    record.update({
        "features_after_stability": len(names),
        "classifiers_cv_auc": cv_auc,
        "chosen_classifier": chosen,
        "model": model_label,
        "selected_features": selected,
        "delong_comparisons": comparisons,
        "threshold": threshold,
        "evaluations": [e.as_dict() for e in evaluations],
        "out_of_fold": {"case_id": dev.case_ids, "outcome": y.tolist(),
                        **{name: p.tolist() for name, p in oof.items()}},
    })
    selftest_rows = [
        dict(zip(card.input_names, row, strict=True))
        for row in np.column_stack([X[:, columns], dev.clinical])[:5]
    ]
    return TrainingResult(card, deploy, record, selftest_rows, evaluations)


def validate(package: Any, features: FeatureTable, outcomes: OutcomeTable, cohort: str,
             options: Options = Options()) -> Evaluation:
    """Evaluate a loaded :class:`models.package.ModelPackage` on a cohort at its card's
    threshold. Refuses a table from another preset; clinical inputs are outcome-table columns of
    the same names."""
    card = package.card
    if features.preset_hash not in (None, card.preset.hash):
        raise TableError(f"{features.path}: preset hash {features.preset_hash}; the model needs "
                         f"{card.preset.hash} ({card.preset.name})")
    clinical = [c.name for c in card.clinical_inputs]
    data = match(cohort, features, outcomes, clinical)
    where = {case: i for i, case in enumerate(features.case_ids)}
    X = features.columns(card.features)[[where[c] for c in data.case_ids]]
    probability = package.estimator.predict_proba(np.column_stack([X, data.clinical]))[:, 1]
    return evaluate(cohort, data.y, probability, card.decision.threshold, options, data.time,
                    data.event)
