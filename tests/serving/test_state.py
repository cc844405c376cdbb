"""Per-user serving state (``serving/state.py``): the item-grouped top-k picks exactly what the scan picks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from userlens.batch import LongHistory
from userlens.layers.gsu import SimHash, hamming_topk, table_topk
from userlens.serving.state import HistoryState
from userlens.serving.store.base import UserHistory

from ..layers.test_gsu import N_ITEMS, _as_lists, _long, _rank_topk


def _window(timeline: dict[str, np.ndarray], n: int) -> HistoryState:
    """A user's serving state over the first ``n`` rows of ``timeline`` (its window)."""
    return HistoryState.of(UserHistory(timeline["item"][:n], timeline["category"][:n], timeline["time"][:n],
                                       np.zeros(n, np.int16), start=0, tag=7))


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
    state = _window(base.timeline, n)
    with torch.no_grad():
        plain = table_topk(LongHistory(base.timeline, lo, hi, base.item_category), query, table, k=9)
        kept = table_topk(LongHistory(base.timeline, lo, hi, base.item_category, state=state), query, table, k=9)
    assert state._groups is not None  # the grouped path ran
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
    state = _window(base.timeline, 650)
    with torch.no_grad():
        plain = hamming_topk(LongHistory(base.timeline, lo, hi, base.item_category), target_sig, item_sig, k=11)
        kept = hamming_topk(LongHistory(base.timeline, lo, hi, base.item_category, state=state), target_sig,
                            item_sig, k=11)
    assert state._groups is not None
    assert _as_lists(kept) == _as_lists(plain)


def test_sliding_parts_equal_parts_built_afresh() -> None:
    """A stream at the cap (1–3 events per sync): the slid indexes, item groups and running totals equal
    those of a state built afresh over the same window, and stay the window's size."""
    rng = np.random.default_rng(21)
    cap, total_rows = 50, 400
    log = UserHistory(rng.integers(2, 30, total_rows).astype(np.int32), rng.integers(2, 9, total_rows).astype(np.int32),
                      np.arange(total_rows, dtype=np.int64), np.zeros(total_rows, np.int16), start=0, tag=9)

    def rows(a: int, b: int) -> UserHistory:
        return UserHistory(log.item[a:b], log.category[a:b], log.time[a:b], log.behavior[a:b], start=a, tag=9)

    def count(acc: object, items: np.ndarray, sign: int) -> np.ndarray:  # a running total: item histogram
        out = np.zeros(32, np.int64) if acc is None else acc.copy()  # type: ignore[union-attr]
        np.add.at(out, items, sign)
        return out

    def parts(state: HistoryState) -> tuple:
        h = state.history()
        long = LongHistory({"item": h.item, "category": h.category, "time": h.time}, np.zeros(1, np.int64),
                           np.full(1, len(h), np.int64), np.zeros(40, np.int64), state=state)
        g = state.item_groups(long)
        return (state.index("item").keys.tolist(), state.index("category").keys.tolist(), g.items.tolist(),
                g.counts.tolist(), g.newest.tolist(), g.positions.tolist(), state.total("n", long, count).tolist())

    state = HistoryState(cap)
    state.sync(rows(0, 30))
    parts(state)  # build every part once; from here on they slide
    end = 30
    while end < total_rows:
        step = int(rng.integers(1, 4))
        assert state.sync(rows(end, min(end + step, total_rows)))
        end = min(end + step, total_rows)
        fresh = HistoryState.of(rows(max(0, end - cap), end), cap)
        assert parts(state) == parts(fresh), end
        assert len(state.index("item").keys) == min(end, cap) and state.start == max(0, end - cap)
        h = state.history()  # a request cut 3 rows before the window's end: the total minus those rows
        cut = LongHistory({"item": h.item, "category": h.category, "time": h.time}, np.zeros(1, np.int64),
                          np.full(1, len(h) - 3, np.int64), np.zeros(40, np.int64), state=state)
        assert state.total("n", cut, count).tolist() == np.bincount(h.item[:-3], minlength=32).tolist()
        g = state.item_groups(cut)  # ... and the item groups of the rows before the cut
        assert g.items.tolist() == np.unique(h.item[:-3]).tolist() and g.n == len(h) - 3
        assert g.newest.tolist() == [int(np.flatnonzero(h.item[:-3] == i).max()) for i in g.items]
    assert state.rebuilds == 1 and state.slides > 100
