"""Behavior-store benchmark: append throughput, storage and read latency of LMDB and Redis, durability on.

Both stores run as shipped: an LMDB append is one write transaction synced before it returns, a
Redis append is acknowledged after the server fsynced its AOF (a private ``redis-server`` started
here: AOF on, ``appendfsync always``, loopback, free port, data in a temp folder). Three tables:

1. **Append, batched**: events/s and p50 / p99 latency per ``append`` call for each batch size; a
   fresh store per row, events spread at random over ``--users`` users, increasing timestamps,
   unique event ids; each row makes at most ``--max-calls`` calls (batch 1: 2,000 events). One
   more row appends random (out-of-order) timestamps at batch 1,000: the store then inserts by
   time instead of appending bytes.
2. **Storage at 100K behaviors**: ``bulk_load`` of ``--big-users`` users x ``--big-len`` behaviors
   (the stores' cap is ``--big-len``); bytes per user and per behavior (``stats()["bytes"]``: LMDB
   the data file on disk, Redis the stored values; for Redis also ``MEMORY USAGE`` of one user's key
   and the ``used_memory`` growth, which also counts the server's client and AOF buffers),
   then ``history(user)`` latency over ``--reads`` reads.
3. **Append at the cap**: ``--cap-events`` new events to one of those users, ``--cap-batch`` per
   call; each drops as many old behaviors (the whole value is rewritten on every call).

Event generation is not timed. Everything is written under a temporary folder (``--tmpdir``, whose
disk sets the fsync cost), removed at the end; the Redis server is stopped even on Ctrl-C. Progress
goes to stderr, the Markdown tables to stdout.

    .venv/bin/python benchmarks/bench_store.py                 # ~2-3 min on 2 idle cores
    .venv/bin/python benchmarks/bench_store.py --quick         # smoke run, seconds
    .venv/bin/python benchmarks/bench_store.py --backends lmdb --batches 100,1000 --events 50000
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np

from userlens.serving.store import BehaviorStore, LMDBStore, RedisStore
from userlens.serving.store.base import Event
from userlens.serving.store.local_redis import LocalRedis

BACKENDS = ("lmdb", "redis")
T0 = 1_700_000_000_000  # epoch ms of the first generated event
# settings left unset on the command line take these values (--quick: the second)
DEFAULTS = {"batches": ("1,100,1000,10000", "1,100,1000"), "events": (200_000, 2_000), "max_calls": (2_000, 200),
            "users": (1_000, 100), "big_users": (10, 2), "big_len": (100_000, 10_000), "reads": (200, 20),
            "cap_events": (1_000, 200), "cap_batch": (100, 100)}


@contextmanager
def fresh_store(backend: str, cap: int, work: Path, server: LocalRedis | None) -> Iterator[BehaviorStore]:
    """An empty store, deleted afterwards (LMDB: a new directory; Redis: the private server's db, flushed)."""
    if backend == "lmdb":
        path = Path(tempfile.mkdtemp(prefix="lmdb-", dir=work))
        store: BehaviorStore = LMDBStore(path, cap)
        try:
            yield store
        finally:
            store.close()
            shutil.rmtree(path, ignore_errors=True)
    else:
        store = RedisStore(server.url, cap, namespace="bench")
        store.client.flushdb()
        try:
            yield store
        finally:
            store.client.flushdb()
            store.close()


def make_events(n: int, users: int, ordered: bool, rng: np.random.Generator, t_start: int = T0,
                user_ids: list[str] | None = None) -> list[Event]:
    """``n`` events over random users (or ``user_ids``), time ``t_start + i`` ms (or random), unique event ids."""
    who = [f"u{u}" for u in rng.integers(0, users, n)] if user_ids is None else user_ids
    ts = (t_start + np.arange(n) if ordered else t_start + rng.integers(0, 1000 * n, n)).tolist()
    items, cats = rng.integers(2, 100_000, n).tolist(), rng.integers(2, 1_000, n).tolist()
    kinds = rng.integers(0, 4, n).tolist()
    return [Event(who[i], f"i{items[i]}", ts[i], items[i], cats[i], kinds[i], f"e{t_start}-{i}") for i in range(n)]


def timed_appends(store: BehaviorStore, events: list[Event], batch: int) -> tuple[float, np.ndarray, int]:
    """Append ``events`` ``batch`` at a time: (events/s over the calls, ms per call, behaviors dropped)."""
    ms, dropped = [], 0
    for a in range(0, len(events), batch):
        chunk = events[a:a + batch]
        t = time.perf_counter()
        res = store.append(chunk)
        ms.append((time.perf_counter() - t) * 1000)
        if res.appended != len(chunk):
            raise RuntimeError(f"append stored {res.appended} of {len(chunk)} events ({res})")
        dropped += res.dropped_over_cap
    ms_arr = np.asarray(ms)
    return len(events) / (ms_arr.sum() / 1000), ms_arr, dropped


def p(ms: np.ndarray, q: float) -> str:
    return f"{np.percentile(ms, q):.2f}"


def bench_append(backend: str, args: argparse.Namespace, work: Path, server: LocalRedis | None,
                 events_for: Callable[[int, bool], list[Event]]) -> list[str]:
    rows = []
    plan = [(b, True) for b in args.batches] + [(1000, False)]
    for batch, ordered in plan:
        n = min(args.events, args.max_calls * batch)
        events = events_for(n, ordered)
        _progress(f"{backend}: append {n:,} events, batch {batch:,}, {'in order' if ordered else 'random times'}")
        with fresh_store(backend, args.big_len, work, server) as store:
            rate, ms, _ = timed_appends(store, events, batch)
            users = store.stats()["users"]
        rows.append(f"| {backend} | {batch:,} | {'increasing' if ordered else 'random'} | {n:,} | {len(ms):,} | "
                    f"{users:,} | {rate:,.0f} | {p(ms, 50)} | {p(ms, 99)} |")
    return rows


def bench_big(backend: str, args: argparse.Namespace, work: Path, server: LocalRedis | None
              ) -> tuple[str, str]:
    """Sections 2 and 3 on one store: bulk-load the big users, read them, then append at the cap."""
    rng = np.random.default_rng([args.seed, 2])  # the same data for every backend
    u, length = args.big_users, args.big_len
    user_ids = [f"big{i}" for i in range(u)]
    offsets = np.arange(u + 1, dtype=np.int64) * length
    item = rng.integers(2, 100_000, u * length).astype(np.int32)
    category = rng.integers(2, 1_000, u * length).astype(np.int32)
    behavior = rng.integers(0, 4, u * length).astype(np.int16)
    times = np.tile(T0 + np.arange(length, dtype=np.int64) * 1000, u)
    _progress(f"{backend}: bulk-load {u} users x {length:,} behaviors, {args.reads} history reads, "
              f"{args.cap_events:,} appends at the cap")
    with fresh_store(backend, length, work, server) as store:
        mem0 = store.client.info("memory")["used_memory"] if backend == "redis" else 0
        t = time.perf_counter()
        stored = store.bulk_load(user_ids, offsets, item, category, times, behavior)
        load_s = time.perf_counter() - t
        st = store.stats()
        if stored != u * length or st["users"] != u:
            raise RuntimeError(f"bulk_load stored {stored} behaviors for {st['users']} users, expected {u} x {length}")
        if backend == "redis":
            key_mem = store.client.memory_usage(f"bench:h:{user_ids[0]}", samples=0)
            grown = store.client.info("memory")["used_memory"] - mem0
            redis_cols = f"{key_mem:,} | {grown / u:,.0f}"
        else:
            redis_cols = "– | –"
        for uid in user_ids[:3]:  # warm-up, not timed
            store.history(uid)
        read_ms = []
        for uid in rng.choice(user_ids, args.reads).tolist():
            t = time.perf_counter()
            h = store.history(uid)
            read_ms.append((time.perf_counter() - t) * 1000)
            if len(h) != length:
                raise RuntimeError(f"history({uid!r}) has {len(h)} behaviors, expected {length}")
        read = np.asarray(read_ms)
        row2 = (f"| {backend} | {u} x {length:,} | {stored / load_s:,.0f} | {st['bytes'] / u:,.0f} | "
                f"{st['bytes'] / stored:.1f} | {redis_cols} | {p(read, 50)} | {p(read, 99)} |")

        target = user_ids[0]
        events = make_events(args.cap_events, 1, True, rng, t_start=int(times[length - 1]) + 1000,
                             user_ids=[target] * args.cap_events)
        rate, ms, dropped = timed_appends(store, events, args.cap_batch)
        after = len(store.history(target))
        row3 = (f"| {backend} | {length:,} | {args.cap_events:,} | {args.cap_batch:,} | {rate:,.0f} | {p(ms, 50)} | "
                f"{p(ms, 99)} | {dropped:,} | {after:,} |")
    return row2, row3


def _progress(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks: server stopped, temp folder removed


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="lmdb,redis", help="comma-separated, of: " + ", ".join(BACKENDS))
    ap.add_argument("--batches", help="append batch sizes (default 1,100,1000,10000)")
    ap.add_argument("--events", type=int, help="events appended per batch size (default 200000)")
    ap.add_argument("--max-calls", type=int, help="at most this many append calls per row (default 2000)")
    ap.add_argument("--users", type=int, help="users the appended events are spread over (default 1000)")
    ap.add_argument("--big-users", type=int, help="users bulk-loaded for the storage table (default 10)")
    ap.add_argument("--big-len", type=int, help="behaviors per bulk-loaded user, also the stores' cap (default 100000)")
    ap.add_argument("--reads", type=int, help="history reads timed (default 200)")
    ap.add_argument("--cap-events", type=int, help="events appended to a user at the cap (default 1000)")
    ap.add_argument("--cap-batch", type=int, help="batch size of those appends (default 100)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tmpdir", default=None, help="where the stores live (default: the system temp folder)")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (seconds); explicit options still win")
    args = ap.parse_args()
    for name, (full, quick) in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    try:
        args.batches = [int(b) for b in str(args.batches).split(",")]
    except ValueError:
        ap.error(f"--batches {args.batches!r}: expected comma-separated integers, e.g. 1,100,1000")
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in args.backends if b not in BACKENDS]
    if unknown or not args.backends:
        ap.error(f"--backends: unknown {unknown or 'none given'}; known: {', '.join(BACKENDS)}")
    small = {k: v for k, v in vars(args).items() if k in DEFAULTS and k != "batches" and v < 1}
    if small or min(args.batches) < 1:
        ap.error(f"expected positive counts, got {small or {'batches': args.batches}}")
    return args


def header(args: argparse.Namespace, work: Path) -> str:
    import lmdb

    shown = " ".join(f"--{k.replace('_', '-')} {','.join(map(str, v)) if isinstance(v, list) else v}"
                     for k, v in vars(args).items() if k not in ("quick", "tmpdir"))
    redis_v = ""
    if shutil.which("redis-server"):
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()
        redis_v = ", redis-server " + next((w[2:] for w in out if w.startswith("v=")), "?")
    return (f"# bench_store {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, {platform.platform()}, "
            f"python {platform.python_version()}, lmdb {'.'.join(map(str, lmdb.version()))}{redis_v}; "
            f"stores in {work}; argv: {' '.join(sys.argv[1:]) or '(none)'}; resolved: {shown}"
            f"{' (quick)' if args.quick else ''}")


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, _on_sigterm)
    cache: dict[tuple[int, bool], list[Event]] = {}

    def events_for(n: int, ordered: bool) -> list[Event]:  # the same events for every backend
        if (n, ordered) not in cache:
            rng = np.random.default_rng([args.seed, n, int(ordered)])
            cache[(n, ordered)] = make_events(n, args.users, ordered, rng)
        return cache[(n, ordered)]

    # the server (entered last) is stopped before the temp folder holding its AOF is removed
    with tempfile.TemporaryDirectory(prefix="userlens-bench-store-", dir=args.tmpdir) as tmp, ExitStack() as stack:
        work = Path(tmp)
        print(header(args, work), flush=True)
        backends = list(args.backends)
        if "redis" in backends and shutil.which("redis-server") is None:
            print("\n> redis skipped: `redis-server` is not on PATH (install it, e.g. apt-get install redis-server)")
            backends.remove("redis")
        server = stack.enter_context(LocalRedis(work / "redis")) if "redis" in backends else None

        append_rows = [row for b in backends for row in bench_append(b, args, work, server, events_for)]
        print("\n## 1. Append, durable on return (fresh store per row)\n")
        print("| backend | batch | timestamps | events | calls | users | events/s | p50 ms/call | p99 ms/call |")
        print("|---|---|---|---|---|---|---|---|---|")
        print("\n".join(append_rows), flush=True)
        cache.clear()

        big_rows = [bench_big(b, args, work, server) for b in backends]
        print(f"\n## 2. Storage and history reads at {args.big_len:,} behaviors per user ({args.reads} reads)\n")
        print("| backend | users x behaviors | bulk load behaviors/s | stored bytes/user | bytes/behavior | "
              "Redis MEMORY USAGE/user | Redis used_memory growth/user | history p50 ms | history p99 ms |")
        print("|---|---|---|---|---|---|---|---|---|")
        print("\n".join(r for r, _ in big_rows))
        print("\n## 3. Append to a user at the cap (each event drops the oldest behavior)\n")
        print("| backend | behaviors before | events | batch | events/s | p50 ms/call | p99 ms/call | dropped | "
              "length after |")
        print("|---|---|---|---|---|---|---|---|---|")
        print("\n".join(r for _, r in big_rows), flush=True)

if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # the finally blocks already stopped the server and removed the temp folder
        sys.exit("interrupted")
