"""SDIM (Cao et al., CIKM 2022): per hash round, the sum of the behaviors whose bucket code equals the target's.

No top-k at all: the GSU is a sum, so it keeps its gradient (into the behavior
vectors) and runs on the device of its ``table``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from userlens.batch import LongHistory
from userlens.layers.gsu.base import CHUNK_BUDGET, serving_state
from userlens.layers.gsu.slab import chunk_len, chunks

#: SDIM sums by segments (:func:`_segment_bucket_sum`) once the rows read each behavior this many times on average
SEGMENT_SHARE = 8.0


#: a chunk's matches are summed as a sparse list of (row, behavior, round) once at most this share of its
#: (row, behavior, round) triples match; denser ones by one batched product
SPARSE_SHARE = 1 / 16


class _BucketSum(torch.autograd.Function):
    """Σ over a range of ``table[item_j]`` where ``codes[item_j, r] == query[b, r]``; chunked both ways, row by row.

    The backward pass recomputes the matches chunk by chunk instead of storing
    them, so memory stays ``O(B × chunk × D)`` however long the history. Wide
    hashes (``width`` 8: a random behavior shares a bucket with probability
    1/256) match a few triples in a hundred: those chunks gather and add only the
    matching rows (:class:`_Matches`), the dense product would multiply zeros.
    """

    @staticmethod
    def forward(ctx, table: Tensor, codes: Tensor, query: Tensor, long: LongHistory, budget: int,  # type: ignore[override]
                rounds: int | None) -> Tensor:
        ctx.long, ctx.budget, ctx.rounds = long, budget, rounds
        ctx.save_for_backward(codes, query)
        out = table.new_zeros(query.shape[0], rounds or query.shape[1], table.shape[1])
        for m in _matches(long, codes, query, table.shape[1], budget, rounds):
            if m.sparse:
                out.view(-1, table.shape[1]).index_add_(0, m.slot, table.index_select(0, m.item))
            else:
                rows = table.index_select(0, m.ids.reshape(-1)).view(*m.ids.shape, table.shape[1])
                out += torch.bmm(m.dense.transpose(1, 2), rows)  # (B, m, C) @ (B, C, D)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        codes, query = ctx.saved_tensors
        n, d = codes.shape[0], grad.shape[2]
        g_table = grad.new_zeros(n, d)
        for m in _matches(ctx.long, codes, query, d, ctx.budget, ctx.rounds):
            if m.sparse:
                g_table.index_add_(0, m.item, grad.reshape(-1, d).index_select(0, m.slot))
            else:
                g_table.index_add_(0, m.ids.reshape(-1), torch.bmm(m.dense, grad).reshape(-1, d))  # (B, C, D)
        return g_table, None, None, None, None, None


class _Matches:
    """One chunk's matches: sparse (``item`` ids and output ``slot`` = row · rounds + round, per match) or
    dense (``ids (B, C)`` and the ``(B, C, rounds)`` float match matrix)."""

    def __init__(self, ids: Tensor, match: Tensor) -> None:
        self.ids = ids
        self.sparse = int(match.sum()) <= SPARSE_SHARE * match.numel()
        if self.sparse:
            b, c, r = match.nonzero(as_tuple=True)
            self.item, self.slot = ids[b, c], b * match.shape[2] + r
        else:
            self.dense = match.to(torch.float32)


def _matches(long: LongHistory, codes: Tensor, query: Tensor, dim: int, budget: int,
             rounds: int | None = None):  # type: ignore[no-untyped-def]
    """Yield each chunk's :class:`_Matches`, on the device of ``codes``. With ``rounds``, ``codes`` and
    ``query`` are :func:`_packed` words holding that many one-byte codes."""
    for ids, valid, _ in chunks(long, chunk_len(len(long.lo), dim + codes.shape[1], long.longest, budget)):
        ids = ids.to(codes.device)
        if rounds is None:
            match = codes[ids] == query[:, None, :]
        else:  # (B, C, words) XOR → bytes: a zero byte is a matching round
            diff = codes.index_select(0, ids.reshape(-1)).view(*ids.shape, -1) ^ query[:, None, :]
            match = diff.view(torch.uint8)[..., :rounds] == 0
        if valid is not None:
            match &= valid.mask(ids.shape[1]).to(codes.device).unsqueeze(-1)
        yield _Matches(ids, match)


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


def _add_to_buckets(acc: Tensor | None, table: Tensor, codes: Tensor, items: np.ndarray, sign: int = 1) -> Tensor:
    """``acc[r, v] += sign · Σ table[i]`` over ``items`` whose round-``r`` code is ``v``: ``(rounds, codes, D)``
    float64 (a serving window adds appended and subtracts evicted behaviors: no drift worth a float32 ulp)."""
    rounds = codes.shape[1]
    if acc is None:
        acc = table.new_zeros(rounds, int(codes.max()) + 1 if codes.numel() else 1, table.shape[1],
                              dtype=torch.float64)
    n_codes = acc.shape[1]
    flat = acc.view(rounds * n_codes, -1)
    shift = torch.arange(rounds, device=table.device) * n_codes
    for start in range(0, len(items), 1 << 16):
        ids = torch.from_numpy(items[start:start + (1 << 16)]).to(table.device)
        rows = table[ids].double() * sign
        if len(ids) * rounds <= 1 << 12:  # a few appended / evicted rows: one call for every round (calls dominate)
            flat.index_add_(0, (codes[ids] + shift).reshape(-1), rows.repeat_interleave(rounds, 0))
        else:  # a whole window: one call per round, no (rows × rounds, D) copy
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
        key: name of the per-user running sums when serving
            (:class:`~userlens.serving.state.HistoryState`): one user's request adds the behaviors
            appended and subtracts those evicted since the last one, then reads ``B × rounds`` rows.
    """
    state = serving_state(long)
    if state is not None:  # one user's request: per-round bucket sums kept per user, extended on append
        sums = state.total(key, long, lambda acc, items, sign: _add_to_buckets(acc, table, codes, items, sign))
        if sums is not None:
            rounds = torch.arange(codes.shape[1], device=query.device)[None, :]
            return sums[rounds, query].to(table.dtype)  # type: ignore[index]
    if not len(long.lo) or long.longest == 0:
        return table.new_zeros(len(long.lo), codes.shape[1], table.shape[1])
    top = max(int(codes.max()) if codes.numel() else 0, int(query.max()) if query.numel() else 0)
    if _segments_pay(long, codes.shape[1] * (top + 1) * table.shape[1], budget):
        return _segment_bucket_sum(long, table, codes, query)
    if top < 256:  # 1 byte per code, packed 8 to a word: one int64 gather per behavior per 8 rounds
        return _BucketSum.apply(table, _packed(codes), _packed(query), long, budget, codes.shape[1])
    return _BucketSum.apply(table, codes, query, long, budget, None)


def _packed(codes: Tensor) -> Tensor:
    """``(n, rounds)`` codes < 256 as ``(n, words)`` int64, 8 one-byte codes per word (zero-padded rounds).

    Matching is then ``words[item] ^ query_words`` viewed as bytes, a zero byte per matching round
    (:func:`_matches`); the padding bytes match too and are dropped there.
    """
    n, rounds = codes.shape
    words = -(-rounds // 8)
    out = codes.new_zeros(n, words * 8, dtype=torch.uint8)
    out[:, :rounds] = codes.to(torch.uint8)
    return out.view(torch.int64)
