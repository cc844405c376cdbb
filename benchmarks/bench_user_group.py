"""User-grouped batches: what ``user_group`` costs in AUC and buys in training speed, per model, over seeds.

``user_group = G`` shuffles runs of G time-consecutive samples of one user instead
of single samples, so a batch holds a few users' runs and the lifelong GSUs scan
each user's history once per batch (slabs, ``layers/gsu/slab.py``). The price is less
varied batches. Each (dataset, model, seed) is trained twice on identical samples
(the quality benchmark's default protocol and prepared data), with ``user_group``
0 and G, and the paired test-AUC difference is printed with the training speed of
each. Run with the machine otherwise idle for the speeds to mean anything.

    .venv/bin/python benchmarks/bench_user_group.py --dataset movielens-latest-small --models sim_soft,sdim --group 32
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import prepared  # noqa: E402  (same datasets, protocol and prepared directories)

from userlens.training.config import resolve_config  # noqa: E402
from userlens.training.evaluate import evaluate_run  # noqa: E402
from userlens.training.trainer import fit  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="movielens-latest-small")
    ap.add_argument("--models", default="sim_soft,sdim")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--group", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--patience", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir", default="/tmp/userlens-bench-quality")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    data = prepared(args.dataset, work, content=True)
    print(f"# {args.dataset}, user_group 0 vs {args.group}, at most {args.epochs} epochs, patience "
          f"{args.patience}, {args.threads} thread(s), {time.strftime('%Y-%m-%d')}")
    print("| model | seed | AUC, shuffled | AUC, grouped | difference | samples/s shuffled | samples/s grouped |")
    print("|---|---|---|---|---|---|---|", flush=True)
    for model in args.models.split(","):
        diffs, speed = [], {0: [], args.group: []}
        for seed in (int(s) for s in args.seeds.split(",")):
            auc = {}
            for g in (0, args.group):
                cfg = resolve_config(model, {"seed": seed, "epochs": args.epochs, "patience": args.patience,
                                             "threads": args.threads, "user_group": g})
                run = work / "user-group" / args.dataset / model / f"{seed}-{g}"
                res = fit(data, cfg, run, show_progress=False, log=lambda s: None, force=True)
                auc[g] = evaluate_run(run)["auc"]
                speed[g].append(res.train_samples_per_s_steady)
            diffs.append(auc[args.group] - auc[0])
            print(f"| {model} | {seed} | {auc[0]:.4f} | {auc[args.group]:.4f} | {diffs[-1]:+.4f} | "
                  f"{speed[0][-1]:,.0f} | {speed[args.group][-1]:,.0f} |", flush=True)
        sd = f" ± {statistics.stdev(diffs):.4f}" if len(diffs) > 1 else ""
        print(f"| {model} | mean | | | {statistics.mean(diffs):+.4f}{sd} | {statistics.mean(speed[0]):,.0f} | "
              f"{statistics.mean(speed[args.group]):,.0f} |", flush=True)


if __name__ == "__main__":
    main()
