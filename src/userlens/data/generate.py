"""Generated logs in the layout of the public Taobao UserBehavior file, at any size, written in chunks.

``UserBehavior.csv`` has no header and five fields ``user_id,item_id,category_id,behavior_type,timestamp``
(epoch seconds), one user's rows together. This writer streams such a file of ``n_behaviors`` rows
without holding it in memory, so the out-of-core ``prepare`` can be measured at 100M–1B rows:

* users get Zipf-like activity (a few heavy users, a long tail), ids shuffled over ``[1, 2·users]``;
* items are drawn from a Zipf popularity (exponent ``alpha``) over ``n_items`` shuffled ids, each item
  with one fixed category among ``n_categories`` (Zipf too), as in the real file;
* behaviors are pv / cart / fav / buy at the real file's rates (89.5 / 5.5 / 2.9 / 2.1 %);
* times are uniform over ``days`` days from 2017-11-25, sorted within each user.

Deterministic in ``seed`` (and in the chunk size: chunks are generated from per-chunk seeds).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import polars as pl

START_S = 1_511_539_200  # 2017-11-25 00:00:00 UTC, the first day of the public file
BEHAVIORS = np.array(["pv", "cart", "fav", "buy"])
BEHAVIOR_P = np.array([0.895, 0.055, 0.029, 0.021])


def _zipf_weights(n: int, alpha: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** alpha
    return np.cumsum(w / w.sum())


def _draw(cdf: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), len(cdf) - 1)


def write_taobao_like(path: str | Path, n_behaviors: int, n_users: int, n_items: int, n_categories: int = 10_000,
                      days: int = 9, alpha: float = 1.0, seed: int = 0, chunk_users: int = 20_000) -> dict:
    """Write a headerless Taobao-layout CSV of about ``n_behaviors`` rows; returns its counts.

    Each user's count is ``n_behaviors / n_users`` scaled by a Zipf-like activity weight (at least 1),
    so the total is within a fraction of a percent of ``n_behaviors``.
    """
    rng = np.random.default_rng(seed)
    user_ids = rng.permutation(2 * n_users)[:n_users] + 1
    activity = rng.pareto(1.5, n_users) + 1.0
    per_user = np.maximum(np.round(activity / activity.sum() * n_behaviors), 1).astype(np.int64)
    item_ids = rng.permutation(5 * n_items)[:n_items] + 1
    item_cat = rng.permutation(3 * n_categories)[:n_categories][_draw(_zipf_weights(n_categories, 1.0), rng, n_items)] + 1
    item_cdf = _zipf_weights(n_items, alpha)
    span = days * 86_400
    written = 0
    out = Path(path)
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "wb") as fh:
        for c, lo in enumerate(range(0, n_users, chunk_users)):
            crng = np.random.default_rng([seed, c])
            counts = per_user[lo:lo + chunk_users]
            n = int(counts.sum())
            users = np.repeat(user_ids[lo:lo + chunk_users], counts)
            t = crng.integers(0, span, n)
            order = np.lexsort((t, np.repeat(np.arange(len(counts)), counts)))
            items = _draw(item_cdf, crng, n)
            beh = _draw(np.cumsum(BEHAVIOR_P), crng, n)
            pl.DataFrame({"u": users, "i": item_ids[items], "c": item_cat[items],
                          "b": pl.Series(BEHAVIORS.tolist())[beh], "t": START_S + t[order]}
                         ).write_csv(fh, include_header=False)
            written += n
    tmp.replace(out)
    return {"behaviors": written, "users": n_users, "items": n_items, "categories": n_categories, "days": days}


__all__ = ("write_taobao_like",)
