"""DARE's claim: a smaller attention embedding keeps AUC and makes the whole-history search cheaper.

Trains ``dare`` with the representation tables fixed at ``embed_dim`` per field
(item ⊕ category = 2 × embed_dim) and the attention tables at several sizes,
on one dataset, several seeds; reports test AUC/GAUC and the time spent in the
GSU (``table_topk`` over every behavior of every sample's whole history) per
1,000 scored samples during test evaluation.

    .venv/bin/python benchmarks/bench_dare.py
    .venv/bin/python benchmarks/bench_dare.py --dataset movielens-latest-small --attention-dims 32,16,8 --seeds 1,2,3
    .venv/bin/python benchmarks/bench_dare.py --gsu-only   # the GSU timing table alone

The second table times the GSU alone (``table_topk``, k = 50) for a batch of 256
samples over 10,000 behaviors each, at each attention size, for a small
catalogue (20,000 items: the whole ``B × n_items`` score matrix is formed once,
so the per-behavior cost is a scalar gather and barely depends on the size) and
a large one (1,000,000 items: each behavior's key row is gathered, so the cost
scales with the attention size, which is where DARE's saving shows).
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


def gsu_timing(dims: list[int], length: int = 10_000, batch: int = 256, repeats: int = 3) -> None:
    import numpy as np

    from userlens.batch import LongHistory

    rng = np.random.default_rng(0)
    print(f"\n| attention dim | catalogue | GSU ms per batch of {batch} × {length:,} behaviors |")
    print("|---|---|---|", flush=True)
    for n_items in (20_000, 1_000_000):
        n = batch * length
        tl = {"item": rng.integers(2, n_items, size=n).astype(np.int32)}
        lo = np.arange(batch, dtype=np.int64) * length
        long = LongHistory(tl, lo, lo + length, np.zeros(n_items, dtype=np.int32))
        for a in dims:
            table = torch.randn(n_items, 2 * a)
            query = torch.randn(batch, 2 * a)
            _topk(long, query, table, 50)  # warm-up
            t0 = time.perf_counter()
            for _ in range(repeats):
                _topk(long, query, table, 50)
            print(f"| {2 * a} | {n_items:,} items | {(time.perf_counter() - t0) / repeats * 1000:,.0f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="taobao-userbehavior-sample")
    ap.add_argument("--embed-dim", type=int, default=32, help="representation size per field")
    ap.add_argument("--attention-dims", default="32,16,8", help="attention size per field (total = 2x)")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default="/tmp/userlens-bench-quality")
    ap.add_argument("--gsu-only", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.gsu_only:
        gsu_timing([int(x) for x in args.attention_dims.split(",")])
        return
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
            res = fit(data, cfg, run, show_progress=False, log=lambda s: None, force=True)
            GSU_SECONDS[0] = 0.0
            ev = evaluate_run(run)
            gsu.append(GSU_SECONDS[0] * 1000 / n_test * 1000)
            aucs.append(ev["auc"])
            gaucs.append(ev["gauc"])
            speed.append(res.train_samples_per_s_steady)

        def ms(xs: list[float]) -> str:
            return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}" if len(xs) > 1 else f"{xs[0]:.4f}"

        print(f"| {2 * a} | {len(aucs)} | {ms(aucs)} | {ms(gaucs)} | {statistics.mean(gsu):.1f} | "
              f"{statistics.mean(speed):,.0f} |", flush=True)
    gsu_timing([int(x) for x in args.attention_dims.split(",")])


if __name__ == "__main__":
    main()
