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

    .venv/bin/python benchmarks/bench_serve.py
    .venv/bin/python benchmarks/bench_serve.py --lengths 100000 --models sdim,sim_hard --candidates 100 --requests 200
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from plots import SERVE, draw_after_run, plot_serve_latency
from records import append_row, commit, machine_note, now

MODELS = "sim_hard,sim_soft,eta,sdim,twin,dare,muse,qin,din"
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def percentiles(ms: list[float]) -> dict[str, float]:
    """Latency percentiles and throughput, under the names the results file stores them by."""
    a = np.asarray(ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "p99_ms": float(np.percentile(a, 99)), "requests_per_s": 1000.0 / float(a.mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="1000,10000,100000")
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--candidates", default="100,1000")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--max-seconds", type=float, default=30.0,
                    help="stop a cell after this many seconds of measured requests (the count is printed)")
    ap.add_argument("--store", default="lmdb", choices=["lmdb", "redis"])
    ap.add_argument("--redis-url", default=None, help="redis://HOST:PORT of a running server (with --store redis)")
    ap.add_argument("--http", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default="/tmp/userlens-bench-serve")
    ap.add_argument("--results", default=str(SERVE), help="append one JSON row per measured cell here")
    ap.add_argument("--note", default="", help="machine note stored with each row, e.g. 'idle'")
    args = ap.parse_args()

    import torch

    from userlens.data.prepared import PreparedData
    from userlens.serving.package import load_package
    from userlens.serving.scorer import Scorer
    from userlens.serving.store import bulk_load_prepared, open_store

    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    rng = np.random.default_rng(0)
    patch_gsu_timers()
    gbs = bandwidth_gbs()
    meta = {"date": now(), "machine": machine_note(args.note), "commit": commit(), "torch": torch.__version__,
            "threads": args.threads, "store": args.store, "read_bandwidth_gbs": gbs, "warmup": args.warmup}
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}, torch {torch.__version__}, {args.threads} threads, store {args.store}, "
          f"{args.requests} requests (at most {args.max_seconds:.0f} s) after {args.warmup} warm-up; "
          f"read bandwidth {gbs:.1f} GB/s (one thread)")
    print("| L | model | candidates | path | requests | p50 ms | p95 ms | p99 ms | requests/s | GSU p50 ms | "
          "GSU floor ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for length in (int(x) for x in args.lengths.split(",")):
        for model in args.models.split(","):
            data_dir, pkg_dir = build(length, model, work)
            data = PreparedData(data_dir)
            pkg = load_package(pkg_dir)
            url = (f"lmdb://{work}/L{length}/store-{model}" if args.store == "lmdb" else args.redis_url)
            store = open_store(url, cap=pkg.long_len)
            bulk_load_prepared(store, data)
            scorer = Scorer(pkg, store)
            users = data.vocab("user")["raw"].cast(str).to_list()
            items = data.vocab("item")["raw"].cast(str).to_list()
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
                cell = {"L": length, "model": model, "candidates": n_cand}
                append_row(args.results, {**meta, **cell, "path": "in-process", "requests": len(ms), **p,
                                          "gsu_p50_ms": gsu, "gsu_floor_ms": floor_ms})
                g = f"{gsu:.2f}" if gsu is not None else "–"
                floor = f"{floor_ms:.3f}" if floor_ms is not None else "–"
                print(f"| {length:,} | {model} | {n_cand} | in-process | {len(ms)} | {p['p50_ms']:.1f} | "
                      f"{p['p95_ms']:.1f} | {p['p99_ms']:.1f} | {p['requests_per_s']:,.0f} | {g} | {floor} |",
                      flush=True)
                if args.http:
                    p, done = http_bench(pkg_dir, url, reqs, args.warmup, args.max_seconds)
                    append_row(args.results, {**meta, **cell, "path": "HTTP", "requests": done, **p})
                    print(f"| {length:,} | {model} | {n_cand} | HTTP | {done} | {p['p50_ms']:.1f} | "
                          f"{p['p95_ms']:.1f} | {p['p99_ms']:.1f} | {p['requests_per_s']:,.0f} | | |", flush=True)
            store.close()
    draw_after_run(plot_serve_latency, Path(args.results))


def http_bench(pkg: Path, url: str, reqs: list, warmup: int, max_seconds: float) -> tuple[dict[str, float], int]:
    """Latency of ``POST /v1/score`` against ``userlens serve`` started on a free loopback port."""
    import httpx

    port = _free_port()
    env = {**os.environ, "USERLENS_TOKEN": "bench"}
    server = subprocess.Popen([sys.executable, "-m", "userlens.cli", "serve", str(pkg), "--store", url, "--port",
                               str(port), "--max-candidates", "5000"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            deadline = time.time() + 120
            while True:
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if server.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"server did not start: {server.stderr.read().decode()[-500:]}")
                time.sleep(0.2)
            ms = []
            start = time.perf_counter()
            for k, (u, c) in enumerate(reqs):
                t0 = time.perf_counter()
                r = client.post("/v1/score", content=json.dumps({"user_id": u, "candidates": c}),
                                headers={"content-type": "application/json"})
                r.raise_for_status()
                if k >= warmup:
                    ms.append((time.perf_counter() - t0) * 1000)
                if k == warmup - 1:
                    start = time.perf_counter()
                if k >= warmup and time.perf_counter() - start > max_seconds:
                    break
        return percentiles(ms), len(ms)
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
