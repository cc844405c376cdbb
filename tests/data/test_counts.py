"""Counting features against a brute-force reference, and the no-leakage rule (nothing at or after t counts)."""

from __future__ import annotations

import numpy as np
import pytest

from userlens.data.counts import (COUNT_FEATURES, ITEM_WINDOWS, NEVER, PositionIndex, item_counts_from_csr, UserIndexes,
                                  count_bucket, count_features, gap_bucket)
from userlens.data.sampling import ItemCounts

HOUR = 3_600_000


def _timeline(rng: np.random.Generator, n: int = 400) -> dict[str, np.ndarray]:
    """Three users' behaviors (grouped by user, time-sorted within), few items so repeats and ties happen."""
    user = np.sort(rng.integers(0, 3, size=n))
    time = np.concatenate([np.sort(rng.integers(0, 20 * 24, size=(user == u).sum())) for u in range(3)]) * HOUR
    item = rng.integers(0, 12, size=n)  # 0 / 1 (padding / unknown) included: they must match nothing
    return {"user": user, "item": item, "category": item % 5, "time": time}


def _brute(tl: dict[str, np.ndarray], item: int, cat: int, lo: int, hi: int, t: int) -> dict[str, int]:
    """Every feature by scanning, straight from the definitions in the module docstring."""
    out = {}
    for name, w in ITEM_WINDOWS.items():
        start = -np.inf if w is None else t - w
        n = int(((tl["item"] == item) & (tl["time"] < t) & (tl["time"] >= start)).sum()) if item >= 2 else 0
        out[name] = int(count_bucket(np.array([n]))[0])
    for name, gap, col, key in (("user_item", "since_item", "item", item),
                                ("user_category", "since_category", "category", cat)):
        hits = np.flatnonzero(tl[col][lo:hi] == key) + lo if key >= 2 else np.zeros(0, dtype=np.int64)
        out[name] = int(count_bucket(np.array([len(hits)]))[0])
        out[gap] = int(gap_bucket(np.array([t - tl["time"][hits[-1]] if len(hits) else 0]),
                                  np.array([len(hits) > 0]))[0])
    return out


def test_count_features_equal_a_brute_force_scan() -> None:
    rng = np.random.default_rng(0)
    tl = _timeline(rng)
    starts = np.searchsorted(tl["user"], np.arange(4))
    users = UserIndexes(tl["item"], tl["category"], tl["time"])
    order = np.lexsort((tl["time"], tl["item"]))
    offsets = np.searchsorted(tl["item"][order], np.arange(13))
    for items in (ItemCounts(tl["item"], tl["time"]), item_counts_from_csr(offsets, tl["time"][order])):  # offline, online
        b = 300
        u = rng.integers(0, 3, size=b)
        t = rng.integers(0, 21 * 24, size=b) * HOUR + rng.choice([0, 1], size=b)  # on and just after behavior times
        hi = np.array([starts[x] + np.searchsorted(tl["time"][starts[x]:starts[x + 1]], tt) for x, tt in zip(u, t)])
        lo = np.maximum(starts[u], hi - rng.integers(1, 60, size=b))  # a history window shorter than the history
        item = rng.integers(0, 14, size=b)  # 12, 13: items nobody touched
        got = count_features(items, users, item, item % 5, lo, hi, t)
        assert list(got) == list(COUNT_FEATURES)
        for j in range(b):
            want = _brute(tl, int(item[j]), int(item[j] % 5), int(lo[j]), int(hi[j]), int(t[j]))
            assert {k: int(v[j]) for k, v in got.items()} == want, j


def test_nothing_at_or_after_the_sample_time_changes_its_features() -> None:
    """Deleting every behavior at or after t (of anyone) leaves a sample's features unchanged."""
    rng = np.random.default_rng(1)
    tl = _timeline(rng)
    t = int(np.median(tl["time"]))
    past = tl["time"] < t
    item, cat = np.arange(2, 12), np.arange(2, 12) % 5
    start = int(np.searchsorted(tl["user"], 1))
    hi_all = start + int(np.searchsorted(tl["time"][tl["user"] == 1], t))
    feats = []
    for keep in (np.ones(len(past), dtype=bool), past):
        sub = {k: v[keep] for k, v in tl.items()}
        s = int(np.searchsorted(sub["user"], 1))
        hi = s + int(np.searchsorted(sub["time"][sub["user"] == 1], t))
        assert hi - s == hi_all - start
        b = len(item)
        feats.append(count_features(ItemCounts(sub["item"], sub["time"]), UserIndexes(sub["item"], sub["category"],
                                    sub["time"]), item, cat, np.full(b, s), np.full(b, hi), np.full(b, t)))
    for k in COUNT_FEATURES:
        np.testing.assert_array_equal(feats[0][k], feats[1][k], err_msg=k)


def test_buckets_are_log2_and_never_is_its_own_bucket() -> None:
    assert count_bucket(np.array([0, 1, 2, 3, 4, 7, 8, 10**12])).tolist() == [1, 2, 2, 3, 3, 4, 4, NEVER - 1]
    assert gap_bucket(np.array([0, 60_000, 5 * 60_000, 0]), np.array([True, True, True, False])).tolist() == \
        [1, 2, 3, NEVER]


def test_position_index_refuses_keys_that_overflow() -> None:
    with pytest.raises(ValueError, match="overflow"):
        PositionIndex(np.array([2**62, 0, 1]))
