"""General Search Units (GSU): for each candidate, pick the few behaviors of a whole history worth attending to.

Every GSU reads a :class:`~userlens.batch.LongHistory` (index ranges into the
shared timeline, up to 100,000 behaviors per sample) and never builds a
``(B, L_long, D)`` tensor: ranges are scanned **newest first in chunks** sized
so that ``B × chunk × dim`` stays under a fixed budget, and a running top-k is
merged per chunk (an exact int64 key per behavior, so the merge is a
``topk``, not a sort). What is static per item is computed once per call as a
per-item table (keys, SimHash signatures, bucket codes), so a chunk costs one
gather of ``B × chunk`` table rows.

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
    return int(max(1, min(max(longest, 1), budget // max(batch * max(dim, 1), 1))))


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


def _topk_recent_index(scores: Tensor, recency: Tensor, k: int) -> Tensor:
    """The column indices :func:`_topk_recent` keeps, ``(B, min(k, n))``."""
    if scores.shape[1] <= k:
        return torch.arange(scores.shape[1]).expand(scores.shape[0], -1)
    vals, idx = scores.topk(k + 1, dim=1)  # sorted, descending
    thr = vals[:, k - 1 : k]
    idx = idx[:, :k].clone()
    rows = ((vals[:, k] == thr[:, 0]) & (thr[:, 0] > float("-inf"))).nonzero().flatten()
    if len(rows):
        s, t, r = scores[rows], thr[rows], recency[rows]
        key = torch.where(s > t, _BEST, torch.where(s == t, r, -1))  # above the tie, then tied by recency
        idx[rows] = key.topk(k, dim=1, sorted=False).indices
    return idx


def _shared(long: LongHistory) -> bool:
    """Every row reads the same range: a serving request (one user, many candidates)."""
    lo, hi = long.lo, long.hi
    return len(lo) > 1 and bool((lo == lo[0]).all() and (hi == hi[0]).all())


def _chunks(long: LongHistory, width: int):  # type: ignore[no-untyped-def]
    """Yield ``(ids (B, C) int64 item ids, valid (B, C) bool, recency (B, C) int64 = pos − lo)`` per chunk.

    Chunk ``j`` of row ``b`` covers ``[hi − (j+1)·C, hi − j·C) ∩ [lo, hi)``. Rows are
    copied as contiguous slices of a sliding-window view of the item column (one
    memcpy per row), not gathered element by element. When every row reads the
    same range (:func:`_shared`), the three tensors are one row expanded (stride 0
    over the batch): consumers may test ``ids.stride(0) == 0`` and work on ``ids[0]``.
    """
    lo, hi = long.lo, long.hi
    longest = long.longest
    if longest == 0:
        return
    items = np.asarray(long.timeline["item"])
    c = min(width, len(items))
    b = len(lo)
    if _shared(long):
        lo0, hi0 = int(lo[0]), int(hi[0])
        for j in range(0, longest, c):
            start = max(hi0 - j - c, 0)
            pos = torch.arange(start, start + c)
            valid = (pos >= lo0) & (pos < hi0 - j)
            ids = torch.from_numpy(items[start:start + c].astype(np.int64))
            yield ids.expand(b, c), valid.expand(b, c), (pos - lo0).expand(b, c)
        return
    windows = np.lib.stride_tricks.sliding_window_view(items, c)
    ar = torch.arange(c)
    lo_t, hi_t = torch.from_numpy(lo)[:, None], torch.from_numpy(hi)[:, None]
    for j in range(0, longest, c):
        start = np.maximum(hi - j - c, 0)
        pos = torch.from_numpy(start)[:, None] + ar
        valid = (pos >= lo_t) & (pos < hi_t - j)
        ids = torch.from_numpy(windows[start].astype(np.int64))
        yield ids, valid, pos - lo_t


def chunked_topk(long: LongHistory, k: int, score: Callable[[Tensor], Tensor], dim: int = 1,
                 budget: int = CHUNK_BUDGET, bias: Callable[[Tensor], Tensor] | None = None) -> Selection:
    """The ``k`` highest-scoring behaviors of every range (ties → more recent), scanned newest first in chunks.

    Args:
        long: the ranges ``[lo, hi)``.
        k: behaviors to keep per row.
        score: item ids ``(B, C)`` int64 → ``(B, C)`` scores (invalid entries are masked after;
            the ids may be one row expanded, see :func:`_chunks`). Float scores: ties are
            found and broken by recency; int8 scores (nearly all tied, e.g. Hamming distances)
            are ranked as exact keys ``(s + 128)·2**23 + column`` in int32 within a chunk; other
            integers are taken as float32 (exact below ``2**24``).
        dim: floats the scorer materialises per behavior (sizes the chunk to ``budget``).
        bias: optional global timeline positions ``(B, C)`` int64 → ``(B, C)`` float added to
            the score: per-behavior terms that depend on more than the item (TWIN's
            time-gap bias). Positions are always inside the timeline; invalid ones are masked after.
            A score of ``-inf`` counts as no behavior.
    """
    lo = long.lo
    b = len(lo)
    best_s, best_r = torch.empty((b, 0)), torch.empty((b, 0), dtype=torch.int64)
    lo_t = torch.from_numpy(np.asarray(lo, dtype=np.int64))[:, None]
    if b and k:
        for ids, valid, recency in _chunks(long, _chunk_len(b, dim, long.longest, budget)):
            s = score(ids)
            if bias is not None:
                s = s + bias(recency + lo_t)
            partial = not bool(valid[0].all() if valid.stride(0) == 0 else valid.all())
            if s.dtype == torch.int8 and s.shape[1] < (1 << 23):  # small exact scores (Hamming): int32 keys
                key = ((s.to(torch.int32) + 128) << 23) | torch.arange(s.shape[1], dtype=torch.int32)
                if partial:  # (score, column) within the chunk = (score, recency); -1 = no behavior
                    key = key.masked_fill(~valid, -1)
                vals, col = key.topk(min(k, key.shape[1]), dim=1, sorted=False)
                s = torch.where(vals >= 0, ((vals >> 23) - 128).float(), float("-inf"))
                r = recency.gather(1, col.long())
                best_s, best_r = _topk_recent(torch.cat([best_s, s], 1), torch.cat([best_r, r], 1), k)
                continue
            s = s.float()  # other integer scores are exact in float32 up to 2**24
            if partial:
                s = s.masked_fill(~valid, float("-inf"))
            s, r = _topk_recent(s, recency, k)  # the chunk's best, then merged with the best so far
            best_s, best_r = _topk_recent(torch.cat([best_s, s], 1), torch.cat([best_r, r], 1), k)
    picked = torch.where(best_s > float("-inf"), best_r, -1).numpy()
    positions = np.where(picked >= 0, lo[:, None] + picked, -1)
    if positions.shape[1] < k:
        positions = np.concatenate([positions, np.full((b, k - positions.shape[1]), -1)], axis=1)
    sel = _oldest_first(positions)
    note("gsu", sel)
    return sel


def table_topk(long: LongHistory, query: Tensor, table: Tensor, k: int, budget: int = CHUNK_BUDGET,
               bias: Callable[[Tensor], Tensor] | None = None) -> Selection:
    """Top-k behaviors by ``<query_b, table[item_j]> (+ bias(position))`` (SIM soft, TWIN, DARE, MUSE).

    ``query (B, d)``, ``table (n_items, d)`` on any device (copied to the CPU);
    selection only, so no gradient. When ``B × n_items`` fits the budget the
    full score matrix is formed once and each chunk is a gather of scalars;
    otherwise each chunk gathers table rows. When every row reads one history
    (a serving request) shorter than the catalogue, each chunk's rows are
    gathered once and scored against all queries in one matrix product.
    ``bias``: see :func:`chunked_topk`.
    """
    extra = 0 if bias is None else 3  # positions, times and bias per behavior
    with torch.no_grad():
        query, table = query.detach().cpu().float(), table.detach().cpu().float()
        state = serving_state(long) if bias is None else None
        groups = state.item_groups(long) if state is not None else None
        if groups is not None:  # one user's request: score each distinct item once (exact, see ItemGroups)
            return grouped_topk(groups, query @ table[torch.from_numpy(groups.items)].t(), k)  # (B, d) @ (d, U)
        if _shared(long) and (long.longest < table.shape[0] or query.shape[0] * table.shape[0] > 4 * budget):
            # one user's request over a history shorter than the catalogue: score its rows, gathered once
            def score_shared(ids: Tensor) -> Tensor:
                return query @ table[ids[0]].t()  # (B, d) @ (d, C)

            return chunked_topk(long, k, score_shared, dim=1 + extra, budget=budget, bias=bias)
        if query.shape[0] * table.shape[0] <= 4 * budget:
            full = query @ table.t()  # (B, n_items)

            def score_full(ids: Tensor) -> Tensor:
                return full.index_select(1, ids[0]) if ids.stride(0) == 0 else full.gather(1, ids)

            return chunked_topk(long, k, score_full, dim=1 + extra, budget=budget, bias=bias)

        def score_rows(ids: Tensor) -> Tensor:
            return torch.bmm(table[ids], query.unsqueeze(-1)).squeeze(-1)  # (B, C, d) @ (B, d, 1)

        return chunked_topk(long, k, score_rows, dim=table.shape[1] + extra, budget=budget, bias=bias)


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

    def score(ids: Tensor) -> Tensor:  # one shared history: its signatures gathered once, XOR-ed with every target
        sig = item_sig[ids[0].numpy()][None, :] if ids.stride(0) == 0 else item_sig[ids.numpy()]
        ham = np.bitwise_count(sig ^ t)
        return -torch.from_numpy(ham.astype(np.int8))  # small integer scores: exact int32 keys, see chunked_topk

    return chunked_topk(long, k, score, dim=1, budget=budget)


class _BucketSum(torch.autograd.Function):
    """Σ over a range of ``table[item_j]`` where ``codes[item_j, r] == query[b, r]``; chunked both ways.

    The backward pass recomputes the matches chunk by chunk instead of storing
    them, so memory stays ``O(B × chunk × D)`` however long the history.
    """

    @staticmethod
    def forward(ctx, table: Tensor, codes: Tensor, query: Tensor, long: LongHistory, budget: int) -> Tensor:  # type: ignore[override]
        ctx.long, ctx.budget = long, budget
        ctx.save_for_backward(codes, query)
        out = table.new_zeros(query.shape[0], query.shape[1], table.shape[1])
        for ids, match in _matches(long, codes, query, table.shape[1], budget):
            if ids.stride(0) == 0:  # one shared history: (B, m, C) @ (C, D), the rows gathered once
                out += torch.matmul(match.transpose(1, 2), table[ids[0]])
            else:
                out += torch.bmm(match.transpose(1, 2), table[ids])  # (B, m, C) @ (B, C, D)
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
    b = len(long.lo)
    longest = long.longest
    for ids, valid, _ in _chunks(long, _chunk_len(b, dim + codes.shape[1], longest, budget)):
        ids, valid = ids.to(codes.device), valid.to(codes.device)
        c = codes[ids[0]][None] if ids.stride(0) == 0 else codes[ids]
        match = (c == query[:, None, :]) & valid.unsqueeze(-1)
        yield ids, match.to(torch.float32)


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
    top = max(int(codes.max()) if codes.numel() else 0, int(query.max()) if query.numel() else 0)
    if top < 128:
        codes, query = codes.to(torch.int8), query.to(torch.int8)  # 1 byte per code: 8x less to gather
    return _BucketSum.apply(table, codes, query, long, budget)
