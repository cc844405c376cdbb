"""Every GSU against a brute-force reference on random data (exact; chunking must not change a thing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from userlens.batch import LongHistory
from userlens.layers.gsu import (
    CategoryIndex,
    SimHash,
    bucket_sum,
    hamming_topk,
    table_topk,
)

N_ITEMS, N_CATS = 40, 5


def _long(seed: int = 0, batch: int = 12, n: int = 600) -> LongHistory:
    rng = np.random.default_rng(seed)
    item = rng.integers(2, N_ITEMS, size=n)  # few items: repeats, hence exact score ties
    item_cat = rng.integers(2, N_CATS, size=N_ITEMS)
    tl = {"item": item.astype(np.int32), "category": item_cat[item].astype(np.int32),
          "time": np.arange(n, dtype=np.int64)}
    lo = rng.integers(0, n, size=batch)
    hi = np.minimum(lo + rng.integers(0, 300, size=batch), n)
    lo[0], hi[0] = 5, 5  # an empty history
    lo[1], hi[1] = 0, n  # the whole timeline
    return LongHistory(tl, lo.astype(np.int64), hi.astype(np.int64), item_cat, CategoryIndex(tl["category"]))


def _rank_topk(scores: dict[int, float], k: int) -> list[int]:
    """Brute force: highest score first, ties to the more recent position, returned oldest first."""
    best = sorted(scores, key=lambda p: (-scores[p], -p))[:k]
    return sorted(best)


def _as_lists(sel) -> list[list[int]]:  # type: ignore[no-untyped-def]
    return [sel.positions[b, : sel.lengths[b]].tolist() for b in range(len(sel.lengths))]


@pytest.mark.parametrize("k", [1, 7, 50])
def test_category_search_is_the_k_most_recent_of_the_category(k: int) -> None:
    long = _long()
    cats = np.random.default_rng(1).integers(2, N_CATS, size=len(long.lo))
    sel = long.category_index.search(cats, long.lo, long.hi, k)
    for b, c in enumerate(cats):
        expect = [p for p in range(long.lo[b], long.hi[b]) if long.timeline["category"][p] == c][-k:]
        assert sel.positions[b, : sel.lengths[b]].tolist() == expect
        assert (sel.positions[b, sel.lengths[b]:] == -1).all()


# 64: chunks of a few behaviors, gathering table rows; 4M: one chunk over the full (B, n_items) score matrix
@pytest.mark.parametrize("budget", [64, 1 << 22])
def test_table_topk_equals_brute_force(budget: int) -> None:
    long = _long(seed=2)
    rng = np.random.default_rng(3)
    # small integers: dot products are exact, so ties are exact and the tie rule is tested
    table = torch.from_numpy(rng.integers(-2, 3, size=(N_ITEMS, 4)).astype(np.float32))
    query = torch.from_numpy(rng.integers(-2, 3, size=(len(long.lo), 4)).astype(np.float32))
    sel = table_topk(long, query, table, k=9, budget=budget)
    for b in range(len(long.lo)):
        scores = {p: float(query[b] @ table[long.timeline["item"][p]]) for p in range(long.lo[b], long.hi[b])}
        assert _as_lists(sel)[b] == _rank_topk(scores, 9)


@pytest.mark.parametrize("budget", [64, 1 << 22])
def test_table_topk_with_a_per_behavior_bias_equals_brute_force(budget: int) -> None:
    """A bias per timeline position (TWIN's time-gap term) is added to the item score before ranking."""
    long = _long(seed=7)
    rng = np.random.default_rng(8)
    table = torch.from_numpy(rng.integers(-2, 3, size=(N_ITEMS, 4)).astype(np.float32))
    query = torch.from_numpy(rng.integers(-2, 3, size=(len(long.lo), 4)).astype(np.float32))
    offset = torch.from_numpy(rng.integers(-3, 4, size=len(long.timeline["item"])).astype(np.float32))
    seen: list[torch.Tensor] = []

    def bias(pos: torch.Tensor) -> torch.Tensor:
        seen.append(pos)
        return offset[pos]

    sel = table_topk(long, query, table, k=9, budget=budget, bias=bias)
    assert all(int(p.min()) >= 0 and int(p.max()) < len(offset) for p in seen)
    for b in range(len(long.lo)):
        scores = {p: float(query[b] @ table[long.timeline["item"][p]]) + float(offset[p])
                  for p in range(long.lo[b], long.hi[b])}
        assert _as_lists(sel)[b] == _rank_topk(scores, 9)


def test_hamming_topk_equals_brute_force() -> None:
    long = _long(seed=4)
    hasher = SimHash(6, bits=16, seed=0)
    emb = torch.randn(N_ITEMS, 6, generator=torch.Generator().manual_seed(0))
    item_sig = hasher(emb)
    target_sig = hasher(torch.randn(len(long.lo), 6))
    assert item_sig.dtype == np.uint16 and item_sig.shape == (N_ITEMS,)
    sel = hamming_topk(long, target_sig, item_sig, k=11, budget=50)
    for b in range(len(long.lo)):
        scores = {p: -bin(int(item_sig[long.timeline["item"][p]]) ^ int(target_sig[b])).count("1")
                  for p in range(long.lo[b], long.hi[b])}
        assert _as_lists(sel)[b] == _rank_topk(scores, 11)


def test_simhash_is_locality_sensitive() -> None:
    """Near vectors share more signature bits than unrelated ones (what ETA relies on)."""
    hasher = SimHash(32, bits=64, seed=1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 32, generator=g)
    near = hasher(x + 0.1 * torch.randn(200, 32, generator=g))
    far = hasher(torch.randn(200, 32, generator=g))
    base = hasher(x)
    assert np.bitwise_count(base ^ near).mean() < 8 < 24 < np.bitwise_count(base ^ far).mean()


def test_bucket_sum_and_its_gradient_equal_a_dense_reference() -> None:
    long = _long(seed=5, batch=8, n=300)
    g = torch.Generator().manual_seed(1)
    table = torch.randn(N_ITEMS, 3, generator=g, requires_grad=True)
    codes = torch.randint(0, 4, (N_ITEMS, 5), generator=g)
    query = torch.randint(0, 4, (8, 5), generator=g)
    out = bucket_sum(long, table, codes, query, budget=40)
    ref_rows = []
    for b in range(8):
        items = torch.from_numpy(long.timeline["item"][long.lo[b]:long.hi[b]].astype(np.int64))
        match = (codes[items] == query[b]).float()  # (n_b, rounds)
        ref_rows.append(match.t() @ table[items])  # (rounds, D)
    ref = torch.stack(ref_rows)
    torch.testing.assert_close(out, ref)
    w = torch.randn_like(out)
    (g_out,) = torch.autograd.grad((out * w).sum(), table)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), table)
    torch.testing.assert_close(g_out, g_ref)


def test_a_scan_never_materialises_more_than_its_budget() -> None:
    """100,000 behaviors per row: each chunk the scorer sees holds at most budget / dim behaviors."""
    from userlens.layers.gsu import chunked_topk

    n, batch, dim, budget = 100_000, 16, 32, 1 << 16
    tl = {"item": np.arange(n, dtype=np.int32) % N_ITEMS, "category": np.zeros(n, dtype=np.int32)}
    long = LongHistory(tl, np.zeros(batch, dtype=np.int64), np.full(batch, n, dtype=np.int64),
                       np.zeros(N_ITEMS, dtype=np.int32))
    shapes: list[tuple[int, ...]] = []

    def score(ids: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(ids.shape))
        return ids.float()  # higher item id = better; ties by recency

    sel = chunked_topk(long, 5, score, dim=dim, budget=budget)
    assert max(b * c for b, c in shapes) * dim <= budget
    assert sum(c for _, c in shapes) >= n  # every behavior was scored
    best = [p for p in range(n) if p % N_ITEMS == N_ITEMS - 1][-5:]  # the 5 most recent of the top item
    assert sel.positions[0].tolist() == best


def _shared_long(seed: int, batch: int = 9, n: int = 700) -> LongHistory:
    """Every row reads the same range (a serving request): the scans take their one-row path."""
    long = _long(seed=seed, batch=batch, n=n)
    lo, hi = np.full(batch, 40, dtype=np.int64), np.full(batch, 650, dtype=np.int64)
    return LongHistory(long.timeline, lo, hi, long.item_category, long.category_index)


# 64 / 4M budget; a catalogue smaller (full score matrix) or larger (history rows scored once) than the history
@pytest.mark.parametrize("budget, catalogue", [(64, N_ITEMS), (1 << 22, N_ITEMS), (64, 5000), (1 << 22, 5000)])
def test_one_shared_history_scores_as_separate_rows(budget: int, catalogue: int) -> None:
    """The shared-range fast path (expanded ids) gives exactly the per-row results, ties included."""
    from userlens.layers.gsu import _chunks, _shared

    long = _shared_long(seed=11)
    assert _shared(long)
    ids, _, _ = next(iter(_chunks(long, 32)))
    assert ids.stride(0) == 0  # the fast path is the one under test
    rng = np.random.default_rng(12)
    table = torch.from_numpy(rng.integers(-2, 3, size=(catalogue, 4)).astype(np.float32))
    query = torch.from_numpy(rng.integers(-2, 3, size=(len(long.lo), 4)).astype(np.float32))
    sel = table_topk(long, query, table, k=9, budget=budget)
    hasher = SimHash(6, bits=16, seed=0)
    item_sig = hasher(torch.randn(N_ITEMS, 6, generator=torch.Generator().manual_seed(0)))
    target_sig = hasher(torch.randn(len(long.lo), 6))
    ham = hamming_topk(long, target_sig, item_sig, k=11, budget=budget)
    g = torch.Generator().manual_seed(1)
    vectors = torch.randn(N_ITEMS, 3, generator=g)
    codes = torch.randint(0, 4, (N_ITEMS, 5), generator=g)
    bq = torch.randint(0, 4, (len(long.lo), 5), generator=g)
    sums = bucket_sum(long, vectors, codes, bq, budget=budget)
    for b in range(len(long.lo)):
        scores = {p: float(query[b] @ table[long.timeline["item"][p]]) for p in range(long.lo[b], long.hi[b])}
        assert _as_lists(sel)[b] == _rank_topk(scores, 9)
        hs = {p: -bin(int(item_sig[long.timeline["item"][p]]) ^ int(target_sig[b])).count("1")
              for p in range(long.lo[b], long.hi[b])}
        assert _as_lists(ham)[b] == _rank_topk(hs, 11)
        items = torch.from_numpy(long.timeline["item"][long.lo[b]:long.hi[b]].astype(np.int64))
        torch.testing.assert_close(sums[b], (codes[items] == bq[b]).float().t() @ vectors[items])


@pytest.mark.parametrize("dtype", [torch.int8, torch.int64, torch.float32])
@pytest.mark.parametrize("shared", [False, True])
def test_integer_and_float_scores_rank_alike_with_ties_to_the_most_recent(dtype: torch.dtype, shared: bool) -> None:
    """Exact keys for int8 scores (packed per chunk), other integers as float32 = the float path = brute force."""
    from userlens.layers.gsu import chunked_topk

    long = _shared_long(seed=13) if shared else _long(seed=13)
    values = torch.from_numpy(np.random.default_rng(14).integers(-5, 3, size=N_ITEMS))  # heavy ties

    def score(ids: torch.Tensor) -> torch.Tensor:
        return values[ids].to(dtype)

    sel = chunked_topk(long, 7, score, budget=64)
    for b in range(len(long.lo)):
        scores = {p: float(values[long.timeline["item"][p]]) for p in range(long.lo[b], long.hi[b])}
        assert _as_lists(sel)[b] == _rank_topk(scores, 7)


@pytest.mark.parametrize("integer", [True, False])
@pytest.mark.parametrize("catalogue", [N_ITEMS, 5000])
def test_serving_state_scores_each_item_once_with_the_same_picks(integer: bool, catalogue: int) -> None:
    """The item-grouped top-k of a serving request (state kept per user) = the scan = brute force."""
    from userlens.layers.gsu import HistoryState

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
    from userlens.layers.gsu import HistoryState

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
