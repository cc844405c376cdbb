"""Do identical seeded `fit` runs in one process give bitwise-equal weights? (issue item 17)

    .venv/bin/python benchmarks/seed_drift.py --runs 4 --set deterministic=false   # drifts with >1 thread
    .venv/bin/python benchmarks/seed_drift.py --runs 4                             # the default: equal
    .venv/bin/python benchmarks/seed_drift.py --runs 4 --set deterministic=false --set threads=1  # equal
    .venv/bin/python benchmarks/seed_drift.py --runs 4 --set deterministic=false --load 1  # a busy core

Trains DIN (or ``--model``) ``--runs`` times on a small planted-interest data set
(120 users, 2 epochs, batch 128, compile off) in this process, and prints for each
run against the first: how many weight tensors differ, max |Δweight|, max
|Δvalidation logit| and |ΔAUC|. ``--load K`` keeps K busy-loop processes
spinning meanwhile. Finding: see :func:`userlens.training.trainer.seed_everything`.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import numpy as np


def _spin() -> None:
    while True:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--model", default="din")
    ap.add_argument("--load", type=int, default=0, help="busy-loop processes to run meanwhile")
    ap.add_argument("--set", action="append", default=[], help="training/model key=value (repeatable)")
    a = ap.parse_args()
    import torch
    from safetensors.numpy import load_file

    from userlens.data.loader import BatchLoader
    from userlens.data.prepare import prepare, sources_from_files
    from userlens.data.prepared import PreparedData
    from userlens.metrics import auc
    from userlens.synthetic import planted_interest_log
    from userlens.training.checkpoint import load_run
    from userlens.training.config import parse_sets, resolve_config
    from userlens.training.trainer import fit, predict

    tmp = Path(tempfile.mkdtemp(prefix="seed_drift_"))
    log = planted_interest_log(n_users=120, n_items=200, n_categories=20, behaviors_per_user=80,
                               impressions_per_user=20, seed=3)
    p = log.write(tmp / "raw")
    prepare(sources_from_files(p["behaviors"], p["impressions"], p["items"]), tmp / "data", log=lambda s: None)
    data = PreparedData(tmp / "data")
    cfg = resolve_config(a.model, {"epochs": 2, "batch_size": 128, "compile": False, "prefetch": 1,
                                   **parse_sets(a.set)})
    busy = [mp.Process(target=_spin, daemon=True) for _ in range(a.load)]
    for proc in busy:
        proc.start()
    threads = cfg.train.threads or torch.get_num_threads()
    print(f"model {a.model}, deterministic={cfg.train.deterministic}, threads={threads}, "
          f"busy processes {a.load}, torch {torch.__version__}", flush=True)
    ref = None
    try:
        for r in range(a.runs):
            t0 = time.perf_counter()
            fit(data, cfg, tmp / f"run{r}", show_progress=False, log=lambda s: None, force=True)
            w = load_file(str(tmp / f"run{r}" / "model.safetensors"))
            model, _, _ = load_run(tmp / f"run{r}")
            logits, labels, _ = predict(model, BatchLoader(data, "valid", model.fields, 8192, cfg.train.short_len,
                                                           prefetch=0))
            secs = time.perf_counter() - t0
            if ref is None:
                ref = w, logits, auc(labels, logits)
                print(f"run 1: {secs:.1f} s, valid AUC {ref[2]:.6f} (reference)", flush=True)
                continue
            differ = [k for k in w if not np.array_equal(w[k], ref[0][k])]
            dw = max(float(np.abs(w[k].astype(np.float64) - ref[0][k]).max()) for k in w)
            dl = float(np.abs(logits.astype(np.float64) - ref[1]).max())
            print(f"run {r + 1}: {secs:.1f} s, {len(differ)}/{len(w)} weight tensors differ, max|Δw| {dw:.3g}, "
                  f"max|Δlogit| {dl:.3g}, |ΔAUC| {abs(auc(labels, logits) - ref[2]):.3g}", flush=True)
    finally:
        for proc in busy:
            proc.terminate()


if __name__ == "__main__":
    main()
