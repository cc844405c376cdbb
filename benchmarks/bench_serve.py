"""Serving latency: the in-process scorer and the HTTP API, over histories of 1K / 10K / 100K behaviors.

For each history length a generated log gives a few users exactly that many
behaviors; each model is trained for one batch (latency does not depend on the
weights), exported, and the users' histories are bulk-loaded into a fresh store.
Then a bounded load generator sends a fixed number of score requests (each a
random user and ``candidates`` random items, sequentially, after warm-up) and
prints latency p50 / p95 / p99 and requests/s, in process and over HTTP on
loopback (Uvicorn in a subprocess, one worker). It stops by itself.

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

MODELS = "sim_hard,sim_soft,eta,sdim,twin,dare,muse,qin,din"


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
    a = np.asarray(ms)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "p99": float(np.percentile(a, 99)), "rps": 1000.0 / float(a.mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="1000,10000,100000")
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--candidates", default="100,1000")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--store", default="lmdb", choices=["lmdb", "redis"])
    ap.add_argument("--redis-url", default=None, help="redis://HOST:PORT of a running server (with --store redis)")
    ap.add_argument("--http", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default="/tmp/userlens-bench-serve")
    args = ap.parse_args()

    import torch

    from userlens.data.prepared import PreparedData
    from userlens.serving.package import load_package
    from userlens.serving.scorer import Scorer
    from userlens.serving.store import bulk_load_prepared, open_store

    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    rng = np.random.default_rng(0)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}, torch {torch.__version__}, {args.threads} threads, store {args.store}, "
          f"{args.requests} requests after {args.warmup} warm-up")
    print("| L | model | candidates | path | p50 ms | p95 ms | p99 ms | requests/s |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
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
                ms = []
                for k, (u, c) in enumerate(reqs):
                    t0 = time.perf_counter()
                    scorer.score(u, c)
                    if k >= args.warmup:
                        ms.append((time.perf_counter() - t0) * 1000)
                p = percentiles(ms)
                print(f"| {length:,} | {model} | {n_cand} | in-process | {p['p50']:.1f} | {p['p95']:.1f} | "
                      f"{p['p99']:.1f} | {p['rps']:,.0f} |", flush=True)
                if args.http:
                    p = http_bench(pkg_dir, url, reqs, args.warmup)
                    print(f"| {length:,} | {model} | {n_cand} | HTTP | {p['p50']:.1f} | {p['p95']:.1f} | "
                          f"{p['p99']:.1f} | {p['rps']:,.0f} |", flush=True)
            store.close()


def http_bench(pkg: Path, url: str, reqs: list, warmup: int) -> dict[str, float]:
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
            for k, (u, c) in enumerate(reqs):
                t0 = time.perf_counter()
                r = client.post("/v1/score", content=json.dumps({"user_id": u, "candidates": c}),
                                headers={"content-type": "application/json"})
                r.raise_for_status()
                if k >= warmup:
                    ms.append((time.perf_counter() - t0) * 1000)
        return percentiles(ms)
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
