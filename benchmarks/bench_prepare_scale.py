"""Out-of-core prepare at scale: wall time, peak RSS and spill of ``userlens prepare --engine duckdb``.

A Taobao-layout log (1M users, 4M items, 10K categories, 9 days, pv/cart/fav/buy; ``userlens.data.generate``)
is generated once per size and seed (not timed), then prepared in a fresh process. Peak RSS is the child's
``ru_maxrss``; the spill is the largest size of the engine's temporary directory, sampled every second.
``--train`` then trains DIN for a few hundred batches on the prepared directory and reports that process's
peak RSS (the loader memory-maps the timeline, so it should stay far below the data size).

    .venv/bin/python benchmarks/bench_prepare_scale.py --sizes 100m            # the issue's target
    .venv/bin/python benchmarks/bench_prepare_scale.py --sizes 100m --train
    .venv/bin/python benchmarks/bench_prepare_scale.py --sizes 1b --work /big/disk   # ~36 GB of CSV
    .venv/bin/python benchmarks/bench_prepare_scale.py --sizes 10m --seed 11 --sampler popularity
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

SIZES = {"1m": 1_000_000, "10m": 10_000_000, "100m": 100_000_000, "300m": 300_000_000, "1b": 1_000_000_000}
USERS, ITEMS, CATEGORIES = 1_000_000, 4_000_000, 10_000


def _dir_size(p: Path) -> int:
    total = 0
    for root, _, files in os.walk(p):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def generate(work: Path, name: str, seed: int) -> Path:
    path = work / f"taobao-{name}-seed{seed}.csv"
    if not path.exists():
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import sys; from userlens.data.generate import write_taobao_like; "
                        f"print(write_taobao_like(sys.argv[1], {SIZES[name]}, {USERS}, {ITEMS}, {CATEGORIES}, "
                        f"seed={seed}))", str(path)], check=True)
        print(f"generated {path} ({path.stat().st_size / 2**30:.1f} GiB) in {time.perf_counter() - t:.0f} s",
              flush=True)
    return path


def measure(cmd: list[str], watch: Path | None = None) -> tuple[float, float, int, str]:
    """(wall s, peak RSS GiB, peak size of ``watch`` in bytes, output) of one child process."""
    peak_spill = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak_spill
        while not stop.wait(1.0):
            if watch is not None:
                for tmp in watch.parent.glob(f".{watch.name}.tmp-*"):
                    peak_spill = max(peak_spill, _dir_size(tmp / ".spill"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    stop.set()
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    # ru_maxrss of children is the largest child so far: run one measured child per process to be exact
    return wall, max(peak, before) / 2**20, peak_spill, proc.stdout + proc.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100m", help=f"comma-separated of {list(SIZES)}")
    ap.add_argument("--work", type=Path, default=Path("/tmp/userlens-bench-scale"))
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--sampler", default="uniform")
    ap.add_argument("--memory-limit", default=None)
    ap.add_argument("--engines", default="duckdb", help="comma-separated: duckdb, polars (in memory, for comparison)")
    ap.add_argument("--train", action="store_true", help="also train DIN for --train-batches on the result")
    ap.add_argument("--train-batches", type=int, default=300)
    ap.add_argument("--keep", action="store_true", help="keep the prepared directories")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    rows = []
    for name, engine in ((n, e) for n in args.sizes.split(",") for e in args.engines.split(",")):
        src = generate(args.work, name, args.seed)
        out = args.work / f"prepared-{name}"
        cmd = [str(bin_dir / "userlens"), "prepare", "--format", "taobao", "--source", str(src), "--out", str(out),
               "--engine", engine, "--negative-sampler", args.sampler, "--force"]
        if args.memory_limit and engine == "duckdb":
            cmd += ["--memory-limit", args.memory_limit]
        # a fresh interpreter per measurement so ru_maxrss of the children is this child's
        code = ("import json, resource, subprocess, sys, time; t = time.perf_counter(); "
                "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
                "print(p.stdout); print(p.stderr, file=sys.stderr); "
                "print(json.dumps({'rc': p.returncode, 'wall': time.perf_counter() - t, "
                "'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")
        wall, _, spill, text = measure([sys.executable, "-c", code, *cmd], watch=out)
        import json

        res = json.loads(next(ln for ln in reversed(text.strip().splitlines()) if ln.startswith('{"rc"')))
        if res["rc"]:
            sys.exit(f"prepare {name} failed (exit {res['rc']}):\n{text[-4000:]}")
        stages = dict(re.findall(r"^([a-z][^:\n]*): ([0-9.]+) s$", text, re.M))
        row = {"size": name, "engine": engine, "csv_gib": src.stat().st_size / 2**30, "wall_s": res["wall"],
               "peak_rss_gib": res["rss"] / 2**20, "spill_gib": spill / 2**30,
               "out_gib": _dir_size(out) / 2**30, "stages": stages}
        if args.train and engine == "duckdb":
            run_dir = args.work / f"run-{name}"
            tcmd = [str(bin_dir / "userlens"), "train", str(out), "--model", "din", "--out", str(run_dir), "--force",
                    "--no-progress", "--set", "epochs=1", "--set", f"limit_batches={args.train_batches}",
                    "--set", "limit_valid_batches=20"]
            twall, _, _, ttext = measure([sys.executable, "-c", code, *tcmd])
            tres = json.loads(next(ln for ln in reversed(ttext.strip().splitlines()) if ln.startswith('{"rc"')))
            row.update(train_s=tres["wall"], train_rss_gib=tres["rss"] / 2**20)
            shutil.rmtree(run_dir, ignore_errors=True)
        rows.append(row)
        print(row, flush=True)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    print("\n| size | engine | CSV (GiB) | wall (s) | peak RSS (GiB) | peak spill (GiB) | prepared (GiB) | "
          "train peak RSS (GiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        tr = f"{r['train_rss_gib']:.2f}" if "train_rss_gib" in r else "-"
        print(f"| {r['size']} | {r['engine']} | {r['csv_gib']:.1f} | {r['wall_s']:.0f} | {r['peak_rss_gib']:.2f} | {r['spill_gib']:.1f} "
              f"| {r['out_gib']:.1f} | {tr} |")
    for r in rows:
        print(f"stages {r['size']} {r['engine']}: " + ", ".join(f"{k} {v} s" for k, v in r["stages"].items()))


if __name__ == "__main__":
    main()
