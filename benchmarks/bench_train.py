"""DIN training throughput and test quality on the peers' exact samples.

Uses ``../shared/benchmarks/peer-samples/<dataset>/`` (behaviors, impressions with
a ``split`` column, items): the very samples FuxiCTR, DeepCTR-Torch and RecBole
trained on, with their settings (embedding 16, attention MLP [64, 32], DNN
[200, 80], batch 1024, Adam lr 1e-3, early stop on valid AUC with patience 2,
at most 10 epochs, 2 threads). Prints one markdown row per (dataset, history
length, seed) and the mean, beside the peers' published numbers.

    .venv/bin/python benchmarks/bench_train.py
    .venv/bin/python benchmarks/bench_train.py --datasets taobao-userbehavior-sample --short-len 50,200 --seeds 1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from userlens.data.prepare import prepare, sources_from_files
from userlens.data.prepared import PreparedData
from userlens.training.config import resolve_config
from userlens.training.evaluate import evaluate_run
from userlens.training.trainer import fit

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT.parent / "shared" / "benchmarks" / "peer-samples"
DATASETS = ("movielens-latest-small", "taobao-userbehavior-sample", "amazon-grocery-rechorus")

# The peers' DIN results as measured and published in peer-samples/README.md (test split):
# dataset, history -> [(peer, AUC, GAUC, train samples/s)]
PEER_RESULTS = {
    ("movielens-latest-small", 50): [("FuxiCTR", 0.8759, 0.8639, 5512), ("DeepCTR-Torch", 0.8551, 0.8508, 4360),
                                     ("RecBole", 0.8778, 0.8623, 2398)],
    ("taobao-userbehavior-sample", 50): [("FuxiCTR", 0.6557, 0.6630, 5570), ("DeepCTR-Torch", 0.6923, 0.7073, 3978),
                                         ("RecBole", 0.7423, 0.7503, 2114)],
    ("amazon-grocery-rechorus", 50): [("FuxiCTR", 0.7319, 0.7020, 5907), ("DeepCTR-Torch", 0.7560, 0.7094, 4259),
                                      ("RecBole", 0.7562, 0.7157, 2238)],
    ("taobao-userbehavior-sample", 200): [("FuxiCTR", 0.7010, 0.6950, 1402), ("DeepCTR-Torch", 0.6879, 0.6753, 963)],
}


def prepared(dataset: str, work: Path) -> PreparedData:
    src, out = PEERS / dataset, work / dataset
    if not (out / "meta.json").exists():
        prepare(sources_from_files(src / "behaviors.parquet", src / "impressions.parquet", src / "items.parquet"),
                out, log=lambda s: None)
    return PreparedData(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--short-len", default="50", help="comma list of history lengths")
    ap.add_argument("--seeds", default="2024", help="comma list of seeds")
    ap.add_argument("--model", default="din")
    ap.add_argument("--compile", default="true", help="torch.compile Dice (true/false)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    if not PEERS.is_dir():
        raise SystemExit(f"{PEERS} not found: the peer samples live in ../shared/benchmarks/peer-samples")
    torch.set_num_threads(args.threads)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="userlens-bench-train-"))
    rows = []
    print(f"# {args.model}, threads {args.threads}, compile {args.compile}, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d')}", flush=True)
    print("| dataset | history | seed | best epoch | epochs | AUC | GAUC | logloss | samples/s steady | "
          "samples/s all epochs |")
    print("|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for ds in args.datasets.split(","):
        data = prepared(ds, work)
        for L in (int(x) for x in args.short_len.split(",")):
            for seed in (int(x) for x in args.seeds.split(",")):
                cfg = resolve_config(args.model, {"short_len": L, "seed": seed, "epochs": 10, "patience": 2,
                                                  "batch_size": 1024, "lr": 1e-3, "compile": args.compile})
                run = work / f"run_{ds}_{L}_{seed}"
                res = fit(data, cfg, run, show_progress=False, log=lambda s: None, force=True)
                test = evaluate_run(run)
                rows.append((ds, L, seed, res, test))
                print(f"| {ds} | {L} | {seed} | {res.best_epoch} | {res.epochs_run} | {test['auc']:.4f} | "
                      f"{test['gauc']:.4f} | {test['logloss']:.4f} | {res.train_samples_per_s_steady:,.0f} | "
                      f"{res.train_samples_per_s:,.0f} |", flush=True)
    print("\n| dataset | history | ours AUC | ours GAUC | ours samples/s (all epochs) | peer | peer AUC | "
          "peer GAUC | peer samples/s | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (ds, L) in dict.fromkeys((r[0], r[1]) for r in rows):
        mine = [r for r in rows if r[0] == ds and r[1] == L]
        auc = statistics.mean(r[4]["auc"] for r in mine)
        gauc = statistics.mean(r[4]["gauc"] for r in mine)
        sps = statistics.mean(r[3].train_samples_per_s for r in mine)
        for peer, pa, pg, ps in PEER_RESULTS.get((ds, L), [("-", float("nan"), float("nan"), float("nan"))]):
            print(f"| {ds} | {L} | {auc:.4f} | {gauc:.4f} | {sps:,.0f} | {peer} | {pa:.4f} | {pg:.4f} | "
                  f"{ps:,.0f} | {sps / ps:.2f}x |")


if __name__ == "__main__":
    main()
