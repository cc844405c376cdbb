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


def _long(seed: int = 0, batch: int = 12, n: int = 600, layout: str = "random") -> LongHistory:
    """Random ranges over one timeline, or (``layout="users"``) several samples per user as in training.

    ``users``: four users own consecutive stretches of the timeline; each has samples
    at several cutoffs (some repeated), with ``lo`` the user's start or ``cutoff −
    long_len``, so rows of a user are scanned together as slabs; two lone samples
    and an empty history are scanned row by row.
    """
    rng = np.random.default_rng(seed)
    item = rng.integers(2, N_ITEMS, size=n)  # few items: repeats, hence exact score ties
    item_cat = rng.integers(2, N_CATS, size=N_ITEMS)
    tl = {"item": item.astype(np.int32), "category": item_cat[item].astype(np.int32),
          "time": np.arange(n, dtype=np.int64)}
    if layout == "users":
        starts = np.sort(rng.choice(np.arange(1, n), size=3, replace=False))
        bounds = np.concatenate([[0], starts, [n]])
        lo_l, hi_l = [5], [5]  # an empty history
        for u in range(4):
            a, z = int(bounds[u]), int(bounds[u + 1])
            long_len = int(rng.integers(max(1, (z - a) // 2), z - a + 1))
            near = a + 1 if u % 2 else max(a + 1, z - (z - a) // 8)  # even users: cutoffs near their end (slabs)
            for hb in np.sort(rng.integers(near, z + 1, size=int(rng.integers(1, 12)))).tolist() + [z, z]:
                lo_l.append(max(a, hb - long_len))
                hi_l.append(hb)
        lo, hi = np.array(lo_l[: max(batch, len(lo_l))]), np.array(hi_l[: max(batch, len(hi_l))])
    else:
        lo = rng.integers(0, n, size=batch)
        hi = np.minimum(lo + rng.integers(0, 300, size=batch), n)
        lo[0], hi[0] = 5, 5  # an empty history
        lo[1], hi[1] = 0, n  # the whole timeline
    perm = rng.permutation(len(lo))  # rows of one user are not adjacent in a shuffled batch
    return LongHistory(tl, lo[perm].astype(np.int64), hi[perm].astype(np.int64), item_cat,
                       CategoryIndex(tl["category"]))


LAYOUTS = ["random", "users"]


def _rank_topk(scores: dict[int, float], k: int) -> list[int]:
    """Brute force: highest score first, ties to the more recent position, returned oldest first."""
    best = sorted(scores, key=lambda p: (-scores[p], -p))[:k]
    return sorted(best)


def _as_lists(sel) -> list[list[int]]:  # type: ignore[no-untyped-def]
    return [sel.positions[b, : sel.lengths[b]].tolist() for b in range(len(sel.lengths))]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("k", [1, 7, 50])
def test_category_search_is_the_k_most_recent_of_the_category(k: int, layout: str) -> None:
    long = _long(layout=layout)
    cats = np.random.default_rng(1).integers(2, N_CATS, size=len(long.lo))
    sel = long.category_index.search(cats, long.lo, long.hi, k)
    for b, c in enumerate(cats):
        expect = [p for p in range(long.lo[b], long.hi[b]) if long.timeline["category"][p] == c][-k:]
        assert sel.positions[b, : sel.lengths[b]].tolist() == expect
        assert (sel.positions[b, sel.lengths[b]:] == -1).all()


def _category_brute_force(category: np.ndarray, c: int, lo: int, hi: int, k: int) -> list[int]:
    return [p for p in range(lo, hi) if category[p] == c][-k:]


def test_category_ids_that_differ_by_2_to_the_32_are_not_confused() -> None:
    """The old packing (``category << 32``) wrapped such ids onto one key; the key now makes room for both."""
    rng = np.random.default_rng(31)
    category = rng.choice(np.array([3, 3 + (1 << 32), 7, 7 + (1 << 40)]), size=200)
    index = CategoryIndex(category)
    lo, hi = rng.integers(0, 100, size=8), rng.integers(100, 201, size=8)
    for c in (3, 3 + (1 << 32), 7, 7 + (1 << 40), 5, 1 << 50):
        sel = index.search(np.full(8, c), lo, hi, 6)
        assert _as_lists(sel) == [_category_brute_force(category, c, int(a), int(b), 6) for a, b in zip(lo, hi)]


def test_category_index_widens_positions_past_2_to_the_32_and_refuses_ids_that_do_not_fit() -> None:
    """Keys hold positions of a timeline longer than 2**32 (checked by reserving the room, not by allocating
    it); category ids that would overflow the key raise instead of silently mixing categories."""
    from userlens.layers.gsu.category import position_bits

    assert position_bits(2**32 - 1) == 32 and position_bits(2**32) == 33
    category = np.random.default_rng(32).integers(2, 9, size=300)
    index = CategoryIndex(category)
    index.reserve(2**32 + 7)  # as if the timeline were about to grow past 2**32 behaviors
    assert index.shift == 33
    lo, hi = np.array([0, 10, 250]), np.array([300, 200, 300])
    sel = index.search(np.array([2, 5, 8]), lo, hi, 9)
    assert _as_lists(sel) == [_category_brute_force(category, c, a, b, 9) for c, a, b in zip([2, 5, 8], lo, hi)]
    with pytest.raises(ValueError, match=r"category ids must be in \[0, 2\*\*29\).*got ids from 2 to 536870912"):
        index.reserve(300, np.array([2, 1 << 29]))
    assert index.shift == 33 and index.top == 8  # a refused reserve changes nothing
    with pytest.raises(ValueError, match="got ids from -1 to"):
        CategoryIndex(np.array([4, -1, 2]))


def test_category_index_extended_across_powers_of_two_equals_one_built_at_once() -> None:
    rng = np.random.default_rng(33)
    category = rng.integers(2, 9, size=700)
    index = CategoryIndex(category[:5])
    for a, b in [(5, 8), (8, 9), (9, 64), (64, 65), (65, 700)]:  # crossing 8, 64, 512: the position field widens
        index.extend(category[a:b])
    whole = CategoryIndex(category)
    assert index.shift == whole.shift == 10
    np.testing.assert_array_equal(index.keys, whole.keys)
    np.testing.assert_array_equal(index.positions, whole.positions)
    sel = index.search(np.full(4, 6), np.array([0, 3, 500, 699]), np.array([700, 9, 700, 700]), 5)
    assert _as_lists(sel) == [_category_brute_force(category, 6, a, b, 5) for a, b in [(0, 700), (3, 9), (500, 700),
                                                                                          (699, 700)]]


# 64: chunks of a few behaviors, gathering table rows; 4M: one chunk over the full (B, n_items) score matrix
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("budget, catalogue", [(64, N_ITEMS), (1 << 22, N_ITEMS), (64, 5000), (1 << 22, 5000)])
def test_table_topk_equals_brute_force(budget: int, catalogue: int, layout: str) -> None:
    """Full score matrix or per-behavior products, slabs or rows, small or large chunks: the same picks."""
    long = _long(seed=2, layout=layout)
    rng = np.random.default_rng(3)
    # small integers: dot products are exact, so ties are exact and the tie rule is tested
    table = torch.from_numpy(rng.integers(-2, 3, size=(catalogue, 4)).astype(np.float32))
    query = torch.from_numpy(rng.integers(-2, 3, size=(len(long.lo), 4)).astype(np.float32))
    sel = table_topk(long, query, table, k=9, budget=budget)
    for b in range(len(long.lo)):
        scores = {p: float(query[b] @ table[long.timeline["item"][p]]) for p in range(long.lo[b], long.hi[b])}
        assert _as_lists(sel)[b] == _rank_topk(scores, 9)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("budget", [64, 1 << 22])
def test_table_topk_with_a_per_behavior_bias_equals_brute_force(budget: int, layout: str) -> None:
    """A bias per (row, timeline position) (TWIN's time-gap term) is added to the item score before ranking."""
    long = _long(seed=7, layout=layout)
    rng = np.random.default_rng(8)
    table = torch.from_numpy(rng.integers(-2, 3, size=(N_ITEMS, 4)).astype(np.float32))
    query = torch.from_numpy(rng.integers(-2, 3, size=(len(long.lo), 4)).astype(np.float32))
    offset = torch.from_numpy(rng.integers(-3, 4, size=len(long.timeline["item"])).astype(np.float32))
    per_row = torch.from_numpy(rng.integers(-2, 3, size=len(long.lo)).astype(np.float32))
    seen: list[torch.Tensor] = []

    def bias(pos: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        seen.append(pos)
        return offset[pos] + per_row[rows][:, None] * (pos % 3)

    sel = table_topk(long, query, table, k=9, budget=budget, bias=bias)
    assert all(int(p.min()) >= 0 and int(p.max()) < len(offset) for p in seen)
    for b in range(len(long.lo)):
        scores = {p: float(query[b] @ table[long.timeline["item"][p]]) + float(offset[p]) + float(per_row[b]) * (p % 3)
                  for p in range(long.lo[b], long.hi[b])}
        assert _as_lists(sel)[b] == _rank_topk(scores, 9)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_hamming_topk_equals_brute_force(layout: str) -> None:
    long = _long(seed=4, layout=layout)
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


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("budget", [40, 1 << 22])
@pytest.mark.parametrize(("n_codes", "rounds", "sparse_share"), [
    (4, 5, 1 / 16),  # narrow codes, one byte each, dense matches: the batched product
    (4, 5, 1.0),  # the same chunks summed as sparse match lists
    (256, 9, 1 / 16),  # wide codes packed 8 to a word (two words, padded), sparse matches
    (256, 9, 0.0),  # the same through the dense product
    (300, 3, 1 / 16),  # codes that do not fit a byte: gathered as int64
])
def test_bucket_sum_and_its_gradient_equal_a_dense_reference(layout: str, budget: int, n_codes: int, rounds: int,
                                                           sparse_share: float, monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """Row by row (small budget, random ranges) or by segments (rows of one user share behaviors); every way
    a chunk's matches are formed (packed or not) and summed (sparse or dense) gives the reference."""
    import userlens.layers.gsu.buckets as buckets

    monkeypatch.setattr(buckets, "SPARSE_SHARE", sparse_share)
    long = _long(seed=5, batch=8, n=300, layout=layout)
    g = torch.Generator().manual_seed(1)
    table = torch.randn(N_ITEMS, 3, generator=g, requires_grad=True)
    codes = torch.randint(0, n_codes, (N_ITEMS, rounds), generator=g)
    query = torch.randint(0, n_codes, (len(long.lo), rounds), generator=g)
    query[::2] = codes[torch.from_numpy(long.timeline["item"][long.lo[::2]].astype(np.int64))]  # wide codes match too
    out = bucket_sum(long, table, codes, query, budget=budget)
    ref_rows = []
    for b in range(len(long.lo)):
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

    def score(ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
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
    from userlens.layers.gsu import chunks, partition

    long = _shared_long(seed=11)
    [(rows, slab)] = partition(long.lo, long.hi)
    assert slab and len(rows) == len(long.lo)
    ids, _, _ = next(iter(chunks(long, 32, slab=True)))
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
        ref = (codes[items] == bq[b]).double().t() @ vectors[items].double()  # float64: sums of ~600 terms
        torch.testing.assert_close(sums[b].double(), ref, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.int8, torch.int64, torch.float32])
@pytest.mark.parametrize("layout", ["shared", *LAYOUTS])
def test_integer_and_float_scores_rank_alike_with_ties_to_the_most_recent(dtype: torch.dtype, layout: str) -> None:
    """Exact keys for int8 scores (packed per chunk), other integers as float32 = the float path = brute force."""
    from userlens.layers.gsu import chunked_topk

    long = _shared_long(seed=13) if layout == "shared" else _long(seed=13, layout=layout)
    values = torch.from_numpy(np.random.default_rng(14).integers(-5, 3, size=N_ITEMS))  # heavy ties

    def score(ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return values[ids].to(dtype)

    sel = chunked_topk(long, 7, score, budget=64)
    for b in range(len(long.lo)):
        scores = {p: float(values[long.timeline["item"][p]]) for p in range(long.lo[b], long.hi[b])}
        assert _as_lists(sel)[b] == _rank_topk(scores, 7)


@pytest.mark.parametrize("seed", range(6))
def test_partition_covers_every_row_once_and_slabs_only_join_overlapping_rows(seed: int) -> None:
    """Each row lands in exactly one group; a slab's rows all overlap its newest row and stay within the slack."""
    from userlens.layers.gsu import partition

    long = _long(seed=seed, layout="users")
    parts = partition(long.lo, long.hi, slack=0.25, min_rows=2)
    rows = np.concatenate([r for r, _ in parts])
    assert sorted(rows.tolist()) == list(range(len(long.lo)))
    slabs = [r for r, slab in parts if slab]
    assert slabs and any(not slab for _, slab in parts)  # the users layout exercises both scans
    for r in slabs:
        lo, hi = long.lo[r], long.hi[r]
        a = int(np.argmax(hi))
        assert len(r) >= 2 and (hi > lo).all()
        assert (hi > lo[a]).all() and (hi.max() - hi <= 0.25 * (hi - lo)).all()
        assert (np.abs(lo - lo[a]) <= 0.25 * (hi - lo)).all()


@pytest.mark.parametrize("seed", range(4))
def test_block_prefilter_keeps_the_exact_top_k_with_ties_and_holes(seed: int) -> None:
    """Long recency-ordered rows (heavy ties, masked runs) give what the full-row top-k gives."""
    from userlens.layers.gsu.topk import BLOCK, topk_recent, topk_recent_ordered

    rng = np.random.default_rng(seed)
    b, n, k = 6, 64 * BLOCK, 7
    s = torch.from_numpy(rng.integers(-4, 3, size=(b, n)).astype(np.float32))  # few values: ties everywhere
    s[0] = -5.0  # one row: a single value (one tie over the whole row)
    s[1, : n // 2] = float("-inf")  # masked halves and runs
    s[2, n // 3 : 2 * n // 3] = float("-inf")
    s[3] = float("-inf")
    s[3, 5], s[3, 9] = 1.0, 1.0  # fewer real entries than k
    pos = torch.arange(1000, 1000 + n).expand(b, n)
    got_s, got_p = topk_recent_ordered(s, pos, k)
    ref_s, ref_p = topk_recent(s, pos, k)

    def as_set(v: torch.Tensor, p: torch.Tensor) -> list[set[int]]:
        return [{int(x) for x, y in zip(p[r], v[r]) if y > float("-inf")} for r in range(b)]

    assert as_set(got_s, got_p) == as_set(ref_s, ref_p)
    for r in range(b):  # and both equal brute force: highest score, then most recent
        real = [(float(s[r, c]), int(pos[r, c])) for c in range(n) if s[r, c] > float("-inf")]
        assert as_set(got_s, got_p)[r] == {p for _, p in sorted(real, reverse=True)[:k]}


def test_long_slabs_equal_brute_force() -> None:
    """20,000-behavior histories of few items, rows of one user at several cutoffs: blocks, slabs and ties
    (float scores and ETA's integer distances)."""
    from userlens.layers.gsu import CHUNK_BUDGET, partition
    from userlens.layers.gsu.slab import chunk_len
    from userlens.layers.gsu.topk import BLOCK

    rng = np.random.default_rng(21)
    n, k = 40_000, 20
    item = rng.integers(2, 12, size=n)  # 10 items: every score repeats thousands of times
    item_cat = rng.integers(2, N_CATS, size=N_ITEMS)
    tl = {"item": item.astype(np.int32), "category": item_cat[item].astype(np.int32),
          "time": np.arange(n, dtype=np.int64)}
    # two users, [0, 20000) and [20000, 40000), nine samples each; one of the second user's is far from the others
    hi = np.array([20_000, 20_000, 19_990, 19_500, 19_000, 18_000, 17_000, 16_500, 16_000,
                   40_000, 39_999, 39_000, 38_500, 38_000, 37_500, 37_000, 36_500, 30_000], dtype=np.int64)
    lo = np.where(hi > 20_000, 20_000, 0).astype(np.int64)
    perm = rng.permutation(len(hi))  # a user's rows are not adjacent in the batch
    lo, hi = lo[perm], hi[perm]
    parts = partition(lo, hi)
    slabs = [rows for rows, slab in parts if slab]
    assert len(slabs) == 2 and sorted(len(r) for r in slabs) == [8, 9]  # the slab scan is what is under test
    assert [len(rows) for rows, slab in parts if not slab] == [1]  # and the row-by-row scan beside it
    for rows in slabs:  # a slab's chunks are long enough for the block prefilter
        assert chunk_len(len(rows), 1, int(hi[rows].max() - lo[rows].min()), CHUNK_BUDGET) >= 8 * k * BLOCK
    long = LongHistory(tl, lo, hi, item_cat)
    table = torch.from_numpy(rng.normal(size=(N_ITEMS, 4)).astype(np.float32))
    query = torch.from_numpy(rng.normal(size=(len(lo), 4)).astype(np.float32))
    sel = table_topk(long, query, table, k=k)
    hasher = SimHash(4, bits=16, seed=0)
    item_sig, target_sig = hasher(table), hasher(query)
    ham = hamming_topk(long, target_sig, item_sig, k=k)  # int8 distances: exact keys, prefiltered by blocks
    item_score = (query @ table.t()).numpy()  # (B, n_items): a behavior's score is its item's
    item_ham = -np.bitwise_count(item_sig[None, :] ^ target_sig[:, None]).astype(np.int64)
    for b in range(len(lo)):
        p = np.arange(lo[b], hi[b])
        order = np.lexsort((-p, -item_score[b, item[p]]))  # score desc, then most recent
        assert _as_lists(sel)[b] == sorted(p[order[:k]].tolist())
        order = np.lexsort((-p, -item_ham[b, item[p]]))
        assert _as_lists(ham)[b] == sorted(p[order[:k]].tolist())
