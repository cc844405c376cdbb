"""Generated behavior logs with known answers, for the demo, tests and benchmarks.

* :func:`planted_interest_log`: a click depends only on whether the candidate's
  category occurs among the user's ``window`` most recent behaviors. Interests
  drift in blocks, so the whole-history mix of a user says little: a model
  that attends to the candidate (DIN) finds the signal; a model that averages
  the history (avgpool) mostly misses it.
* :func:`leakage_log`: labels are coin flips, but every click is *also* logged
  as a behavior at the impression's own timestamp. A pipeline that lets that
  behavior (or any later one) into the history scores near AUC 1; a correct one
  stays near 0.5.
* :func:`long_history_log`: many behaviors per user (prepare benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

T0 = 1_600_000_000  # 2020-09-13, epoch seconds


@dataclass
class SyntheticLog:
    behaviors: pl.DataFrame
    impressions: pl.DataFrame | None
    items: pl.DataFrame

    def write(self, directory: str | Path) -> dict[str, Path]:
        """Write ``behaviors``/``impressions``/``items`` Parquet files; returns their paths."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        paths = {"behaviors": d / "behaviors.parquet", "items": d / "items.parquet"}
        self.behaviors.write_parquet(paths["behaviors"])
        self.items.write_parquet(paths["items"])
        if self.impressions is not None:
            paths["impressions"] = d / "impressions.parquet"
            self.impressions.write_parquet(paths["impressions"])
        return paths


def _items(n_items: int, n_categories: int, rng: np.random.Generator) -> tuple[np.ndarray, pl.DataFrame]:
    cat = rng.integers(0, n_categories, size=n_items)
    cat[:n_categories] = np.arange(n_categories)  # every category has at least one item
    return cat, pl.DataFrame({"item_id": np.arange(n_items), "category": [f"c{c}" for c in cat]})


def planted_interest_log(
    n_users: int = 300,
    n_items: int = 3000,
    n_categories: int = 100,
    behaviors_per_user: int = 200,
    window: int = 20,
    block: int = 10,
    impressions_per_user: int = 40,
    noise: float = 0.05,
    seed: int = 0,
) -> SyntheticLog:
    """A log whose label is "candidate category ∈ categories of the last ``window`` behaviors".

    Each user moves through interest blocks of ``block`` behaviors, each block
    drawn from one category. Impressions fall between behaviors (at +30 s), half
    with a candidate from a recent category; labels flip with prob ``noise``.
    """
    rng = np.random.default_rng(seed)
    item_cat, items = _items(n_items, n_categories, rng)
    by_cat = [np.flatnonzero(item_cat == c) for c in range(n_categories)]
    T = behaviors_per_user
    n_blocks = -(-T // block)
    b_user, b_item, b_time, i_user, i_item, i_time, i_label = [], [], [], [], [], [], []
    for u in range(n_users):
        block_cat = rng.integers(0, n_categories, size=n_blocks)
        cats = np.repeat(block_cat, block)[:T]
        its = np.array([by_cat[c][rng.integers(len(by_cat[c]))] for c in cats])
        times = T0 + u * 7 + np.arange(T) * 60
        b_user.append(np.full(T, u))
        b_item.append(its)
        b_time.append(times)
        # impressions after behavior k (k >= window), at time[k] + 30 s: history = behaviors 0..k
        ks = rng.choice(np.arange(window - 1, T), size=min(impressions_per_user, T - window + 1), replace=False)
        for k in ks:
            recent = set(cats[k - window + 1 : k + 1].tolist())
            if rng.random() < 0.5:
                c = rng.choice(sorted(recent))
            else:
                others = np.setdiff1d(np.arange(n_categories), sorted(recent))
                c = rng.choice(others)
            label = int(c in recent)
            if rng.random() < noise:
                label = 1 - label
            i_user.append(u)
            i_item.append(by_cat[c][rng.integers(len(by_cat[c]))])
            i_time.append(times[k] + 30)
            i_label.append(label)
    behaviors = pl.DataFrame({
        "user_id": np.concatenate(b_user), "item_id": np.concatenate(b_item), "timestamp": np.concatenate(b_time),
    })
    impressions = pl.DataFrame({"user_id": i_user, "item_id": i_item, "timestamp": i_time, "label": i_label},
                               schema={"user_id": pl.Int64, "item_id": pl.Int64, "timestamp": pl.Int64,
                                       "label": pl.Int8})
    return SyntheticLog(behaviors, impressions, items)


def leakage_log(
    n_users: int = 200,
    n_items: int = 500,
    n_categories: int = 20,
    behaviors_per_user: int = 40,
    impressions_per_user: int = 30,
    seed: int = 0,
) -> SyntheticLog:
    """Random labels; each click is also a behavior at the impression's own time (the leak to avoid)."""
    rng = np.random.default_rng(seed)
    _, items = _items(n_items, n_categories, rng)
    T, m = behaviors_per_user, impressions_per_user
    bu = np.repeat(np.arange(n_users), T)
    bt = T0 + rng.integers(0, 86_400 * 30, size=n_users * T)
    bi = rng.integers(0, n_items, size=n_users * T)
    iu = np.repeat(np.arange(n_users), m)
    it = T0 + rng.integers(86_400, 86_400 * 31, size=n_users * m)
    ii = rng.integers(0, n_items, size=n_users * m)
    lab = rng.integers(0, 2, size=n_users * m).astype(np.int8)
    clicked = lab == 1
    behaviors = pl.DataFrame({
        "user_id": np.concatenate([bu, iu[clicked]]),
        "item_id": np.concatenate([bi, ii[clicked]]),
        "timestamp": np.concatenate([bt, it[clicked]]),
    })
    impressions = pl.DataFrame({"user_id": iu, "item_id": ii, "timestamp": it, "label": lab})
    return SyntheticLog(behaviors, impressions, items)


def long_history_log(n_users: int, behaviors_per_user: int, n_items: int, n_categories: int = 1000,
                     seed: int = 0) -> SyntheticLog:
    """``n_users × behaviors_per_user`` random behaviors (one per minute per user), no impressions."""
    rng = np.random.default_rng(seed)
    n = n_users * behaviors_per_user
    cat = rng.integers(0, n_categories, size=n_items)
    items = pl.DataFrame({"item_id": np.arange(n_items), "category": cat})
    behaviors = pl.DataFrame({
        "user_id": np.repeat(np.arange(n_users, dtype=np.int64), behaviors_per_user),
        "item_id": rng.integers(0, n_items, size=n),
        "timestamp": T0 + np.tile(np.arange(behaviors_per_user, dtype=np.int64) * 60, n_users),
    })
    return SyntheticLog(behaviors, None, items)
