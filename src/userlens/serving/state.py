"""Per-user serving state: the user's window of the store's log and the GSU state that slides with it.

A lifelong user is a stream: events arrive between requests and, at the cap, every append
evicts the oldest behavior. :class:`HistoryState` keeps, per user, the window the store holds
(the rows numbered ``[start, end)`` under one write ``tag``, see
:mod:`userlens.serving.store.record`) and every part the GSUs built over it; one mechanism
covers them all: :meth:`HistoryState.sync` brings the window to the store's and, when the tag is
unchanged, **slides** each part (rows appended are added, rows evicted removed, nothing rebuilt);
a new tag (an out-of-order insert, a bulk load, a restore) drops the parts, rebuilt on first use.

Parts (built lazily, by what the package's model asks for):

* ``category_index`` / ``item_index`` — :class:`~userlens.layers.gsu.CategoryIndex` over the
  window's categories / items, keyed by absolute numbers (SIM hard and QIN search the first;
  both answer the counting features' "how many, and the last" queries);
* ``item_groups`` — the window grouped by item (:class:`ItemGroups`, derived from the item index
  after a change), so the scored top-k GSUs (SIM soft, TWIN, DARE, MUSE, ETA) score each distinct
  item once;
* running totals (SDIM's per-round bucket sums), kept in float64 and summed afresh after as many
  evictions as the window holds, so rounding cannot accumulate.

The GSUs reach the state only through the :class:`~userlens.layers.gsu.SearchState` protocol on
``LongHistory.state`` (layers know nothing of serving). A request whose history is cut before
the window's end (a replay at an older time, or events timestamped after the request) is served
by the indexes (searches are bounded), by item groups of the rows before the cut and by the
totals minus the rows after it (when those are under half the window).
The caller holds :attr:`HistoryState.lock` from the store read to the end of scoring, so two
requests for one user never interleave their reads and updates.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from userlens.batch import LongHistory
from userlens.layers.explain import note
from userlens.layers.gsu import CategoryIndex, ItemScorer, Selection
from userlens.layers.gsu.base import oldest_first
from userlens.layers.gsu.topk import topk_recent, topk_recent_index
from userlens.serving.store.base import UserHistory

COLUMNS = (("item", np.int32), ("category", np.int32), ("time", np.int64), ("behavior", np.int16))


class ItemGroups:
    """A window's behaviors grouped by item, each item's positions in time order (serving state).

    For a GSU whose score depends on the item only (SIM soft, TWIN without its
    time bias, DARE, MUSE, ETA), behaviors of one item tie, so the top-k behaviors are
    among the newest ``k`` occurrences of the top-``k`` items ranked by (score,
    newest occurrence): each item ranked above item X has an occurrence ranked
    above any of X's. :func:`grouped_topk` scores ``U`` distinct items instead of
    ``n`` behaviors, exactly. Built from an item :class:`CategoryIndex` (already sorted by
    (item, position)) in a few O(n) passes, no sort.
    """

    def __init__(self, index: CategoryIndex, hi: int | None = None) -> None:
        keys, positions = index.keys, index.positions - index.origin  # relative to the window
        if hi is not None:  # only the behaviors before ``hi`` (a request cut before the window's end)
            keep = positions < hi
            keys, positions = keys[keep], positions[keep]
        self.n = len(keys)
        item = keys >> index.shift
        self.positions = positions  # ascending within an item
        cut = np.flatnonzero(item[1:] != item[:-1]) + 1
        self.offsets = np.concatenate([[0], cut, [self.n]]).astype(np.int64) if self.n else np.zeros(1, np.int64)
        self.counts = np.diff(self.offsets)
        self.items = item[self.offsets[:-1]]
        self.newest = self.positions[self.offsets[1:] - 1] if self.n else np.zeros(0, dtype=np.int64)

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
    at = np.maximum(groups.offsets[gn + 1][:, :, None] - 1 - ar, 0)  # an item's newest occurrences first
    pos = torch.from_numpy(np.where(take, groups.positions[at], -1).reshape(b, -1))
    s = torch.where(torch.from_numpy(take), scores.gather(1, g)[:, :, None], float("-inf")).reshape(b, -1)
    best_s, best_r = topk_recent(s, pos, k)
    picked = torch.where(best_s > float("-inf"), best_r, -1).numpy()
    if picked.shape[1] < k:
        picked = np.concatenate([picked, np.full((b, k - picked.shape[1]), -1)], axis=1)
    sel = oldest_first(picked)
    note("gsu", sel)
    return sel


#: ``add(acc or None, items, sign)`` → the running total with ``items`` added (sign 1) or removed (sign -1)
Adder = Callable[[object | None, np.ndarray, int], object]


@dataclass
class _Total:
    acc: object
    add: Adder
    removed: int = 0  # rows removed since summed afresh


class _Window:
    """The window's columns in buffers with room at the end: appends are amortised O(1), evictions O(1)."""

    def __init__(self) -> None:
        self.buf = {name: np.zeros(0, dtype) for name, dtype in COLUMNS}
        self.head = self.tail = 0

    def __len__(self) -> int:
        return self.tail - self.head

    def column(self, name: str) -> np.ndarray:
        return self.buf[name][self.head:self.tail]

    def drop(self, m: int) -> None:
        self.head += min(m, len(self))

    def push(self, rows: UserHistory) -> None:
        k = len(rows)
        if self.tail + k > len(self.buf["item"]):
            n = len(self)
            size = max(2 * (n + k), 64)
            for name, dtype in COLUMNS:
                new = np.empty(size, dtype)
                new[:n] = self.buf[name][self.head:self.tail]
                self.buf[name] = new
            self.head, self.tail = 0, n
        for name, _ in COLUMNS:
            self.buf[name][self.tail:self.tail + k] = getattr(rows, name)
        self.tail += k

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.buf.values())


class HistoryState:
    """One user's window and the GSU parts over it (see the module docstring).

    Args:
        cap: the window's length when full (the package's ``long_len`` = the store's cap).
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.lock = threading.Lock()
        self.tag = 0
        self.start = 0  # absolute number of the window's first row
        self.window = _Window()
        self.indexes: dict[str, CategoryIndex] = {}
        self.totals: dict[str, _Total] = {}
        self._groups: ItemGroups | None = None
        self.slides = self.rebuilds = 0  # syncs that extended the parts / that started afresh

    @property
    def end(self) -> int:
        return self.start + len(self.window)

    @classmethod
    def of(cls, history: UserHistory, cap: int | None = None) -> HistoryState:
        """A state over ``history`` (a whole window)."""
        state = cls(cap if cap is not None else max(len(history), 1))
        state.sync(history)
        return state

    def sync(self, rows: UserHistory) -> bool:
        """Bring the window to the store's: ``rows`` is a read ``since=self.end, tag=self.tag`` (the rows after
        the window) or a whole window. True when the parts slid, False when they were dropped."""
        if self.tag and rows.tag == self.tag and rows.start == self.end:
            if len(rows):
                self._slide(rows)
            return True
        self.tag, self.start = rows.tag, rows.start
        self.window = _Window()
        self.window.push(rows)
        self.indexes.clear()
        self.totals.clear()
        self._groups = None
        self.rebuilds += 1
        return False

    def _slide(self, rows: UserHistory) -> None:
        end = rows.start + len(rows)
        start = max(self.start, end - self.cap)
        gone = min(start - self.start, len(self.window))
        old_items = self.window.column("item")[:gone]
        for name, index in self.indexes.items():
            index.evict(start)
            index.extend(np.asarray(getattr(rows, name.removesuffix("_index")), dtype=np.int64))
            index.origin = start
        new_items = np.asarray(rows.item, dtype=np.int64)
        with torch.inference_mode():  # the totals were made while scoring, as inference tensors
            self._slide_totals(gone, old_items, new_items, rows)
        self.window.drop(gone)
        self.window.push(rows)
        self.start = start
        self._groups = None
        self.slides += 1

    def _slide_totals(self, gone: int, old_items: np.ndarray, new_items: np.ndarray, rows: UserHistory) -> None:
        for total in self.totals.values():
            if total.removed + gone > self.cap:  # summed afresh now and then: no rounding drift
                window = np.concatenate([self.window.column("item")[gone:], rows.item]).astype(np.int64)
                total.acc, total.removed = total.add(None, window, 1), 0
                continue
            if gone:
                total.acc = total.add(total.acc, np.asarray(old_items, dtype=np.int64), -1)
                total.removed += gone
            total.acc = total.add(total.acc, new_items, 1)

    def history(self) -> UserHistory:
        """The window as a :class:`UserHistory` (views of the buffers: valid until the next :meth:`sync`)."""
        w = self.window
        return UserHistory(w.column("item"), w.column("category"), w.column("time"), w.column("behavior"),
                           start=self.start, tag=self.tag)

    def index(self, column: str) -> CategoryIndex:
        """The window's positions grouped by ``column`` (``"item"`` or ``"category"``), window-relative."""
        name = f"{column}_index"
        index = self.indexes.get(name)
        if index is None:
            index = self.indexes[name] = CategoryIndex(np.asarray(self.window.column(column), dtype=np.int64),
                                                       start=self.start)
        return index

    def category_index(self) -> CategoryIndex:
        """SIM hard search's (and QIN's) per-category positions over the whole window."""
        return self.index("category")

    def item_groups(self, long: LongHistory) -> ItemGroups | None:
        """``[0, hi)`` of the window grouped by item: kept for the whole window, built for a request cut before
        its end (one O(n) pass over the item index, no sort)."""
        hi = int(long.hi[0])
        if hi > len(self.window):
            return None
        if hi < len(self.window):
            return ItemGroups(self.index("item"), hi)
        if self._groups is None:
            self._groups = ItemGroups(self.index("item"))
        return self._groups

    def item_topk(self, long: LongHistory, score: ItemScorer, k: int) -> Selection | None:
        """The top-``k`` behaviors of ``[0, hi)`` for an item-only score, each distinct item scored once
        (:func:`grouped_topk`)."""
        groups = self.item_groups(long)
        if groups is None:
            return None
        scores, keys = score(groups.items, groups.newest)
        return grouped_topk(groups, scores, k, keys)

    def total(self, name: str, long: LongHistory, add: Adder) -> object | None:
        """A running aggregate over ``[0, hi)`` of the window (``add(acc, items, sign)``, in place). A request cut
        before the window's end (a replay, or events timestamped after the request) gets the window's total
        minus its last rows when they are under half the window; None otherwise (the caller scans)."""
        hi, n = int(long.hi[0]), len(self.window)
        if hi > n or n - hi > n // 2:
            return None
        total = self.totals.get(name)
        if total is None:
            items = np.asarray(self.window.column("item"), dtype=np.int64)
            total = self.totals[name] = _Total(add(None, items, 1), add)
        if hi == n:
            return total.acc
        tail = np.asarray(self.window.column("item")[hi:], dtype=np.int64)
        return add(copy.deepcopy(total.acc), tail, -1)

    def nbytes(self) -> int:
        """Memory held (window buffers, indexes, groups, totals), for the scorer's byte budget."""
        total = self.window.nbytes + sum(i.nbytes for i in self.indexes.values())
        total += self._groups.nbytes if self._groups is not None else 0
        for t in self.totals.values():
            if isinstance(t.acc, Tensor):
                total += t.acc.numel() * t.acc.element_size()
        return total


__all__ = ("HistoryState", "ItemGroups", "grouped_topk")
