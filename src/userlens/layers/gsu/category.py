"""SIM hard search (Pi et al., CIKM 2020): the most recent k behaviors of the target's category."""

from __future__ import annotations

import numpy as np

from userlens.layers.explain import note
from userlens.layers.gsu.base import Selection


def position_bits(n: int) -> int:
    """Bits of a :class:`CategoryIndex` key that hold a position in ``[0, n]`` (``n``: a search's open end)."""
    return max(int(n).bit_length(), 1)


class CategoryIndex:
    """SIM hard search: timeline positions grouped by category, each group in time order.

    Built once per dataset (a stable argsort of the category column, 16 bytes per
    behavior) and shared by every batch; a search is two ``searchsorted`` calls for
    the whole batch, so its cost does not depend on the history length. A serving
    scorer keeps one per user and :meth:`extend` s it with appended behaviors.

    Keys are ``category << shift | position`` in one int64, with ``shift =``
    :func:`position_bits` of the timeline length: as wide as the positions need
    (33 bits past 2**32 behaviors), widened when :meth:`extend` crosses a power of
    two. Categories take the remaining bits; ids that do not fit raise instead of
    wrapping around into other categories' keys.

    Sliding (serving): positions are absolute sequence numbers of a user's log;
    :meth:`evict` drops those below a window's start and ``origin`` (the window's
    first number) maps the callers' window-relative positions to them, so
    :meth:`search` and :meth:`count_last` take and return positions relative to
    the window (``origin = 0`` offline: nothing changes there).
    """

    def __init__(self, category: np.ndarray, start: int = 0) -> None:
        category = np.asarray(category)
        self.n = 0
        self.origin = start  # absolute number of relative position 0 (see the class docstring)
        self.shift = 1
        self.top = -1  # the largest category indexed
        self.reserve(start + len(category), category)
        self.n = start + len(category)
        self.positions = np.argsort(category, kind="stable").astype(np.int64) + start
        self.keys = (category.astype(np.int64)[self.positions - start] << self.shift) | self.positions

    def reserve(self, n: int, category: np.ndarray | None = None) -> None:
        """Make the keys hold positions up to ``n`` and the ids of ``category`` (re-packing them when the
        position field widens). Raises ValueError, changing nothing, when the ids would not fit beside
        the positions: ``0 <= category < 2**(62 − shift)`` (one spare bit for searches). :meth:`extend`
        calls it; a caller that knows how far the history will grow may call it first."""
        category = np.zeros(0, dtype=np.int64) if category is None else np.asarray(category)
        shift = max(self.shift, position_bits(n))
        top = max(self.top, int(category.max())) if len(category) else self.top
        low = int(category.min()) if len(category) else 0
        if low < 0 or top >= 1 << (62 - shift):
            raise ValueError(f"CategoryIndex: category ids must be in [0, 2**{62 - shift}) beside {n} timeline "
                             f"positions ({shift} bits of a 64-bit key); got ids from {low} to {top}. "
                             "Fix: index categories by their vocabulary codes (what `userlens prepare` writes).")
        if shift != self.shift and self.n:
            self.keys = ((self.keys >> self.shift) << shift) | self.positions
        self.shift, self.top = shift, top

    @property
    def nbytes(self) -> int:
        """Memory held by the index (a serving scorer's byte budget counts it)."""
        return self.keys.nbytes + self.positions.nbytes

    def extend(self, category: np.ndarray) -> None:
        """Add positions ``n, n+1, …`` with these categories (appended behaviors): O(n) copy, no sort."""
        m = len(category)
        if not m:
            return
        category = np.asarray(category)
        self.reserve(self.n + m, category)
        pos = np.arange(self.n, self.n + m, dtype=np.int64)
        order = np.argsort(category, kind="stable")
        new = (category.astype(np.int64)[order] << self.shift) | pos[order]
        at = np.searchsorted(self.keys, new)
        self.keys = np.insert(self.keys, at, new)
        self.positions = self.keys & ((1 << self.shift) - 1)
        self.n += m

    def evict(self, below: int) -> None:
        """Drop positions ``< below`` (a sliding window's oldest behaviors): one O(n) copy, no sort."""
        if len(self.positions) and int(self.positions.min()) < below:
            keep = self.positions >= below
            self.keys, self.positions = self.keys[keep], self.positions[keep]

    def _range(self, key: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Index range ``[a, b)`` of ``self.keys`` holding ``key`` at relative positions ``[lo, hi)``."""
        # a key outside the index matches nothing: clipped to just below or above every key's
        base = np.clip(np.asarray(key, dtype=np.int64), -1, self.top + 1) << self.shift
        a = np.searchsorted(self.keys, base + np.clip(np.asarray(lo) + self.origin, 0, self.n))
        b = np.searchsorted(self.keys, base + np.clip(np.asarray(hi) + self.origin, 0, self.n))
        return a, b

    def count_last(self, key: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(count, last)`` of ``key[b]`` in positions ``[lo[b], hi[b])``; ``last`` = -1 where the count is 0
        (what :class:`userlens.data.counts.PositionIndex` answers, for a serving window)."""
        a, b = self._range(key, lo, hi)
        count = (b - a).astype(np.int64)
        if not len(self.positions):
            return count, np.full(len(count), -1, dtype=np.int64)
        last = self.positions[np.maximum(b - 1, 0)] - self.origin
        return count, np.where(count > 0, last, -1).astype(np.int64)

    def search(self, category: np.ndarray, lo: np.ndarray, hi: np.ndarray, k: int) -> Selection:
        """The ``k`` most recent positions in ``[lo, hi)`` whose category equals ``category`` (per row)."""
        a, b = self._range(category, lo, hi)
        start = np.maximum(a, b - k)
        count = (b - start).astype(np.int64)
        ar = np.arange(k)
        valid = ar[None, :] < count[:, None]
        idx = np.where(valid, start[:, None] + ar[None, :], 0)
        size = len(self.positions)
        pos = np.where(valid, self.positions[np.minimum(idx, max(size - 1, 0))] - self.origin if size else -1, -1)
        sel = Selection(pos.astype(np.int64), count)
        note("gsu", sel)
        return sel
