"""Serving latency: the in-process scorer and the HTTP API, over histories of 1K / 10K / 100K behaviors.

For each history length a generated log gives a few users exactly that many
behaviors; each model is trained for one batch (latency does not depend on the
weights), exported, and the users' histories are bulk-loaded into a fresh store.
Then a bounded load generator sends a fixed number of score requests (each a
random user and ``candidates`` random items, sequentially, after warm-up) and
prints latency p50 / p95 / p99 and requests/s, in process and over HTTP on
loopback (Uvicorn in a subprocess, one worker). It stops by itself.

Each measured cell (length, model, candidates, path) is also appended as one
JSON row to ``--results`` (default ``benchmarks/results/serve.jsonl``: date,
machine note, torch version and the printed figures, unrounded), and the
latency figure (``benchmarks/figures/serve-latency.png``,
:func:`plots.plot_serve_latency`) is redrawn from it at the end of a run.

``--streaming`` measures the case lifelong users live in: every user's history is full (at the
package's ``long_len`` = L, the store's cap) and events keep arriving. Per length, model and
candidate count, ``--requests`` score requests each come right after appending one event to that
user (1 s after their newest behavior; the request 1 ms after the event) and ``--requests`` come
without one, interleaved at random in one run (one at a time; only the score call is timed, the
append's own latency has its columns). Target: p99 after an append ≤ 1.2 × p99 without. Then a
concurrent variant: ``--clients`` threads share the scorer, requests for ``clients // 2`` users (so
one user's requests overlap), every other one right after an append; target: no request fails.
"state rebuilds": how many times the scorer rebuilt a user's state during the measured requests,
where the scorer counts them (``Scorer.state_stats["rebuilds"]``; "–" where it does not).
Rows go to ``benchmarks/results/serve-streaming.jsonl``; the table marks each target met or not.

    .venv/bin/python benchmarks/bench_serve.py
    .venv/bin/python benchmarks/bench_serve.py --lengths 100000 --models sdim,sim_hard --candidates 100 --requests 200
    .venv/bin/python benchmarks/bench_serve.py --streaming          # ~2.5 min on 2 idle cores (~5 the first time)
    .venv/bin/python benchmarks/bench_serve.py --streaming --lengths 100000 --models sdim,sim_hard --requests 1000
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from plots import SERVE, draw_after_run, plot_serve_latency
from records import append_row, commit, machine_note, now
from streaming import HEADERS, met, percentiles, serve_process

if TYPE_CHECKING:
    from userlens.serving.scorer import Scorer

MODELS = "sim_hard,sim_soft,eta,sdim,twin,dare,muse,qin,din"
SERVE_STREAMING = SERVE.with_name("serve-streaming.jsonl")
RATIO = 1.2  # --streaming target: p99 of a score request right after an append ≤ RATIO × p99 without
GSU_MS: list[float] = []  # time spent inside the GSU of the current request (see patch_gsu_timers)


def patch_gsu_timers() -> None:
    """Time every search unit call (the names each model file imported, and SIM's category search)."""
    import importlib

    from userlens.layers import gsu

    def timed(fn):  # type: ignore[no-untyped-def]
        def wrapper(*a, **k):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                GSU_MS.append((time.perf_counter() - t0) * 1000)
        return wrapper

    for mod, names in {"userlens.models.sim_soft": ["table_topk"], "userlens.models.dare": ["table_topk"],
                       "userlens.models.muse": ["table_topk"], "userlens.layers.interest": ["table_topk"],
                       "userlens.models.eta": ["hamming_topk"], "userlens.models.sdim": ["bucket_sum"]}.items():
        m = importlib.import_module(mod)
        for n in names:
            setattr(m, n, timed(getattr(m, n)))
    gsu.CategoryIndex.search = timed(gsu.CategoryIndex.search)  # type: ignore[method-assign]


def bandwidth_gbs() -> float:
    """Sustained single-thread read bandwidth: summing a 256 MiB array (best of 3)."""
    a = np.ones(1 << 25, dtype=np.float64)
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        a.sum()
        best = max(best, a.nbytes / (time.perf_counter() - t0) / 1e9)
    return best


def floor_bytes(model: str, length: int, candidates: int) -> int:
    """What a GSU must read per request at the least: the history's item codes (4 B each) and whatever
    it scores per behavior (ETA: an 8-byte signature; table GSUs: one float per behavior and candidate is
    computed, not read); SIM hard and SDIM with kept state read O(k) / O(rounds) rows instead."""
    if model in ("sim_hard", "qin"):
        return candidates * 50 * 8  # two binary searches + k positions per candidate
    if model == "sdim":
        return candidates * 16 * 33 * 4  # one bucket-sum row per round per candidate
    if model == "eta":
        return length * (4 + 8)
    return length * 4


def build(length: int, model: str, work: Path) -> tuple[Path, Path]:
    """(prepared data, package) for ``model`` over users with ``length`` behaviors each."""
    from userlens.data.prepare import prepare, sources_from_files
    from userlens.data.prepared import PreparedData
    from userlens.serving.package import export_package
    from userlens.synthetic import long_history_log
    from userlens.training.config import resolve_config
    from userlens.training.trainer import fit

    data = work / f"L{length}" / "data"
    if not (data / "meta.json").exists():
        users = max(4, 400_000 // length)
        p = long_history_log(users, length, n_items=50_000, n_categories=500, seed=3).write(work / f"L{length}" / "raw")
        prepare(sources_from_files(p["behaviors"], items=p["items"]), data, log=lambda s: None, force=True)
    pkg = work / f"L{length}" / f"pkg-{model}"
    if not (pkg / "package.json").exists():
        cfg = resolve_config(model, {"fast_dev_run": True, "long_len": max(length, 1), "compile": False})
        fit(PreparedData(data), cfg, work / f"L{length}" / f"run-{model}", show_progress=False, log=lambda s: None,
            force=True)
        export_package(work / f"L{length}" / f"run-{model}", pkg, force=True)
    return data, pkg


@dataclass
class Cell:
    """One (length, model): the package, the store's URL, a scorer over the freshly loaded store, raw ids."""

    package: Path
    url: str
    scorer: Scorer
    users: list[str]
    items: list[str]


def open_cell(length: int, model: str, args: argparse.Namespace) -> Cell:
    """Build (cached) and load ``model`` at ``length`` into a fresh store (LMDB: its folder is deleted first)."""
    from userlens.data.prepared import PreparedData
    from userlens.serving.package import load_package
    from userlens.serving.scorer import Scorer
    from userlens.serving.store import bulk_load_prepared, open_store

    work = Path(args.workdir)
    data_dir, pkg_dir = build(length, model, work)
    data = PreparedData(data_dir)
    pkg = load_package(pkg_dir)
    url = f"lmdb://{work}/L{length}/store-{model}" if args.store == "lmdb" else args.redis_url
    if args.store == "lmdb":  # a store left by an earlier run (or an older userlens) is not reused
        shutil.rmtree(work / f"L{length}" / f"store-{model}", ignore_errors=True)
    store = open_store(url, cap=pkg.long_len)
    bulk_load_prepared(store, data)
    return Cell(pkg_dir, url, Scorer(pkg, store), data.vocab("user")["raw"].cast(str).to_list(),
                data.vocab("item")["raw"].cast(str).to_list())


class Stream:
    """Users at the cap and their newest stored time: events appended 1 s after it, requests 1 ms after that."""

    def __init__(self, scorer: Scorer, users: list[str], items: list[str]) -> None:
        self.scorer, self.items = scorer, items
        self.last: dict[str, int] = {}
        for u in users:  # not timed
            h = scorer.store.history(u)
            if len(h) != scorer.package.long_len:
                raise RuntimeError(f"user {u!r} has {len(h)} stored behaviors, expected the cap "
                                   f"{scorer.package.long_len}: the streaming benchmark appends to full histories")
            self.last[u] = int(h.time[-1])
        self.locks = {u: threading.Lock() for u in users}  # one user's events are appended in time order
        self.ids = map(f"bench-{time.time_ns()}-{{}}".format, itertools.count())  # unique: no append is a duplicate

    def append(self, user: str, rng: np.random.Generator) -> float:
        """Append one event to ``user``; returns the ``append`` call's ms."""
        item = self.items[rng.integers(len(self.items))]
        with self.locks[user]:
            self.last[user] += 1000
            ev = self.scorer.encode_event(user, item, self.last[user], event_id=next(self.ids))
            t0 = time.perf_counter()
            res = self.scorer.store.append([ev])
            ms = (time.perf_counter() - t0) * 1000
        if res.appended != 1:
            raise RuntimeError(f"append of one event to {user!r} stored {res.appended} ({res})")
        return ms

    def score(self, user: str, candidates: int, rng: np.random.Generator) -> float:
        """Score ``candidates`` random items for ``user`` just after their newest event; returns ms."""
        cands = [self.items[i] for i in rng.integers(0, len(self.items), candidates)]
        t0 = time.perf_counter()
        self.scorer.score(user, cands, self.last[user] + 1)
        return (time.perf_counter() - t0) * 1000


def state_rebuilds(scorer: Scorer) -> int | None:
    """Per-user state rebuilds so far, where the scorer counts them (``state_stats["rebuilds"]``); else None."""
    stats = getattr(scorer, "state_stats", None)
    stats = stats() if callable(stats) else stats
    return stats.get("rebuilds") if isinstance(stats, dict) else None


def rebuilt(scorer: Scorer, before: int | None) -> int | None:
    after = state_rebuilds(scorer)
    return None if before is None or after is None else after - before


def stream_sequential(stream: Stream, candidates: int, args: argparse.Namespace, rng: np.random.Generator
                      ) -> dict[str, float | int]:
    """``--requests`` score requests right after appending one event to that user and as many without,
    one at a time, interleaved at random (each a random user); only the score call is in the latencies."""
    users = list(stream.last)
    for u in users:  # every user's scorer state is built before measuring (not timed)
        stream.score(u, candidates, rng)
    warm = [False, True] * max(1, args.warmup // 2)
    plan = warm + rng.permutation(np.repeat([False, True], args.requests)).tolist()
    ms: dict[bool, list[float]] = {False: [], True: []}
    append_ms: list[float] = []
    start, rebuilds = time.perf_counter(), state_rebuilds(stream.scorer)
    for k, appended in enumerate(plan):
        if k == len(warm):
            start, rebuilds = time.perf_counter(), state_rebuilds(stream.scorer)
        u = users[rng.integers(len(users))]
        a = stream.append(u, rng) if appended else None
        t = stream.score(u, candidates, rng)
        if k >= len(warm):
            ms[appended].append(t)
            append_ms += [a] if a is not None else []
            if time.perf_counter() - start > args.max_seconds:
                break
    plain, after, app = percentiles(ms[False]), percentiles(ms[True]), percentiles(append_ms)
    return {"requests_plain": len(ms[False]), "requests_after_append": len(ms[True]),
            "p50_ms": plain["p50_ms"], "p99_ms": plain["p99_ms"], "p50_ms_after_append": after["p50_ms"],
            "p99_ms_after_append": after["p99_ms"], "p99_ratio": after["p99_ms"] / plain["p99_ms"],
            "append_p50_ms": app["p50_ms"], "append_p99_ms": app["p99_ms"],
            "state_rebuilds": rebuilt(stream.scorer, rebuilds)}


def stream_concurrent(stream: Stream, candidates: int, args: argparse.Namespace) -> dict[str, object]:
    """``--clients`` threads share one scorer, each sending ``--requests`` / clients score requests for
    ``clients // 2`` users (so requests for one user overlap), every other one right after an append."""
    hot = list(stream.last)[: max(1, args.clients // 2)]
    ms: list[float] = []
    failed: list[str] = []

    def client(i: int) -> None:
        rng = np.random.default_rng([1, i])
        for k in range(max(1, args.requests // args.clients)):
            u = hot[rng.integers(len(hot))]
            try:
                if k % 2 == 0:
                    stream.append(u, rng)
                ms.append(stream.score(u, candidates, rng))
            except Exception as e:  # noqa: BLE001 -- a failed request is counted and shown, not raised
                failed.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    t0, rebuilds = time.perf_counter(), state_rebuilds(stream.scorer)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    p = percentiles(ms) if ms else {"p50_ms": float("nan"), "p99_ms": float("nan")}
    return {"clients": args.clients, "users": len(hot), "requests": len(ms) + len(failed), "failed": len(failed),
            "first_failure": failed[0] if failed else None, "p50_ms": p["p50_ms"], "p99_ms": p["p99_ms"],
            "requests_per_s": len(ms) / wall, "state_rebuilds": rebuilt(stream.scorer, rebuilds)}


def dash(x: object) -> str:
    return "–" if x is None else str(x)


def streaming(args: argparse.Namespace, meta: dict) -> None:
    """The ``--streaming`` tables: per length, model and candidate count, sequential then concurrent."""
    print(f"# bench_serve --streaming {time.strftime('%Y-%m-%d %H:%M')}, torch {meta['torch']}, {args.threads} "
          f"threads, store {args.store}; users at the cap (the package's long_len = L); {args.requests} requests "
          f"after an append and {args.requests} without, interleaved (at most {args.max_seconds:.0f} s), after "
          f"{args.warmup} warm-up; concurrent: {args.clients} threads, {args.requests} requests")
    print(f"\n## Score latency right after appending one event (target: p99 ≤ {RATIO}× p99 without)\n")
    print("| L | model | candidates | requests each | p50 ms | p99 ms | p50 ms after append | p99 ms after append | "
          f"p99 ratio | ≤ {RATIO}× | append p50 ms | append p99 ms | state rebuilds |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    rng = np.random.default_rng(0)
    concurrent, verdicts = [], []
    for length in (int(x) for x in args.lengths.split(",")):
        for model in args.models.split(","):
            cell = open_cell(length, model, args)
            stream = Stream(cell.scorer, cell.users, cell.items)
            for n_cand in (int(x) for x in args.candidates.split(",")):
                key = {"L": length, "model": model, "candidates": n_cand, "mode": "streaming"}
                r = stream_sequential(stream, n_cand, args, rng)
                ok = r["p99_ratio"] <= RATIO
                verdicts.append(ok)
                append_row(args.results, {**meta, **key, "variant": "sequential", **r, "target_ratio": RATIO,
                                          "met": ok})
                print(f"| {length:,} | {model} | {n_cand} | {r['requests_plain']} / {r['requests_after_append']} | "
                      f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['p50_ms_after_append']:.1f} | "
                      f"{r['p99_ms_after_append']:.1f} | {r['p99_ratio']:.2f} | {met(ok)} | "
                      f"{r['append_p50_ms']:.2f} | {r['append_p99_ms']:.2f} | {dash(r['state_rebuilds'])} |",
                      flush=True)
                c = stream_concurrent(stream, n_cand, args)
                verdicts.append(c["failed"] == 0)
                append_row(args.results, {**meta, **key, "variant": "concurrent", **c, "met": c["failed"] == 0})
                concurrent.append((key, c))
            cell.scorer.store.close()
    print(f"\n## Concurrent: {args.clients} threads, one scorer, every other request right after an append "
          "(target: none failed)\n")
    print("| L | model | candidates | users | requests | p50 ms | p99 ms | requests/s | state rebuilds | failed | "
          "none failed |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for key, c in concurrent:
        print(f"| {key['L']:,} | {key['model']} | {key['candidates']} | {c['users']} | {c['requests']} | "
              f"{c['p50_ms']:.1f} | {c['p99_ms']:.1f} | {c['requests_per_s']:,.0f} | {dash(c['state_rebuilds'])} | "
              f"{c['failed']} | {met(c['failed'] == 0)} |")
    for key, c in concurrent:
        if c["first_failure"]:
            print(f"\n- L = {key['L']:,}, {key['model']}: first failure: {c['first_failure'][:300]}")
    print(f"\ntargets met: {sum(verdicts)} of {len(verdicts)}; rows appended to {args.results}")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streaming", action="store_true",
                    help="score users at the cap with one event appended before half the requests (see above)")
    ap.add_argument("--lengths", default="1000,10000,100000")
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--candidates", default=None, help="default 100,1000 (--streaming: 100)")
    ap.add_argument("--requests", type=int, default=None,
                    help="measured requests per cell (default 200; --streaming: per condition, default 100)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--max-seconds", type=float, default=30.0,
                    help="stop a cell after this many seconds of measured requests (the count is printed)")
    ap.add_argument("--store", default="lmdb", choices=["lmdb", "redis"])
    ap.add_argument("--redis-url", default=None, help="redis://HOST:PORT of a running server (with --store redis)")
    ap.add_argument("--http", action=argparse.BooleanOptionalAction, default=True, help="(not with --streaming)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--clients", type=int, default=4, help="--streaming: threads of the concurrent variant")
    ap.add_argument("--workdir", default="/tmp/userlens-bench-serve")
    ap.add_argument("--results", default=None, help="append one JSON row per measured cell here (default "
                                                    f"{SERVE}; --streaming: {SERVE_STREAMING})")
    ap.add_argument("--note", default="", help="machine note stored with each row, e.g. 'idle'")
    args = ap.parse_args()
    for name, plain, streamed in (("candidates", "100,1000", "100"), ("requests", 200, 100),
                                  ("results", str(SERVE), str(SERVE_STREAMING))):
        if getattr(args, name) is None:
            setattr(args, name, streamed if args.streaming else plain)
    if args.store == "redis" and not args.redis_url:
        ap.error("--store redis needs --redis-url redis://HOST:PORT of a running server")
    return args


def main() -> None:
    args = parse_args()
    import torch

    torch.set_num_threads(args.threads)
    meta = {"date": now(), "machine": machine_note(args.note), "commit": commit(), "torch": torch.__version__,
            "threads": args.threads, "store": args.store, "warmup": args.warmup}
    if args.streaming:
        streaming(args, meta)
        return
    rng = np.random.default_rng(0)
    patch_gsu_timers()
    gbs = bandwidth_gbs()
    meta["read_bandwidth_gbs"] = gbs
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}, torch {torch.__version__}, {args.threads} threads, store {args.store}, "
          f"{args.requests} requests (at most {args.max_seconds:.0f} s) after {args.warmup} warm-up; "
          f"read bandwidth {gbs:.1f} GB/s (one thread)")
    print("| L | model | candidates | path | requests | p50 ms | p95 ms | p99 ms | requests/s | GSU p50 ms | "
          "GSU floor ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for length in (int(x) for x in args.lengths.split(",")):
        for model in args.models.split(","):
            cell = open_cell(length, model, args)
            scorer, users, items = cell.scorer, cell.users, cell.items
            for n_cand in (int(x) for x in args.candidates.split(",")):
                reqs = [(users[rng.integers(len(users))], [items[i] for i in rng.integers(0, len(items), n_cand)])
                        for _ in range(args.requests + args.warmup)]
                ms, gsu_ms = [], []
                start = time.perf_counter()
                for k, (u, c) in enumerate(reqs):
                    GSU_MS.clear()
                    t0 = time.perf_counter()
                    scorer.score(u, c)
                    if k >= args.warmup:
                        ms.append((time.perf_counter() - t0) * 1000)
                        gsu_ms.append(sum(GSU_MS))
                    if k == args.warmup - 1:
                        start = time.perf_counter()
                    if k >= args.warmup and time.perf_counter() - start > args.max_seconds:
                        break
                p = percentiles(ms)
                gsu = float(np.median(gsu_ms)) if any(gsu_ms) else None
                floor_ms = floor_bytes(model, length, n_cand) / gbs / 1e6 if any(gsu_ms) else None
                row = {"L": length, "model": model, "candidates": n_cand}
                append_row(args.results, {**meta, **row, "path": "in-process", "requests": len(ms), **p,
                                          "gsu_p50_ms": gsu, "gsu_floor_ms": floor_ms})
                g = f"{gsu:.2f}" if gsu is not None else "–"
                floor = f"{floor_ms:.3f}" if floor_ms is not None else "–"
                print(f"| {length:,} | {model} | {n_cand} | in-process | {len(ms)} | {p['p50_ms']:.1f} | "
                      f"{p['p95_ms']:.1f} | {p['p99_ms']:.1f} | {p['requests_per_s']:,.0f} | {g} | {floor} |",
                      flush=True)
                if args.http:
                    p, done = http_bench(cell.package, cell.url, reqs, args.warmup, args.max_seconds)
                    append_row(args.results, {**meta, **row, "path": "HTTP", "requests": done, **p})
                    print(f"| {length:,} | {model} | {n_cand} | HTTP | {done} | {p['p50_ms']:.1f} | "
                          f"{p['p95_ms']:.1f} | {p['p99_ms']:.1f} | {p['requests_per_s']:,.0f} | | |", flush=True)
            scorer.store.close()
    draw_after_run(plot_serve_latency, Path(args.results))


def http_bench(pkg: Path, url: str, reqs: list, warmup: int, max_seconds: float) -> tuple[dict[str, float], int]:
    """Latency of ``POST /v1/score`` against ``userlens serve`` started on a free loopback port."""
    import httpx

    with serve_process(pkg, url) as base, httpx.Client(base_url=base, headers=HEADERS, timeout=60) as client:
        ms = []
        start = time.perf_counter()
        for k, (u, c) in enumerate(reqs):
            t0 = time.perf_counter()
            r = client.post("/v1/score", content=json.dumps({"user_id": u, "candidates": c}))
            r.raise_for_status()
            if k >= warmup:
                ms.append((time.perf_counter() - t0) * 1000)
            if k == warmup - 1:
                start = time.perf_counter()
            if k >= warmup and time.perf_counter() - start > max_seconds:
                break
    return percentiles(ms), len(ms)


if __name__ == "__main__":
    main()
