"""Scored top-k over a per-item table: SIM soft search, TWIN, DARE, MUSE's content cosine."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from userlens.batch import LongHistory
from userlens.layers.gsu.base import CHUNK_BUDGET, Selection, serving_state
from userlens.layers.gsu.slab import chunked_topk

#: a slab's chunk is scored by one matrix product up to this vector width, by gathering item scores above it
SLAB_GEMM_DIM = 32


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
        if state is not None:  # one user's request: score each distinct item once (exact, see serving.state)
            sel = state.item_topk(long, lambda items, newest: (query @ table[torch.from_numpy(items)].t(), None), k)
            if sel is not None:  # None: a request before the latest behaviors, scanned below
                return sel
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
