"""Exact top-k kernels of the GSUs: ties to the more recent behavior, long rows prefiltered by blocks.

Every scan ranks by (score, recency) — a strict order, so results can be checked
against a brute-force reference exactly. One ``topk(k + margin)`` decides most
rows; only rows tied across the cut are re-ranked by recency.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: columns per block of :func:`topk_recent_ordered`'s prefilter
BLOCK = 64


_BEST = torch.iinfo(torch.int64).max


def topk_recent(scores: Tensor, recency: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per row, the ``k`` entries with the highest score, ties → higher recency; ``-inf`` = no entry.

    Exact: recency values are distinct within a row, so (score, recency) is a
    strict order. One ``topk(k + 1)`` on the scores decides every row whose
    k-th and (k+1)-th scores differ; only rows with a tie across the cut
    (repeated items at the boundary) are re-ranked, among the tied entries, by
    recency. One pass over the scores instead of the six of a packed 64-bit key.
    """
    if scores.shape[1] <= k:
        return scores, recency
    idx = topk_recent_index(scores, recency, k)
    return scores.gather(1, idx), recency.gather(1, idx)


def _blocks_pay(n: int, k: int) -> bool:
    """Whether a row of ``n`` columns is long enough, in whole blocks, for the block-max prefilter."""
    return n % BLOCK == 0 and n >= 16 * BLOCK and n >= 8 * k * BLOCK


def _block_columns(blocks: Tensor) -> Tensor:
    """``(B, k)`` block indices → ``(B, k·BLOCK)`` the columns they cover."""
    return (blocks[:, :, None] * BLOCK + torch.arange(BLOCK)).view(blocks.shape[0], -1)


def topk_recent_ordered(scores: Tensor, pos: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """:func:`topk_recent` for a chunk whose columns are in recency order (``pos`` increases along each row).

    Long rows are prefiltered by blocks of :data:`BLOCK` columns: the ``k`` best
    blocks by (block max, block index) hold every one of the ``k`` best entries
    (an entry outside them is outranked by each of those blocks' maxima: a
    higher score, or an equal one further right, hence more recent), so the
    exact top-k runs over ``k × BLOCK`` candidates instead of the whole row.
    """
    b, n = scores.shape
    if not _blocks_pay(n, k):
        return topk_recent(scores, pos, k)
    nb = n // BLOCK
    block_max = scores.view(b, nb, BLOCK).amax(-1)
    blocks = topk_recent_index(block_max, torch.arange(nb).expand(b, nb), k)  # (B, k)
    cols = _block_columns(blocks)
    return topk_recent(scores.gather(1, cols), pos.gather(1, cols), k)


def topk_keys(key: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``topk(k)`` of distinct integer keys ``(B, n)`` → (values, columns); long rows prefiltered by block maxima
    (distinct keys: the ``k`` best entries lie in the ``k`` blocks with the best maxima)."""
    b, n = key.shape
    if not _blocks_pay(n, k):
        return key.topk(min(k, n), dim=1, sorted=False)
    blocks = key.view(b, n // BLOCK, BLOCK).amax(-1).topk(k, dim=1, sorted=False).indices
    cols = _block_columns(blocks)
    vals, at = key.gather(1, cols).topk(k, dim=1, sorted=False)
    return vals, cols.gather(1, at)


def topk_recent_index(scores: Tensor, recency: Tensor, k: int, margin: int = 16) -> Tensor:
    """The column indices :func:`topk_recent` keeps, ``(B, min(k, n))``.

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
