"""DIN training speed against the peer frameworks, measured side by side: the only source of speed claims.

What it measures: our DIN (``userlens``) and the peers' DINs (FuxiCTR 2.3.10, DeepCTR-Torch
0.3.0) trained on the same labeled samples (``../shared/benchmarks/peer-samples/``) with
the peers' shared settings: embedding 16, attention MLP [64, 32], DNN [200, 80], batch
1024, Adam lr 1e-3, at most 10 epochs, early stop on validation AUC with patience 2,
2 torch threads, seed 2024. Per run: train samples/s (train rows × epochs / training
seconds, validation excluded: the peers' definition) and test AUC (scikit-learn).

Why interleaved ratios: these machines drift by up to 2× within an hour, so a speed
measured on one day is no yardstick for another (the peer README's own FuxiCTR numbers
moved 12–21% between two sessions). Each round runs ours, then each peer, back to back on
the same machine, and the claim is the per-round ratio ours / peer, reported as the
min–max and mean over at least 2 rounds. Quote the ratio, never an absolute samples/s
from another session.

How each side runs (each run a fresh process; ours' ``torch.compile`` of Dice finds inductor's
on-disk cache warm after the first round, as a user's second run would, so round 1 may
favour the peers):

* ours: ``peers/run_userlens.py`` in the project's ``.venv``: ``bench_train.py``'s data
  preparation, ``fit`` and ``evaluate_run``, with the settings above passed explicitly;
* peers: ``peers/run_peer.py`` in a scratch venv outside the repo (default
  ``/tmp/userlens-peers-venv``, reused while its versions are right): it builds each
  peer's DIN input from the same parquet files by the peer-samples protocol and trains
  through the peer's own API and training loop (see that file for the details).

The scratch venv gets ``torch==2.13.0`` first (the CPU wheel this machine has on disk),
then the peers under a pip constraint ``torch==2.13.0``, so their resolver can never
replace torch (it would fail instead); torch's version is checked again afterwards.

``--quick`` is a smoke mode (first 3,072 train rows, 1 epoch, 1 round by default) that
checks the whole pipeline in a few minutes: its numbers are not measurements.

    .venv/bin/python benchmarks/bench_peers.py
    .venv/bin/python benchmarks/bench_peers.py --datasets taobao-userbehavior-sample --history 50,200 --rounds 3
    .venv/bin/python benchmarks/bench_peers.py --quick --datasets movielens-latest-small
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "benchmarks" / "peer-samples"
RUNNERS = Path(__file__).resolve().parent / "peers"
DATASETS = ("movielens-latest-small", "taobao-userbehavior-sample", "amazon-grocery-rechorus")
TORCH = "2.13.0"
PEERS = {"fuxictr": ("FuxiCTR", "fuxictr", "2.3.10"), "deepctr": ("DeepCTR-Torch", "deepctr-torch", "0.3.0")}
# One source for the settings of every runner, ours and the peers'.
SETTINGS = {"seed": 2024, "epochs": 10, "patience": 2, "batch-size": 1024, "lr": 1e-3, "embed-dim": 16,
            "attention-mlp": "64,32", "dnn": "200,80"}
QUICK_BATCHES = 3  # --quick: the first 3 batches' worth of train rows (3,072), 1 epoch
QUICK_BANNER = ("> **QUICK SMOKE RUN** (`--quick`: first {rows:,} train rows, 1 epoch, {rounds} round(s)). "
                "It checks the pipeline only: these numbers are NOT measurements; do not quote them.")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ scratch venv
def venv_versions(venv: Path, dists: list[str]) -> dict[str, str] | None:
    """torch.__version__ and the installed versions of ``dists`` in ``venv``; None if it doesn't work."""
    py = venv / "bin" / "python"
    if not py.exists():
        return None
    code = ("import importlib.metadata as m, json, torch; "
            f"print(json.dumps({{'torch': torch.__version__, **{{d: m.version(d) for d in {dists!r}}}}}))")
    p = subprocess.run([str(py), "-c", code], capture_output=True, text=True)
    return json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else None


def pip_install(venv: Path, *args: str) -> None:
    cmd = [str(venv / "bin" / "python"), "-m", "pip", "install", *args]
    say("$ " + shlex.join(cmd))
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"pip install failed (exit {p.returncode}):\n{p.stdout[-3000:]}{p.stderr[-3000:]}\n"
                         f"Fix: see the error above; to start over remove {venv}.")
    for line in p.stdout.splitlines():
        if line.startswith("Successfully installed"):
            say("  " + line)


def ensure_peer_venv(venv: Path, peers: list[str]) -> dict[str, str]:
    """Create or reuse ``venv`` with torch TORCH and the peers' packages; return their versions."""
    if venv.resolve().is_relative_to(ROOT):
        raise SystemExit(f"--venv {venv} is inside the repository; give a path outside it (e.g. /tmp/...)")
    want = {PEERS[p][1]: PEERS[p][2] for p in peers}
    have = venv_versions(venv, list(want))
    if have and have["torch"].split("+")[0] == TORCH and all(have[d] == v for d, v in want.items()):
        say(f"peer venv {venv}: reused ({', '.join(f'{k} {v}' for k, v in have.items())})")
        return have
    if not (venv / "bin" / "python").exists():
        python3 = shutil.which("python3") or sys.executable
        say(f"$ {python3} -m venv {venv}")
        subprocess.run([python3, "-m", "venv", str(venv)], check=True)
    # torch first: the pinned CPU wheel. Then the peers under a constraint that pins torch, so that
    # no resolver step can swap it for another build (it fails instead of downloading gigabytes).
    pip_install(venv, f"torch=={TORCH}")
    constraint = venv / "bench-peers-constraints.txt"
    constraint.write_text(f"torch=={TORCH}\n")
    pip_install(venv, "-c", str(constraint), *(f"{d}=={v}" for d, v in want.items()))
    have = venv_versions(venv, list(want))
    if not have or have["torch"].split("+")[0] != TORCH:
        raise SystemExit(f"{venv}: torch is {have and have['torch']} after installing the peers, expected {TORCH}. "
                         f"Fix: remove {venv} and rerun; if it recurs, install the peers with --no-deps.")
    bad = {d: have[d] for d, v in want.items() if have[d] != v}
    if bad:
        raise SystemExit(f"{venv}: installed {bad}, expected {want}")
    say(f"peer venv {venv}: installed ({', '.join(f'{k} {v}' for k, v in have.items())})")
    return have


# ------------------------------------------------------------------------------------------- runs
def run_one(runner: str, dataset: str, history: int, args: argparse.Namespace, work: Path) -> dict:
    """One training run in a fresh process; returns its RESULT dict plus ``wall_seconds``."""
    settings = dict(SETTINGS, epochs=1) if args.quick else SETTINGS
    common = ["--history", str(history), "--threads", str(args.threads),
              *(x for k, v in settings.items() for x in (f"--{k}", str(v)))]
    if runner == "ours":
        cmd = [args.python, str(RUNNERS / "run_userlens.py"), "--dataset", dataset, "--workdir", str(work / "ours"),
               *common, *(["--limit-batches", str(QUICK_BATCHES)] if args.quick else [])]
    else:
        cmd = [str(args.venv / "bin" / "python"), str(RUNNERS / "run_peer.py"), "--peer", runner,
               "--data", str(SAMPLES / dataset), "--workdir", str(work / runner / f"{dataset}_{history}"), *common,
               *(["--train-rows", str(QUICK_BATCHES * SETTINGS["batch-size"])] if args.quick else [])]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    log = work / "logs" / f"{dataset}_{history}_{runner}_{time.strftime('%H%M%S')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    with open(log, "w") as err:
        err.write("$ " + shlex.join(cmd) + "\n")
        err.flush()
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=ROOT)
    found = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    if p.returncode != 0 or not found:
        tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
        raise SystemExit(f"{runner} on {dataset} (history {history}) failed with exit {p.returncode}; log {log}:\n"
                         f"{tail}{p.stdout[-2000:]}")
    return {**json.loads(found[-1][len("RESULT "):]), "wall_seconds": time.perf_counter() - t}


# ----------------------------------------------------------------------------------------- report
def header(args: argparse.Namespace, peer_versions: dict[str, str]) -> str:
    ours_torch = subprocess.run([args.python, "-c", "import torch; print(torch.__version__)"], capture_output=True,
                                text=True).stdout.strip() or "?"
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip() or "?"
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    peers = ", ".join(f"{PEERS[p][0]} {peer_versions[PEERS[p][1]]}" for p in args.peers)
    lines = [f"# DIN training speed, ours vs peers, interleaved ({time.strftime('%Y-%m-%d %H:%M %Z')})", "",
             f"- command: `{shlex.join([sys.executable, *sys.argv])}`",
             f"- machine: {os.cpu_count()} CPUs, {platform.platform()}, python {platform.python_version()}, "
             f"load average at start {' / '.join(f'{x:.2f}' for x in os.getloadavg())}",
             f"- ours: userlens @ {git}{' (uncommitted changes)' if dirty else ''}, torch {ours_torch}; "
             f"peers: {peers}, torch {peer_versions['torch']} (venv {args.venv})",
             f"- settings: {args.threads} threads, " + ", ".join(f"{k} {v}" for k, v in SETTINGS.items())
             + ("" if not args.quick else " (epochs 1 in --quick)"),
             f"- samples/s = train rows × epochs / training seconds (validation excluded); ratio = ours / peer "
             f"within one round; runs and logs in {args.workdir}"]
    if args.quick:
        lines += ["", QUICK_BANNER.format(rows=QUICK_BATCHES * SETTINGS["batch-size"], rounds=args.rounds)]
    return "\n".join(lines)


def table(dataset: str, history: int, runs: list[dict], args: argparse.Namespace) -> str:
    name = {"ours": "ours (userlens)", **{p: f"{v[0]} {v[2]}" for p, v in PEERS.items()}}
    out = [f"## {dataset}, history {history}", ""]
    if args.quick:
        out += [QUICK_BANNER.format(rows=QUICK_BATCHES * SETTINGS["batch-size"], rounds=args.rounds), ""]
    out += ["| round | run | epochs | train rows | train s | samples/s | test AUC | wall s |",
            "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        out.append(f"| {r['round']} | {name[r['runner']]} | {r['epochs']} | {r['train_rows']:,} | "
                   f"{r['train_seconds']:.1f} | {r['samples_per_s']:,.0f} | {r['test_auc']:.4f} | "
                   f"{r['wall_seconds']:.0f} |")
    rounds = sorted({r["round"] for r in runs})
    sps = {(r["round"], r["runner"]): r["samples_per_s"] for r in runs}
    out += ["", "| ours / peer | " + " | ".join(f"round {k}" for k in rounds) + " | min–max | mean |",
            "|---|" + "---|" * len(rounds) + "---|---|"]
    for p in args.peers:
        ratios = [sps[k, "ours"] / sps[k, p] for k in rounds]
        out.append(f"| {name[p]} | " + " | ".join(f"{x:.2f}x" for x in ratios)
                   + f" | {min(ratios):.2f}–{max(ratios):.2f}x | {statistics.mean(ratios):.2f}x |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(DATASETS), help="comma list of peer-samples folders")
    ap.add_argument("--history", default="50", help="comma list of history lengths (the peers published 50 on "
                                                    "all three sets, 200 on taobao-userbehavior-sample)")
    ap.add_argument("--peers", default=",".join(PEERS), help=f"comma list of {', '.join(PEERS)}")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 2, minimum 2; "
                                                             "--quick: default 1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--venv", type=Path, default=Path("/tmp/userlens-peers-venv"),
                    help="scratch venv for the peers, outside the repo; created or reused")
    ap.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"), help="python of our venv")
    ap.add_argument("--workdir", type=Path, default=None, help="runs, logs and results.jsonl (default: a new "
                                                              "temporary folder)")
    ap.add_argument("--quick", action="store_true", help="smoke mode: 3,072 train rows, 1 epoch; not a measurement")
    args = ap.parse_args()
    args.datasets = [d for d in args.datasets.split(",") if d]
    args.peers = [p for p in args.peers.split(",") if p]
    histories = [int(x) for x in args.history.split(",") if x]
    args.rounds = args.rounds or (1 if args.quick else 2)
    if not SAMPLES.is_dir():
        raise SystemExit(f"{SAMPLES} not found: the peer samples live in ../shared/benchmarks/peer-samples")
    known = sorted(p.name for p in SAMPLES.iterdir() if (p / "impressions.parquet").exists())
    if unknown := [d for d in args.datasets if d not in known]:
        raise SystemExit(f"unknown dataset(s) {unknown}; known: {', '.join(known)}")
    if not args.peers or (unknown := [p for p in args.peers if p not in PEERS]):
        raise SystemExit(f"--peers must name at least one of {', '.join(PEERS)}; got {args.peers}")
    if args.rounds < (1 if args.quick else 2):
        raise SystemExit(f"--rounds must be >= 2 (a ratio needs a spread), got {args.rounds}; only --quick allows 1")
    if any(h < 1 for h in histories) or args.threads < 1:
        raise SystemExit(f"--history and --threads must be >= 1, got {histories} and {args.threads}")
    if not Path(args.python).exists():
        raise SystemExit(f"{args.python} not found: our venv. Fix: `make install` (or pass --python)")
    args.workdir = args.workdir or Path(tempfile.mkdtemp(prefix="userlens-bench-peers-"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    peer_versions = ensure_peer_venv(args.venv, args.peers)
    print(header(args, peer_versions), flush=True)
    results = args.workdir / "results.jsonl"
    for ds in args.datasets:
        for L in histories:
            runs = []
            for k in range(1, args.rounds + 1):
                for runner in ["ours", *args.peers]:  # interleaved: ours, peer A, peer B, ours, ...
                    say(f"{ds} L={L} round {k}/{args.rounds}: {runner} ...")
                    r = {"round": k, **run_one(runner, ds, L, args, args.workdir)}
                    say(f"  {r['samples_per_s']:,.0f} samples/s, {r['epochs']} epochs, test AUC "
                        f"{r['test_auc']:.4f}, {r['wall_seconds']:.0f}s wall")
                    with open(results, "a") as fh:
                        fh.write(json.dumps({**r, "quick": args.quick}) + "\n")
                    runs.append(r)
            print("\n" + table(ds, L, runs, args), flush=True)
    print(f"\nload average at end {' / '.join(f'{x:.2f}' for x in os.getloadavg())}; rows in {results}")


if __name__ == "__main__":
    main()
