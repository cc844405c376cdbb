"""Why our DIN trailed RecBole's on the Taobao peer samples: one difference at a time, 3 seeds each.

Issue "Results you can trust", item 8. Variants of DIN, each trained on the
peers' exact samples (``../shared/benchmarks/peer-samples``) with the peers'
settings (embedding 16, batch 1024, Adam 1e-3, at most 10 epochs, early stop on
validation AUC with patience 2), seeds 1-3:

* ``base``   — DIN without batch normalisation in the tower (the default before this issue);
* ``bn``     — BatchNorm1d before each Dice of the tower (RecBole does this; now the default);
* ``inbn``   — one BatchNorm1d on the tower's input only;
* ``att``    — RecBole's attention MLP (200, 80) with sigmoid, no tower BN;
* ``xavier`` — Xavier-normal embedding initialisation (RecBole's), no tower BN.

Rows are appended to ``benchmarks/results/din_variants.jsonl`` (resumable) and a
mean ± std table is printed.

    .venv/bin/python benchmarks/bench_din_variants.py --datasets taobao-userbehavior-sample
    .venv/bin/python benchmarks/bench_din_variants.py --datasets movielens-latest-small,amazon-grocery-rechorus --variants base,bn,inbn
    .venv/bin/python benchmarks/bench_din_variants.py --table-only
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from bench_train import prepared
from userlens.models import registry
from userlens.models.din import build_din
from userlens.training.config import resolve_config
from userlens.training.evaluate import evaluate_run
from userlens.training.trainer import fit

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("base", "bn", "inbn", "att", "xavier")
OVERRIDES = {"base": {"batch_norm": False}, "bn": {}, "inbn": {"batch_norm": False},
             "att": {"batch_norm": False, "attention_mlp": "200,80", "attention_activation": "sigmoid"},
             "xavier": {"batch_norm": False}}


def patch_registry(variant: str) -> None:
    """Register ``din`` built with the variant's structural change (input BN, Xavier embeddings)."""
    entry = registry.get_model("din")

    def build(spec, cfg):  # type: ignore[no-untyped-def]
        m = build_din(spec, cfg)
        if variant == "xavier":
            for e in m.embedding.modules():
                if isinstance(e, nn.Embedding):
                    nn.init.xavier_normal_(e.weight)
                    with torch.no_grad():
                        e.weight[0].zero_()
        if variant == "inbn":
            first = m.tower.net[0]
            m.tower.net = nn.Sequential(nn.BatchNorm1d(first.in_features), *m.tower.net)
        return m

    registry._REGISTRY["din"] = registry.ModelEntry("din", build, entry.config_cls, entry.summary)


def table(rows: list[dict]) -> None:
    print("| dataset | variant | seeds | test AUC | test GAUC | logloss | best epoch |")
    print("|---|---|---|---|---|---|---|")
    keys = sorted({(r["ds"], r["variant"]) for r in rows}, key=lambda k: (k[0], VARIANTS.index(k[1])))
    for ds, v in keys:
        rs = [r for r in rows if r["ds"] == ds and r["variant"] == v]

        def ms(f: str) -> str:
            xs = [r[f] for r in rs]
            return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs) if len(xs) > 1 else 0:.4f}"

        print(f"| {ds} | {v} | {len(rs)} | {ms('test_auc')} | {ms('test_gauc')} | {ms('logloss')} | "
              f"{statistics.mean(r['best_epoch'] for r in rs):.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="taobao-userbehavior-sample")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir", default="/tmp/userlens-bench-din-variants")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "din_variants.jsonl"))
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    out = Path(args.results)
    rows = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
    if not args.table_only:
        torch.set_num_threads(args.threads)
        work = Path(args.workdir)
        have = {(r["ds"], r["variant"], r["seed"]) for r in rows}
        for ds in args.datasets.split(","):
            data = prepared(ds, work)
            for v in args.variants.split(","):
                patch_registry(v)
                for seed in (int(s) for s in args.seeds.split(",")):
                    if (ds, v, seed) in have:
                        continue
                    cfg = resolve_config("din", {"threads": args.threads, "seed": seed, "epochs": 10, "patience": 2,
                                                 "batch_size": 1024, "lr": 1e-3, **OVERRIDES[v]})
                    run = work / f"run-{ds}-{v}-{seed}"
                    shutil.rmtree(run, ignore_errors=True)
                    t0 = time.time()
                    res = fit(data, cfg, run, show_progress=False, log=lambda s: None)
                    ev = evaluate_run(run)
                    row = {"ds": ds, "variant": v, "seed": seed, "test_auc": round(ev["auc"], 4),
                           "test_gauc": round(ev["gauc"], 4), "logloss": round(ev["logloss"], 4),
                           "valid_auc": round(res.best_valid["auc"], 4), "best_epoch": res.best_epoch,
                           "epochs": res.epochs_run, "s": round(time.time() - t0)}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
                    with out.open("a") as f:
                        f.write(json.dumps(row) + "\n")
    table(rows)


if __name__ == "__main__":
    main()
