"""One userlens DIN run on one peer-samples dataset, for ``benchmarks/bench_peers.py``.

The same run as ``benchmarks/bench_train.py`` (its ``prepared`` data, ``fit`` with the peers'
settings, ``evaluate_run`` on the test split), with the settings passed explicitly rather
than taken from DIN's defaults, so that ours and the peers read them from one place
(``bench_peers.SETTINGS``). Runs in the project's venv; prints progress to stderr and one
line ``RESULT {json}`` on stdout.

Train samples/s = train rows × epochs / training seconds over all epochs (validation
excluded, the first epoch's ``torch.compile`` warm-up included): the peers' definition,
``FitResult.train_samples_per_s``.

    .venv/bin/python benchmarks/peers/run_userlens.py --dataset movielens-latest-small --history 50 \\
        --workdir /tmp/userlens-peers-work
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for bench_train

from bench_train import prepared  # noqa: E402

from userlens.training.config import resolve_config  # noqa: E402
from userlens.training.evaluate import evaluate_run  # noqa: E402
from userlens.training.trainer import fit  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--history", type=int, default=50)
    ap.add_argument("--workdir", required=True, type=Path, help="prepared data is cached here across runs")
    ap.add_argument("--limit-batches", type=int, default=None, help="smoke runs: this many train batches per epoch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--patience", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--embed-dim", type=int, default=16)
    ap.add_argument("--attention-mlp", default="64,32")
    ap.add_argument("--dnn", default="200,80")
    ap.add_argument("--compile", default="true", help="torch.compile Dice (true/false), as bench_train.py")
    s = ap.parse_args()
    torch.set_num_threads(s.threads)
    data = prepared(s.dataset, s.workdir / "prepared")
    cfg = resolve_config("din", {"short_len": s.history, "seed": s.seed, "epochs": s.epochs, "patience": s.patience,
                                 "batch_size": s.batch_size, "lr": s.lr, "embed_dim": s.embed_dim,
                                 "attention_mlp": s.attention_mlp, "mlp": s.dnn, "threads": s.threads,
                                 "compile": s.compile, "limit_batches": s.limit_batches})
    run = s.workdir / f"run_{s.dataset}_{s.history}"
    res = fit(data, cfg, run, show_progress=False, log=lambda m: None, force=True)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    seen, secs = sum(r["train_samples"] for r in rows), sum(r["train_seconds"] for r in rows)
    test = evaluate_run(run)
    result = {"runner": "ours", "dataset": s.dataset, "history": s.history, "epochs": res.epochs_run,
              "best_epoch": res.best_epoch, "train_rows": seen // max(res.epochs_run, 1), "train_seconds": secs,
              "samples_per_s": res.train_samples_per_s, "test_auc": test["auc"],
              "test_logloss": test["logloss"], "threads": torch.get_num_threads(), "torch": torch.__version__,
              "compile": cfg.train.compile}
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
