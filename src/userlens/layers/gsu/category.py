"""SIM hard search (Pi et al., CIKM 2020): the most recent k behaviors of the target's category."""

from __future__ import annotations

import numpy as np

from userlens.layers.explain import note
from userlens.layers.gsu.base import Selection


class CategoryIndex:
    """SIM hard search: timeline positions grouped by category, each group in time order.

    Built once per dataset (a stable argsort of the category column, 16 bytes per
    behavior) and shared by every batch; a search is two ``searchsorted`` calls for
    the whole batch, so its cost does not depend on the history length. A serving
    scorer keeps one per user and :meth:`extend` s it with appended behaviors.
    """

    def __init__(self, category: np.ndarray) -> None:
        n = len(category)
        self.n = n
        self.positions = np.argsort(category, kind="stable").astype(np.int64)
        self.keys = (np.asarray(category, dtype=np.int64)[self.positions] << 32) | self.positions

    @property
    def nbytes(self) -> int:
        """Memory held by the index (a serving scorer's byte budget counts it)."""
        return self.keys.nbytes + self.positions.nbytes

    def extend(self, category: np.ndarray) -> None:
        """Add positions ``n, n+1, …`` with these categories (appended behaviors): O(n) copy, no sort."""
        m = len(category)
        if not m:
            return
        pos = np.arange(self.n, self.n + m, dtype=np.int64)
        order = np.argsort(category, kind="stable")
        new = (np.asarray(category, dtype=np.int64)[order] << 32) | pos[order]
        at = np.searchsorted(self.keys, new)
        self.keys = np.insert(self.keys, at, new)
        self.positions = self.keys & 0xFFFFFFFF
        self.n += m

    def search(self, category: np.ndarray, lo: np.ndarray, hi: np.ndarray, k: int) -> Selection:
        """The ``k`` most recent positions in ``[lo, hi)`` whose category equals ``category`` (per row)."""
        base = np.asarray(category, dtype=np.int64) << 32
        a = np.searchsorted(self.keys, base + lo)
        b = np.searchsorted(self.keys, base + hi)
        start = np.maximum(a, b - k)
        count = (b - start).astype(np.int64)
        ar = np.arange(k)
        valid = ar[None, :] < count[:, None]
        idx = np.where(valid, start[:, None] + ar[None, :], 0)
        pos = np.where(valid, self.positions[np.minimum(idx, max(self.n - 1, 0))] if self.n else -1, -1)
        sel = Selection(pos.astype(np.int64), count)
        note("gsu", sel)
        return sel
