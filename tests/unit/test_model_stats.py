"""models.stats against hand computations and published values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from models import stats


def test_delong_auc_and_se_by_hand() -> None:
    # Positives 0.9, 0.6, 0.4; negatives 0.5, 0.3. Placements V10 = (1, 1, 1/2), V01 = (2/3, 1).
    # AUC = 5/6; var = var(V10)/3 + var(V01)/2 = (1/12)/3 + (1/18)/2 = 1/36 + 1/36 = 1/18.
    y = np.array([1, 1, 1, 0, 0])
    scores = np.array([0.9, 0.6, 0.4, 0.5, 0.3])
    auc, se = stats.auc_delong(y, scores)
    assert auc.value == pytest.approx(5 / 6)
    assert se == pytest.approx(math.sqrt(1 / 18))
    assert auc.low == pytest.approx(5 / 6 - stats.Z95 * math.sqrt(1 / 18))
    assert auc.high == 1.0  # clipped


def test_delong_ties_count_half() -> None:
    # Pairs (0.9, 0.5) (0.9, 0.1) (0.5, 0.1) concordant, (0.5, 0.5) tied: AUC = 3.5 / 4.
    y = np.array([1, 1, 0, 0])
    scores = np.array([0.9, 0.5, 0.5, 0.1])
    auc, _ = stats.auc_delong(y, scores)
    assert auc.value == pytest.approx(0.875)
    assert auc.value == pytest.approx(roc_auc_score(y, scores))


def _delong_by_loops(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """DeLong's variance of AUC(a) - AUC(b) from the definition (pairwise psi), O(mn)."""
    def components(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos, neg = s[y == 1], s[y == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        return psi.mean(axis=1), psi.mean(axis=0)

    a10, a01 = components(a)
    b10, b01 = components(b)
    m, n = len(a10), len(a01)
    d10, d01 = a10 - b10, a01 - b01
    variance = d10.var(ddof=1) / m + d01.var(ddof=1) / n
    return float(a10.mean() - b10.mean()), float(variance)


def test_delong_comparison_matches_definition() -> None:
    rng = np.random.default_rng(3)
    y = np.repeat([1, 0], [30, 40])
    truth = y + rng.normal(0, 1, len(y))
    a = truth + rng.normal(0, 0.5, len(y))
    b = np.round(truth + rng.normal(0, 1.5, len(y)), 1)  # rounded: ties
    result = stats.delong_test(y, a, b)
    difference, variance = _delong_by_loops(y, a, b)
    assert result.difference == pytest.approx(difference)
    assert result.se == pytest.approx(math.sqrt(variance))
    assert result.p_value == pytest.approx(2 * sps.norm.sf(abs(difference) / math.sqrt(variance)))
    same = stats.delong_test(y, a, a)
    assert same.difference == 0 and same.p_value == 1.0


def test_delong_se_agrees_with_bootstrap() -> None:
    # DeLong's SE is asymptotically the bootstrap SE; on 200 cases they agree within 15 %.
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 200)
    scores = y * 0.8 + rng.normal(0, 1, 200)
    _, se = stats.auc_delong(y, scores)
    boot = [roc_auc_score(y[r], scores[r])
            for r in (rng.integers(0, 200, 200) for _ in range(600))]
    assert se == pytest.approx(float(np.std(boot, ddof=1)), rel=0.15)
    interval = stats.auc_bootstrap(y, scores, replicates=500, seed=1)
    assert interval.low < interval.value < interval.high
    assert interval.high - interval.low == pytest.approx(2 * stats.Z95 * se, rel=0.2)


def test_hosmer_lemeshow_by_hand() -> None:
    # Three groups of two: (0.1, 0.2) O=0 E=0.3; (0.3, 0.4) O=1 E=0.7; (0.6, 0.8) O=2 E=1.4.
    # C = 0.09/(0.3*0.85) + 0.09/(0.7*0.65) + 0.36/(1.4*0.3) = 0.352941 + 0.197802 + 0.857143.
    y = np.array([0, 0, 1, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.8])
    result = stats.hosmer_lemeshow(y, p, groups=3)
    assert result.statistic == pytest.approx(1.407886, abs=1e-6)
    assert result.dof == 1
    assert result.p_value == pytest.approx(sps.chi2.sf(1.407886, 1), abs=1e-6)


def test_harrell_c_by_hand() -> None:
    # Comparable pairs: case 1 (t 2, event) with cases 2, 3, 4; case 3 (t 6, event) with case 4.
    # Case 1's risk 0.9 beats 0.5, 0.2, 0.2; case 3 ties case 4 (0.2): C = 3.5 / 4.
    c = stats.harrell_c([2, 4, 6, 8], [1, 0, 1, 1], [0.9, 0.5, 0.2, 0.2])
    assert c == pytest.approx(0.875)
    with pytest.raises(ValueError, match="no comparable pair"):
        stats.harrell_c([1, 2], [0, 0], [0.1, 0.2])


def test_icc_shrout_fleiss_published_example() -> None:
    # Shrout and Fleiss 1979, Table 2 (6 targets, 4 judges): ICC(2,1) = .29, ICC(3,1) = .71.
    ratings = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8],
                        [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]])
    assert stats.icc(ratings, "2,1") == pytest.approx(0.29, abs=0.005)
    assert stats.icc(ratings, "3,1") == pytest.approx(0.71, abs=0.005)
    assert stats.icc(np.ones((5, 2)), "3,1") == 0.0
    with pytest.raises(ValueError, match="form"):
        stats.icc(ratings, "1,1")


def test_wilson_interval() -> None:
    # 0 of 10: upper bound z^2 / (n + z^2) = 3.8415 / 13.8415 = 0.2775.
    zero = stats.wilson(0, 10)
    assert zero.low == pytest.approx(0.0, abs=1e-12)
    assert zero.high == pytest.approx(0.27753, abs=1e-5)
    half = stats.wilson(50, 100)
    assert (half.low, half.high) == pytest.approx((0.4038, 0.5962), abs=1e-4)


def test_sensitivity_specificity_and_youden() -> None:
    y = np.array([1, 1, 1, 0, 0, 0])
    p = np.array([0.9, 0.7, 0.4, 0.5, 0.2, 0.1])
    sens, spec = stats.sensitivity_specificity(y, p, 0.5)
    assert (sens.k, sens.n, spec.k, spec.n) == (2, 3, 2, 3)
    # J = 2/3 at 0.4 (sens 1, spec 2/3) and at 0.7 (sens 2/3, spec 1): the lower one is kept.
    assert stats.youden_threshold(y, p) == pytest.approx(0.4)


def test_decision_curve() -> None:
    y = np.array([1, 1, 0, 0])
    perfect = stats.decision_curve(y, y.astype(float), thresholds=np.array([0.2, 0.5]))
    assert perfect.model == pytest.approx([0.5, 0.5])  # net benefit = prevalence
    assert perfect.treat_all == pytest.approx([0.5 - 0.5 * 0.25, 0.0])
    assert perfect.treat_none == pytest.approx([0.0, 0.0])


def test_calibration_bins() -> None:
    y = np.array([0, 0, 1, 1] * 5)
    p = np.array([0.1, 0.2, 0.8, 0.9] * 5)
    predicted, observed = stats.calibration(y, p, bins=2)
    assert predicted == pytest.approx([0.15, 0.85])
    assert observed == pytest.approx([0.0, 1.0])
