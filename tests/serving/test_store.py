"""The behavior-store contract (``serving/store/base.py``), the same suite on every backend.

Histories are checked against a plain-Python reference store; durability by killing writers (and
the Redis server) with SIGKILL; concurrency by two processes appending to the same users.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from userlens.data.prepare import PrepareOptions, prepare, sources_from_files
from userlens.data.prepared import PreparedData
from userlens.errors import InputError, UserlensError
from userlens.serving.store import (UNKNOWN, Event, LMDBStore, RedisClusterStore, RedisStore, bulk_load_prepared,
                                    open_store, record)
from userlens.synthetic import leakage_log

# --------------------------------------------------------------------------- a reference store


class Reference:
    """The contract in plain Python: per user a list of rows, re-sorted stably by time after each batch."""

    def __init__(self, cap: int) -> None:
        self.cap, self.rows, self.version = cap, {}, {}
        self.totals = dict(appended=0, duplicates=0, dropped_over_cap=0, unknown_items=0)

    def append(self, events: list[Event]) -> None:
        for user in dict.fromkeys(e.user_id for e in events):
            rows = self.rows.setdefault(user, [])
            seen = {r[4] for r in rows if r[4] is not None}
            new = []
            for e in (e for e in events if e.user_id == user):
                if e.event_id is not None and e.event_id in seen:
                    self.totals["duplicates"] += 1
                    continue
                seen.add(e.event_id)
                new.append((e.timestamp_ms, e.item, e.category, e.behavior, e.event_id,
                            e.item_id if e.item == UNKNOWN else None))
                self.totals["appended"] += 1
                self.totals["unknown_items"] += e.item == UNKNOWN
            older = [r for r in new if rows and r[0] < rows[0][0]]
            if older and len(rows) + len(new) - self.cap >= len(older):  # evicted at once: never numbered
                new = [r for r in new if r not in older]
                self.totals["dropped_over_cap"] += len(older)
            self.version[user] = self.version.get(user, 0) + len(new)
            rows += new
            rows.sort(key=lambda r: r[0])  # stable: ties keep arrival order
            drop = max(0, len(rows) - self.cap)
            self.totals["dropped_over_cap"] += drop
            self.rows[user] = rows[drop:]

    def check(self, store) -> None:
        for user, rows in self.rows.items():
            h = store.history(user)
            assert h.item.dtype == np.int32 and h.category.dtype == np.int32
            assert h.time.dtype == np.int64 and h.behavior.dtype == np.int16
            assert h.time.tolist() == [r[0] for r in rows], user
            assert h.item.tolist() == [r[1] for r in rows], user
            assert h.category.tolist() == [r[2] for r in rows], user
            assert h.behavior.tolist() == [r[3] for r in rows], user
            unknown = [h.start + i for i, r in enumerate(rows) if r[5] is not None]
            assert store.raw_ids(user, unknown) == [r[5] for r in rows if r[5] is not None], user
            assert h.version == self.version.get(user, 0), user
        s = store.stats()
        assert s["users"] == sum(1 for r in self.rows.values() if r)
        assert s["behaviors"] == sum(len(r) for r in self.rows.values())
        for k in ("duplicates", "dropped_over_cap", "unknown_items"):
            assert s[k] == self.totals[k], k


def random_batches(seed: int, n_batches: int, users: int = 6, size: int = 30) -> list[list[Event]]:
    """Out-of-order times with many ties, re-sent event ids (within and across batches), unknown items, no ids."""
    rng = np.random.default_rng(seed)
    batches, sent = [], []
    for b in range(n_batches):
        batch = []
        for j in range(size):
            if sent and rng.random() < 0.15:  # a retry of an earlier event, same id
                batch.append(sent[int(rng.integers(len(sent)))])
                continue
            item = int(rng.integers(1, 6)) if rng.random() < 0.3 else int(rng.integers(2, 1000))
            e = Event(user_id=f"user-{int(rng.integers(users))}", item_id=f"raw-{b}-{j}",
                      timestamp_ms=int(1_700_000_000_000 + rng.integers(0, 40) * 1000), item=item,
                      category=int(rng.integers(1, 50)), behavior=int(rng.integers(0, 4)),
                      event_id=None if rng.random() < 0.2 else f"ev-{b}-{j}")
            batch.append(e)
            sent.append(e)
        batches.append(batch)
    return batches


# --------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("cap", [1, 7, 10_000])
def test_histories_match_the_reference(make_store, cap: int) -> None:
    store, ref = make_store(cap), Reference(cap)
    for batch in random_batches(seed=cap, n_batches=12):
        before = dict(ref.totals)
        res = store.append(batch)
        ref.append(batch)
        assert res.appended == ref.totals["appended"] - before["appended"]
        assert res.duplicates == ref.totals["duplicates"] - before["duplicates"]
        assert res.dropped_over_cap == ref.totals["dropped_over_cap"] - before["dropped_over_cap"]
        assert res.unknown_items == ref.totals["unknown_items"] - before["unknown_items"]
        assert res.users == len({e.user_id for e in batch})
        assert res.versions == {u: ref.version.get(u, 0) for u in res.versions}
    ref.check(store)
    # the cases the test is meant to cover actually occur
    assert ref.totals["duplicates"] > 0 and ref.totals["unknown_items"] > 0
    assert (ref.totals["dropped_over_cap"] > 0) == (cap < 100)


def _footprint(store) -> tuple[int, int, int]:
    """Blocks, event ids and raw ids stored (all users): what a stream must not leak."""
    if isinstance(store, LMDBStore):
        with store.env.begin() as txn:
            return tuple(txn.stat(db)["entries"] for db in (store._blocks, store._ids, store._raw))
    c = store.client
    keys = list(c.scan_iter(match=store._pattern))
    return (sum(b"}:b:" in k for k in keys), sum(c.hlen(k) for k in keys if k.endswith(b"}:e")),
            sum(c.hlen(k) for k in keys if k.endswith(b"}:r")))


@pytest.mark.parametrize("cap", [5, 13])
def test_small_blocks_match_the_reference_and_leak_nothing(make_store, monkeypatch, cap: int) -> None:
    """Histories crossing many blocks (4 rows each), evictions emptying blocks, inserts rewriting them."""
    monkeypatch.setattr(record, "BLOCK", 4)
    store, ref = make_store(cap), Reference(cap)
    for batch in random_batches(seed=cap + 1, n_batches=25, users=3, size=12):
        store.append(batch)
        ref.append(batch)
        ref.check(store)
    blocks, ids, raws = _footprint(store)
    kept = [r for rows in ref.rows.values() for r in rows]
    assert ids == sum(r[4] is not None for r in kept) and raws == sum(r[5] is not None for r in kept)
    assert blocks <= sum(-(-len(rows) // 4) + 1 for rows in ref.rows.values())  # dead blocks are deleted


def test_a_read_since_a_number_returns_the_new_rows_while_the_tag_holds(make_store, monkeypatch) -> None:
    monkeypatch.setattr(record, "BLOCK", 4)
    store = make_store(10)
    store.append([Event("u", "i", 100 + k, item=2 + k, category=2) for k in range(8)])
    h = store.history("u")
    assert (h.start, h.end) == (0, 8) and h.tag
    for k in range(8, 30):  # one event at a time, in order: the tag holds, the window slides
        store.append([Event("u", "i", 100 + k, item=2 + k, category=2)])
        d = store.history("u", since=h.end, tag=h.tag)
        assert (d.start, d.tag, d.item.tolist()) == (h.end, h.tag, [2 + k])
        h = store.history("u")
        assert (h.start, h.end) == (max(0, k + 1 - 10), k + 1) and h.item.tolist() == list(range(2, 3 + k))[-10:]
    same = store.history("u", since=h.end, tag=h.tag)
    assert (same.start, len(same)) == (h.end, 0)
    assert store.history("u", since=h.end, tag=h.tag + 1).start == h.start  # another tag: the whole window
    store.append([Event("u", "late", 105 + 20, item=99, category=2)])  # out of order: renumbers, new tag
    late = store.history("u", since=h.end, tag=h.tag)
    assert late.tag != h.tag and (late.start, len(late)) == (h.start + 1, 10) and 99 in late.item.tolist()
    before = store.history("u")
    store.bulk_load(["u"], np.array([0, 2]), np.array([5, 6], np.int32), np.array([2, 2], np.int32),
                    np.array([1, 2], np.int64), np.zeros(2, np.int16))
    assert store.history("u").tag not in (before.tag, 0)


def test_restore_renews_every_tag(make_store, tmp_path: Path) -> None:
    store = make_store(10)
    store.append([Event("u", "i", 100 + k, item=2 + k, category=2) for k in range(3)])
    tag = store.history("u").tag
    snap = store.snapshot(tmp_path / "snap")
    store.restore(snap)  # the same rows, the same length: a scorer's state must still be rebuilt
    h = store.history("u")
    assert h.item.tolist() == [2, 3, 4] and h.tag != tag


def test_append_is_idempotent_by_event_id(make_store) -> None:
    store = make_store(100)
    batch = [Event("u", f"i{k}", 1000 + k, item=2 + k, category=3, event_id=f"e{k}") for k in range(5)]
    first = store.append(batch)
    again = store.append(batch[::-1] + [batch[0]])
    assert (first.appended, first.duplicates) == (5, 0)
    assert (again.appended, again.duplicates, again.versions) == (0, 6, {"u": 5})
    h = store.history("u")
    assert h.item.tolist() == [2, 3, 4, 5, 6] and h.version == 5
    no_id = Event("u", "x", 5000, item=9, category=3)  # without an id: always appended
    assert store.append([no_id, no_id]).appended == 2
    assert store.stats()["duplicates"] == 6 and len(store.history("u")) == 7


def test_out_of_order_events_are_placed_by_time_and_ties_keep_arrival_order(make_store) -> None:
    store = make_store(100)
    store.append([Event("u", "a", 10, item=10, category=2), Event("u", "b", 30, item=30, category=2)])
    store.append([Event("u", "c", 20, item=21, category=2), Event("u", "d", 10, item=11, category=2),
                  Event("u", "e", 30, item=31, category=2), Event("u", "f", 20, item=22, category=2),
                  Event("u", "g", 5, item=5, category=2)])
    h = store.history("u")
    assert h.time.tolist() == [5, 10, 10, 20, 20, 30, 30]
    assert h.item.tolist() == [5, 10, 11, 21, 22, 30, 31]  # equal times: stored first, then arrival order


def test_history_is_capped_oldest_dropped_and_counted(make_store) -> None:
    store = make_store(3)
    res = store.append([Event("u", str(k), 100 - k, item=10 + k, category=2) for k in range(5)])  # newest first
    assert (res.appended, res.dropped_over_cap, res.versions) == (5, 2, {"u": 5})
    assert store.history("u").item.tolist() == [12, 11, 10]
    res = store.append([Event("u", "old", 1, item=99, category=2)])  # older than everything kept: dropped
    assert res.dropped_over_cap == 1 and store.history("u").item.tolist() == [12, 11, 10]
    assert store.history("u").version == 5  # never numbered: it would have been evicted at once
    s = store.stats()
    assert (s["behaviors"], s["dropped_over_cap"], s["users"]) == (3, 3, 1)


def test_unknown_items_keep_their_raw_ids_through_inserts_and_capping(make_store) -> None:
    store = make_store(4)
    store.append([Event("u", "new-1", 10, item=UNKNOWN, category=UNKNOWN), Event("u", "k", 20, item=7, category=2),
                  Event("u", "new-3", 30, item=UNKNOWN, category=UNKNOWN)])
    res = store.append([Event("u", "new-2", 15, item=UNKNOWN, category=UNKNOWN),
                        Event("u", "new-4", 40, item=UNKNOWN, category=UNKNOWN)])
    assert res.unknown_items == 2
    h = store.history("u")  # new-1 dropped by the cap
    assert h.item.tolist() == [UNKNOWN, 7, UNKNOWN, UNKNOWN]
    assert store.raw_ids("u", h.start + np.flatnonzero(h.item == UNKNOWN)) == ["new-2", "new-3", "new-4"]
    assert store.stats()["unknown_items"] == 4


def test_an_unknown_user_has_an_empty_history(make_store) -> None:
    h = make_store(10).history("nobody")
    assert len(h) == 0 and h.version == 0 and h.time.dtype == np.int64


def test_stats_count_bytes(make_store) -> None:
    store = make_store(1000)
    store.append([Event(f"u{k % 10}", "i", k, item=2, category=2) for k in range(500)])
    s = store.stats()
    assert (s["users"], s["behaviors"]) == (10, 500) and s["bytes"] >= 500 * 26


# --------------------------------------------------------------------------- bulk load


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    tmp = tmp_path_factory.mktemp("prepared")
    log = leakage_log(n_users=25, n_items=60, behaviors_per_user=30, impressions_per_user=5, seed=3)
    paths = log.write(tmp / "raw")
    prepare(sources_from_files(paths["behaviors"], paths["impressions"], paths["items"]), tmp / "out",
            PrepareOptions(), log=lambda *_: None)
    return PreparedData(tmp / "out")


def test_bulk_load_prepared_stores_every_timeline(make_store, prepared: PreparedData) -> None:
    cap = 20
    store = make_store(cap)
    store.append([Event("stale", "x", 1, item=2, category=2)])
    vocab = prepared.vocab("user")
    users = int(prepared.offsets.shape[0]) - 1
    stored = bulk_load_prepared(store, prepared)
    off, tl = prepared.offsets, prepared.timeline
    assert stored == sum(min(cap, int(off[u + 1] - off[u])) for u in range(users))
    for raw, u in zip(vocab["raw"].to_list(), vocab["index"].to_list()):
        h = store.history(str(raw))
        lo = max(int(off[u]), int(off[u + 1]) - cap)
        for f in ("item", "category", "time", "behavior"):
            assert np.array_equal(getattr(h, f), tl[f][lo:off[u + 1]]), (raw, f)
        assert h.version == off[u + 1] - off[u]
    s = store.stats()
    assert s["users"] == len(vocab) + 1 and s["behaviors"] == stored + 1
    assert s["dropped_over_cap"] == int(off[-1]) - stored


def test_bulk_load_replaces_sorts_and_validates(make_store) -> None:
    store = make_store(10)
    store.append([Event("a", "x", 1, item=2, category=2), Event("b", "x", 1, item=2, category=2)])
    item = np.array([5, UNKNOWN, 7, 8], np.int32)
    time = np.array([30, 10, 20, 40], np.int64)  # user a's rows out of order
    n = store.bulk_load(["a", "b"], np.array([0, 3, 3]), item, item.copy(), time, np.zeros(4, np.int16))
    assert n == 3
    h = store.history("a")
    assert h.time.tolist() == [10, 20, 30] and h.item.tolist() == [UNKNOWN, 7, 5]
    assert store.raw_ids("a", [h.start]) == [""]  # bulk loads carry no raw ids
    assert len(store.history("b")) == 0  # replaced by an empty history
    s = store.stats()
    assert (s["users"], s["behaviors"], s["unknown_items"]) == (1, 3, 1)
    with pytest.raises(InputError, match=r"3 offsets for 1 users, expected users \+ 1"):
        store.bulk_load(["a"], np.array([0, 1, 2]), item, item, time, time)
    with pytest.raises(InputError, match="offsets must be non-decreasing"):
        store.bulk_load(["a", "b"], np.array([0, 3, 2]), item, item, time, time)


# --------------------------------------------------------------------------- snapshots


def test_snapshot_and_restore(make_store, backend: str, tmp_path: Path) -> None:
    store, ref = make_store(50), Reference(50)
    batches = random_batches(seed=9, n_batches=6)
    for b in batches[:4]:
        store.append(b)
        ref.append(b)
    snap = store.snapshot(tmp_path / "snap")
    assert snap.exists() and not list(tmp_path.glob(".snap*"))  # no temporary left behind
    with pytest.raises(InputError, match="snap: exists. Fix: snapshot to a new path"):
        store.snapshot(tmp_path / "snap")
    for b in batches[4:]:
        store.append(b)
    store.append([Event("late-user", "x", 1, item=2, category=2)])
    assert store.restore(snap) == len(ref.rows)
    ref.check(store)
    assert len(store.history("late-user")) == 0
    with pytest.raises(InputError, match="nowhere"):
        store.restore(tmp_path / "nowhere")


# --------------------------------------------------------------------------- durability and concurrency

WRITER = textwrap.dedent("""
    import sys
    from userlens.serving.store import Event, LMDBStore, RedisClusterStore, RedisStore
    backend, where, namespace, worker, batches, users = sys.argv[1:7]
    store = (LMDBStore(where, 1_000_000) if backend == "lmdb" else
             RedisStore(where, 1_000_000, namespace=namespace) if backend == "redis" else
             RedisClusterStore(where, 1_000_000, namespace=namespace))
    n = 0
    for b in range(int(batches)):
        events = [Event(f"u{(n + j) % int(users)}", "i", n + j, item=n + j + 2, category=2,
                        event_id=f"{worker}-{n + j}") for j in range(20)]
        store.append(events)
        n += len(events)
        print("acknowledged", n, flush=True)
""")


def _writer(backend: str, where: str, namespace: str, worker: str, batches: int, users: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    return subprocess.Popen([sys.executable, "-c", WRITER, backend, where, namespace, worker, str(batches),
                             str(users)], stdout=subprocess.PIPE, text=True, env=env)


def _items(store, users: int) -> list[int]:
    return sorted(x for u in range(users) for x in store.history(f"u{u}").item.tolist())


def _open(backend: str, where: str, cap: int, namespace: str):  # type: ignore[no-untyped-def]
    if backend == "lmdb":
        return LMDBStore(where, cap)
    return (RedisStore if backend == "redis" else RedisClusterStore)(where, cap, namespace=namespace)


def test_acknowledged_appends_survive_kill_9(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The writer, then the server (every primary of a cluster) killed with -9 right after an acknowledged append."""
    server = {"lmdb": None, "redis": "redis_factory", "cluster": "cluster_factory"}[backend]
    server = request.getfixturevalue(server)() if server else None
    where = str(tmp_path / "store") if backend == "lmdb" else server.url
    proc = _writer(backend, where, "kill", "w", batches=10_000, users=7)
    acknowledged = 0
    for line in proc.stdout:
        acknowledged = int(line.split()[1])
        if acknowledged >= 400:
            os.kill(proc.pid, signal.SIGKILL)  # right after it printed, mid-way through the next append
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and acknowledged >= 400
    if backend == "redis":  # the server dies too: only its AOF survives
        server.kill()
        server.start()
    if backend == "cluster":  # every primary at once (no replicas: nothing fails over), each back from its AOF
        for node in server.nodes:
            node.kill()
        for node in server.nodes:
            node.start()
        server.wait_ready()
    store = _open(backend, where, 1_000_000, "kill")
    try:
        found = set(_items(store, 7))
        lost = set(range(2, acknowledged + 2)) - found
        assert not lost, f"acknowledged events lost: {len(lost)}"
    finally:
        store.close()


def test_concurrent_appenders_lose_no_events(make_store, backend: str) -> None:
    store = make_store(1_000_000)
    where, ns = make_store.location, make_store.namespace
    if backend == "lmdb":
        store.close()  # the writers open the directory themselves
    procs = [_writer(backend, where, ns, w, batches=60, users=3) for w in ("a", "b")]
    for p in procs:
        p.communicate()
        assert p.returncode == 0
    store = make_store(1_000_000)
    items = _items(store, 3)
    assert items == sorted(list(range(2, 1202)) * 2)  # both writers' 1,200 events, none lost
    assert store.stats()["behaviors"] == 2400 and sum(store.history(f"u{u}").version for u in range(3)) == 2400


# --------------------------------------------------------------------------- errors


def test_open_store_by_url(tmp_path: Path) -> None:
    with open_store(f"lmdb://{tmp_path / 's'}", cap=5) as store:
        assert isinstance(store, LMDBStore) and store.cap == 5
    with pytest.raises(InputError, match=r"unknown store scheme 'sqlite'; expected lmdb://PATH, redis://.* or "
                                         "redis-cluster://HOST:PORT"):
        open_store("sqlite:///x.db", cap=5)
    with pytest.raises(InputError, match="no path"):
        open_store("lmdb://", cap=5)


def test_lmdb_map_full_says_how_to_raise_map_size(tmp_path: Path) -> None:
    with LMDBStore(tmp_path / "s", cap=100_000, map_size=1 << 20) as store:
        big = [Event("u", "i", k, item=2, category=2) for k in range(60_000)]
        with pytest.raises(UserlensError, match=r"map is full \(map_size=1048576 bytes\).*larger map_size"):
            store.append(big)
        assert len(store.history("u")) == 0  # nothing of the failed call was written


def test_lmdb_path_errors(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="file: exists and is a file"):
        LMDBStore(tmp_path / "file", cap=5)
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "other.txt").write_text("x")
    with pytest.raises(InputError, match="not an LMDB store"):
        LMDBStore(tmp_path / "dir", cap=5)
    with LMDBStore(tmp_path / "s", cap=5) as store:
        with pytest.raises(InputError, match="LMDB keys hold at most"):
            store.history("x" * 600)
        with pytest.raises(InputError, match="user_id must be a non-empty string"):
            store.append([Event("", "i", 1, item=2, category=2)])
        with pytest.raises(InputError, match="timestamp_ms is 1.5, not an integer"):
            store.append([Event("u", "i", 1.5, item=2, category=2)])  # type: ignore[arg-type]


def test_redis_unreachable_is_one_clear_line() -> None:
    with socket.socket() as sock:  # a free port: nothing listens there
        sock.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
    with pytest.raises(UserlensError, match=rf"{url}: Redis not reachable .*Fix: start it"):
        RedisStore(url, cap=5)


@pytest.mark.redis
def test_redis_without_fsync_always_is_refused(redis_server) -> None:
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.config_set("appendfsync", "everysec")
    try:
        with pytest.raises(UserlensError, match="appendfsync=everysec: acknowledged appends would not be durable"):
            RedisStore(redis_server.url, cap=5)
        RedisStore(redis_server.url, cap=5, require_fsync=False).close()
    finally:
        client.config_set("appendfsync", "always")
        client.close()


def test_a_store_opened_with_a_lower_cap_reads_and_keeps_its_last_cap_behaviors(tmp_path: Path) -> None:
    with LMDBStore(tmp_path / "s", cap=10) as store:
        store.append([Event("u", "i", k, item=2 + k, category=2) for k in range(8)])
    with LMDBStore(tmp_path / "s", cap=4) as store:
        h = store.history("u")
        assert (h.start, h.item.tolist()) == (4, [6, 7, 8, 9])
        assert store.history("u", since=1, tag=h.tag).start == 4  # before the window: the window
        store.append([Event("u", "i", 100, item=50, category=2)])
        assert store.history("u").item.tolist() == [7, 8, 9, 50] and store.stats()["behaviors"] == 4


def test_lmdb_group_commit_acknowledges_each_caller_with_its_own_result(tmp_path: Path) -> None:
    """Threads appending at once share transactions: every event stored once, each caller its own counts,
    a caller's bad event its own error."""
    import threading

    store = LMDBStore(tmp_path / "s", cap=50)
    results: dict[int, list] = {}

    def worker(w: int) -> None:
        got = results.setdefault(w, [])
        for i in range(40):
            ev = Event(f"u{w % 3}", "i", 1000 * w + i, item=2 + i, category=2, event_id=f"{w}-{i}")
            got.append(store.append([ev, ev]))  # the same id twice: one appended, one duplicate
        try:
            store.append([Event("", "i", 1, item=2, category=2)])
        except InputError as e:
            got.append(e)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for w, got in results.items():
        assert all((r.appended, r.duplicates, r.users) == (1, 1, 1) for r in got[:40]), w
        assert isinstance(got[40], InputError) and "user_id must be a non-empty string" in str(got[40])
    s = store.stats()
    assert (s["users"], s["duplicates"], s["behaviors"]) == (3, 240, 150)  # each user: 80 events, capped at 50
    assert sorted(store.history("u0").time.tolist()) == store.history("u0").time.tolist()
    store.close()


def test_an_lmdb_store_of_the_single_value_format_is_refused_with_the_fix(tmp_path: Path) -> None:
    import lmdb

    env = lmdb.open(str(tmp_path / "old"), max_dbs=2)  # what userlens wrote before the log layout
    meta = env.open_db(b"meta")
    with env.begin(write=True) as txn:
        txn.put(b"format", b"userlens-history-1", db=meta)
    env.close()
    with pytest.raises(InputError, match=r"format b'userlens-history-1'.*Fix: delete .*userlens load-store"):
        LMDBStore(tmp_path / "old", cap=5)
