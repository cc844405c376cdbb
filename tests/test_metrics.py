"""AUC / GAUC / logloss against scikit-learn and a hand-computed example."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from userlens.metrics import auc, evaluate_predictions, gauc, logloss, sigmoid


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_equals_sklearn_on_random_scores(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 5_000)
    s = rng.normal(size=5_000) + 0.7 * y
    assert abs(auc(y, s) - roc_auc_score(y, s)) < 1e-6


@pytest.mark.parametrize("decimals", [0, 1, 2])
def test_auc_equals_sklearn_on_heavily_tied_scores(decimals: int) -> None:
    rng = np.random.default_rng(decimals)
    y = rng.integers(0, 2, 20_000)
    s = np.round(rng.random(20_000) * 0.6 + 0.4 * y, decimals)  # 2 to ~100 distinct values
    assert len(np.unique(s)) < 150
    assert abs(auc(y, s) - roc_auc_score(y, s)) < 1e-6


def test_auc_known_values() -> None:
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5  # all tied
    # pairs (pos, neg): (0.8,0.3)=1 (0.8,0.8)=.5 (0.4,0.3)=1 (0.4,0.8)=0 -> 2.5/4
    assert auc([1, 0, 1, 0], [0.8, 0.3, 0.4, 0.8]) == pytest.approx(0.625)


def test_auc_is_nan_with_one_class() -> None:
    assert math.isnan(auc([1, 1, 1], [0.1, 0.5, 0.9]))
    assert math.isnan(auc([0, 0], [0.1, 0.5]))
    assert math.isnan(auc([], []))


def test_auc_accepts_float_and_bool_labels() -> None:
    s = np.array([0.2, 0.9, 0.4, 0.1])
    assert auc(np.array([0.0, 1.0, 1.0, 0.0], dtype=np.float32), s) == auc(np.array([False, True, True, False]), s) == 1


def test_gauc_by_hand() -> None:
    # user a: 4 impressions; pos {0.9, 0.3}, neg {0.5, 0.1}: pairs (0.9>0.5, 0.9>0.1, 0.3<0.5, 0.3>0.1) -> 3/4
    # user b: 2 impressions; pos 0.2 vs neg 0.2 -> a tie -> 1/2
    # user c: 3 impressions, all positive -> excluded; user d: 1 negative -> excluded
    # GAUC = (4 * 0.75 + 2 * 0.5) / (4 + 2) = 4 / 6
    users = ["a", "b", "a", "c", "a", "d", "c", "b", "a", "c"]
    labels = [1, 1, 0, 1, 1, 0, 1, 0, 0, 1]
    scores = [0.9, 0.2, 0.5, 0.7, 0.3, 0.4, 0.1, 0.2, 0.1, 0.6]
    assert gauc(labels, scores, users) == pytest.approx(4 / 6, abs=1e-12)


def test_gauc_is_nan_when_no_user_has_both_classes() -> None:
    assert math.isnan(gauc([1, 0, 1], [0.1, 0.2, 0.3], [1, 2, 3]))
    assert math.isnan(gauc([], [], []))


def _gauc_reference(y: np.ndarray, s: np.ndarray, users: np.ndarray) -> float:
    num = den = 0.0
    for u in np.unique(users):
        m = users == u
        if 0 < y[m].sum() < m.sum():
            num += m.sum() * roc_auc_score(y[m], s[m])
            den += m.sum()
    return num / den


@pytest.mark.parametrize("tied", [False, True])
def test_gauc_equals_a_per_user_sklearn_loop(tied: bool) -> None:
    rng = np.random.default_rng(7 + tied)
    n = 6_000
    users = rng.integers(0, 300, n) * 13 + 5  # non-contiguous ids
    y = (rng.random(n) < rng.random(300)[users % 300]).astype(int)
    s = rng.random(n) + 0.3 * y
    if tied:
        s = np.round(s, 1)
    assert abs(gauc(y, s, users) - _gauc_reference(y, s, users)) < 1e-9
    # per-user AUC ignores scores of other users: a per-user offset changes nothing
    assert abs(gauc(y, s + (users % 7), users) - gauc(y, s, users)) < 1e-9


def test_gauc_differs_from_auc_when_users_are_offset() -> None:
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(50), 20)
    y = rng.integers(0, 2, 1000)
    s = rng.random(1000) * 0.4 + 0.5 * y + users  # perfect within each user, dominated by the user across
    assert gauc(y, s, users) == 1.0
    assert auc(y, s) < 0.7


@pytest.mark.parametrize("seed", [0, 1])
def test_logloss_equals_sklearn_with_clipping(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 2_000)
    p = rng.random(2_000)
    p[:20] = 0.0  # would be infinite without clipping
    p[20:40] = 1.0
    want = log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1])
    assert abs(logloss(y, p) - want) < 1e-9
    assert np.isfinite(logloss(y, p))


def test_logloss_by_hand() -> None:
    assert logloss([1, 0], [0.8, 0.4]) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)


def test_evaluate_predictions_takes_logits() -> None:
    y, z, u = np.array([1, 0, 1, 0]), np.array([2.2, -1.4, -0.4, 0.4]), np.array([1, 1, 2, 2])
    out = evaluate_predictions(y, z, u)
    p = 1 / (1 + np.exp(-z))
    assert out == {"auc": auc(y, z), "gauc": gauc(y, z, u), "logloss": logloss(y, p), "n": 4}
    assert out["gauc"] == 0.5 and out["auc"] == 0.75
    assert out["logloss"] == pytest.approx(log_loss(y, p), abs=1e-12)


def test_saturated_float32_sigmoids_keep_distinct_ranks() -> None:
    """Logits 20 and 25 both have float32 sigmoid exactly 1.0; ranking the logits keeps them apart."""
    y = np.array([1, 0, 1, 0, 0, 1])
    z = np.array([25.0, 20.0, 30.0, -3.0, 18.0, -2.0], dtype=np.float32)
    p32 = 1 / (1 + np.exp(-z))  # float32
    assert p32[0] == p32[1] == p32[2] == p32[4] == 1.0
    assert auc(y, p32) != roc_auc_score(y, z)  # what ranking float32 probabilities used to give
    out = evaluate_predictions(y, z, np.zeros(6))
    assert out["auc"] == roc_auc_score(y, z) == out["gauc"]
    want = log_loss(y, np.clip(sigmoid(z), 1e-7, 1 - 1e-7))
    assert out["logloss"] == pytest.approx(want, abs=1e-12)


def test_sigmoid_is_float64_and_never_overflows() -> None:
    z = np.array([-1000.0, -40.0, -1.0, 0.0, 1.0, 40.0, 1000.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
        p = sigmoid(z)
    assert p.dtype == np.float64
    np.testing.assert_allclose(p[1:-1], 1 / (1 + np.exp(-z[1:-1])), rtol=1e-15)
    assert p[0] == 0.0 and p[-1] == 1.0 and 0 < p[1] < 1e-17
    np.testing.assert_allclose(p + sigmoid(-z), 1.0, rtol=1e-15)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_scores_raise(bad: float) -> None:
    y, u = np.array([1, 0, 1, 0]), np.array([1, 1, 2, 2])
    s = np.array([0.3, bad, 0.2, 0.1], dtype=np.float32)
    msg = r"contain 1 NaN/inf value\(s\) of 4 \(first at index 1: .*\).*Fix: the model diverged"
    with pytest.raises(ValueError, match="scores " + msg):
        auc(y, s)
    with pytest.raises(ValueError, match="scores " + msg):
        gauc(y, s, u)
    with pytest.raises(ValueError, match="probabilities " + msg):
        logloss(y, s)
    with pytest.raises(ValueError, match="logits " + msg):
        evaluate_predictions(y, s, u)


def test_auc_and_gauc_handle_millions_of_scores() -> None:
    rng = np.random.default_rng(0)
    n = 2_000_000
    y = rng.integers(0, 2, n).astype(np.int8)
    s = rng.random(n).astype(np.float32) + 0.5 * y
    a = auc(y, s)
    # both classes uniform on an interval of width 1, shifted by 0.5: AUC = 1 - 0.5**2 / 2 = 0.875
    assert abs(a - 0.875) < 2e-3
    g = gauc(y, s, rng.integers(0, 50_000, n))
    assert abs(g - 0.875) < 5e-3
