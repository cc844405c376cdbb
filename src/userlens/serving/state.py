"""Per-user GSU state kept by the serving scorer between requests.

What the lifelong GSUs would otherwise recompute on every request, kept per user
and extended as the history grows (:class:`HistoryState`): SIM hard's category
index, SDIM's per-round bucket sums, and for the scored top-k GSUs (SIM soft,
TWIN, DARE, MUSE, ETA) the history grouped by item (:class:`ItemGroups`), so a
request scores each distinct item once. The GSUs reach it only through the
:class:`~userlens.layers.gsu.SearchState` protocol on ``LongHistory.state``
(layers know nothing of serving); :class:`~userlens.serving.scorer.Scorer` owns
one per user and drops it when the stored history changed other than at its end.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from userlens.batch import LongHistory
from userlens.layers.explain import note
from userlens.layers.gsu import CategoryIndex, ItemScorer, Selection
from userlens.layers.gsu.base import oldest_first
from userlens.layers.gsu.topk import topk_recent, topk_recent_index


class ItemGroups:
    """One history's behaviors grouped by item, each item's positions newest first (serving state).

    For a GSU whose score depends on the item only (SIM soft, TWIN without its
    time bias, DARE, MUSE, ETA), behaviors of one item tie, so the top-k behaviors are
    among the newest ``k`` occurrences of the top-``k`` items ranked by (score,
    newest occurrence): each item ranked above item X has an occurrence ranked
    above any of X's. :func:`grouped_topk` scores ``U`` distinct items instead of
    ``n`` behaviors, exactly.
    """

    def __init__(self, items: np.ndarray) -> None:
        n = len(items)
        self.n = n
        uniq, inverse = np.unique(np.asarray(items, dtype=np.int64), return_inverse=True)
        # newest first within an item: a stable sort of the reversed history by item
        self.positions = (n - 1 - np.argsort(inverse[::-1], kind="stable")).astype(np.int64)
        self.counts = np.bincount(inverse, minlength=len(uniq)).astype(np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self.items = uniq
        self.newest = self.positions[self.offsets[:-1]] if n else np.zeros(0, dtype=np.int64)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.positions, self.counts, self.offsets, self.items, self.newest))


def grouped_topk(groups: ItemGroups, scores: Tensor, k: int, item_keys: Tensor | None = None) -> Selection:
    """The top-``k`` behaviors (ties → newer) given ``(B, U)`` scores of ``groups.items``; see :class:`ItemGroups`.

    ``item_keys``: optional ``(B, U)`` exact, tie-free keys ordered as (score, newest occurrence)
    (ETA's small-integer distances packed with the position), so the item selection is one ``topk``.
    """
    b, u = scores.shape
    if u == 0 or k == 0:
        return Selection(np.full((b, k), -1, dtype=np.int64), np.zeros(b, dtype=np.int64))
    if item_keys is not None:
        g = item_keys.topk(min(k, u), dim=1, sorted=False).indices  # (B, k'): best items
    else:
        g = topk_recent_index(scores, torch.from_numpy(groups.newest).expand(b, -1), k)
    gn = g.numpy()
    ar = np.arange(k)
    take = ar[None, None, :] < np.minimum(groups.counts[gn], k)[:, :, None]  # (B, k', k)
    at = np.minimum(groups.offsets[gn][:, :, None] + ar, groups.n - 1)
    pos = torch.from_numpy(np.where(take, groups.positions[at], -1).reshape(b, -1))
    s = torch.where(torch.from_numpy(take), scores.gather(1, g)[:, :, None], float("-inf")).reshape(b, -1)
    best_s, best_r = topk_recent(s, pos, k)
    picked = torch.where(best_s > float("-inf"), best_r, -1).numpy()
    if picked.shape[1] < k:
        picked = np.concatenate([picked, np.full((b, k - picked.shape[1]), -1)], axis=1)
    sel = oldest_first(picked)
    note("gsu", sel)
    return sel


class HistoryState:
    """What the GSUs keep for one user between serving requests (SDIM's bucket sums, SIM's category index,
    the history grouped by item for the scored top-k GSUs).

    A scorer owns one per user and passes it on the :class:`LongHistory` of a
    request whose rows all read ``[0, hi)`` of that user's history. Each part
    records how many leading behaviors it covers and is extended with the new
    ones only (the category index, the bucket sums) or rebuilt once after the
    history grew (the item groups), never per request; the scorer drops the
    whole state when the stored history changed other than at its end.
    """

    def __init__(self) -> None:
        self.parts: dict[str, tuple[int, object]] = {}

    def item_groups(self, long: LongHistory) -> ItemGroups | None:
        """The history ``[0, hi)`` grouped by item, rebuilt when it grew; None for a request before its end."""
        hi = int(long.hi[0])
        n, groups = self.parts.get("item_groups", (0, None))
        if n > hi:
            return None  # a request scored before the latest behaviors: the caller scans instead
        if groups is None or n < hi:
            groups = ItemGroups(np.asarray(long.timeline["item"][:hi]))
            self.parts["item_groups"] = (hi, groups)
        return groups  # type: ignore[return-value]

    def item_topk(self, long: LongHistory, score: ItemScorer, k: int) -> Selection | None:
        """The top-``k`` behaviors of ``[0, hi)`` for an item-only score, each distinct item scored once
        (:func:`grouped_topk`); None for a request before the history's end (the caller scans instead)."""
        groups = self.item_groups(long)
        if groups is None:
            return None
        scores, keys = score(groups.items, groups.newest)
        return grouped_topk(groups, scores, k, keys)

    def nbytes(self) -> int:
        """Memory held (arrays and tensors of every part), for the scorer's byte budget."""
        total = 0
        for _, part in self.parts.values():
            if isinstance(part, ItemGroups):
                total += part.nbytes
            elif isinstance(part, CategoryIndex):
                total += part.nbytes
            elif isinstance(part, Tensor):
                total += part.numel() * part.element_size()
        return total

    def category_index(self, category: np.ndarray) -> CategoryIndex:
        """SIM hard search's per-category positions over the whole stored history, extended on append."""
        n, index = self.parts.get("category_index", (0, None))
        if index is None:
            index = CategoryIndex(np.asarray(category))
        elif n < len(category):
            index.extend(np.asarray(category[n:]))  # type: ignore[attr-defined]
        self.parts["category_index"] = (len(category), index)
        return index  # type: ignore[return-value]

    def total(self, name: str, long: LongHistory, add: Callable[[object | None, np.ndarray], object]) -> object | None:
        """A running aggregate over ``[0, hi)`` (``add(acc, new_items)``); None when it covers more than ``hi``."""
        hi = int(long.hi[0])
        n, acc = self.parts.get(name, (0, None))
        if n > hi:
            return None  # a request scored before the latest behaviors: the caller scans instead
        if acc is None or n < hi:
            acc = add(acc, np.asarray(long.timeline["item"][n:hi], dtype=np.int64))
            self.parts[name] = (hi, acc)
        return acc



__all__ = ("HistoryState", "ItemGroups", "grouped_topk")
