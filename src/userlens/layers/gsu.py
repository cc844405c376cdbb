"""General Search Units (GSU): for each candidate, pick the few behaviors of a whole history worth attending to.

Every GSU reads a :class:`~userlens.batch.LongHistory` (index ranges into the
shared timeline, up to 100,000 behaviors per sample) and never builds a
``(B, L_long, D)`` tensor: ranges are scanned **newest first in chunks** sized
so that ``B × chunk × dim`` stays under a fixed budget, and a running top-k is
merged per chunk. Samples of one user share their history: their rows are
scanned together as a **slab** (:func:`_partition`), each chunk read once and
scored for all of them, so a batch holding many samples per user costs about
one scan per user. What is static per item is computed once per call as a
per-item table (keys, SimHash signatures, bucket codes).

Selections are returned as global timeline positions, left-aligned and oldest
first (the :class:`~userlens.batch.History` convention); ties in relevance go to
the **more recent** behavior, so every GSU is deterministic and can be checked
exactly against a brute-force reference (``tests/layers/test_gsu.py``).

The units:

* :class:`CategoryIndex` — SIM hard search (Pi et al., CIKM 2020): the most
  recent k behaviors of the target's category.
* :func:`table_topk` — SIM soft search / TWIN / DARE: inner product between a
  target query and a per-item key table.
* :class:`SimHash` + :func:`hamming_topk` — ETA (Chen et al., 2021): top-k by
  Hamming distance between SimHash signatures.
* :func:`bucket_sum` — SDIM (Cao et al., CIKM 2022): per hash round, the sum of
  behaviors whose bucket code equals the target's (no top-k at all).
* MUSE's content-cosine top-k is :func:`table_topk` over normalised content vectors.

Devices: the timeline is NumPy, so scans run on the CPU. Inputs that may live on
an accelerator are moved with ``.detach().cpu()`` here (selection needs no
gradient); :func:`bucket_sum`, which must keep its gradient, runs on the
device of its ``table`` and moves each chunk's item ids there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from userlens.batch import LongHistory
from userlens.layers.explain import note

#: elements (batch × chunk × dim) one chunk may materialise: 4M floats = 16 MiB
CHUNK_BUDGET = 1 << 22
#: fewest rows scanned together as a slab (:func:`_partition`)
SLAB_MIN_ROWS = 8
#: columns per block of :func:`_topk_recent_ordered`'s prefilter
BLOCK = 64
#: SDIM sums by segments (:func:`_segment_bucket_sum`) once the rows read each behavior this many times on average
SEGMENT_SHARE = 8.0
#: a slab's chunk is scored by one matrix product up to this vector width, by gathering item scores above it
SLAB_GEMM_DIM = 32


@dataclass
class Selection:
    """Behaviors picked by a GSU.

    Attributes:
        positions: ``(B, k)`` int64 global timeline positions, left-aligned, oldest first, ``-1`` = none.
        lengths: ``(B,)`` int64 number of picked behaviors per row.
    """

    positions: np.ndarray
    lengths: np.ndarray


def _chunk_len(batch: int, dim: int, longest: int, budget: int = CHUNK_BUDGET) -> int:
    c = int(max(1, min(max(longest, 1), budget // max(batch * max(dim, 1), 1))))
    return c - c % BLOCK if c >= 16 * BLOCK else c  # long chunks in whole blocks (see _topk_recent_ordered)


def _oldest_first(positions: np.ndarray) -> Selection:
    """Sort each row's picked positions ascending with the ``-1`` holes moved to the end."""
    big = np.iinfo(np.int64).max
    s = np.sort(np.where(positions >= 0, positions, big), axis=1)
    lengths = (s != big).sum(1).astype(np.int64)
    return Selection(np.where(s == big, -1, s), lengths)


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
        g = _topk_recent_index(scores, torch.from_numpy(groups.newest).expand(b, -1), k)
    gn = g.numpy()
    ar = np.arange(k)
    take = ar[None, None, :] < np.minimum(groups.counts[gn], k)[:, :, None]  # (B, k', k)
    at = np.minimum(groups.offsets[gn][:, :, None] + ar, groups.n - 1)
    pos = torch.from_numpy(np.where(take, groups.positions[at], -1).reshape(b, -1))
    s = torch.where(torch.from_numpy(take), scores.gather(1, g)[:, :, None], float("-inf")).reshape(b, -1)
    best_s, best_r = _topk_recent(s, pos, k)
    picked = torch.where(best_s > float("-inf"), best_r, -1).numpy()
    if picked.shape[1] < k:
        picked = np.concatenate([picked, np.full((b, k - picked.shape[1]), -1)], axis=1)
    sel = _oldest_first(picked)
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

    def nbytes(self) -> int:
        """Memory held (arrays and tensors of every part), for the scorer's byte budget."""
        total = 0
        for _, part in self.parts.values():
            if isinstance(part, ItemGroups):
                total += part.nbytes
            elif isinstance(part, CategoryIndex):
                total += part.keys.nbytes + part.positions.nbytes
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


def serving_state(long: LongHistory) -> HistoryState | None:
    """The per-user state when ``long`` is one user's request over ``[0, hi)`` with no gradient, else None."""
    state = getattr(long, "state", None)
    if state is None or torch.is_grad_enabled() or not len(long.lo):
        return None
    if int(long.lo.max()) != 0 or int(long.hi.min()) != int(long.hi.max()):
        return None
    return state


_BEST = torch.iinfo(torch.int64).max


def _topk_recent(scores: Tensor, recency: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per row, the ``k`` entries with the highest score, ties → higher recency; ``-inf`` = no entry.

    Exact: recency values are distinct within a row, so (score, recency) is a
    strict order. One ``topk(k + 1)`` on the scores decides every row whose
    k-th and (k+1)-th scores differ; only rows with a tie across the cut
    (repeated items at the boundary) are re-ranked, among the tied entries, by
    recency. One pass over the scores instead of the six of a packed 64-bit key.
    """
    if scores.shape[1] <= k:
        return scores, recency
    idx = _topk_recent_index(scores, recency, k)
    return scores.gather(1, idx), recency.gather(1, idx)


def _blocks_pay(n: int, k: int) -> bool:
    """Whether a row of ``n`` columns is long enough, in whole blocks, for the block-max prefilter."""
    return n % BLOCK == 0 and n >= 16 * BLOCK and n >= 8 * k * BLOCK


def _block_columns(blocks: Tensor) -> Tensor:
    """``(B, k)`` block indices → ``(B, k·BLOCK)`` the columns they cover."""
    return (blocks[:, :, None] * BLOCK + torch.arange(BLOCK)).view(blocks.shape[0], -1)


def _topk_recent_ordered(scores: Tensor, pos: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """:func:`_topk_recent` for a chunk whose columns are in recency order (``pos`` increases along each row).

    Long rows are prefiltered by blocks of :data:`BLOCK` columns: the ``k`` best
    blocks by (block max, block index) hold every one of the ``k`` best entries
    (an entry outside them is outranked by each of those blocks' maxima: a
    higher score, or an equal one further right, hence more recent), so the
    exact top-k runs over ``k × BLOCK`` candidates instead of the whole row.
    """
    b, n = scores.shape
    if not _blocks_pay(n, k):
        return _topk_recent(scores, pos, k)
    nb = n // BLOCK
    block_max = scores.view(b, nb, BLOCK).amax(-1)
    blocks = _topk_recent_index(block_max, torch.arange(nb).expand(b, nb), k)  # (B, k)
    cols = _block_columns(blocks)
    return _topk_recent(scores.gather(1, cols), pos.gather(1, cols), k)


def _topk_keys(key: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``topk(k)`` of distinct integer keys ``(B, n)`` → (values, columns); long rows prefiltered by block maxima
    (distinct keys: the ``k`` best entries lie in the ``k`` blocks with the best maxima)."""
    b, n = key.shape
    if not _blocks_pay(n, k):
        return key.topk(min(k, n), dim=1, sorted=False)
    blocks = key.view(b, n // BLOCK, BLOCK).amax(-1).topk(k, dim=1, sorted=False).indices
    cols = _block_columns(blocks)
    vals, at = key.gather(1, cols).topk(k, dim=1, sorted=False)
    return vals, cols.gather(1, at)


def _topk_recent_index(scores: Tensor, recency: Tensor, k: int, margin: int = 16) -> Tensor:
    """The column indices :func:`_topk_recent` keeps, ``(B, min(k, n))``.

    ``topk(k + margin)``: a row whose k-th score is tied with the (k+1)-th (a
    repeated item at the cut) usually has its whole tie inside the margin, and
    is re-ranked among those ``k + margin`` entries; only a row whose tie runs
    past the margin is re-ranked over all its entries.
    """
    n = scores.shape[1]
    if n <= k:
        return torch.arange(n).expand(scores.shape[0], -1)
    kk = min(k + margin, n)
    vals, idx = scores.topk(kk, dim=1)  # sorted, descending
    thr = vals[:, k - 1 : k]
    tied = (vals[:, k] == thr[:, 0]) & (thr[:, 0] > float("-inf"))
    out = idx[:, :k]
    if not bool(tied.any()):
        return out
    out = out.clone()
    inside = tied & (vals[:, kk - 1] < thr[:, 0]) if kk < n else tied  # the whole tie is among the kk
    rows = inside.nonzero().flatten()
    if len(rows):
        v, t, i = vals[rows], thr[rows], idx[rows]
        key = torch.where(v > t, _BEST, torch.where(v == t, recency.gather(1, idx)[rows], -1))
        out[rows] = i.gather(1, key.topk(k, dim=1, sorted=False).indices)
    rows = (tied & ~inside).nonzero().flatten()
    if len(rows):  # a long tie (an item repeated past the margin): take every entry >= the k-th score
        s, t = scores[rows], thr[rows]
        rec = recency[rows] if recency.stride(0) else recency[:1].expand(len(rows), -1)  # a slab's: one row
        wide = int((s >= t).sum(1).max())
        if wide <= max(4 * kk, n // 8):
            v, i = s.topk(wide, dim=1)
            r = rec.gather(1, i)
        else:  # most of the row is tied (near-constant scores): rank the whole row
            v, i, r = s, None, rec
        key = torch.where(v > t, _BEST, torch.where(v == t, r, -1))  # above the tie, then tied by recency
        best = key.topk(k, dim=1, sorted=False).indices
        out[rows] = best if i is None else i.gather(1, best)
    return out


def _partition(lo: np.ndarray, hi: np.ndarray, slack: float = 0.25,
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
class _Band:
    """The valid columns ``[lo_b, hi_b)`` of each row of a chunk: ``(B, 1)`` int64 each (a row's own range).

    Masking touches only the columns where some row is out of range (a slab's
    rows differ only near its ends), not the whole ``(B, C)`` chunk.
    """

    lo: Tensor
    hi: Tensor

    def mask(self, c: int) -> Tensor:
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


def _chunks(long: LongHistory, width: int, slab: bool = False):  # type: ignore[no-untyped-def]
    """Yield ``(ids (B, C) int64 item ids, valid: _Band or None, pos (B, C) int64 global positions)``.

    Row by row (``slab=False``), chunk ``j`` of row ``b`` covers ``[hi − (j+1)·C,
    hi − j·C) ∩ [lo, hi)``, copied as one slice of a sliding-window view of the
    item column (a memcpy per row, not an element gather). As a slab (rows of
    one user, see :func:`_partition`) every row's chunk ``j`` is the same
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
                valid = _Band(lo_t - start, hi_t.clamp(max=end) - start)
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
            valid = _Band(lo_t - start_t, hi_t - j - start_t)
        yield torch.from_numpy(windows[start].astype(np.int64)), valid, torch.from_numpy(start)[:, None] + ar


def chunked_topk(long: LongHistory, k: int, score: Callable[[Tensor, Tensor], Tensor], dim: int = 1,
                 budget: int = CHUNK_BUDGET, bias: Callable[[Tensor, Tensor], Tensor] | None = None) -> Selection:
    """The ``k`` highest-scoring behaviors of every range (ties → more recent), scanned newest first in chunks.

    Rows of one user are scanned together as a slab (:func:`_partition`): their
    behaviors are read once per chunk and scored against all their targets.

    Args:
        long: the ranges ``[lo, hi)``.
        k: behaviors to keep per row.
        score: ``(ids, rows)`` → ``(B', C)`` scores, a new tensor (it is masked in place), where
            ``ids`` are ``(B', C)`` int64 item ids of the batch rows ``rows`` (``(B',)`` int64, the same
            object over one group's chunks); the ids may be one row expanded (see :func:`_chunks`),
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
        for rows, slab in _partition(long.lo, long.hi):
            sub = long.take(rows)
            rows_t = torch.from_numpy(rows)
            picked = _scan_topk(sub, k, lambda ids, r=rows_t: score(ids, r),
                                None if bias is None else (lambda pos, r=rows_t: bias(pos, r)),
                                _chunk_len(len(rows), dim, int((sub.hi.max() - sub.lo.min()) if slab else sub.longest),
                                           budget), slab)
            positions[rows, : picked.shape[1]] = picked
    sel = _oldest_first(positions)
    note("gsu", sel)
    return sel


def _scan_topk(long: LongHistory, k: int, score: Callable[[Tensor], Tensor],
               bias: Callable[[Tensor], Tensor] | None, width: int, slab: bool) -> np.ndarray:
    """:func:`chunked_topk` over one group of rows: ``(B, ≤ k)`` picked global positions, ``-1`` = none."""
    b = len(long.lo)
    best_s, best_p = torch.empty((b, 0)), torch.empty((b, 0), dtype=torch.int64)
    for ids, valid, pos in _chunks(long, width, slab):
        s = score(ids)
        if bias is not None:
            s = s + bias(pos)
        if s.dtype == torch.int8 and s.shape[1] < (1 << 23):  # small exact scores (Hamming): int32 keys
            key = ((s.to(torch.int32) + 128) << 23) | torch.arange(s.shape[1], dtype=torch.int32)
            if valid is not None:  # (score, column) within the chunk = (score, recency); -1 = no behavior
                valid.fill_(key, -1)
            vals, col = _topk_keys(key, k)
            s = torch.where(vals >= 0, ((vals >> 23) - 128).float(), float("-inf"))
            p = pos.gather(1, col.long())
        else:
            s = s.float()  # other integer scores are exact in float32 up to 2**24
            if valid is not None:
                valid.fill_(s, float("-inf"))
            s, p = _topk_recent_ordered(s, pos, k)  # the chunk's best (positions order recency within a row)
        best_s, best_p = _topk_recent(torch.cat([best_s, s], 1), torch.cat([best_p, p], 1), k)
    return torch.where(best_s > float("-inf"), best_p, -1).numpy()


def table_topk(long: LongHistory, query: Tensor, table: Tensor, k: int, budget: int = CHUNK_BUDGET,
               bias: Callable[[Tensor, Tensor], Tensor] | None = None) -> Selection:
    """Top-k behaviors by ``<query_b, table[item_j]> (+ bias(position))`` (SIM soft, TWIN, DARE, MUSE).

    ``query (B, d)``, ``table (n_items, d)`` on any device (copied to the CPU);
    selection only, so no gradient. A slab's chunk (rows of one user, a serving
    request's candidates) gathers its table rows once and scores them against
    all its queries in one ``(B', d) @ (d, C)`` product. Rows scanned one by one
    gather scalars from their full ``(B', n_items)`` score matrix when scoring
    every item is cheaper than scoring every behavior and fits the budget, and
    otherwise their table rows. ``bias``: see :func:`chunked_topk`.
    """
    extra = 0 if bias is None else 3  # positions, times and bias per behavior
    with torch.no_grad():
        query, table = query.detach().cpu().float(), table.detach().cpu().float()
        state = serving_state(long) if bias is None else None
        groups = state.item_groups(long) if state is not None else None
        if groups is not None:  # one user's request: score each distinct item once (exact, see ItemGroups)
            return grouped_topk(groups, query @ table[torch.from_numpy(groups.items)].t(), k)  # (B, d) @ (d, U)
        b, n_items, d = query.shape[0], table.shape[0], table.shape[1]
        full_pays = b * n_items <= 4 * budget and n_items < int(long.lengths.sum())
        cache: dict[str, Tensor] = {}

        def full(rows: Tensor) -> Tensor:  # (B', n_items) scores of every item, formed once per group of rows
            if cache.get("rows") is not rows:
                cache.update(rows=rows, full=query[rows] @ table.t())
            return cache["full"]

        def score(ids: Tensor, rows: Tensor) -> Tensor:
            if ids.stride(0) == 0:  # a slab: its behaviors gathered once, one (B', d) @ (d, C) product
                if full_pays and d > SLAB_GEMM_DIM:  # wide vectors: gathering from the item scores is cheaper
                    return full(rows).index_select(1, ids[0])
                return query[rows] @ table.index_select(0, ids[0]).t()
            if full_pays:
                return full(rows).gather(1, ids)
            rows_e = table.index_select(0, ids.reshape(-1)).view(*ids.shape, d)
            return torch.bmm(rows_e, query[rows].unsqueeze(-1)).squeeze(-1)  # (B', C, d) @ (B', d, 1)

        dim = (1 if full_pays else d) + extra
        return chunked_topk(long, k, score, dim=dim, budget=budget, bias=bias)


class SimHash(torch.nn.Module):
    """Locality-sensitive signatures ``sign(x·R)`` with a fixed Gaussian ``R`` (Charikar, 2002).

    ``R`` is a buffer (saved with the model, never trained); ``bits`` in {8, 16, 32, 64}
    are packed into one unsigned integer per vector, so a behavior's signature costs
    ``bits/8`` bytes and a Hamming distance is one XOR + popcount.
    """

    def __init__(self, dim: int, bits: int = 64, seed: int = 0) -> None:
        super().__init__()
        if bits not in (8, 16, 32, 64):
            raise ValueError(f"SimHash bits must be 8, 16, 32 or 64, got {bits}")
        self.bits = bits
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("projection", torch.randn(dim, bits, generator=g))

    def forward(self, x: Tensor) -> np.ndarray:
        """``(..., dim)`` on any device → ``(...)`` unsigned signatures (NumPy on the CPU, ``uint{bits}``)."""
        with torch.no_grad():
            on = (x.detach().float() @ self.projection > 0).cpu().numpy()
        packed = np.packbits(on, axis=-1, bitorder="little")
        return np.ascontiguousarray(packed).view(f"<u{self.bits // 8}")[..., 0]

    def codes(self, x: Tensor, rounds: int, width: int) -> Tensor:
        """SDIM bucket codes: ``rounds`` integers of ``width`` sign bits each → ``(..., rounds)`` int64.

        Computed on the device of ``x``.
        """
        if rounds * width > self.bits:
            raise ValueError(f"rounds × width = {rounds * width} exceeds the {self.bits} projection bits")
        with torch.no_grad():
            on = (x.detach().float() @ self.projection[:, : rounds * width] > 0).long()
            on = on.reshape(*on.shape[:-1], rounds, width)
            return (on << torch.arange(width, device=on.device)).sum(-1)


def hamming_topk(long: LongHistory, target_sig: np.ndarray, item_sig: np.ndarray, k: int,
                 budget: int = CHUNK_BUDGET) -> Selection:
    """ETA: the ``k`` behaviors whose item signature is nearest the target's in Hamming distance.

    A serving request with per-user state scores each distinct item of the history once
    (:class:`ItemGroups`: the distance depends on the item only).
    """
    t = target_sig[:, None]
    state = serving_state(long)
    groups = state.item_groups(long) if state is not None else None
    if groups is not None:
        ham = torch.from_numpy(np.bitwise_count(item_sig[groups.items][None, :] ^ t).astype(np.float32))  # (B, U)
        keys = None
        if groups.n <= (1 << 17):  # (64 − distance)·2**17 + newest position < 2**24: exact in float32, no ties
            keys = (64 - ham) * float(1 << 17) + torch.from_numpy(groups.newest.astype(np.float32))
        return grouped_topk(groups, -ham, k, keys)

    def score(ids: Tensor, rows: Tensor) -> Tensor:  # a slab: its signatures gathered once, XOR-ed with every target
        sig = item_sig[ids[0].numpy()][None, :] if ids.stride(0) == 0 else item_sig[ids.numpy()]
        ham = np.bitwise_count(sig ^ t[rows.numpy()])
        return -torch.from_numpy(ham.astype(np.int8))  # small integer scores: exact int32 keys, see chunked_topk

    return chunked_topk(long, k, score, dim=1, budget=budget)


class _BucketSum(torch.autograd.Function):
    """Σ over a range of ``table[item_j]`` where ``codes[item_j, r] == query[b, r]``; chunked both ways, row by row.

    The backward pass recomputes the matches chunk by chunk instead of storing
    them, so memory stays ``O(B × chunk × D)`` however long the history.
    """

    @staticmethod
    def forward(ctx, table: Tensor, codes: Tensor, query: Tensor, long: LongHistory, budget: int) -> Tensor:  # type: ignore[override]
        ctx.long, ctx.budget = long, budget
        ctx.save_for_backward(codes, query)
        out = table.new_zeros(query.shape[0], query.shape[1], table.shape[1])
        for ids, match in _matches(long, codes, query, table.shape[1], budget):
            rows = table.index_select(0, ids.reshape(-1)).view(*ids.shape, table.shape[1])
            out += torch.bmm(match.transpose(1, 2), rows)  # (B, m, C) @ (B, C, D)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        codes, query = ctx.saved_tensors
        n, d = codes.shape[0], grad.shape[2]
        g_table = grad.new_zeros(n, d)
        for ids, match in _matches(ctx.long, codes, query, d, ctx.budget):
            g_table.index_add_(0, ids.reshape(-1), torch.bmm(match, grad).reshape(-1, d))  # (B, C, D)
        return g_table, None, None, None, None


def _matches(long: LongHistory, codes: Tensor, query: Tensor, dim: int, budget: int):  # type: ignore[no-untyped-def]
    """Yield ``(item ids (B, C), match (B, C, rounds) float)`` per chunk, on the device of ``codes``."""
    for ids, valid, _ in _chunks(long, _chunk_len(len(long.lo), dim + codes.shape[1], long.longest, budget)):
        ids = ids.to(codes.device)
        match = codes[ids] == query[:, None, :]
        if valid is not None:
            match &= valid.mask(ids.shape[1]).to(codes.device).unsqueeze(-1)
        yield ids, match.to(torch.float32)


def _segments_pay(long: LongHistory, per_segment: int, budget: int) -> bool:
    """Whether :func:`_segment_bucket_sum` beats the row-by-row scan: rows share enough behaviors, and the
    float64 prefix sums (``2B + 1`` segments × rounds × codes × D) fit the budget."""
    if (2 * len(long.lo) + 1) * per_segment > budget:
        return False
    return int(long.lengths.sum()) >= SEGMENT_SHARE * _union_length(long.lo, long.hi)


def _union_length(lo: np.ndarray, hi: np.ndarray) -> int:
    """Behaviors covered by at least one of the ranges ``[lo, hi)``."""
    order = np.argsort(lo, kind="stable")
    lo_s, hi_s = lo[order], np.maximum.accumulate(hi[order])
    prev = np.concatenate([[np.iinfo(np.int64).min], hi_s[:-1]])
    return int(np.maximum(hi_s - np.maximum(lo_s, prev), 0).sum())


def _segment_bucket_sum(long: LongHistory, table: Tensor, codes: Tensor, query: Tensor) -> Tensor:
    """:func:`bucket_sum` for a batch whose rows share behaviors (samples of one user), by plain autograd.

    The rows' ends cut the timeline into segments; each behavior belongs to one,
    so every behavior is read once however many rows cover it. Per segment, the
    distinct items are counted (``np.unique`` over (segment, item)) and each
    round's bucket sums are one ``index_add`` of the counted item vectors; a
    row's sum is the difference of two prefix sums over segments. Sums are
    formed in float64 (long prefixes lose nothing against a row's own sum), so
    the result differs from a float32 scan only by the scan's own rounding.
    """
    lo, hi = long.lo, long.hi
    bounds = np.unique(np.concatenate([lo, hi]))
    n_seg, rounds, d = len(bounds) - 1, codes.shape[1], table.shape[1]
    n_codes = int(max(int(codes.max()), int(query.max()))) + 1
    first, last = np.searchsorted(bounds, lo), np.searchsorted(bounds, hi)
    cover = np.zeros(n_seg + 1, dtype=np.int64)
    np.add.at(cover, first, 1)
    np.add.at(cover, last, -1)
    segs = np.flatnonzero(np.cumsum(cover)[:-1] > 0)  # segments inside some row's range
    lens = bounds[segs + 1] - bounds[segs]
    pos = np.arange(int(lens.sum()), dtype=np.int64) + np.repeat(bounds[segs] - (np.cumsum(lens) - lens), lens)
    n_items = codes.shape[0]
    key = np.repeat(segs.astype(np.int64), lens) * n_items + np.asarray(long.timeline["item"])[pos].astype(np.int64)
    uniq, counts = np.unique(key, return_counts=True)
    dev = table.device
    seg_u, item_u = torch.from_numpy(uniq // n_items).to(dev), torch.from_numpy(uniq % n_items).to(dev)
    src = table.index_select(0, item_u).double() * torch.from_numpy(counts).to(dev)[:, None]  # (U, D) counted
    code_u = codes.index_select(0, item_u).long()  # (U, rounds)
    acc = torch.stack([src.new_zeros(n_seg * n_codes, d).index_add(0, seg_u * n_codes + code_u[:, r], src)
                       for r in range(rounds)]).view(rounds, n_seg, n_codes, d)
    prefix = torch.cat([acc.new_zeros(rounds, 1, n_codes, d), acc], 1).cumsum(1)  # (rounds, S+1, codes, D)
    r_ix = torch.arange(rounds, device=dev)[None, :]
    end = prefix[r_ix, torch.from_numpy(last).to(dev)[:, None], query]  # (B, rounds, D)
    start = prefix[r_ix, torch.from_numpy(first).to(dev)[:, None], query]
    return (end - start).to(table.dtype)


def _add_to_buckets(acc: Tensor | None, table: Tensor, codes: Tensor, items: np.ndarray) -> Tensor:
    """``acc[r, v] += Σ table[i]`` over ``items`` whose round-``r`` code is ``v``: ``(rounds, codes, D)``."""
    rounds = codes.shape[1]
    if acc is None:
        acc = table.new_zeros(rounds, int(codes.max()) + 1 if codes.numel() else 1, table.shape[1])
    for start in range(0, len(items), 1 << 16):
        ids = torch.from_numpy(items[start:start + (1 << 16)]).to(table.device)
        rows = table[ids]
        for r in range(rounds):
            acc[r].index_add_(0, codes[ids, r], rows)
    return acc


def bucket_sum(long: LongHistory, table: Tensor, codes: Tensor, query: Tensor,
               budget: int = CHUNK_BUDGET, key: str = "bucket_sum") -> Tensor:
    """SDIM aggregation: ``(B, rounds, D)`` sums of behavior vectors sharing the target's bucket per round.

    Args:
        table: ``(n_items, D)`` behavior vectors (gradients flow into it).
        codes: ``(n_items, rounds)`` int64 bucket code of every item per hash round.
        query: ``(B, rounds)`` int64 bucket codes of the targets.
        key: name of the per-user running sums when serving (:class:`HistoryState`): one user's
            request adds only the behaviors appended since the last one, then reads ``B × rounds`` rows.
    """
    state = serving_state(long)
    if state is not None:  # one user's request: per-round bucket sums kept per user, extended on append
        sums = state.total(key, long, lambda acc, items: _add_to_buckets(acc, table, codes, items))
        if sums is not None:
            return sums[torch.arange(codes.shape[1], device=query.device)[None, :], query]  # type: ignore[index]
    if not len(long.lo) or long.longest == 0:
        return table.new_zeros(len(long.lo), codes.shape[1], table.shape[1])
    top = max(int(codes.max()) if codes.numel() else 0, int(query.max()) if query.numel() else 0)
    if _segments_pay(long, codes.shape[1] * (top + 1) * table.shape[1], budget):
        return _segment_bucket_sum(long, table, codes, query)
    if top < 128:
        codes, query = codes.to(torch.int8), query.to(torch.int8)  # 1 byte per code: 8x less to gather
    return _BucketSum.apply(table, codes, query, long, budget)
