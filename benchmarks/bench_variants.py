"""Model variants on the known-answer lifelong log: test AUC per seed, the numbers quoted in model docstrings.

Same setting as ``tests/test_lifelong.py`` (``lifelong_interest_log(n_users=300, seed=s)``,
5 epochs, batch 256, lr 3e-3, patience 1, Dice not compiled), one thread per run.
Each run prints one JSON line.

    .venv/bin/python benchmarks/bench_variants.py sdim --seeds 3,4,5 --set normalize=once
    .venv/bin/python benchmarks/bench_variants.py sdim --seeds 3,4,5 --set normalize=per_round
    .venv/bin/python benchmarks/bench_variants.py twin --seeds 3,4,5 --set time_bias=true
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from userlens.data.prepare import prepare, sources_from_files
from userlens.data.prepared import PreparedData
from userlens.synthetic import lifelong_interest_log
from userlens.training.config import resolve_config
from userlens.training.evaluate import evaluate_run
from userlens.training.trainer import fit

SETTINGS = {"epochs": 5, "batch_size": 256, "lr": 3e-3, "compile": False, "patience": 1, "threads": 1}


def _value(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--seeds", default="3,4,5")
    ap.add_argument("--set", action="append", default=[], help="model config key=value (JSON values)")
    ap.add_argument("--work", type=Path, default=None, help="folder for data and runs (default: a temporary one)")
    args = ap.parse_args()
    over = {k: _value(v) for k, v in (s.split("=", 1) for s in args.set)}
    root = args.work or Path(tempfile.mkdtemp(prefix="bench_variants_"))
    for seed in (int(s) for s in args.seeds.split(",")):
        d = root / f"data{seed}"
        if not (d / "data" / "meta.json").exists():
            p = lifelong_interest_log(n_users=300, seed=seed).write(d / "raw")
            prepare(sources_from_files(p["behaviors"], p["impressions"], p["items"]), d / "data", log=lambda s: None)
        out = root / "runs" / f"{args.model}_{seed}_{time.time_ns()}"
        t0 = time.perf_counter()
        fit(PreparedData(d / "data"), resolve_config(args.model, {**SETTINGS, **over}), out,
            show_progress=False, log=lambda s: None, force=True)
        auc = evaluate_run(out)["auc"]
        print(json.dumps({"model": args.model, "seed": seed, "set": over, "auc": round(auc, 4),
                          "seconds": round(time.perf_counter() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()
