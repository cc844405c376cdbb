"""Counting features: what production CTR models read beside the ids, computed strictly before each sample.

Frozen id embeddings cannot know how popular an item is *now*, or that this user
has bought it three times: zero-parameter baselines that read such counts
(``popularity``, ``history_match``) beat learned models that do not see them
(``benchmarks/RESULTS.md``). These features give every model the same counts,
leak-free by construction: each one is a binary search for "behaviors strictly
before the sample's time" (or strictly before its history cutoff), the same rule
every history follows, so a later event can never change a sample's features.

============== ================================================================
name           value (then bucketed, see :func:`count_bucket` / :func:`gap_bucket`)
============== ================================================================
item_1h        behaviors on the target item, by anyone, in ``[t − 1 h, t)``
item_1d        … in ``[t − 1 d, t)``
item_7d        … in ``[t − 7 d, t)``
item_all       … ever before ``t``
user_item      the user's behaviors on the target item in its history window
user_category  the user's behaviors of the target's category in its history window
since_item     time since the user's last behavior on the target item (``never``)
since_category time since the user's last behavior of its category (``never``)
============== ================================================================

The user's *history window* is the range the lifelong models search: the
``long_len`` most recent behaviors strictly before the sample (offline, the
:class:`~userlens.batch.LongHistory` range ``[lo, hi)``; online, the same range
of the stored history). Items and categories 0 (padding) and 1 (unknown) match
nothing: two unknown items are not the same item.

Computed at batch time (offline by the loader, online by the scorer) by the same
function, :func:`count_features`, over indexes built once per dataset; nothing is
stored per sample, so ``long_len`` and the serving store's cap give identical
values offline and online.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from userlens.batch import COUNT_BUCKETS
from userlens.data.sampling import ItemCounts

#: item popularity windows (name → milliseconds; None = all time before t)
ITEM_WINDOWS: dict[str, int | None] = {"item_1h": 3_600_000, "item_1d": 86_400_000, "item_7d": 7 * 86_400_000,
                                       "item_all": None}
USER_COUNTS = ("user_item", "user_category")
USER_GAPS = ("since_item", "since_category")
#: every counting feature, in the order models concatenate their embeddings
COUNT_FEATURES: tuple[str, ...] = (*ITEM_WINDOWS, *USER_COUNTS, *USER_GAPS)
NEVER = COUNT_BUCKETS - 1
#: shorthands for the ``count_features`` training key
COUNT_GROUPS: dict[str, tuple[str, ...]] = {"all": COUNT_FEATURES, "item": tuple(ITEM_WINDOWS),
                                            "user": (*USER_COUNTS, *USER_GAPS)}


def resolve_count_features(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Feature names and group shorthands (``all``, ``item``, ``user``) → feature names in canonical order.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    wanted: set[str] = set()
    for name in names:
        if name in COUNT_GROUPS:
            wanted.update(COUNT_GROUPS[name])
        elif name in COUNT_FEATURES:
            wanted.add(name)
        else:
            raise ValueError(f"unknown counting feature {name!r}; known: {', '.join(COUNT_GROUPS)} (groups) or "
                             f"{', '.join(COUNT_FEATURES)}")
    return tuple(f for f in COUNT_FEATURES if f in wanted)


def count_bucket(count: np.ndarray) -> np.ndarray:
    """``1 + floor(log2(1 + count))``, capped at 23: 0 → 1, 1–2 → 2, 3–6 → 3, 7–14 → 4 …; int64."""
    _, exponent = np.frexp(1.0 + np.asarray(count, dtype=np.float64))
    return np.clip(exponent, 1, NEVER - 1).astype(np.int64)


def gap_bucket(gap_ms: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Log2-minute buckets of a time gap (as the lifelong models' time-gap embedding); ``NEVER`` where not seen."""
    minutes = np.maximum(np.asarray(gap_ms, dtype=np.int64), 0) / 60_000.0
    return np.where(seen, count_bucket(minutes), NEVER).astype(np.int64)


def item_counts_from_csr(offsets: np.ndarray, times: np.ndarray) -> ItemCounts:
    """:class:`~userlens.data.sampling.ItemCounts` over CSR item times (a serving package's ``items/counts.npy``:
    ``times[offsets[i]:offsets[i + 1]]`` are item ``i``'s behavior times), so a request counts as training did.

    Example:
        >>> c = item_counts_from_csr(np.array([0, 0, 2, 3]), np.array([10, 20, 5]))  # item 1: t=10, 20; item 2: t=5
        >>> c.before(np.array([1, 1, 2, 0]), np.array([20, 21, 5, 9])).tolist()
        [1, 2, 0, 0]
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    return ItemCounts(np.repeat(np.arange(len(offsets) - 1), np.diff(offsets)), np.asarray(times, dtype=np.int64))


class PositionIndex:
    """Timeline positions grouped by a key column (item or category): "how many, and the last, in [lo, hi)".

    One int64 key per behavior, ``key · N + position`` (``N`` = timeline length),
    sorted once; a batch query is two ``searchsorted`` calls, whatever the
    history lengths. Memory: 8 bytes per behavior.

    Example:
        >>> idx = PositionIndex(np.array([7, 3, 7, 7]))
        >>> n, last = idx.count_last(np.array([7, 7, 3]), np.array([0, 1, 2]), np.array([4, 3, 4]))
        >>> n.tolist(), last.tolist()
        ([3, 1, 0], [3, 2, -1])
    """

    def __init__(self, keys: np.ndarray) -> None:
        keys = np.asarray(keys, dtype=np.int64)
        self.n = len(keys)
        top = int(keys.max()) + 1 if self.n else 1
        if top * (self.n + 1) >= 2**63:
            raise ValueError(f"{top:,} keys × {self.n:,} behaviors overflow the int64 (key, position) index")
        self.sorted = np.sort(keys * (self.n + 1) + np.arange(self.n, dtype=np.int64))

    def count_last(self, key: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(count, last)`` of ``key[b]`` in positions ``[lo[b], hi[b])``; ``last`` = -1 where the count is 0."""
        base = np.asarray(key, dtype=np.int64) * (self.n + 1)
        a = np.searchsorted(self.sorted, base + np.asarray(lo, dtype=np.int64))
        b = np.searchsorted(self.sorted, base + np.asarray(hi, dtype=np.int64))
        count = (b - a).astype(np.int64)
        last = np.where(count > 0, self.sorted[np.maximum(b - 1, 0)] - base if self.n else -1, -1)
        return count, last.astype(np.int64)


class UserIndexes:
    """The two :class:`PositionIndex` of a timeline (by item, by category), built once and shared."""

    def __init__(self, item: np.ndarray, category: np.ndarray, time: np.ndarray) -> None:
        self.time = np.asarray(time, dtype=np.int64)
        self.by_item: Any = PositionIndex(item)
        self.by_category: Any = PositionIndex(category)

    @classmethod
    def of(cls, by_item: Any, by_category: Any, time: np.ndarray) -> UserIndexes:
        """Indexes already built (a serving window's sliding ones: anything with ``count_last``)."""
        out = cls.__new__(cls)
        out.time, out.by_item, out.by_category = np.asarray(time, dtype=np.int64), by_item, by_category
        return out


def count_features(items: ItemCounts, users: UserIndexes, item: np.ndarray, category: np.ndarray,
                   lo: np.ndarray, hi: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
    """Every :data:`COUNT_FEATURES` bucket of a batch: name → ``(B,)`` int64 in ``[1, COUNT_BUCKETS)``.

    Args:
        items: item behavior counts before a time (all users).
        users: the timeline's item / category position indexes.
        item, category: ``(B,)`` target item and category indices.
        lo, hi: ``(B,)`` the sample's history window in the timeline (``hi`` = cutoff, strictly before ``t``).
        t: ``(B,)`` sample times, epoch ms.
    """
    item = np.asarray(item, dtype=np.int64)
    category = np.asarray(category, dtype=np.int64)
    t = np.asarray(t, dtype=np.int64)
    out: dict[str, np.ndarray] = {}
    known_item = item >= 2
    now = items.before(item, t)
    for name, window in ITEM_WINDOWS.items():
        n = now if window is None else now - items.before(item, t - window)
        out[name] = count_bucket(np.where(known_item, n, 0))
    for name, gap, index, key, known in (
            ("user_item", "since_item", users.by_item, item, known_item),
            ("user_category", "since_category", users.by_category, category, category >= 2)):
        n, last = index.count_last(np.where(known, key, 0), lo, hi)
        n = np.where(known, n, 0)
        out[name] = count_bucket(n)
        out[gap] = gap_bucket(t - users.time[np.maximum(last, 0)] if users.time.size else t, n > 0)
    return {name: out[name] for name in COUNT_FEATURES}
