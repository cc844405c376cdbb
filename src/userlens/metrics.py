"""Evaluation metrics: AUC, GAUC, logloss, vectorised for millions of predictions.

* **AUC** is the Mann–Whitney statistic with average ranks for ties, equal to
  scikit-learn's ``roc_auc_score`` (a test pins 1e-6 agreement).
* **GAUC** (DIN, KDD 2018 §5.2; MUSE uses the same) is the impression-weighted
  mean of per-user AUC over users that have both a positive and a negative:
  ``Σ_u n_u · AUC_u / Σ_u n_u``, where ``n_u`` is the user's number of samples.
* **logloss** is binary cross-entropy with probabilities clipped to [1e-7, 1 − 1e-7].

AUC and GAUC depend only on the order of the scores, so pass **logits**: a
float32 sigmoid rounds every logit above ~17 to exactly 1.0 and would turn
distinct scores into ties. :func:`evaluate_predictions` takes logits and derives
probabilities in float64 for the logloss. Every metric raises ``ValueError`` on a
NaN or infinite score: a diverged model must not get a finite AUC.
"""

from __future__ import annotations

import numpy as np


def _finite(scores: np.ndarray | list, what: str) -> np.ndarray:
    """``scores`` as float64, or a ValueError naming how many are NaN/inf and where the first is."""
    s = np.asarray(scores, dtype=np.float64)
    bad = ~np.isfinite(s)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{what} contain {int(bad.sum())} NaN/inf value(s) of {len(s)} (first at index {first}: {s[first]}); "
            "metrics of non-finite scores are meaningless. Fix: the model diverged or overflowed, e.g. lower `lr`."
        )
    return s


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Float64 probabilities of ``logits`` without overflow warnings (``1 / (1 + e^-x)``)."""
    x = np.asarray(logits, dtype=np.float64)
    e = np.exp(-np.abs(x))  # in (0, 1]: never overflows
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _average_ranks(scores: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """1-based ranks of ``scores`` within each group, ties getting their average rank."""
    n = len(scores)
    if groups is None:
        order = np.argsort(scores, kind="mergesort")
        g_sorted = np.zeros(n, dtype=np.int64)
    else:
        order = np.lexsort((scores, groups))
        g_sorted = groups[order]
    s_sorted = scores[order]
    new_group = np.empty(n, dtype=bool)
    new_group[0] = True
    new_group[1:] = g_sorted[1:] != g_sorted[:-1]
    new_tie = new_group.copy()
    new_tie[1:] |= s_sorted[1:] != s_sorted[:-1]
    pos = np.arange(n, dtype=np.float64)
    group_start = np.maximum.accumulate(np.where(new_group, pos, 0))
    tie_id = np.cumsum(new_tie) - 1
    tie_first = pos[new_tie]
    tie_count = np.bincount(tie_id)
    # average of 1-based within-group ranks (first - start + 1) .. (first - start + count)
    avg = tie_first[tie_id] - group_start + (tie_count[tie_id] + 1) / 2.0
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = avg
    return ranks


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of any monotone scores (logits preferred); NaN when only one class is present.

    Raises:
        ValueError: a score is NaN or infinite.
    """
    y = np.asarray(labels).astype(bool)
    s = _finite(scores, "scores")
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _average_ranks(s)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def gauc(labels: np.ndarray, scores: np.ndarray, users: np.ndarray) -> float:
    """Impression-weighted mean of per-user AUC over users having both labels; NaN if none has.

    Raises:
        ValueError: a score is NaN or infinite.
    """
    y = np.asarray(labels).astype(bool)
    s = _finite(scores, "scores")
    _, g = np.unique(np.asarray(users), return_inverse=True)
    if len(y) == 0:
        return float("nan")
    r = _average_ranks(s, g)
    n = np.bincount(g).astype(np.float64)
    n_pos = np.bincount(g, weights=y.astype(np.float64))
    n_neg = n - n_pos
    rank_sum_pos = np.bincount(g, weights=np.where(y, r, 0.0))
    ok = (n_pos > 0) & (n_neg > 0)
    if not ok.any():
        return float("nan")
    per_user = (rank_sum_pos[ok] - n_pos[ok] * (n_pos[ok] + 1) / 2.0) / (n_pos[ok] * n_neg[ok])
    return float(np.sum(per_user * n[ok]) / np.sum(n[ok]))


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities (not logits), clipped to ``[eps, 1 − eps]``.

    Raises:
        ValueError: a probability is NaN or infinite.
    """
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(_finite(probs, "probabilities"), eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def evaluate_predictions(labels: np.ndarray, logits: np.ndarray, users: np.ndarray) -> dict[str, float]:
    """``{"auc", "gauc", "logloss", "n"}`` of **logits** (ranks on the logits, logloss on their float64 sigmoid).

    Example:
        >>> evaluate_predictions([1, 0], [30.0, 25.0], [7, 7])["auc"]  # float32 sigmoids would tie at 1.0
        1.0

    Raises:
        ValueError: a logit is NaN or infinite.
    """
    s = _finite(logits, "logits")
    return {"auc": auc(labels, s), "gauc": gauc(labels, s, users),
            "logloss": logloss(labels, sigmoid(s)), "n": int(len(s))}
