"""Slab scans: rows of one user read their shared history once, newest first, in budgeted chunks.

Samples of one user overlap in the timeline (different users' ranges never do):
:func:`partition` groups such rows into **slabs**, :func:`chunks` yields each
slab's chunk once for all its rows (each row's own range a :class:`Band`), and
:func:`chunked_topk` merges a running top-k per chunk. Chunks are sized so that
``B × chunk × dim`` stays under :data:`~userlens.layers.gsu.base.CHUNK_BUDGET`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from userlens.batch import LongHistory
from userlens.layers.explain import note
from userlens.layers.gsu.base import CHUNK_BUDGET, Selection, oldest_first
from userlens.layers.gsu.topk import BLOCK, topk_keys, topk_recent, topk_recent_ordered

#: fewest rows scanned together as a slab (:func:`partition`)
SLAB_MIN_ROWS = 8


def chunk_len(batch: int, dim: int, longest: int, budget: int = CHUNK_BUDGET) -> int:
    """Behaviors per chunk so that ``batch × chunk × dim <= budget`` (at least 1, at most ``longest``)."""
    c = int(max(1, min(max(longest, 1), budget // max(batch * max(dim, 1), 1))))
    return c - c % BLOCK if c >= 16 * BLOCK else c  # long chunks in whole blocks (see topk_recent_ordered)


def partition(lo: np.ndarray, hi: np.ndarray, slack: float = 0.25,
              min_rows: int | None = None) -> list[tuple[np.ndarray, bool]]:
    """Split a batch's rows into slabs (rows scanning one stretch of one user's history together) and the rest.

    Samples of one user overlap in the timeline (different users' ranges never
    do), so their behaviors can be read once for all of them: each slab is
    scanned from its newest end ``max(hi)`` with per-row masks. A row joins the
    slab of the row with the next larger cutoff when their ranges overlap and
    both its ends lie within ``slack × its length`` of that row's, which bounds
    the masked (wasted) work to ``2·slack`` of the row's own. Returns
    ``(rows, is_slab)`` pairs: slabs of at least ``min_rows`` rows (default
    :data:`SLAB_MIN_ROWS`: below it, the per-slab loop costs more than reading
    the history once saves), then one entry with every other row (scanned row by
    row), if any. Which rows are grouped never changes a result, only its cost.
    """
    min_rows = SLAB_MIN_ROWS if min_rows is None else min_rows
    order = np.lexsort((lo, -hi))  # newest cutoff first
    out: list[tuple[np.ndarray, bool]] = []
    rest: list[int] = []
    cur: list[int] = []
    top = base = 0

    def close() -> None:
        if len(cur) >= max(min_rows, 2):
            out.append((np.array(cur, dtype=np.int64), True))
        else:
            rest.extend(cur)

    for b in order.tolist():
        lb, hb = int(lo[b]), int(hi[b])
        if lb >= hb:  # nothing to scan
            rest.append(b)
            continue
        room = slack * (hb - lb)
        if cur and hb > base and top - hb <= room and abs(lb - base) <= room:
            cur.append(b)
            continue
        close()
        cur, top, base = [b], hb, lb
    close()
    if rest:
        out.append((np.sort(np.array(rest, dtype=np.int64)), False))
    return out


@dataclass
class Band:
    """The valid columns ``[lo_b, hi_b)`` of each row of a chunk: ``(B, 1)`` int64 each (a row's own range).

    Masking touches only the columns where some row is out of range (a slab's
    rows differ only near its ends), not the whole ``(B, C)`` chunk.
    """

    lo: Tensor
    hi: Tensor

    def mask(self, c: int) -> Tensor:
        """``(B, C)`` bool: True where column ``< c`` lies inside its row's range."""
        col = torch.arange(c)
        return (col >= self.lo) & (col < self.hi)

    def fill_(self, s: Tensor, value: float) -> Tensor:
        """Set the out-of-range entries of ``s (B, C)`` to ``value``, in place; returns ``s``."""
        c = s.shape[1]
        a, z = int(self.lo.max().clamp(0, c)), int(self.hi.min().clamp(0, c))
        if z <= a:
            return s.masked_fill_(~self.mask(c), value)
        col = torch.arange(c)
        if a > 0:
            s[:, :a].masked_fill_(col[:a] < self.lo, value)
        if z < c:
            s[:, z:].masked_fill_(col[z:] >= self.hi, value)
        return s


def chunks(long: LongHistory, width: int, slab: bool = False):  # type: ignore[no-untyped-def]
    """Yield ``(ids (B, C) int64 item ids, valid: Band or None, pos (B, C) int64 global positions)``.

    Row by row (``slab=False``), chunk ``j`` of row ``b`` covers ``[hi − (j+1)·C,
    hi − j·C) ∩ [lo, hi)``, copied as one slice of a sliding-window view of the
    item column (a memcpy per row, not an element gather). As a slab (rows of
    one user, see :func:`partition`) every row's chunk ``j`` is the same
    ``[top − (j+1)·C, top − j·C)`` with ``top = max(hi)``: ``ids`` and ``pos`` are
    one row expanded (stride 0 over the batch; consumers may test
    ``ids.stride(0) == 0`` and work on ``ids[0]``) and each row's own range is
    its band. ``valid`` is None when every entry of the chunk is inside its row's range.
    """
    lo, hi = long.lo, long.hi
    items = np.asarray(long.timeline["item"])
    b = len(lo)
    if not b or not len(items):
        return
    c = min(width, len(items))
    lo_t, hi_t = torch.from_numpy(lo)[:, None], torch.from_numpy(hi)[:, None]
    if slab:
        top = int(hi.max())
        for j in range(0, top - int(lo.min()), c):
            start, end = max(top - j - c, 0), top - j  # this chunk covers [start, end)
            valid = None
            if not (start + c <= end and (lo <= start).all() and (hi >= start + c).all()):
                valid = Band(lo_t - start, hi_t.clamp(max=end) - start)
            ids = torch.from_numpy(items[start:start + c].astype(np.int64))
            yield ids.expand(b, c), valid, torch.arange(start, start + c).expand(b, c)
        return
    windows = np.lib.stride_tricks.sliding_window_view(items, c)
    ar = torch.arange(c)
    for j in range(0, long.longest, c):
        start = np.maximum(hi - j - c, 0)
        valid = None
        if not ((lo <= start).all() and (start + c <= hi - j).all()):
            start_t = torch.from_numpy(start)[:, None]
            valid = Band(lo_t - start_t, hi_t - j - start_t)
        yield torch.from_numpy(windows[start].astype(np.int64)), valid, torch.from_numpy(start)[:, None] + ar


def chunked_topk(long: LongHistory, k: int, score: Callable[[Tensor, Tensor], Tensor], dim: int = 1,
                 budget: int = CHUNK_BUDGET, bias: Callable[[Tensor, Tensor], Tensor] | None = None) -> Selection:
    """The ``k`` highest-scoring behaviors of every range (ties → more recent), scanned newest first in chunks.

    Rows of one user are scanned together as a slab (:func:`partition`): their
    behaviors are read once per chunk and scored against all their targets.

    Args:
        long: the ranges ``[lo, hi)``.
        k: behaviors to keep per row.
        score: ``(ids, rows)`` → ``(B', C)`` scores, a new tensor (it is masked in place), where
            ``ids`` are ``(B', C)`` int64 item ids of the batch rows ``rows`` (``(B',)`` int64, the same
            object over one group's chunks); the ids may be one row expanded (see :func:`chunks`),
            and entries outside a row's range are masked after.
            Float scores: ties are found and broken by recency; int8 scores (nearly all tied, e.g.
            Hamming distances) are ranked as exact keys ``(s + 128)·2**23 + column`` in int32
            within a chunk; other integers are taken as float32 (exact below ``2**24``).
        dim: floats the scorer materialises per behavior (sizes the chunk to ``budget``).
        bias: optional ``(positions (B', C) int64, rows)`` → ``(B', C)`` float added to the score:
            per-behavior terms that depend on more than the item (TWIN's time-gap bias). Positions
            are always inside the timeline; invalid ones are masked after. A score of ``-inf``
            counts as no behavior.
    """
    b = len(long.lo)
    positions = np.full((b, k), -1, dtype=np.int64)
    if b and k:
        for rows, slab in partition(long.lo, long.hi):
            sub = long.take(rows)
            rows_t = torch.from_numpy(rows)
            picked = _scan_topk(sub, k, lambda ids, r=rows_t: score(ids, r),
                                None if bias is None else (lambda pos, r=rows_t: bias(pos, r)),
                                chunk_len(len(rows), dim, int((sub.hi.max() - sub.lo.min()) if slab else sub.longest),
                                          budget), slab)
            positions[rows, : picked.shape[1]] = picked
    sel = oldest_first(positions)
    note("gsu", sel)
    return sel


def _scan_topk(long: LongHistory, k: int, score: Callable[[Tensor], Tensor],
               bias: Callable[[Tensor], Tensor] | None, width: int, slab: bool) -> np.ndarray:
    """:func:`chunked_topk` over one group of rows: ``(B, ≤ k)`` picked global positions, ``-1`` = none."""
    b = len(long.lo)
    best_s, best_p = torch.empty((b, 0)), torch.empty((b, 0), dtype=torch.int64)
    for ids, valid, pos in chunks(long, width, slab):
        s = score(ids)
        if bias is not None:
            s = s + bias(pos)
        if s.dtype == torch.int8 and s.shape[1] < (1 << 23):  # small exact scores (Hamming): int32 keys
            key = ((s.to(torch.int32) + 128) << 23) | torch.arange(s.shape[1], dtype=torch.int32)
            if valid is not None:  # (score, column) within the chunk = (score, recency); -1 = no behavior
                valid.fill_(key, -1)
            vals, col = topk_keys(key, k)
            s = torch.where(vals >= 0, ((vals >> 23) - 128).float(), float("-inf"))
            p = pos.gather(1, col.long())
        else:
            s = s.float()  # other integer scores are exact in float32 up to 2**24
            if valid is not None:
                valid.fill_(s, float("-inf"))
            s, p = topk_recent_ordered(s, pos, k)  # the chunk's best (positions order recency within a row)
        best_s, best_p = topk_recent(torch.cat([best_s, s], 1), torch.cat([best_p, p], 1), k)
    return torch.where(best_s > float("-inf"), best_p, -1).numpy()
