"""Lifelong models on the generated family (:data:`userlens.synthetic.FAMILY`), default settings.

Each member is a lifelong log built differently from ``lifelong_interest_log``
(catalogue and category shape, how many and how early the interest clicks are,
noise length and structure, label noise). Every model trains with its **default**
config and the default training settings (as ``userlens train DATA --model M``
would), and the table shows test AUC next to the oracle's (the true rule) and the
zero-parameter ``history_match`` baseline. A lifelong model "finds the signal"
when it comes close to the oracle; ``din`` (recent window only) should not.

    .venv/bin/python benchmarks/bench_family.py
    .venv/bin/python benchmarks/bench_family.py --members long-noise --models sdim,dare --seeds 1,2
    .venv/bin/python benchmarks/bench_family.py --members few-early-clicks --member-set n_users=400  # smaller

Under load, pass ``--threads 1``: two runs of 2 intra-op threads each on 2 shared cores
slowed epochs up to 20x here. ``tests/test_lifelong.py -m slow`` asserts the same runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from userlens.data.prepare import prepare, sources_from_files
from userlens.data.prepared import PreparedData
from userlens.metrics import auc
from userlens.synthetic import FAMILY, HELD_OUT, interest_family_log
from userlens.training.config import resolve_config
from userlens.training.evaluate import evaluate_run
from userlens.training.trainer import fit

MODELS = "din,history_match,sim_hard,sim_soft,eta,sdim,twin,dare,muse,qin"


def prepared(member: str, seed: int, work: Path, **changes: object) -> tuple[PreparedData, float]:
    """The prepared member log (``changes``: :class:`InterestFamily` fields to override) and the oracle's test AUC."""
    m = dataclasses.replace(next(f for f in FAMILY + HELD_OUT if f.name == member), **changes)
    log = interest_family_log(m, seed=seed)
    tag = "".join(f"-{k}{v}" for k, v in sorted(changes.items()))
    out = work / f"{member}-{seed}{tag}"
    if not (out / "data" / "meta.json").exists():
        p = log.write(out / "raw")
        prepare(sources_from_files(p["behaviors"], p["impressions"], p["items"]), out / "data", log=lambda s: None)
    imp = log.impressions
    test = (imp["split"] == "test").to_numpy()
    return PreparedData(out / "data"), auc(imp["label"].to_numpy()[test], log.oracle[test])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", default=",".join(f.name for f in FAMILY))
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--set", action="append", default=[], help="key=value applied to every run (default: none)")
    ap.add_argument("--member-set", action="append", default=[],
                    help="InterestFamily field=value applied to every member, e.g. n_users=2000 (default: none)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default="/tmp/userlens-bench-family")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    overrides = dict(kv.split("=", 1) for kv in args.set)
    changes = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.member_set)}
    rows = []
    for member in args.members.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            data, oracle = prepared(member, seed, work, **changes)
            for model in args.models.split(","):
                cfg = resolve_config(model, {"seed": seed, "threads": args.threads, **overrides})
                tag = ",".join(f"{k}={v}" for k, v in sorted(overrides.items())) or "defaults"
                run = work / "runs" / member / model / tag / str(seed)
                t0 = time.perf_counter()
                res = fit(data, cfg, run, show_progress=False, log=lambda s: None, force=True)
                ev = evaluate_run(run)
                row = {"member": member, "seed": seed, "model": model, "auc": round(ev["auc"], 4),
                       "oracle": round(oracle, 4), "epochs": res.epochs_run, "best_epoch": res.best_epoch,
                       "wall_s": round(time.perf_counter() - t0, 1),
                       "samples_per_s": round(res.train_samples_per_s_steady or 0.0), "set": overrides,
                       "member_set": changes}
                rows.append(row)
                print(json.dumps(row), flush=True)
    members = list(dict.fromkeys(r["member"] for r in rows))
    print("\n| model | " + " | ".join(members) + " |")
    print("|---" * (len(members) + 1) + "|")
    oracle = {(r["member"], r["seed"]): r["oracle"] for r in rows}
    table = {"oracle": {mem: [v for (mm, _), v in oracle.items() if mm == mem] for mem in members}}
    for r in rows:
        table.setdefault(r["model"], {}).setdefault(r["member"], []).append(r["auc"])
    for label, cells in table.items():
        text = [f"{statistics.mean(xs):.3f}" + (f" ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else "")
                for xs in (cells.get(mem, [float("nan")]) for mem in members)]
        print(f"| {label} | " + " | ".join(text) + " |")


if __name__ == "__main__":
    main()
