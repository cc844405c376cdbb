"""DARE's claim: a smaller attention embedding keeps AUC and makes the whole-history search cheaper.

Trains ``dare`` with the representation tables fixed at ``embed_dim`` per field
(item ⊕ category = 2 × embed_dim) and the attention tables at several sizes,
on one dataset, several seeds; reports test AUC/GAUC and the time spent in the
GSU (``table_topk`` over every behavior of every sample's whole history) per
1,000 scored samples during test evaluation.

    .venv/bin/python benchmarks/bench_dare.py
    .venv/bin/python benchmarks/bench_dare.py --dataset movielens-latest-small --attention-dims 32,16,8 --seeds 1,2,3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import prepared  # noqa: E402

import userlens.models.dare as dare_module  # noqa: E402
from userlens.training.config import resolve_config  # noqa: E402
from userlens.training.evaluate import evaluate_run  # noqa: E402
from userlens.training.trainer import fit  # noqa: E402

GSU_SECONDS = [0.0]
_topk = dare_module.table_topk


def _timed_topk(*args, **kwargs):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    out = _topk(*args, **kwargs)
    GSU_SECONDS[0] += time.perf_counter() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="taobao-userbehavior-sample")
    ap.add_argument("--embed-dim", type=int, default=32, help="representation size per field")
    ap.add_argument("--attention-dims", default="32,16,8", help="attention size per field (total = 2x)")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default="/tmp/userlens-bench-quality")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dare_module.table_topk = _timed_topk
    data = prepared(args.dataset, Path(args.workdir))
    n_test = len(data.samples("test"))
    print(f"# dare on {args.dataset}, representation {2 * args.embed_dim} (item ⊕ category), threads "
          f"{args.threads}, {time.strftime('%Y-%m-%d')}")
    print("| attention dim (item ⊕ category) | seeds | test AUC | test GAUC | GSU ms per 1k test samples | "
          "train samples/s |")
    print("|---|---|---|---|---|---|", flush=True)
    for a in (int(x) for x in args.attention_dims.split(",")):
        aucs, gaucs, gsu, speed = [], [], [], []
        for seed in (int(s) for s in args.seeds.split(",")):
            cfg = resolve_config("dare", {"embed_dim": args.embed_dim, "attention_dim": a, "seed": seed,
                                          "epochs": args.epochs, "threads": args.threads})
            run = Path(args.workdir) / "runs-dare" / f"{args.dataset}-a{a}-s{seed}"
            res = fit(data, cfg, run, show_progress=False, log=lambda s: None)
            GSU_SECONDS[0] = 0.0
            ev = evaluate_run(run)
            gsu.append(GSU_SECONDS[0] * 1000 / n_test * 1000)
            aucs.append(ev["auc"])
            gaucs.append(ev["gauc"])
            speed.append(res.train_samples_per_s)

        def ms(xs: list[float]) -> str:
            return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}" if len(xs) > 1 else f"{xs[0]:.4f}"

        print(f"| {2 * a} | {len(aucs)} | {ms(aucs)} | {ms(gaucs)} | {statistics.mean(gsu):.1f} | "
              f"{statistics.mean(speed):,.0f} |", flush=True)


if __name__ == "__main__":
    main()
