"""Do TorchRec-sharded tables train like plain DDP? Test AUC and speed: plain DDP against table- and column-wise.

DIN on 2 torchrun processes (gloo, 1 thread each), the same seed, data and ``embedding_optimizer`` in every
mode (the other parameters: Adam), so the sharded runs should reach plain DDP's weights up to float
summation order: ``ddp`` (``shard_tables=none``, the tables replicated and all-reduced dense, updated by
:class:`userlens.training.table_optim.TableOptimizer`), ``table`` and ``column`` (TorchRec
``EmbeddingCollection`` shards, fbgemm's fused update). Each run is a CLI launch; test metrics come from the
same single-process ``evaluate_run``; train samples/s = Σ train_samples / Σ train_seconds of ``metrics.jsonl``.
Weights are compared with the plain run's apart for the tables and the rest: with DIN's default tower, a
linear layer's bias feeds a batch norm, so its true gradient is zero and Adam turns float noise into
lr-sized steps there (and into the running mean after it); those differences change no output.
Needs the torchrec extra (README "Scale").

    python benchmarks/bench_torchrec.py --dataset movielens-100k --epochs 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ddp import launch
from bench_quality import prepared


ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
TABLES = ("embedding.item.weight", "embedding.category.weight")


def train(data: Path, run: Path, settings: dict[str, str]) -> dict:
    cmd = [str(TORCHRUN), "--nproc-per-node", "2", "--standalone", "-m", "userlens", "train", str(data),
           "--model", "din", "--out", str(run), "--no-progress", "--force",
           *[x for k, v in settings.items() for x in ("--set", f"{k}={v}")]]
    return launch(cmd, run, "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="movielens-100k")
    ap.add_argument("--work", type=Path, default=Path("/tmp/userlens-bench-torchrec"))
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--embedding-optimizer", default="adagrad")
    ap.add_argument("--embedding-lr", default="0.05")
    ap.add_argument("--seed", default="1")
    ap.add_argument("--modes", default="ddp,table,column")
    a = ap.parse_args()
    data = prepared(a.dataset, a.work / "data")
    base = {"epochs": str(a.epochs), "seed": a.seed, "compile": "false", "threads": "1",
            "embedding_optimizer": a.embedding_optimizer, "embedding_lr": a.embedding_lr}
    rows = {}
    for mode in a.modes.split(","):
        run = a.work / "runs" / mode
        rows[mode] = train(data.path, run, {**base, "shard_tables": "none" if mode == "ddp" else mode})
        print(json.dumps({"mode": mode, **rows[mode]}), flush=True)
    ref = load_file(str(a.work / "runs" / "ddp" / "model.safetensors")) if "ddp" in rows else None
    print(f"\n{a.dataset}, DIN, {a.epochs} epochs, seed {a.seed}, embedding_optimizer={a.embedding_optimizer} "
          f"(lr {a.embedding_lr}), 2 procs x 1 thread\n")
    print("| mode | test AUC | ΔAUC vs ddp | max \\|ΔW\\| item, category | max \\|ΔW\\| other | logloss | "
          "train samples/s | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, r in rows.items():
        dw = {"tables": "", "other": ""}
        if ref is not None:
            got = load_file(str(a.work / "runs" / mode / "model.safetensors"))
            for part in dw:
                keys = [k for k in ref if (k in TABLES) == (part == "tables")]
                dw[part] = f"{max(float(np.abs(got[k] - ref[k]).max()) for k in keys):.1e}"
        da = "" if "ddp" not in rows else f"{r['auc'] - rows['ddp']['auc']:+.5f}"
        print(f"| {mode} | {r['auc']:.4f} | {da} | {dw['tables']} | {dw['other']} | {r['logloss']:.4f} | "
              f"{r['samples_per_s']:,.0f} | {r['wall_s']} |")


if __name__ == "__main__":
    main()
