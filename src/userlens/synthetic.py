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
* :func:`lifelong_interest_log`: a click depends only on interests visible
  hundreds of behaviors back; the recent window is pure noise. Models that
  search the whole history (SIM, ETA, TWIN …) find the signal; a model that
  reads only the recent window (DIN) stays near AUC 0.5.
* :func:`interest_family_log`: a *family* of lifelong logs built differently from
  :func:`lifelong_interest_log` (skewed catalogues, Zipf-popular noise behaviors,
  few and early interest clicks, label noise), each member an :class:`InterestFamily`.
  The label depends only on interests clicked long ago; an oracle score comes with
  each impression, so a test can require "finds the signal where the oracle does".
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
    oracle: np.ndarray | None = None  # per impression row: the true rule's score (never written to files)

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


def lifelong_interest_log(
    n_users: int = 300,
    n_items: int = 4000,
    n_categories: int = 200,
    behaviors_per_user: int = 600,
    recent: int = 100,
    n_core: int = 3,
    core_share: float = 0.5,
    impressions_per_user: int = 40,
    noise: float = 0.02,
    split: tuple[float, float] = (0.1, 0.1),
    seed: int = 0,
) -> SyntheticLog:
    """A log whose label is "candidate category ∈ the user's core interests", visible only far back.

    Each user has ``n_core`` core categories. The first ``behaviors_per_user −
    recent`` behaviors are drawn from them with probability ``core_share`` (else
    uniformly from all categories); the last ``recent`` behaviors are uniform over
    all categories, so the recent window is independent of the label. Impressions
    fall after one of the recent behaviors (+30 s): half with a candidate from a
    core category (click), half from another category (no click); labels flip
    with probability ``noise``. A ``split`` column assigns whole **users** to
    valid/test at random with the given fractions: a model cannot pass by
    memorising a user's recent items, it must read the far history.
    """
    if recent >= behaviors_per_user:
        raise ValueError("recent must be smaller than behaviors_per_user: the signal lives before the recent window")
    rng = np.random.default_rng(seed)
    item_cat, items = _items(n_items, n_categories, rng)
    order = np.argsort(item_cat, kind="stable")
    starts = np.searchsorted(item_cat[order], np.arange(n_categories + 1))

    def draw(cats: np.ndarray) -> np.ndarray:  # one random item of each category
        span = starts[cats + 1] - starts[cats]
        return order[starts[cats] + (rng.random(len(cats)) * span).astype(np.int64)]

    T, far, m = behaviors_per_user, behaviors_per_user - recent, impressions_per_user
    core = np.stack([rng.choice(n_categories, size=n_core, replace=False) for _ in range(n_users)])  # (U, n_core)
    cats = rng.integers(0, n_categories, size=(n_users, T))
    use_core = rng.random((n_users, far)) < core_share
    cats[:, :far] = np.where(use_core, core[np.arange(n_users)[:, None], rng.integers(0, n_core, (n_users, far))],
                             cats[:, :far])
    times = T0 + np.arange(n_users)[:, None] * 7 + np.arange(T)[None, :] * 60
    behaviors = pl.DataFrame({"user_id": np.repeat(np.arange(n_users), T), "item_id": draw(cats.ravel()),
                              "timestamp": times.ravel()})
    iu = np.repeat(np.arange(n_users), m)
    k = rng.integers(far, T, size=n_users * m)  # the impression follows recent behavior k
    positive = rng.random(n_users * m) < 0.5
    core_pick = core[iu, rng.integers(0, n_core, size=len(iu))]
    other = rng.integers(0, n_categories - n_core, size=len(iu))
    # the (other)-th category that is not one of the user's core ones
    sorted_core = np.sort(core[iu], axis=1)
    for j in range(n_core):
        other = other + (other >= sorted_core[:, j])
    cand = np.where(positive, core_pick, other)
    label = positive.astype(np.int8)
    flip = rng.random(len(iu)) < noise
    label[flip] = 1 - label[flip]
    r = rng.random(n_users)[iu]
    sp = np.where(r < split[0], "valid", np.where(r < split[0] + split[1], "test", "train"))
    impressions = pl.DataFrame({"user_id": iu, "item_id": draw(cand), "timestamp": times[iu, k] + 30,
                                "label": label, "split": sp})
    return SyntheticLog(behaviors, impressions, items)


@dataclass(frozen=True)
class InterestFamily:
    """One member of the lifelong-interest family (:func:`interest_family_log`).

    Each user clicks ``interest_clicks`` items of their ``n_interests`` interest
    categories, at random positions inside the oldest ``interest_span`` share of a
    history of ``interest_clicks + noise_len`` behaviors; every other behavior is
    noise: an item drawn by global Zipf popularity (``noise_popularity``, 0 =
    uniform) whatever the user. Category sizes follow Zipf(``category_skew``)
    (0 = equal). Impressions come after the whole history: half a random item of
    an interest category (click), half one of another category (no click), labels
    flipped with probability ``label_noise``; users are split into train / valid /
    test (10% / 10%), so nothing can be memorised per user.
    """

    name: str
    n_users: int = 400
    n_items: int = 5000
    n_categories: int = 200
    category_skew: float = 0.0
    n_interests: int = 3
    interest_clicks: int = 20
    interest_span: float = 0.3
    noise_len: int = 400
    noise_popularity: float = 1.0
    impressions_per_user: int = 30
    label_noise: float = 0.05


#: Members used by the robustness tests and benchmarks: catalogue, category shape, how many and how early
#: the interest clicks are, noise length and structure, label noise all differ from ``lifelong_interest_log``.
#: Each has enough users for ~50-100 steps per epoch at the default batch of 512 (a few hundred users, i.e.
#: ~20 steps, leaves a model with default settings ~40 updates before early stopping, which measures
#: patience, not whether it finds the signal); generating and preparing one takes about a second.
#: The oracle's test AUC is ~0.95-0.98 except ``noisy-labels`` (~0.88, on purpose).
FAMILY: tuple[InterestFamily, ...] = (
    InterestFamily("few-early-clicks", n_users=2000, n_items=20_000, n_categories=1000, category_skew=1.0,
                   n_interests=4, interest_clicks=16, interest_span=0.2, noise_len=800, noise_popularity=1.1),
    InterestFamily("small-catalogue", n_users=1200, n_items=1500, n_categories=30, n_interests=2, interest_clicks=40,
                   interest_span=0.5, noise_len=300, noise_popularity=0.0, label_noise=0.02),
    InterestFamily("long-noise", n_users=1000, n_items=8000, n_categories=300, category_skew=0.5, interest_clicks=24,
                   interest_span=0.1, noise_len=2000, noise_popularity=0.8),
    InterestFamily("noisy-labels", n_users=1500, n_items=5000, n_categories=150, interest_clicks=30,
                   interest_span=0.4, noise_len=500, label_noise=0.12),
    # few training samples per item (60k items, ~36k training impressions) and long noise: the id embeddings a
    # learned GSU ranks by see each item a handful of times
    InterestFamily("sparse-items", n_users=1500, n_items=60_000, n_categories=600, category_skew=0.6,
                   interest_clicks=20, interest_span=0.3, noise_len=1500, noise_popularity=0.6),
    InterestFamily("very-long-noise", n_users=800, n_items=20_000, n_categories=400, category_skew=0.3,
                   interest_clicks=24, interest_span=0.15, noise_len=5000, noise_popularity=0.9),
)

#: Held out: members no default was tuned on (defined before tuning, evaluated once at the end, published as
#: such); a reviewer's own unseen members play the same role
HELD_OUT: tuple[InterestFamily, ...] = (
    InterestFamily("held-out-many-interests", n_users=1800, n_items=40_000, n_categories=800, category_skew=0.9,
                   n_interests=5, interest_clicks=30, interest_span=0.25, noise_len=2500, noise_popularity=0.7,
                   label_noise=0.03),
    InterestFamily("held-out-huge-catalogue", n_users=1000, n_items=100_000, n_categories=300, category_skew=0.2,
                   n_interests=2, interest_clicks=14, interest_span=0.4, noise_len=1200, noise_popularity=1.2),
)


def interest_family_log(member: InterestFamily, seed: int = 0) -> SyntheticLog:
    """The log of one :class:`InterestFamily` member; ``oracle`` = 1 where the candidate's category is an interest."""
    m, rng = member, np.random.default_rng(seed)
    sizes = (np.arange(1, m.n_categories + 1, dtype=np.float64) ** -m.category_skew)
    item_cat = np.concatenate([np.arange(m.n_categories),  # every category has at least one item
                               rng.choice(m.n_categories, size=m.n_items - m.n_categories, p=sizes / sizes.sum())])
    rng.shuffle(item_cat)
    items = pl.DataFrame({"item_id": np.arange(m.n_items), "category": [f"c{c}" for c in item_cat]})
    order = np.argsort(item_cat, kind="stable")
    starts = np.searchsorted(item_cat[order], np.arange(m.n_categories + 1))

    def draw(cats: np.ndarray) -> np.ndarray:  # one random item of each category
        span = starts[cats + 1] - starts[cats]
        return order[starts[cats] + (rng.random(len(cats)) * span).astype(np.int64)]

    pop = np.arange(1, m.n_items + 1, dtype=np.float64) ** -m.noise_popularity
    pop_items = rng.permutation(m.n_items)  # which items are popular is unrelated to their category
    T = m.interest_clicks + m.noise_len
    far = max(int(T * m.interest_span), m.interest_clicks)
    interests = np.stack([rng.choice(m.n_categories, size=m.n_interests, replace=False) for _ in range(m.n_users)])
    hist = pop_items[rng.choice(m.n_items, size=(m.n_users, T), p=pop / pop.sum())]
    for u in range(m.n_users):  # the interest clicks replace noise at random positions of the oldest `far`
        at = rng.choice(far, size=m.interest_clicks, replace=False)
        hist[u, at] = draw(interests[u, rng.integers(0, m.n_interests, size=m.interest_clicks)])
    times = T0 + np.arange(m.n_users)[:, None] * 11 + np.arange(T)[None, :] * 60
    behaviors = pl.DataFrame({"user_id": np.repeat(np.arange(m.n_users), T), "item_id": hist.ravel(),
                              "timestamp": times.ravel()})
    n_imp = m.impressions_per_user
    iu = np.repeat(np.arange(m.n_users), n_imp)
    positive = rng.random(len(iu)) < 0.5
    other = rng.integers(0, m.n_categories - m.n_interests, size=len(iu))
    for j in range(m.n_interests):  # the (other)-th category that is not an interest of the user
        other = other + (other >= np.sort(interests[iu], axis=1)[:, j])
    cand_cat = np.where(positive, interests[iu, rng.integers(0, m.n_interests, size=len(iu))], other)
    label = positive.astype(np.int8)
    flip = rng.random(len(iu)) < m.label_noise
    label[flip] = 1 - label[flip]
    r = rng.random(m.n_users)[iu]
    split = np.where(r < 0.1, "valid", np.where(r < 0.2, "test", "train"))
    impressions = pl.DataFrame({"user_id": iu, "item_id": draw(cand_cat),
                                "timestamp": times[iu, -1] + 30 + np.tile(np.arange(n_imp), m.n_users),
                                "label": label, "split": split})
    return SyntheticLog(behaviors, impressions, items, oracle=positive.astype(np.float64))
