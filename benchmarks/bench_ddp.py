"""Does training scale out on torchrun? Test AUC parity and throughput, 1 process against 2 (DDP, gloo, CPU).

For each dataset and seed, DIN is trained twice on the same prepared data, interleaved (seed by seed, so
machine load hits both alike): ``userlens train`` in one process with 2 torch threads, and
``torchrun --nproc-per-node 2 -m userlens train`` with 1 thread per process. ``batch_size`` is the global
batch in both, so every step sees the same samples; what differs is Dice's / batch norm's batch statistics
(each rank's half batch) and float summation order. Both runs are scored by the same single-process
``evaluate_run`` on the test split. Training throughput is Σ train_samples / Σ train_seconds of each run's
``metrics.jsonl`` (validation, start-up and imports excluded; the wall time of the whole command is printed
beside it).

Datasets are prepared as ``bench_quality.py`` does (global time split, one uniform past-only negative per
positive, seed 2024). ``--quick``: 2 epochs of at most 60 batches (30,720 samples each), compile off.

    .venv/bin/python benchmarks/bench_ddp.py --quick
    .venv/bin/python benchmarks/bench_ddp.py --epochs 4 --seeds 1,2,3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import prepared

from userlens.training.evaluate import evaluate_run

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("movielens-latest-small", "taobao-userbehavior-sample")
PYTHON = Path(sys.executable)
TORCHRUN = PYTHON.with_name("torchrun")


def train(data: Path, run: Path, procs: int, threads: int, settings: dict[str, str]) -> dict:
    """Train with ``procs`` processes of ``threads`` torch threads each (torchrun when procs > 1); the run's row."""
    sets = {**settings, "threads": str(threads)}
    args = ["-m", "userlens", "train", str(data), "--model", "din", "--out", str(run), "--no-progress", "--force",
            *[x for k, v in sets.items() for x in ("--set", f"{k}={v}")]]
    cmd = [str(PYTHON), *args] if procs == 1 else [str(TORCHRUN), "--nproc-per-node", str(procs), "--standalone",
                                                   *args]
    return {"procs": procs, "threads": threads, **launch(cmd, run, sets["threads"])}


def launch(cmd: list[str], run: Path, threads: str) -> dict:
    """Run one training command; its test metrics (single-process ``evaluate_run``), speed and wall time."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": threads}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    test = evaluate_run(run)
    return {"auc": test["auc"], "gauc": test["gauc"], "logloss": test["logloss"], "n_test": test["n"],
            "samples_per_s": sum(r["train_samples"] for r in rows) / sum(r["train_seconds"] for r in rows),
            "epochs": len(rows), "wall_s": round(wall, 1)}


def _ms(xs: list[float], nd: int = 4, signed: bool = False) -> str:
    f = f"{{:+.{nd}f}}" if signed else f"{{:.{nd}f}}"
    return f"{f.format(statistics.mean(xs))} ± {statistics.stdev(xs):.{nd}f}" if len(xs) > 1 else f.format(xs[0])


def speed(rows: list[dict]) -> str:
    """Training throughput per mode (procs × threads): median over the runs, and every run's figure."""
    out = ["| dataset | mode | runs | train samples/s, median | each run |", "|---|---|---|---|---|"]
    for ds in sorted({r["dataset"] for r in rows}):
        for mode in sorted({(r["procs"], r.get("threads", 2 if r["procs"] == 1 else 1)) for r in rows
                            if r["dataset"] == ds}):
            xs = [r["samples_per_s"] for r in rows if r["dataset"] == ds and
                  (r["procs"], r.get("threads", 2 if r["procs"] == 1 else 1)) == mode]
            out.append(f"| {ds} | {mode[0]} × {mode[1]} | {len(xs)} | {statistics.median(xs):,.0f} | "
                       f"{', '.join(f'{x:,.0f}' for x in xs)} |")
    return "\n".join(out)


def table(rows: list[dict]) -> str:
    head = ("| dataset | seeds | test AUC, 1 proc × 2 threads | test AUC, 2 procs × 1 thread | paired difference "
            "(2 − 1) | train samples/s, 1 × 2 | train samples/s, 2 × 1 | speed-up | wall s, 1 × 2 / 2 × 1 |")
    out = [head, "|---|---|---|---|---|---|---|---|---|"]
    for ds in sorted({r["dataset"] for r in rows}):
        one = {r["seed"]: r for r in rows if r["dataset"] == ds and r["procs"] == 1 and r.get("threads", 2) == 2}
        two = {r["seed"]: r for r in rows if r["dataset"] == ds and r["procs"] == 2 and r.get("threads", 1) == 1}
        seeds = sorted(set(one) & set(two))
        if not seeds:
            continue
        a1, a2 = [one[s]["auc"] for s in seeds], [two[s]["auc"] for s in seeds]
        s1, s2 = [one[s]["samples_per_s"] for s in seeds], [two[s]["samples_per_s"] for s in seeds]
        w1, w2 = statistics.mean(one[s]["wall_s"] for s in seeds), statistics.mean(two[s]["wall_s"] for s in seeds)
        out.append(f"| {ds} | {len(seeds)} | {_ms(a1)} | {_ms(a2)} | {_ms([b - a for a, b in zip(a1, a2)], signed=True)}"
                   f" | {statistics.mean(s1):,.0f} | {statistics.mean(s2):,.0f} | "
                   f"{statistics.mean(s2) / statistics.mean(s1):.2f}× | {w1:.0f} / {w2:.0f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--limit-batches", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="2 epochs of at most 60 batches, compile off")
    ap.add_argument("--modes", default="1x2,2x1", help="PROCSxTHREADS to run per seed, interleaved (1x1: reference)")
    ap.add_argument("--table-only", action="store_true", help="print the tables of --results' rows")
    ap.add_argument("--workdir", default="/tmp/userlens-bench-ddp")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "ddp.jsonl"))
    args = ap.parse_args()
    settings = {"epochs": str(args.epochs), "patience": "2"}
    if args.quick:
        settings.update(epochs="2", limit_batches="60", compile="false")
    elif args.limit_batches:
        settings["limit_batches"] = str(args.limit_batches)
    work, results = Path(args.workdir), Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    modes = [tuple(int(x) for x in m.split("x")) for m in args.modes.split(",")]
    rows = []
    for ds in args.datasets.split(",") if not args.table_only else []:
        data = prepared(ds, work).path
        for seed in (int(s) for s in args.seeds.split(",")):
            for procs, threads in modes:  # interleaved: one seed's runs back to back
                run = work / "runs" / ds / f"{seed}-{procs}x{threads}"
                shutil.rmtree(run, ignore_errors=True)
                row = {"dataset": ds, "seed": seed, **train(data, run, procs, threads, {**settings, "seed": str(seed)}),
                       "settings": settings, "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
                       "load_avg_1m": round(os.getloadavg()[0], 2)}
                rows.append(row)
                with open(results, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    if args.table_only:
        rows = [json.loads(x) for x in results.read_text().splitlines() if x.strip()]
        rows = [r for r in rows if r["settings"] == settings]
    print(f"settings: {settings}")
    print(table(rows))
    print()
    print(speed(rows))


if __name__ == "__main__":
    main()
