"""History gathering against a brute-force reference, and the batch loader's epoch contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from userlens.batch import ALL_FIELDS
from userlens.data.loader import BatchLoader, gather_history
from userlens.data.prepare import PrepareOptions, prepare, sources_from_files
from userlens.data.prepared import PreparedData
from userlens.synthetic import leakage_log

# --------------------------------------------------------------------------- gather_history


def _random_csr(rng: np.random.Generator, n_users: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    lengths = rng.integers(0, 30, size=n_users)
    lengths[rng.random(n_users) < 0.2] = 0  # plenty of users without any behavior
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = int(offsets[-1])
    timeline = {
        "item": rng.integers(2, 1000, size=n).astype(np.int32),
        "category": rng.integers(2, 50, size=n).astype(np.int32),
        "behavior": rng.integers(2, 5, size=n).astype(np.int16),
        "time": np.sort(rng.integers(10**12, 2 * 10**12, size=n)).astype(np.int64),
    }
    return offsets, timeline


def _reference(offsets, timeline, user, cutoff, max_len, fields):
    """One sample at a time, in plain Python."""
    out = {f: np.zeros((len(user), max_len), dtype=np.int64) for f in fields}
    lengths = np.zeros(len(user), dtype=np.int64)
    for b, (u, c) in enumerate(zip(user.tolist(), cutoff.tolist())):
        window = list(range(offsets[u], c))[-max_len:] if max_len else []  # most recent max_len, oldest first
        lengths[b] = len(window)
        for f in fields:
            for j, k in enumerate(window):
                out[f][b, j] = timeline[f][k]
    return out, lengths


@pytest.mark.parametrize("max_len", [1, 5, 17, 64])
@pytest.mark.parametrize("seed", [0, 1])
def test_gather_history_matches_a_brute_force_reference(max_len: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    offsets, timeline = _random_csr(rng, n_users=60)
    user = rng.integers(0, 60, size=300)
    start, end = offsets[user], offsets[user + 1]
    cutoff = start + (rng.random(300) * (end - start + 1)).astype(np.int64)  # anywhere in [start, end]
    fields = ["item", "category", "behavior", "time"]
    got, lengths = gather_history(offsets, timeline, user, cutoff, max_len, fields)
    want, want_len = _reference(offsets, timeline, user, cutoff, max_len, fields)
    assert lengths.dtype == np.int64 and np.array_equal(lengths, want_len)
    for f in fields:
        assert got[f].dtype == np.int64 and got[f].shape == (300, max_len)
        assert np.array_equal(got[f], want[f]), f
    # the cases the test is meant to cover actually occur
    assert (lengths == 0).any()
    if max_len > 1:
        assert ((lengths > 0) & (lengths < max_len)).any()
    if max_len < 29:
        assert (cutoff - start > max_len).any() and (lengths == max_len).any()


def test_gather_history_layout_on_a_tiny_example() -> None:
    offsets = np.array([0, 0, 4, 6], dtype=np.int64)  # user 0: none, user 1: 4 behaviors, user 2: 2
    timeline = {"item": np.array([10, 11, 12, 13, 20, 21])}
    user = np.array([1, 1, 1, 0, 2])
    cutoff = np.array([4, 2, 0, 0, 6])
    got, lengths = gather_history(offsets, timeline, user, cutoff, 3, ["item"])
    assert lengths.tolist() == [3, 2, 0, 0, 2]
    assert got["item"].tolist() == [[11, 12, 13],  # the 3 most recent of 4, oldest first
                                    [10, 11, 0],  # left-aligned, zero-padded
                                    [0, 0, 0],  # cutoff at the user's start: empty history
                                    [0, 0, 0],  # user without behaviors
                                    [20, 21, 0]]


def test_gather_history_gathers_only_the_requested_fields() -> None:
    offsets = np.array([0, 2], dtype=np.int64)
    timeline = {"item": np.array([5, 6]), "time": np.array([1, 2])}
    got, _ = gather_history(offsets, timeline, np.array([0]), np.array([2]), 4, ["time"])
    assert set(got) == {"time"} and got["time"].tolist() == [[1, 2, 0, 0]]


# --------------------------------------------------------------------------- BatchLoader


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    tmp = tmp_path_factory.mktemp("loader")
    log = leakage_log(n_users=30, n_items=60, behaviors_per_user=25, impressions_per_user=11, seed=5)
    paths = log.write(tmp / "raw")
    prepare(sources_from_files(paths["behaviors"], paths["impressions"], paths["items"]), tmp / "out",
            PrepareOptions(valid_fraction=0.1, test_fraction=0.1), log=lambda *_: None)
    return PreparedData(tmp / "out")


def _rows(batches) -> np.ndarray:
    """(user, target_item, time, label) of every sample in ``batches``, sorted."""
    rows = np.concatenate([
        np.stack([b.target["user"].numpy(), b.target["target_item"].numpy(), b.target["time"].numpy(),
                  b.label.numpy().astype(np.int64)], axis=1) for b in batches])
    return rows[np.lexsort(rows.T[::-1])]


def _sample_rows(s) -> np.ndarray:
    rows = np.stack([np.asarray(a, dtype=np.int64) for a in (s.user, s.item, s.time, s.label)], axis=1)
    return rows[np.lexsort(rows.T[::-1])]


def _same(a, b) -> bool:
    ta = (a.target, a.history.values, {"lengths": a.history.lengths}, {"label": a.label}, a.context)
    tb = (b.target, b.history.values, {"lengths": b.history.lengths}, {"label": b.label}, b.context)
    return all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(ta, tb))


def test_only_the_requested_fields_are_built(data: PreparedData) -> None:
    b = next(iter(BatchLoader(data, "train", {"hist_item", "target_item"}, batch_size=16, prefetch=0)))
    assert set(b.target) == {"target_item"} and set(b.history.values) == {"item"}
    b = next(iter(BatchLoader(data, "train", {"hist_category", "hist_time", "target_category"}, batch_size=16,
                              prefetch=0)))
    assert set(b.target) == {"target_category"}
    assert set(b.history.values) == {"category", "time"}
    b = next(iter(BatchLoader(data, "train", ALL_FIELDS, batch_size=16, prefetch=0)))
    assert {"user", "target_item", "target_category", "time"} <= set(b.target)
    assert set(b.history.values) == {"item", "category", "behavior", "time"}
    assert b.label.dtype == torch.float32 and len(b) == 16


def test_unknown_field_is_rejected(data: PreparedData) -> None:
    with pytest.raises(ValueError, match=r"unknown batch fields \['hist_itme'\]; known: "):
        BatchLoader(data, "train", {"hist_itme"})


def test_batches_carry_the_right_values(data: PreparedData) -> None:
    loader = BatchLoader(data, "train", ALL_FIELDS, batch_size=37, short_len=8, shuffle=True, seed=1, prefetch=0)
    s = data.samples("train")
    off, tl = data.offsets, data.timeline
    for b in loader:
        for r in range(len(b)):
            u, t = int(b.target["user"][r]), int(b.target["time"][r])
            # locate the sample by (user, item, time) and check its history by hand
            k = np.flatnonzero((s.user == u) & (s.time == t) & (s.item == int(b.target["target_item"][r])))[0]
            c = int(s.cutoff[k])
            window = np.arange(max(off[u], c - 8), c)
            n = len(window)
            assert int(b.history.lengths[r]) == n
            assert b.history["item"][r, :n].tolist() == tl["item"][window].tolist()
            assert b.history["time"][r, :n].tolist() == tl["time"][window].tolist()
            assert (b.history["time"][r, :n] < t).all(), "history must be strictly before the sample"
            assert not b.history["item"][r, n:].any()
            assert int(b.target["target_category"][r]) == int(data.item_category[int(b.target["target_item"][r])])


@pytest.mark.parametrize("batch_size", [1, 7, 64, 10_000])
def test_an_epoch_covers_every_sample_exactly_once(data: PreparedData, batch_size: int) -> None:
    loader = BatchLoader(data, "train", ALL_FIELDS, batch_size=batch_size, shuffle=True, seed=3, prefetch=0)
    batches = list(loader)
    n = len(data.samples("train"))
    assert len(batches) == len(loader) == -(-n // batch_size)
    assert sum(len(b) for b in batches) == n
    assert np.array_equal(_rows(batches), _sample_rows(data.samples("train")))


def test_without_shuffle_batches_follow_the_stored_order(data: PreparedData) -> None:
    batches = list(BatchLoader(data, "valid", {"user", "time"}, batch_size=5, prefetch=0))
    s = data.samples("valid")
    assert torch.cat([b.target["user"] for b in batches]).tolist() == s.user.tolist()
    assert torch.cat([b.label for b in batches]).tolist() == s.label.astype(float).tolist()


def test_shuffle_is_reproducible_under_a_seed_and_changes_every_epoch(data: PreparedData) -> None:
    def epochs(seed: int, n: int = 2) -> list[list[int]]:
        loader = BatchLoader(data, "train", {"user", "target_item", "time"}, batch_size=50, shuffle=True,
                             seed=seed, prefetch=0)
        return [torch.cat([b.target["time"] * 7919 + b.target["target_item"] for b in loader]).tolist()
                for _ in range(n)]

    a, b, c = epochs(0), epochs(0), epochs(1)
    assert a == b
    assert a[0] != a[1], "every epoch must reshuffle"
    assert sorted(a[0]) == sorted(a[1])
    assert a[0] != c[0]


@pytest.mark.parametrize("group", [2, 5, 1000])
def test_user_groups_shuffle_runs_of_one_user_in_time_order(data: PreparedData, group: int) -> None:
    """The order is a permutation made of runs: each run starts at a multiple of ``group`` in its
    user's time order and continues with that user's next samples; seeded, reshuffled each epoch."""
    loader = BatchLoader(data, "train", {"user", "time"}, batch_size=16, shuffle=True, seed=4, prefetch=0,
                         user_group=group)
    n = len(data.samples("train"))
    user, time = loader._user, loader._time
    by = np.lexsort((np.arange(n), time, user))  # the canonical per-user time order
    rank = np.empty(n, dtype=np.int64)
    for u in np.unique(user):
        mine = by[user[by] == u]
        rank[mine] = np.arange(len(mine))
    o = loader._order()
    assert sorted(o.tolist()) == list(range(n))
    r, u = rank[o], user[o]
    cont = r % group != 0  # a position inside a run: it must follow its user's previous sample
    assert not cont[0]
    assert (u[1:][cont[1:]] == u[:-1][cont[1:]]).all() and (r[1:][cont[1:]] == r[:-1][cont[1:]] + 1).all()
    again = BatchLoader(data, "train", {"user", "time"}, batch_size=16, shuffle=True, seed=4, prefetch=0,
                        user_group=group)
    assert np.array_equal(again._order(), o)
    loader.epoch += 1
    assert not np.array_equal(loader._order(), o)
    batches = list(BatchLoader(data, "train", ALL_FIELDS, batch_size=16, shuffle=True, seed=4, prefetch=0,
                               user_group=group))
    assert np.array_equal(_rows(batches), _sample_rows(data.samples("train")))


def test_limit_batches(data: PreparedData) -> None:
    loader = BatchLoader(data, "train", {"user"}, batch_size=10, limit_batches=3, prefetch=2)
    batches = list(loader)
    assert len(loader) == 3 and len(batches) == 3
    assert all(len(b) == 10 for b in batches)
    big = BatchLoader(data, "train", {"user"}, batch_size=10, limit_batches=10**6, prefetch=0)
    assert len(list(big)) == len(big) == -(-len(data.samples("train")) // 10)


def test_prefetch_gives_the_same_batches(data: PreparedData) -> None:
    kw = dict(fields=ALL_FIELDS, batch_size=33, short_len=6, shuffle=True, seed=9)
    plain = BatchLoader(data, "train", prefetch=0, **kw)
    ahead = BatchLoader(data, "train", prefetch=3, **kw)
    for _ in range(2):  # two epochs: the epoch counter advances the same way
        a, b = list(plain), list(ahead)
        assert len(a) == len(b) > 1
        assert all(_same(x, y) for x, y in zip(a, b))


def test_an_error_in_the_producer_reaches_the_consumer(data: PreparedData, monkeypatch) -> None:
    loader = BatchLoader(data, "train", {"user"}, batch_size=10, prefetch=2)
    real = loader.make_batch
    calls = {"n": 0}

    def flaky(idx):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk vanished at batch 3")
        return real(idx)

    monkeypatch.setattr(loader, "make_batch", flaky)
    got = []
    with pytest.raises(RuntimeError, match="disk vanished at batch 3"):
        for b in loader:
            got.append(b)
    assert len(got) == 2


def test_stopping_early_does_not_hang(data: PreparedData) -> None:
    loader = BatchLoader(data, "train", {"user"}, batch_size=1, prefetch=1)
    for k, _ in enumerate(loader):
        if k == 2:
            break
    assert len(list(BatchLoader(data, "train", {"user"}, batch_size=1, prefetch=1, limit_batches=4))) == 4


def test_context_features_are_batched(tmp_path: Path) -> None:
    (tmp_path / "b.csv").write_text("user_id,item_id,timestamp\nu,a,1600000000\nu,b,1600000010\n")
    (tmp_path / "i.csv").write_text("user_id,item_id,timestamp,label,page\n"
                                    "u,a,1600000005,1,home\nu,b,1600000020,0,search\n")
    prepare(sources_from_files(tmp_path / "b.csv", tmp_path / "i.csv"), tmp_path / "out",
            PrepareOptions(context_columns=("page",), valid_fraction=0.0, test_fraction=0.01), log=lambda *_: None)
    data = PreparedData(tmp_path / "out")
    batches = [b for s in ("train", "test") for b in BatchLoader(data, s, {"hist_item"}, batch_size=4, prefetch=0)]
    vocab = dict(zip(*data.vocab("ctx_page").select("index", "raw").to_dict(as_series=False).values()))
    pages = [vocab[int(v)] for b in batches for v in b.context["page"]]
    lengths = [int(v) for b in batches for v in b.history.lengths]
    assert pages == ["home", "search"] and lengths == [1, 2]


def test_long_history_ranges_are_the_whole_history_strictly_before_the_sample(data: PreparedData) -> None:
    loader = BatchLoader(data, "test", {"target_item", "time", "user", "long", "long_category"}, batch_size=64,
                         short_len=4, long_len=7, prefetch=0)
    off, tl = data.offsets, data.timeline
    seen = 0
    for b in loader:
        long = b.long
        assert long is not None and long.category_index is data.category_index
        for r in range(len(b)):
            u, t = int(b.target["user"][r]), int(b.target["time"][r])
            lo, hi = int(long.lo[r]), int(long.hi[r])
            assert off[u] <= lo <= hi <= off[u + 1]
            assert (tl["time"][lo:hi] < t).all(), "long history must be strictly before the sample"
            assert hi == off[u + 1] or tl["time"][hi] >= t, "nothing before the sample may be left out"
            assert hi - lo == min(7, hi - off[u])
            seen += 1
    assert seen == len(data.samples("test"))
    assert next(iter(BatchLoader(data, "test", {"target_item"}, prefetch=0))).long is None
    bare = next(iter(BatchLoader(data, "test", {"target_item", "long"}, prefetch=0))).long
    assert bare.category_index is None and bare.content is None  # built / loaded only when a model asks


# --------------------------------------------------------------------------- target_count (popularity)


def test_item_counts_on_a_tiny_example() -> None:
    from userlens.data.sampling import ItemCounts

    c = ItemCounts(np.array([5, 6, 5, 5, 6]), np.array([30, 10, 10, 20, 10]))  # not time-sorted, ties at 10
    item = np.array([5, 5, 5, 5, 6, 6, 7, 0])
    time = np.array([10, 11, 30, 31, 10, 11, 99, 99])
    assert c.before(item, time).tolist() == [0, 1, 2, 3, 0, 2, 0, 0]  # strictly before; unseen items: 0
    assert ItemCounts(np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64)).before(item, time).tolist() == [0] * 8


def test_target_count_is_the_items_behaviors_by_anyone_strictly_before_the_sample(data: PreparedData) -> None:
    tl_item, tl_time = np.asarray(data.timeline["item"]), np.asarray(data.timeline["time"])
    same_time = 0
    for split in ("train", "valid", "test"):
        loader = BatchLoader(data, split, {"target_item", "time", "target_count"}, batch_size=50, prefetch=0)
        for b in loader:
            item, t = b.target["target_item"].numpy(), b.target["time"].numpy()
            want = [int(((tl_item == i) & (tl_time < s)).sum()) for i, s in zip(item, t)]
            assert b.target["target_count"].dtype == torch.int64 and b.target["target_count"].tolist() == want
            same_time += sum(int(((tl_item == i) & (tl_time == s)).sum()) for i, s in zip(item, t))
    assert same_time > 0, "the data must hold behaviors at a sample's own time (they must not count)"
    assert data.item_counts is data.item_counts  # built once per dataset


# --------------------------------------------------------------------------- sharding under torchrun (DDP)


def _ordered(batch) -> np.ndarray:
    """(user, target_item, time, label) of a batch's samples, in batch order."""
    return np.stack([batch.target["user"].numpy(), batch.target["target_item"].numpy(), batch.target["time"].numpy(),
                     batch.label.numpy().astype(np.int64)], axis=1)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("group", [0, 4])
def test_ranks_split_each_global_batch_in_order(data: PreparedData, world: int, group: int) -> None:
    """Rank parts of step b, concatenated in rank order, are one process's batch b (same samples per step);
    with user_group no run of one user is cut unless a rank would be left empty."""
    kw = {"fields": {"user", "target_item", "time"}, "batch_size": 16, "shuffle": True, "seed": 4, "prefetch": 0,
          "user_group": group}
    one = list(BatchLoader(data, "train", **kw))
    ranks = [BatchLoader(data, "train", rank=r, world_size=world, **kw) for r in range(world)]
    parts = [list(r) for r in ranks]
    n = len(data.samples("train"))
    dropped = n % 16 if 0 < n % 16 < world else 0
    assert all(len(p) == len(r) == len(one) - (dropped > 0) for p, r in zip(parts, ranks))
    for b in range(len(parts[0])):
        assert all(len(p[b]) > 0 for p in parts)
        assert np.array_equal(np.concatenate([_ordered(p[b]) for p in parts]), _ordered(one[b]))
        assert sum(len(p[b]) for p in parts) == ranks[0].global_batch_size(b)


def test_user_group_cuts_fall_on_run_starts(data: PreparedData) -> None:
    loader = BatchLoader(data, "train", {"user"}, batch_size=64, shuffle=True, seed=1, user_group=8, rank=0,
                         world_size=2)
    runs = np.repeat(np.arange(10), [8, 8, 8, 8, 5, 8, 8, 8, 2, 1])[:64]  # a cut at 32 is a run start
    assert loader._shard_bounds(64, runs) == (0, 32)
    runs = np.repeat(np.arange(3), [30, 5, 29])  # nearest run start to 32 is 30
    assert loader._shard_bounds(64, runs) == (0, 30)
    assert loader._shard_bounds(64, np.zeros(64, dtype=np.int64)) == (0, 32)  # one run: the even cut stands


def test_evaluation_blocks_cover_the_split_once_in_order(data: PreparedData) -> None:
    n = len(data.samples("valid"))
    blocks = [BatchLoader(data, "valid", {"user"}, batch_size=4, prefetch=0, rank=r, world_size=3) for r in range(3)]
    assert np.array_equal(np.concatenate([b.indices for b in blocks]), np.arange(n))
    users = np.concatenate([b.target["user"].numpy() for loader in blocks for b in loader])
    assert np.array_equal(users, np.asarray(data.samples("valid").user))
    with pytest.raises(ValueError, match="rank must be in"):
        BatchLoader(data, "valid", {"user"}, rank=2, world_size=2)
