"""Statistics of model validation: AUC with DeLong and bootstrap intervals, DeLong's test of two
correlated AUCs, sensitivity and specificity at a threshold, Hosmer-Lemeshow, calibration curve,
decision curve, Harrell's C and intraclass correlation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_auc_score

Z95 = float(stats.norm.ppf(0.975))


def _binary(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    values = set(np.unique(y).tolist())
    if not values <= {0, 1} or len(values) < 2:
        raise ValueError(f"outcome must hold both 0 and 1; holds {sorted(values)}")
    return y.astype(int)


def _placements(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components (DeLong et al., Biometrics 1988;44:837-845, section 3):
    ``V10[i]`` = fraction of negatives that positive i outscores (ties count one half), ``V01[j]``
    = fraction of positives that outscore negative j; computed with midranks (Sun and Xu, IEEE
    Signal Process Lett 2014;21:1389-1393, "fast DeLong")."""
    positives, negatives = scores[y == 1], scores[y == 0]
    m, n = len(positives), len(negatives)
    rank_all = stats.rankdata(np.concatenate([positives, negatives]))
    v10 = (rank_all[:m] - stats.rankdata(positives)) / n
    v01 = 1.0 - (rank_all[m:] - stats.rankdata(negatives)) / m
    return v10, v01


def _mann_whitney_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """AUC as the Mann-Whitney U statistic over m positives and n negatives (midranks for
    ties): ``(sum of positives' ranks - m (m + 1) / 2) / (m n)``."""
    positive = y == 1
    m = int(positive.sum())
    n = len(y) - m
    return float((stats.rankdata(scores)[positive].sum() - m * (m + 1) / 2) / (m * n))


@dataclass(frozen=True)
class AUC:
    """An AUC with its 95 % confidence interval and the method of the interval."""

    value: float
    low: float
    high: float
    method: str


def auc_delong(y: np.ndarray, scores: np.ndarray) -> tuple[AUC, float]:
    """AUC (the Mann-Whitney statistic) with DeLong's variance and the normal 95 % interval
    AUC +- 1.96 SE clipped to [0, 1] (as pROC's ``ci.auc(method="delong")``); also the SE."""
    y = _binary(y)
    v10, v01 = _placements(y, np.asarray(scores, dtype=float))
    value = float(v10.mean())
    se = float(np.sqrt(v10.var(ddof=1) / len(v10) + v01.var(ddof=1) / len(v01)))
    return AUC(value, max(0.0, value - Z95 * se), min(1.0, value + Z95 * se), "DeLong"), se


def auc_bootstrap(y: np.ndarray, scores: np.ndarray, *, replicates: int = 2000,
                  seed: int = 0) -> AUC:
    """AUC with the percentile 95 % interval of ``replicates`` case-resampling bootstrap
    replicates, stratified by outcome so that each replicate holds both classes (Efron and
    Tibshirani, An Introduction to the Bootstrap, 1993, ch. 13; pROC's stratified default)."""
    y = _binary(y)
    scores = np.asarray(scores, dtype=float)
    rng = np.random.default_rng(seed)
    positive, negative = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    values = np.empty(replicates)
    for r in range(replicates):
        rows = np.concatenate([rng.choice(positive, len(positive)),
                               rng.choice(negative, len(negative))])
        values[r] = _mann_whitney_auc(y[rows], scores[rows])
    low, high = np.percentile(values, [2.5, 97.5])
    return AUC(float(roc_auc_score(y, scores)), float(low), float(high),
               f"percentile bootstrap, {replicates} stratified replicates")


@dataclass(frozen=True)
class DeLongComparison:
    """DeLong's test of two correlated AUCs on the same cases."""

    auc_a: float
    auc_b: float
    difference: float
    se: float
    z: float
    p_value: float


def delong_test(y: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> DeLongComparison:
    """Two-sided test of AUC(a) = AUC(b) for two scores of the same cases (DeLong et al. 1988,
    section 3: the covariance of the two AUCs from the covariance of their structural
    components)."""
    y = _binary(y)
    a10, a01 = _placements(y, np.asarray(scores_a, dtype=float))
    b10, b01 = _placements(y, np.asarray(scores_b, dtype=float))
    s10 = np.cov(np.vstack([a10, b10]))
    s01 = np.cov(np.vstack([a01, b01]))
    contrast = np.array([1.0, -1.0])
    variance = float(contrast @ (s10 / len(a10) + s01 / len(a01)) @ contrast)
    difference = float(a10.mean() - b10.mean())
    se = float(np.sqrt(max(variance, 0.0)))
    if se == 0.0:
        z, p = 0.0 if difference == 0 else np.inf, 1.0 if difference == 0 else 0.0
    else:
        z = difference / se
        p = float(2 * stats.norm.sf(abs(z)))
    return DeLongComparison(float(a10.mean()), float(b10.mean()), difference, se, float(z), p)


@dataclass(frozen=True)
class Proportion:
    """A proportion k/n with its Wilson score 95 % interval (Wilson, JASA 1927)."""

    value: float
    low: float
    high: float
    k: int
    n: int


def wilson(k: int, n: int) -> Proportion:
    """``k`` of ``n`` with the Wilson score interval."""
    if n == 0:
        return Proportion(float("nan"), float("nan"), float("nan"), k, n)
    p = k / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * np.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
    return Proportion(p, float(centre - half), float(centre + half), k, n)


def sensitivity_specificity(y: np.ndarray, probability: np.ndarray,
                            threshold: float) -> tuple[Proportion, Proportion]:
    """Sensitivity and specificity of ``probability >= threshold``, with Wilson intervals."""
    y = _binary(y)
    predicted = np.asarray(probability) >= threshold
    positives, negatives = y == 1, y == 0
    return (wilson(int((predicted & positives).sum()), int(positives.sum())),
            wilson(int((~predicted & negatives).sum()), int(negatives.sum())))


def youden_threshold(y: np.ndarray, probability: np.ndarray) -> float:
    """The threshold maximising sensitivity + specificity - 1 (Youden, Cancer 1950) among the
    observed probabilities; the lowest such threshold when several tie."""
    y = _binary(y)
    probability = np.asarray(probability, dtype=float)
    best, best_j = 0.5, -np.inf
    for threshold in np.unique(probability):
        sens, spec = sensitivity_specificity(y, probability, float(threshold))
        j = sens.value + spec.value - 1
        if j > best_j:
            best, best_j = float(threshold), j
    return best


@dataclass(frozen=True)
class HosmerLemeshow:
    """The Hosmer-Lemeshow statistic over ``groups`` groups, its degrees of freedom and p."""

    statistic: float
    dof: int
    p_value: float
    groups: int


def hosmer_lemeshow(y: np.ndarray, probability: np.ndarray, groups: int = 10) -> HosmerLemeshow:
    """Hosmer-Lemeshow goodness of fit (Hosmer and Lemeshow, Applied Logistic Regression, 3rd ed.,
    2013, section 5.2.2): cases sorted by predicted probability are cut into ``groups`` groups
    of (nearly) equal size, and ``C = sum_g (O_g - E_g)^2 / (E_g (1 - E_g / n_g))`` with
    ``O_g`` events and ``E_g`` the sum of probabilities in group g is referred to chi-square with
    ``groups - 2`` degrees of freedom."""
    y = _binary(y)
    probability = np.asarray(probability, dtype=float)
    order = np.argsort(probability, kind="stable")
    statistic = 0.0
    for rows in np.array_split(order, groups):
        observed, expected, n = y[rows].sum(), probability[rows].sum(), len(rows)
        denominator = expected * (1 - expected / n)
        if denominator > 0:
            statistic += (observed - expected) ** 2 / denominator
    dof = groups - 2
    return HosmerLemeshow(float(statistic), dof, float(stats.chi2.sf(statistic, dof)), groups)


def calibration(y: np.ndarray, probability: np.ndarray,
                bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(mean predicted, observed fraction) per quantile bin: ``sklearn.calibration
    .calibration_curve`` with ``strategy="quantile"``."""
    observed, predicted = calibration_curve(_binary(y), probability, n_bins=bins,
                                            strategy="quantile")
    return predicted, observed


@dataclass(frozen=True)
class DecisionCurve:
    """Net benefit of the model, of treating all and of treating none, per threshold
    probability."""

    thresholds: np.ndarray
    model: np.ndarray
    treat_all: np.ndarray
    treat_none: np.ndarray


def decision_curve(y: np.ndarray, probability: np.ndarray,
                   thresholds: np.ndarray | None = None) -> DecisionCurve:
    """Decision curve analysis (Vickers and Elkin, Med Decis Making 2006;26:565-574): net benefit
    ``TP/n - FP/n * pt / (1 - pt)`` of treating cases with probability >= pt; treat-all is the
    same with every case treated, treat-none is 0."""
    y = _binary(y)
    probability = np.asarray(probability, dtype=float)
    pts = np.linspace(0.01, 0.99, 99) if thresholds is None else np.asarray(thresholds, float)
    n = len(y)
    odds = pts / (1 - pts)
    treated = probability[None, :] >= pts[:, None]
    tp = (treated & (y[None, :] == 1)).sum(axis=1) / n
    fp = (treated & (y[None, :] == 0)).sum(axis=1) / n
    prevalence = y.mean()
    return DecisionCurve(pts, tp - fp * odds, prevalence - (1 - prevalence) * odds,
                         np.zeros_like(pts))


def harrell_c(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's concordance index (Harrell et al., JAMA 1982;247:2543-2546): among pairs where
    the case with the shorter time had the event, the fraction in which that case has the higher
    risk; ties in risk count one half. Pairs with equal times are not comparable."""
    time = np.asarray(time, dtype=float)
    event = np.asarray(event).astype(bool)
    risk = np.asarray(risk, dtype=float)
    earlier = (time[:, None] < time[None, :]) & event[:, None]
    comparable = int(earlier.sum())
    if comparable == 0:
        raise ValueError("no comparable pair: no event before another case's time")
    concordant = (earlier & (risk[:, None] > risk[None, :])).sum()
    tied = (earlier & (risk[:, None] == risk[None, :])).sum()
    return float((concordant + 0.5 * tied) / comparable)


def icc(ratings: np.ndarray, form: str = "3,1") -> float:
    """Intraclass correlation of ``ratings`` (n targets x k raters) by Shrout and Fleiss
    (Psychol Bull 1979;86:420-428), from the two-way ANOVA mean squares: ``"2,1"`` two-way
    random effects, absolute agreement, single rater; ``"3,1"`` two-way mixed effects,
    consistency, single rater (Koo and Li, J Chiropr Med 2016;15:155-163 for the naming).
    A feature that does not vary between targets (between-targets mean square 0) gets 0."""
    x = np.asarray(ratings, dtype=float)
    n, k = x.shape
    if n < 2 or k < 2:
        raise ValueError(f"ICC needs at least 2 targets and 2 raters; got {n} x {k}")
    grand = x.mean()
    ss_rows = k * ((x.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((x.mean(axis=0) - grand) ** 2).sum()
    ss_error = ((x - grand) ** 2).sum() - ss_rows - ss_cols
    msr = ss_rows / (n - 1)
    msc = ss_cols / (k - 1)
    mse = ss_error / ((n - 1) * (k - 1))
    if msr == 0:
        return 0.0
    if form == "3,1":
        return float((msr - mse) / (msr + (k - 1) * mse))
    if form == "2,1":
        return float((msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n))
    raise ValueError(f"ICC form {form!r}: use '2,1' or '3,1'")
