"""Per-user serving state (``serving/state.py``): the item-grouped top-k picks exactly what the scan picks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from userlens.batch import LongHistory
from userlens.layers.gsu import SimHash, hamming_topk, table_topk
from userlens.serving.state import HistoryState

from ..layers.test_gsu import N_ITEMS, _as_lists, _long, _rank_topk


@pytest.mark.parametrize("integer", [True, False])
@pytest.mark.parametrize("catalogue", [N_ITEMS, 5000])
def test_serving_state_scores_each_item_once_with_the_same_picks(integer: bool, catalogue: int) -> None:
    """The item-grouped top-k of a serving request (state kept per user) = the scan = brute force."""
    base = _long(seed=15, n=700)
    n = 650
    lo, hi = np.zeros(9, dtype=np.int64), np.full(9, n, dtype=np.int64)
    rng = np.random.default_rng(16)
    draw = (lambda *shape: rng.integers(-2, 3, size=shape)) if integer else (lambda *shape: rng.normal(size=shape))
    table = torch.from_numpy(draw(catalogue, 4).astype(np.float32))
    query = torch.from_numpy(draw(9, 4).astype(np.float32))
    state = HistoryState()
    with torch.no_grad():
        plain = table_topk(LongHistory(base.timeline, lo, hi, base.item_category), query, table, k=9)
        kept = table_topk(LongHistory(base.timeline, lo, hi, base.item_category, state=state), query, table, k=9)
    assert "item_groups" in state.parts  # the grouped path ran
    assert _as_lists(kept) == _as_lists(plain)
    for b in range(9):
        scores = {p: float(query[b] @ table[base.timeline["item"][p]]) for p in range(n)}
        assert _as_lists(kept)[b] == _rank_topk(scores, 9)


def test_serving_state_hamming_search_equals_the_scan() -> None:
    """ETA's grouped search (distances of distinct items, nearly all tied) picks what the scan picks."""
    base = _long(seed=17, n=700)
    lo, hi = np.zeros(9, dtype=np.int64), np.full(9, 650, dtype=np.int64)
    hasher = SimHash(6, bits=16, seed=0)
    item_sig = hasher(torch.randn(N_ITEMS, 6, generator=torch.Generator().manual_seed(3)))
    target_sig = hasher(torch.randn(9, 6, generator=torch.Generator().manual_seed(4)))
    state = HistoryState()
    with torch.no_grad():
        plain = hamming_topk(LongHistory(base.timeline, lo, hi, base.item_category), target_sig, item_sig, k=11)
        kept = hamming_topk(LongHistory(base.timeline, lo, hi, base.item_category, state=state), target_sig,
                            item_sig, k=11)
    assert "item_groups" in state.parts
    assert _as_lists(kept) == _as_lists(plain)
