"""Behavior-store benchmark: append throughput, storage and read latency of LMDB, Redis and Redis Cluster,
durability on.

Every store runs as shipped: an LMDB append is one write transaction synced before it returns, a
Redis append is acknowledged after the server fsynced its AOF (a private ``redis-server`` started
here: AOF on, ``appendfsync always``, loopback, free port, data in a temp folder); ``redis-cluster``
is a private cluster of 3 such primaries (``--cluster-replicas N``: N replicas each, and every write
then waits for N of them: ``?replicas=N``), one user per hash slot, a batch's users written to their
primaries in parallel. Three tables:

1. **Append, batched**: events/s and p50 / p99 latency per ``append`` call for each batch size; a
   fresh store per row, events spread at random over ``--users`` users, increasing timestamps,
   unique event ids; each row makes at most ``--max-calls`` calls (batch 1: 2,000 events). One
   more row appends random (out-of-order) timestamps at batch 1,000: the store then inserts by
   time instead of appending bytes.
2. **Storage at 100K behaviors**: ``bulk_load`` of ``--big-users`` users x ``--big-len`` behaviors
   (the stores' cap is ``--big-len``); bytes per user and per behavior (``stats()["bytes"]``: LMDB
   the data file on disk, Redis the stored values; for Redis also ``MEMORY USAGE`` of one user's keys
   and the ``used_memory`` growth, which also counts the server's client and AOF buffers),
   then ``history(user)`` latency over ``--reads`` reads.
3. **Append at the cap**: ``--cap-events`` new events to one of those users, ``--cap-batch`` per
   call; each drops as many old behaviors (the whole value is rewritten on every call).

``--streaming`` prints one table instead, the case lifelong users live in: ``--users`` users bulk-loaded
full at each cap of ``--lengths`` (every appended event drops the oldest behavior), events after their
newest behavior. Per cap, each row against its target:

* **LMDB, batches of 1,000**: ``--stream-events`` events over those users, ``--stream-batch`` per call
  (≥ 50K events/s); bytes per event: the data file's growth and the bytes this process wrote;
* **HTTP, single events**: ``--requests`` ``POST /v1/events`` of one event each (after ``--warmup``)
  to ``userlens serve`` over a fresh LMDB store, one row per ``--http-workers`` count, sent by
  ``--http-clients`` threads with one keep-alive connection each (≥ 5K requests/s, none failing);
  the package is bench_serve's DIN at ``long_len`` = the cap (built once into ``--workdir``);
* **Redis AOF per event**: ``--aof-events`` single-event appends; the growth of the files in the
  server's data folder (``appendonly.aof``, or Redis 7's ``appendonlydir``) per event (≤ 1 KB),
  automatic AOF rewrites switched off first and any rewrite during the measurement counted (it
  fails the row); for ``redis-cluster`` the same over every node's folder.

Each row is also appended to ``--results`` (``benchmarks/results/store-streaming.jsonl``).

Event generation is not timed. Everything is written under a temporary folder (``--tmpdir``, whose
disk sets the fsync cost), removed at the end; the Redis server is stopped even on Ctrl-C. Progress
goes to stderr, the Markdown tables to stdout.

    .venv/bin/python benchmarks/bench_store.py                 # ~2-3 min on 2 idle cores
    .venv/bin/python benchmarks/bench_store.py --quick         # smoke run, seconds
    .venv/bin/python benchmarks/bench_store.py --backends lmdb --batches 100,1000 --events 50000
    .venv/bin/python benchmarks/bench_store.py --streaming                     # ~2 min on 2 idle cores
    .venv/bin/python benchmarks/bench_store.py --streaming --quick             # 1K cap, 10 users, ~20 s
    .venv/bin/python benchmarks/bench_store.py --streaming --lengths 100000 --users 1000 --requests 10000
    .venv/bin/python benchmarks/bench_store.py --backends redis,redis-cluster --quick
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from records import ROOT, append_row, commit, machine_note, now
from streaming import HEADERS, met, serve_process
from userlens.serving.store import BehaviorStore, LMDBStore, RedisClusterStore, RedisStore, open_store
from userlens.serving.store.base import Event
from userlens.serving.store.local_redis import LocalRedis, LocalRedisCluster

BACKENDS = ("lmdb", "redis", "redis-cluster")
Servers = dict[str, "LocalRedis | LocalRedisCluster"]  # backend → its private server(s)
STREAM_RESULTS = ROOT / "benchmarks" / "results" / "store-streaming.jsonl"
T0 = 1_700_000_000_000  # epoch ms of the first generated event
# settings left unset on the command line take these values (--quick: the second)
DEFAULTS = {"batches": ("1,100,1000,10000", "1,100,1000"), "events": (200_000, 2_000), "max_calls": (2_000, 200),
            "users": (1_000, 100), "big_users": (10, 2), "big_len": (100_000, 10_000), "reads": (200, 20),
            "cap_events": (1_000, 200), "cap_batch": (100, 100)}
# --streaming: these instead (users: at the cap, per length)
STREAM_DEFAULTS = {"lengths": ("1000,10000,100000", "1000"), "users": (100, 10), "stream_events": (10_000, 2_000),
                   "stream_batch": (1_000, 1_000), "requests": (2_000, 200), "warmup": (100, 20),
                   "aof_events": (200, 50)}
STREAM_TARGETS = {"lmdb": ("≥ 50,000 events/s", 50_000), "http": ("≥ 5,000 requests/s", 5_000),
                  "aof": ("≤ 1,024 B/event (AOF)", 1_024)}


@contextmanager
def fresh_store(backend: str, cap: int, work: Path, urls: dict[str, str]) -> Iterator[BehaviorStore]:
    """An empty store, deleted afterwards (LMDB: a new directory; Redis: the private server's (cluster's) db,
    flushed)."""
    if backend == "lmdb":
        path = Path(tempfile.mkdtemp(prefix="lmdb-", dir=work))
        store: BehaviorStore = LMDBStore(path, cap)
        try:
            yield store
        finally:
            store.close()
            shutil.rmtree(path, ignore_errors=True)
    else:
        store = (RedisStore(urls[backend], cap, namespace="bench") if backend == "redis" else
                 RedisClusterStore(urls[backend], cap, namespace="bench"))
        store.client.flushdb()  # a cluster client sends it to every primary
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


def load_full(store: BehaviorStore, users: int, length: int, rng: np.random.Generator) -> tuple[list[str], int, float]:
    """Bulk-load users ``u0``, ``u1``, … (``make_events``' ids) with ``length`` random behaviors each, 1 s apart:
    (user ids, the newest behavior's time, seconds the load took)."""
    user_ids = [f"u{i}" for i in range(users)]
    n = users * length
    item, category = rng.integers(2, 100_000, n).astype(np.int32), rng.integers(2, 1_000, n).astype(np.int32)
    behavior = rng.integers(0, 4, n).astype(np.int16)
    times = np.tile(T0 + np.arange(length, dtype=np.int64) * 1000, users)
    t = time.perf_counter()
    stored = store.bulk_load(user_ids, np.arange(users + 1, dtype=np.int64) * length, item, category, times, behavior)
    load_s = time.perf_counter() - t
    if stored != n or store.stats()["users"] != users:
        raise RuntimeError(f"bulk_load stored {stored} behaviors for {store.stats()['users']} users, expected "
                           f"{users} x {length}")
    return user_ids, int(times[length - 1]), load_s


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


def bench_append(backend: str, args: argparse.Namespace, work: Path, urls: dict[str, str],
                 events_for: Callable[[int, bool], list[Event]]) -> list[str]:
    rows = []
    plan = [(b, True) for b in args.batches] + [(1000, False)]
    for batch, ordered in plan:
        n = min(args.events, args.max_calls * batch)
        events = events_for(n, ordered)
        _progress(f"{backend}: append {n:,} events, batch {batch:,}, {'in order' if ordered else 'random times'}")
        with fresh_store(backend, args.big_len, work, urls) as store:
            rate, ms, _ = timed_appends(store, events, batch)
            users = store.stats()["users"]
        rows.append(f"| {backend} | {batch:,} | {'increasing' if ordered else 'random'} | {n:,} | {len(ms):,} | "
                    f"{users:,} | {rate:,.0f} | {p(ms, 50)} | {p(ms, 99)} |")
    return rows


def bench_big(backend: str, args: argparse.Namespace, work: Path, urls: dict[str, str]) -> tuple[str, str]:
    """Sections 2 and 3 on one store: bulk-load the big users, read them, then append at the cap."""
    rng = np.random.default_rng([args.seed, 2])  # the same data for every backend
    u, length = args.big_users, args.big_len
    _progress(f"{backend}: bulk-load {u} users x {length:,} behaviors, {args.reads} history reads, "
              f"{args.cap_events:,} appends at the cap")
    with fresh_store(backend, length, work, urls) as store:
        mem0 = store.client.info("memory")["used_memory"] if backend == "redis" else 0
        user_ids, newest, load_s = load_full(store, u, length, rng)
        stored = u * length
        st = store.stats()
        if backend == "redis":
            keys = store.client.keys(f"bench:{{{user_ids[0]}}}:*")  # one user's meta, blocks, ids (this benchmark's)
            key_mem = sum(store.client.memory_usage(k, samples=0) or 0 for k in keys)
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
        events = make_events(args.cap_events, 1, True, rng, t_start=newest + 1000, user_ids=[target] * args.cap_events)
        rate, ms, dropped = timed_appends(store, events, args.cap_batch)
        after = len(store.history(target))
        row3 = (f"| {backend} | {length:,} | {args.cap_events:,} | {args.cap_batch:,} | {rate:,.0f} | {p(ms, 50)} | "
                f"{p(ms, 99)} | {dropped:,} | {after:,} |")
    return row2, row3


def written_bytes() -> int | None:
    """Bytes this process has passed to write calls (``wchar`` of ``/proc/self/io``); None where unreadable."""
    try:
        with open("/proc/self/io") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("wchar:"))
    except (OSError, StopIteration, ValueError):
        return None


def per_event(before: int | None, after: int | None, events: int) -> float | None:
    return None if before is None or after is None else (after - before) / events


def stream_lmdb_batches(length: int, args: argparse.Namespace, work: Path) -> dict:
    """``--stream-events`` events spread over ``--users`` users at the cap, ``--stream-batch`` per ``append``."""
    rng = np.random.default_rng([args.seed, length, 3])
    _progress(f"lmdb: {args.users} users at the cap {length:,}, {args.stream_events:,} events in batches of "
              f"{args.stream_batch:,}")
    with fresh_store("lmdb", length, work, None) as store:
        _, newest, _ = load_full(store, args.users, length, rng)
        events = make_events(args.stream_events, args.users, True, rng, t_start=newest + 1000)
        size0, wrote0 = store.stats()["bytes"], written_bytes()
        rate, ms, dropped = timed_appends(store, events, args.stream_batch)
        size1, wrote1 = store.stats()["bytes"], written_bytes()
    n = len(events)
    return {"measurement": f"LMDB append, batches of {args.stream_batch:,}", "calls": len(ms), "rate": rate,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "dropped": dropped,
            "file_growth_per_event": (size1 - size0) / n, "written_per_event": per_event(wrote0, wrote1, n),
            "target": STREAM_TARGETS["lmdb"][0], "met": bool(rate >= STREAM_TARGETS["lmdb"][1])}


def post_events(url: str, bodies: list[bytes], clients: int, seconds: float) -> tuple[list[float], list[str], int]:
    """POST ``bodies`` to ``/v1/events`` from ``clients`` threads, one keep-alive connection each, until done or
    ``seconds`` passed: (ms of each answered request, failures, behaviors the server dropped over the cap)."""
    where = urlsplit(url)
    ms: list[float] = []
    failed: list[str] = []
    dropped: list[int] = []
    deadline = time.perf_counter() + seconds

    def client(chunk: list[bytes]) -> None:
        conn = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
        for body in chunk:
            if time.perf_counter() > deadline:
                break
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/events", body, HEADERS)
                r = conn.getresponse()
                data = r.read()
            except (OSError, http.client.HTTPException) as e:
                failed.append(f"{type(e).__name__}: {e}")
                conn.close()  # reconnects on the next request
                continue
            if r.status != 200:
                failed.append(f"HTTP {r.status}: {data[:200]!r}")
                continue
            ms.append((time.perf_counter() - t0) * 1000)
            dropped.append(json.loads(data).get("dropped_over_cap", 0))
        conn.close()

    threads = [threading.Thread(target=client, args=(bodies[i::clients],)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ms, failed, sum(dropped)


def stream_http(length: int, workers: int, args: argparse.Namespace, work: Path) -> dict:
    """Single-event ``POST /v1/events`` requests into users at the cap, against ``userlens serve`` over LMDB."""
    from bench_serve import build  # the same (cached) packages as bench_serve: DIN, long_len = length

    from userlens.data.prepared import PreparedData

    rng = np.random.default_rng([args.seed, length, 4])
    data_dir, package = build(length, "din", Path(args.workdir))
    items = PreparedData(data_dir).vocab("item")["raw"].cast(str).to_list()
    n = args.warmup + args.requests
    _progress(f"http: {args.users} users at the cap {length:,}, {args.warmup} + {args.requests:,} single-event "
              f"requests, {workers} workers, {args.http_clients} client threads")
    url = f"lmdb://{tempfile.mkdtemp(prefix='lmdb-http-', dir=work)}"
    with open_store(url, length) as store:
        _, newest, _ = load_full(store, args.users, length, rng)
        who, what = rng.integers(0, args.users, n).tolist(), rng.integers(0, len(items), n).tolist()
        bodies = [json.dumps({"events": [{"user_id": f"u{who[k]}", "item_id": items[what[k]], "event_id": f"h{k}",
                                          "timestamp": (newest + 1000 * (k + 1)) / 1000}]}).encode()
                  for k in range(n)]
        with serve_process(package, url, workers=workers) as base:
            _, warm_failed, _ = post_events(base, bodies[:args.warmup], args.http_clients, args.max_seconds)
            size0, cpu0, t0 = store.stats()["bytes"], time.process_time(), time.perf_counter()
            ms, failed, dropped = post_events(base, bodies[args.warmup:], args.http_clients, args.max_seconds)
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        size1 = store.stats()["bytes"]
    failed = warm_failed + failed
    rate = len(ms) / wall
    return {"measurement": f"HTTP single-event appends (LMDB, {workers} workers, {args.http_clients} "
                           "client threads)", "calls": len(ms) + len(failed), "rate": rate,
            "p50_ms": float(np.percentile(ms, 50)) if ms else None,
            "p99_ms": float(np.percentile(ms, 99)) if ms else None, "dropped": dropped,
            "file_growth_per_event": (size1 - size0) / max(1, len(ms)), "workers": workers,
            "clients": args.http_clients, "failed": len(failed), "first_failure": failed[0] if failed else None,
            "client_cpu_share": cpu / wall, "target": STREAM_TARGETS["http"][0],
            "met": bool(rate >= STREAM_TARGETS["http"][1] and not failed)}


def aof_bytes(directory: Path) -> int:
    """Size of every file in the Redis data folder: ``appendonly.aof``, or Redis 7's ``appendonlydir/*``."""
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


def stream_redis_aof(length: int, args: argparse.Namespace, backend: str, server: LocalRedis | LocalRedisCluster,
                     url: str) -> dict:
    """AOF growth per single-event append into users at the cap (automatic AOF rewrites off; counted anyway)."""
    import redis

    rng = np.random.default_rng([args.seed, length, 5])
    _progress(f"{backend}: {args.users} users at the cap {length:,}, {args.aof_events:,} single-event appends")
    nodes = server.nodes if isinstance(server, LocalRedisCluster) else [server]
    admins = [redis.Redis(host="127.0.0.1", port=n.port) for n in nodes]
    for admin in admins:
        admin.config_set("auto-aof-rewrite-percentage", 0)  # a rewrite would shrink the AOF mid-measurement
        if admin.info("replication")["role"] == "master":
            admin.flushdb()

    def persistence() -> list[dict]:
        return [admin.info("persistence") for admin in admins]

    try:
        with open_store(url, length) as store:
            _, newest, _ = load_full(store, args.users, length, rng)
            events = make_events(args.aof_events, args.users, True, rng, t_start=newest + 1000)
            while any(i["aof_rewrite_in_progress"] for i in persistence()):
                time.sleep(0.1)
            info0, size0 = persistence(), aof_bytes(server.dir)
            rate, ms, dropped = timed_appends(store, events, 1)
            info1, size1 = persistence(), aof_bytes(server.dir)
            store.client.flushdb()
    finally:
        for admin in admins:
            admin.close()
    rewrites = sum(b.get("aof_rewrites", 0) - a.get("aof_rewrites", 0) + b["aof_rewrite_in_progress"]
                   + b["aof_rewrite_scheduled"] for a, b in zip(info0, info1))
    growth = (size1 - size0) / len(events)
    what = "Redis" if backend == "redis" else f"Redis Cluster, 3 primaries{cluster_note(args)}"
    return {"measurement": f"{what} single-event appends (AOF, fsync always)", "calls": len(ms), "rate": rate,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "dropped": dropped,
            "aof_growth_per_event": growth, "aof_rewrites_during": rewrites, "target": STREAM_TARGETS["aof"][0],
            "met": bool(growth <= STREAM_TARGETS["aof"][1] and rewrites == 0)}


def cluster_note(args: argparse.Namespace) -> str:
    return f" x {1 + args.cluster_replicas} nodes, WAIT {args.cluster_replicas}" if args.cluster_replicas else ""


def streaming(args: argparse.Namespace, work: Path, backends: list[str], servers: Servers, urls: dict[str, str]
              ) -> None:
    """The ``--streaming`` table: per length, the measurements of the backends asked for, each against its target."""
    meta = {"date": now(), "machine": machine_note(args.note), "commit": commit(), "users": args.users}
    lines, notes, verdicts = [], [], []
    for length in args.lengths:
        rows = []
        if "lmdb" in backends:
            rows.append(stream_lmdb_batches(length, args, work))
            rows += [stream_http(length, w, args, work) for w in args.http_workers]
        rows += [stream_redis_aof(length, args, backend, server, urls[backend]) for backend, server in servers.items()]
        for r in rows:
            append_row(args.results, {**meta, "L": length, **r})
            verdicts.append(r["met"])
            size = "; ".join(f"{name} {r[key]:,.0f}" for key, name in (
                ("file_growth_per_event", "LMDB file +"), ("written_per_event", "written"),
                ("aof_growth_per_event", "AOF +")) if r.get(key) is not None)
            p50, p99 = (f"{r[k]:.2f}" if r[k] is not None else "–" for k in ("p50_ms", "p99_ms"))
            lines.append(f"| {length:,} | {r['measurement']} | {args.users} | {r['calls']:,} | {r['rate']:,.0f} | "
                         f"{p50} | {p99} | {r['dropped']:,} | {size} | {r['target']} | {met(r['met'])} |")
            notes += [f"L = {length:,}, {r['measurement']}: {x}" for x in (
                f"{r['failed']} requests failed (first: {r['first_failure'][:200]})" if r.get("failed") else "",
                f"the client threads used {r['client_cpu_share']:.0%} of one core" if "client_cpu_share" in r else "",
                f"AOF rewrites during the measurement: {r['aof_rewrites_during']}"
                if "aof_rewrites_during" in r else "") if x]
    print("\n## Streaming: appends into users at the cap (every event drops the oldest behavior)\n")
    print("| L | measurement | users | calls | events/s | p50 ms/call | p99 ms/call | dropped | bytes/event | "
          "target | met |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))
    print("".join(f"\n- {x}" for x in notes))
    print(f"\ntargets met: {sum(verdicts)} of {len(verdicts)}; rows appended to {args.results}")


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
    ap.add_argument("--users", type=int, help="users the appended events are spread over (default 1000; "
                                              "--streaming: users at the cap, default 100)")
    ap.add_argument("--big-users", type=int, help="users bulk-loaded for the storage table (default 10)")
    ap.add_argument("--big-len", type=int, help="behaviors per bulk-loaded user, also the stores' cap (default 100000)")
    ap.add_argument("--reads", type=int, help="history reads timed (default 200)")
    ap.add_argument("--cap-events", type=int, help="events appended to a user at the cap (default 1000)")
    ap.add_argument("--cap-batch", type=int, help="batch size of those appends (default 100)")
    ap.add_argument("--streaming", action="store_true", help="only the streaming table (see above)")
    ap.add_argument("--lengths", help="--streaming: the caps, users full at each (default 1000,10000,100000)")
    ap.add_argument("--stream-events", type=int, help="--streaming: LMDB events appended in batches (default 10000)")
    ap.add_argument("--stream-batch", type=int, help="--streaming: their batch size (default 1000)")
    ap.add_argument("--requests", type=int, help="--streaming: single-event HTTP requests (default 2000)")
    ap.add_argument("--warmup", type=int, help="--streaming: HTTP requests sent first, not measured (default 100)")
    ap.add_argument("--aof-events", type=int, help="--streaming: single-event Redis appends (default 200)")
    ap.add_argument("--http-workers", default="1,2", help="--streaming: one HTTP row per `userlens serve --workers` "
                    "count (a DIN package per length is built in --workdir, cached); '' for none")
    ap.add_argument("--http-clients", type=int, default=8, help="--streaming: client threads")
    ap.add_argument("--max-seconds", type=float, default=20.0, help="--streaming: stop the HTTP requests after this")
    ap.add_argument("--workdir", default="/tmp/userlens-bench-serve", help="bench_serve's package cache")
    ap.add_argument("--results", default=str(STREAM_RESULTS), help="--streaming: append one JSON row per "
                                                                   "measurement here")
    ap.add_argument("--note", default="", help="--streaming: machine note stored with each row, e.g. 'idle'")
    ap.add_argument("--cluster-replicas", type=int, default=0, help="redis-cluster: replicas per primary; every "
                    "write then waits for that many (?replicas=N)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tmpdir", default=None, help="where the stores live (default: the system temp folder)")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (seconds); explicit options still win")
    args = ap.parse_args()
    for name, (full, quick) in (DEFAULTS | STREAM_DEFAULTS if args.streaming else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    for name in ("batches", "lengths", "http_workers"):
        try:
            setattr(args, name, [int(b) for b in str(getattr(args, name)).split(",")] if getattr(args, name) else [])
        except ValueError:
            ap.error(f"--{name} {getattr(args, name)!r}: expected comma-separated integers, e.g. 1,100,1000")
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in args.backends if b not in BACKENDS]
    if unknown or not args.backends:
        ap.error(f"--backends: unknown {unknown or 'none given'}; known: {', '.join(BACKENDS)}")
    counts = {k: v for k, v in vars(args).items() if isinstance(v, int) and (k in DEFAULTS or k in STREAM_DEFAULTS
                                                                            or k.startswith("http_"))}
    small = {k: v for k, v in counts.items() if v < (0 if k == "warmup" else 1)}
    lists = {k: getattr(args, k) for k in ("batches", "lengths", "http_workers")
             if getattr(args, k) and min(getattr(args, k)) < 1}
    if args.cluster_replicas < 0:
        small["cluster_replicas"] = args.cluster_replicas
    if small or lists:
        ap.error(f"expected positive counts, got {small | lists}")
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
        for b, tool in (("redis", "redis-server"), ("redis-cluster", "redis-cli")):
            if b in backends and not (shutil.which("redis-server") and shutil.which(tool)):
                print(f"\n> {b} skipped: `{tool}` is not on PATH (install it, e.g. apt-get install redis-server)")
                backends.remove(b)
        servers: Servers = {}
        if "redis" in backends:
            servers["redis"] = stack.enter_context(LocalRedis(work / "redis"))
        if "redis-cluster" in backends:
            servers["redis-cluster"] = stack.enter_context(
                LocalRedisCluster(work / "cluster", primaries=3, replicas=args.cluster_replicas))
        urls = {b: server.url for b, server in servers.items()}
        if args.cluster_replicas and "redis-cluster" in urls:
            urls["redis-cluster"] += f"?replicas={args.cluster_replicas}"
        if args.streaming:
            streaming(args, work, backends, servers, urls)
            return

        append_rows = [row for b in backends for row in bench_append(b, args, work, urls, events_for)]
        print("\n## 1. Append, durable on return (fresh store per row)\n")
        print("| backend | batch | timestamps | events | calls | users | events/s | p50 ms/call | p99 ms/call |")
        print("|---|---|---|---|---|---|---|---|---|")
        print("\n".join(append_rows), flush=True)
        cache.clear()

        big_rows = [bench_big(b, args, work, urls) for b in backends]
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
