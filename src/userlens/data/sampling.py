"""Negative sampling for samples built from behaviors, leakage-free by construction (DESIGN §3).

A negative for the positive of user ``u`` at time ``t`` depends only on what was
known strictly before ``t``:

* it is drawn from items already seen (in anybody's behaviors) **before** ``t``;
* it is never an item ``u`` interacted with at or before ``t`` (the positive included);
* ``popularity`` weights an item by ``count^alpha`` of its behaviors **before** ``t``;
* ``category`` draws from the positive's category (hard negatives), else falls back
  to ``uniform`` (counted).

Random numbers are counter-based: draw ``j`` (attempt ``r``) of the positive at
rank ``p`` of user ``u`` uses ``hash(seed, hash(raw user id), p, j, r)``. So the
negatives of a sample do not change when later events (or other users) are
added or deleted, which :func:`tests.data.test_sampling` checks. Rejection is
vectorised over all samples per round; the rare samples still unresolved after
:data:`ROUNDS` rounds are drawn exactly from their enumerated candidate set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Sampler = Literal["uniform", "popularity", "category"]
SAMPLERS: tuple[str, ...] = ("uniform", "popularity", "category")
ROUNDS = 64  # vectorised rejection rounds before the exact per-sample fallback

_G = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def counter_state(*keys: np.ndarray | int, state: np.ndarray | None = None) -> np.ndarray:
    """The hash state after mixing in ``keys`` (from ``state``, else from zero): ``counter_uniform(a, b, c)`` ==
    ``uniform_of(counter_state(a, b), c)``, so keys shared by many draws (a sample's) are mixed in once."""
    arrays = np.broadcast_arrays(*(np.asarray(k).astype(np.uint64) for k in keys),
                                 *(() if state is None else (state,)))
    h = np.zeros(arrays[0].shape, dtype=np.uint64) if state is None else arrays[-1]
    with np.errstate(over="ignore"):
        for a in arrays[:len(keys)]:
            h = _mix(h + _G + a)
    return h


def uniform_of(state: np.ndarray, *keys: np.ndarray | int) -> np.ndarray:
    """A uniform float64 in [0, 1) per element of ``state`` with ``keys`` mixed in last."""
    h = counter_state(*keys, state=state)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def counter_uniform(*keys: np.ndarray | int) -> np.ndarray:
    """A uniform float64 in [0, 1) per element, a pure function of the (broadcast) integer keys."""
    return uniform_of(counter_state(*keys[:-1]), keys[-1]) if len(keys) > 1 else uniform_of(
        np.zeros(np.shape(keys[0]), dtype=np.uint64), keys[0])


def stable_id_hash(raw: list | np.ndarray) -> np.ndarray:
    """64-bit FNV-1a of each raw id's UTF-8 text (``7`` and ``"7"`` hash alike); stable across runs and versions.

    UTF-8 (ASCII ids hash as before): ``np.bytes_`` of a ``str`` encodes ASCII only, so "José" used to
    stop ``prepare`` with a UnicodeEncodeError.
    """
    text = np.array([str(v).encode("utf-8") for v in raw], dtype=np.bytes_)
    if text.size == 0:
        return np.zeros(0, dtype=np.uint64)
    width = text.dtype.itemsize
    codes = text.view(np.uint8).reshape(len(text), width)
    h = np.full(len(text), 0xCBF29CE484222325, dtype=np.uint64)
    prime = np.uint64(0x100000001B3)
    with np.errstate(over="ignore"):
        for c in range(width):
            byte = codes[:, c].astype(np.uint64)
            live = byte != 0  # fixed-width padding is NUL
            h = np.where(live, (h ^ byte) * prime, h)
    return h


@dataclass
class NegativeReport:
    """What sampling did, recorded in meta.json."""

    sampler: str
    alpha: float
    drawn: int = 0
    positives_without_negative: int = 0  # no item seen before t that the user had not touched
    category_fallbacks: int = 0  # category sampler fell back to uniform (no unseen item of that category)
    # negative draws still rejected after ROUNDS vectorised rounds, then settled by enumerating their allowed
    # items (same distribution, slower; none allowed: no negative); meta.json called it "exact_fallbacks" before
    draws_enumerated_after_rejections: int = 0
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"sampler": self.sampler, "alpha": self.alpha, "drawn": self.drawn,
                "positives_without_negative": self.positives_without_negative,
                "category_fallbacks": self.category_fallbacks, "rejection_rounds": ROUNDS,
                "draws_enumerated_after_rejections": self.draws_enumerated_after_rejections}

    @classmethod
    def from_json(cls, d: dict) -> NegativeReport:
        """The report as meta.json holds it; directories prepared before the rename say ``exact_fallbacks``."""
        enumerated = d.get("draws_enumerated_after_rejections", d.get("exact_fallbacks", 0))
        return cls(d["sampler"], d["alpha"], drawn=d.get("drawn", 0),
                   positives_without_negative=d.get("positives_without_negative", 0),
                   category_fallbacks=d.get("category_fallbacks", 0), draws_enumerated_after_rejections=enumerated)


class ItemCounts:
    """How often each item occurred in the timeline (any user) strictly before a given time.

    The timeline is grouped by user, not sorted by time; this index sorts it once by
    (item, time) into one int64 key per behavior, ``item · T + (time − t₀)`` (``T`` = the
    time span + 2), so a batch query is two ``searchsorted`` calls whatever the history
    sizes. Spans too wide for that key use dense time ranks instead (``T`` = number of
    distinct timestamps + 1). Memory: 8 bytes per behavior.

    Example:
        >>> c = ItemCounts(np.array([5, 5, 6, 5]), np.array([10, 30, 10, 20]))
        >>> c.before(np.array([5, 5, 6, 7]), np.array([20, 31, 10, 99])).tolist()
        [1, 3, 0, 0]
    """

    def __init__(self, item: np.ndarray, time: np.ndarray) -> None:
        time = np.asarray(time, dtype=np.int64)
        n_items = int(np.max(item)) + 1 if len(item) else 1
        self.t0 = int(time.min()) if len(time) else 0
        self.span = (int(time.max()) - self.t0 + 2) if len(time) else 2
        self.times: np.ndarray | None = None  # dense ranks: only when the span overflows the key
        if n_items * self.span >= 2**63:
            self.times, rank = np.unique(time, return_inverse=True)
            self.span = len(self.times) + 1
            offset = rank.reshape(-1)
        else:
            offset = time - self.t0
        if n_items * self.span >= 2**63:
            raise ValueError(f"{n_items} items × {self.span} timestamps overflow the int64 (item, time) keys")
        self.keys = np.asarray(item, dtype=np.int64) * self.span + offset
        self.keys.sort()

    def _offset(self, time: np.ndarray) -> np.ndarray:
        """Key offset of the first timestamp ``>= time`` (so keys below it are the times ``< time``)."""
        t = np.asarray(time, dtype=np.int64)
        if self.times is not None:
            return np.searchsorted(self.times, t, side="left")
        return np.clip(t - self.t0, 0, self.span - 1)

    def before(self, item: np.ndarray, time: np.ndarray) -> np.ndarray:
        """``(B,)`` int64: behaviors of ``item[b]`` with a timestamp ``< time[b]``."""
        base = np.asarray(item, dtype=np.int64) * self.span
        return (np.searchsorted(self.keys, base + self._offset(time))
                - np.searchsorted(self.keys, base)).astype(np.int64)


def _pick(pool: np.ndarray, start: np.ndarray | int, n: np.ndarray, u: np.ndarray) -> np.ndarray:
    """``pool[start + floor(u·n)]`` per element, ``-1`` where ``n == 0``."""
    if len(pool) == 0:
        return np.full(len(n), -1, dtype=np.int64)
    idx = np.asarray(start) + np.minimum((u * n).astype(np.int64), np.maximum(n - 1, 0))
    return np.where(n > 0, pool[np.clip(idx, 0, len(pool) - 1)], -1)


NEVER = np.iinfo(np.int64).max  # first time of an item never seen


def first_times(item: np.ndarray, time: np.ndarray, n_items: int, into: np.ndarray | None = None) -> np.ndarray:
    """``(n_items,)`` int64: each item's earliest behavior time (:data:`NEVER` if none), folded into ``into``.

    Called once per chunk of the timeline, it builds :class:`ItemPast`'s input without the whole timeline.
    """
    first = np.full(n_items, NEVER, dtype=np.int64) if into is None else into
    np.minimum.at(first, np.asarray(item, dtype=np.intp), np.asarray(time, dtype=np.int64))
    return first


class ItemPast:
    """What every sampler knows about items at a time ``t``: which were seen before it (by anyone), per
    category, and (popularity) the events before it. Global, item-level, built once; user-level facts live in
    :class:`NegativeSampler`, which may cover only a slice of the users (the out-of-core prepare).

    Args:
        first: ``(n_items,)`` earliest behavior time per item (:func:`first_times`).
        item_category: ``(n_items,)`` category index of every item (leakage-free item table).
        events: returns the whole timeline's ``(item, time)`` in timeline order; called once, only by the
            popularity sampler.
    """

    def __init__(self, first: np.ndarray, item_category: np.ndarray,
                 events: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None) -> None:
        self.item_category = np.asarray(item_category).astype(np.int64)
        self.n_items = len(self.item_category)
        seen = np.flatnonzero(first != NEVER)
        order = np.lexsort((seen, first[seen]))  # by first appearance; ties: item index (= raw-id order)
        self.by_first = seen[order]
        self.first_sorted = first[self.by_first]
        # the same per category, keyed (category, rank of the first time among all first times)
        self.firsts = np.unique(self.first_sorted)
        self.span = len(self.firsts) + 1
        first_rank = np.searchsorted(self.firsts, self.first_sorted)
        cat = self.item_category[self.by_first]
        corder = np.lexsort((first_rank, cat))
        self.cat_items = self.by_first[corder]
        self.cat_keys = cat[corder] * self.span + first_rank[corder]
        self._events = events
        self._popular: tuple[np.ndarray, np.ndarray, ItemCounts] | None = None

    @classmethod
    def from_timeline(cls, item: np.ndarray, time: np.ndarray, item_category: np.ndarray) -> ItemPast:
        return cls(first_times(item, time, len(item_category)), item_category, lambda: (item, time))

    def rank_of(self, t: np.ndarray) -> np.ndarray:
        """How many distinct first-appearance times lie strictly before each ``t``."""
        return np.searchsorted(self.firsts, t, side="left")

    def popular(self) -> tuple[np.ndarray, np.ndarray, ItemCounts]:
        """Events in time order (ties: timeline order) and the per-item counts; built on first use."""
        if self._popular is None:
            if self._events is None:
                raise ValueError("the popularity sampler needs the timeline's events")
            item, time = self._events()
            time = np.asarray(time, dtype=np.int64)
            order = np.argsort(time, kind="stable")
            self._popular = (time[order], np.asarray(item)[order].astype(np.int64), ItemCounts(item, time))
        return self._popular


class NegativeSampler:
    """Negatives for the positives of a set of users (all users, or a slice of them, user indices local).

    Args:
        offsets: (n_users + 1,) CSR offsets of these users' timeline (sorted by user, time, input order).
        item, time: their timeline item index and epoch ms.
        item_category: (n_items,) category index of every item; unused when ``past`` is given.
        user_hash: (n_users,) :func:`stable_id_hash` of each user's raw id.
        seed: sampling seed.
        past: the global :class:`ItemPast` (default: built from this timeline, which must then be all of it).
    """

    def __init__(self, offsets: np.ndarray, item: np.ndarray, time: np.ndarray, item_category: np.ndarray | None,
                 user_hash: np.ndarray, seed: int, past: ItemPast | None = None) -> None:
        self.offsets, self.item, self.time = offsets, item.astype(np.int64), time.astype(np.int64)
        self.past = past if past is not None else ItemPast.from_timeline(self.item, self.time, item_category)
        self.user_hash, self.seed = user_hash, seed
        self.n_items = self.past.n_items
        # (user, item) → time of the user's first interaction with the item (stable sort: the first occurrence
        # in timeline order is the earliest, since each user's rows are sorted by time)
        tl_user = np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))
        pair = tl_user * self.n_items + self.item
        keys, first = np.unique(pair, return_index=True)
        self.pair_keys, self.pair_first = keys, self.time[first]

    # ------------------------------------------------------------------ shared pieces

    def count_before(self, item: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Behaviors of ``item`` (by anyone) strictly before ``t``."""
        return self.past.popular()[2].before(item, t)

    def touched(self, user: np.ndarray, item: np.ndarray, t: np.ndarray) -> np.ndarray:
        """True where ``user`` interacted with ``item`` at or before ``t``."""
        if len(self.pair_keys) == 0:
            return np.zeros(len(user), dtype=bool)
        keys = user.astype(np.int64) * self.n_items + item
        pos = np.minimum(np.searchsorted(self.pair_keys, keys), len(self.pair_keys) - 1)
        return (self.pair_keys[pos] == keys) & (self.pair_first[pos] <= t)

    # ------------------------------------------------------------------ proposals: -1 = nothing to draw from

    def _uniform(self, t: np.ndarray, cat: np.ndarray, u1: np.ndarray, u2: np.ndarray, alpha: float) -> np.ndarray:
        p = self.past
        return _pick(p.by_first, 0, np.searchsorted(p.first_sorted, t, side="left"), u1)

    def _popularity(self, t: np.ndarray, cat: np.ndarray, u1: np.ndarray, u2: np.ndarray,
                    alpha: float) -> np.ndarray:
        # An event drawn uniformly among those before t picks item i with probability ∝ count_i;
        # accepting it with probability count_i^(alpha-1) leaves ∝ count_i^alpha (alpha in [0, 1]).
        ev_time, ev_item, _ = self.past.popular()
        item = _pick(ev_item, 0, np.searchsorted(ev_time, t, side="left"), u1)
        if alpha < 1.0:
            c = np.maximum(self.count_before(np.maximum(item, 0), t), 1).astype(np.float64)
            item = np.where((item < 0) | (u2 < c ** (alpha - 1.0)), item, -2)  # -2 = rejected, draw again
        return item

    def _category(self, t: np.ndarray, cat: np.ndarray, u1: np.ndarray, u2: np.ndarray, alpha: float) -> np.ndarray:
        p = self.past
        lo = np.searchsorted(p.cat_keys, cat * p.span)
        n = np.searchsorted(p.cat_keys, cat * p.span + p.rank_of(t)) - lo
        return _pick(p.cat_items, lo, np.where(cat > 1, n, 0), u1)  # pad / unknown category: no "same category"

    def _candidates(self, sampler: str, user: int, t: int, cat: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        """Exact fallback: every allowed item for one draw and its weight."""
        p = self.past
        if sampler == "category":
            lo = np.searchsorted(p.cat_keys, cat * p.span)
            hi = np.searchsorted(p.cat_keys, cat * p.span + p.rank_of(np.array([t]))[0])
            pool = np.sort(p.cat_items[lo:hi]) if cat > 1 else np.zeros(0, dtype=np.int64)
        else:
            pool = np.sort(p.by_first[: np.searchsorted(p.first_sorted, t, side="left")])
        a, b = self.offsets[user], self.offsets[user + 1]
        mine = self.item[a:b][self.time[a:b] <= t]
        pool = pool[~np.isin(pool, mine)]
        if sampler == "popularity":
            w = self.count_before(pool, np.full(len(pool), t)).astype(np.float64) ** alpha
        else:
            w = np.ones(len(pool))
        return pool, w

    # ------------------------------------------------------------------ main entry

    def draw(self, user: np.ndarray, rank: np.ndarray, t: np.ndarray, positive: np.ndarray, n_neg: int,
             sampler: Sampler = "uniform", alpha: float = 0.75) -> tuple[np.ndarray, NegativeReport]:
        """``(S, n_neg)`` negative item indices (``-1`` = none possible) for ``S`` positives.

        Args:
            user: (S,) user index (local to this sampler's users); rank: (S,) position of the positive in its
            user's timeline; t: (S,) the positive's time (epoch ms); positive: (S,) its item index.
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown negative sampler {sampler!r}; known: {list(SAMPLERS)}")
        report = NegativeReport(sampler, alpha)
        s = len(user)
        out = np.full((s, n_neg), -1, dtype=np.int64)
        if s == 0 or n_neg == 0:
            return out, report
        u = np.repeat(user.astype(np.int64), n_neg)
        tt = np.repeat(t.astype(np.int64), n_neg)
        cat = np.repeat(self.past.item_category[positive.astype(np.int64)], n_neg)
        j = np.tile(np.arange(n_neg, dtype=np.int64), s)
        # each draw's key (seed, user hash, rank, j) mixed once; a round mixes in only its counter
        state = counter_state(self.seed, np.repeat(self.user_hash[user], n_neg), np.repeat(rank.astype(np.int64), n_neg),
                              j)
        propose: list[Callable] = [getattr(self, f"_{name}") for name in SAMPLERS]
        uniform, popularity, category = (SAMPLERS.index(n) for n in ("uniform", "popularity", "category"))
        mode = np.full(len(u), SAMPLERS.index(sampler), dtype=np.int8)
        result = np.full(len(u), -1, dtype=np.int64)
        todo = np.arange(len(u))
        for r in range(ROUNDS):
            if len(todo) == 0:
                break
            st = state[todo]
            u1 = uniform_of(st, 2 * r)
            u2 = uniform_of(st, 2 * r + 1) if (mode[todo] == popularity).any() else u1  # only popularity reads it
            cand = np.full(len(todo), -2, dtype=np.int64)
            mt, tt_todo, cat_todo = mode[todo], tt[todo], cat[todo]
            for code in np.unique(mt):
                m = mt == code
                cand[m] = propose[code](tt_todo[m], cat_todo[m], u1[m], u2[m], alpha)
            empty = cand == -1  # nothing of that kind seen before t
            switch = empty & (mt == category)  # no item of the category yet: uniform instead
            mode[todo[switch]] = uniform
            report.category_fallbacks += int(switch.sum())
            give_up = empty & ~switch  # no item at all seen before t: no negative possible
            ok = cand >= 0
            ok[ok] = ~self.touched(u[todo][ok], cand[ok], tt_todo[ok])
            result[todo[ok]] = cand[ok]
            todo = todo[~ok & ~give_up]
        for i in todo:  # rare: rejected ROUNDS times; enumerate the allowed items exactly
            report.draws_enumerated_after_rejections += 1
            pool, w = self._candidates(SAMPLERS[mode[i]], int(u[i]), int(tt[i]), int(cat[i]), alpha)
            if len(pool) == 0 and mode[i] == category:
                report.category_fallbacks += 1
                pool, w = self._candidates("uniform", int(u[i]), int(tt[i]), int(cat[i]), alpha)
            if len(pool) == 0 or w.sum() <= 0:
                continue
            x = uniform_of(state[i:i + 1], 2 * ROUNDS)[0]
            cdf = np.cumsum(w) / w.sum()
            result[i] = pool[min(int(np.searchsorted(cdf, x, side="right")), len(pool) - 1)]
        out = result.reshape(s, n_neg)
        report.drawn = int((out >= 0).sum())
        report.positives_without_negative = int((out < 0).any(axis=1).sum())
        return out, report


__all__ = ("SAMPLERS", "ItemCounts", "ItemPast", "NegativeReport", "NegativeSampler", "counter_state", "counter_uniform",
           "first_times", "stable_id_hash", "uniform_of")
