"""Quality table: every registered model on every dataset in ../shared/datasets, several seeds, same splits.

Each dataset is prepared once with its adapter under the chosen protocol (by
default the global time split, one uniform negative per positive drawn from
items seen before it, seed 2024), so every model and seed sees identical
samples; seeds change initialisation and shuffling only. The whole history is
available to the lifelong models (``long_len`` 100,000 ≥ the longest user in
every dataset). The zero-parameter baselines ``popularity`` and
``history_match`` are registered models, so they get rows like any other.

``--variant NAME:key=value[,key=value]`` adds, for every learned model, the row
"same model with these settings" (label ``<model>+NAME``); ``--count-features`` is
``--variant counts:count_features=all`` (the counting features of
:mod:`userlens.data.counts`). A last table sets every learned model, with and
without the counting features, against the best zero-parameter baseline of its
dataset.

Every row also carries ``auc_seen``: the test AUC over the samples whose
candidate item had at least one behavior (by anyone) before the sample's time.
Sampled negatives are always such items (past-only sampling cannot draw an item
that does not exist yet), while a positive may be an item's first behavior
ever; ``auc_seen`` removes that asymmetry, which an item count exploits.

``--ablate-long`` adds, for every lifelong model, the row "same model,
``long_len = short_len``" (label ``<model>@short``): what the long history adds
beyond the GSU's filter over the recent window. The ablation table prints the
per-seed paired difference (full − short), mean ± std.

Rows are appended to a JSON-lines file as they finish, keyed by dataset,
model, seed and protocol (split, sampler, epochs, patience), so an interrupted
run resumes where it stopped; the tables are printed from the rows of the
chosen protocol.

    .venv/bin/python benchmarks/bench_quality.py --seeds 1,2,3 --content --epochs 4 --patience 1 --ablate-long
    .venv/bin/python benchmarks/bench_quality.py --datasets movielens-100k --models din,sim_hard --epochs 3
    .venv/bin/python benchmarks/bench_quality.py --table-only --epochs 4 --patience 1   # print what has run
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import torch

from userlens.data.adapters import load_adapter
from userlens.data.prepare import PrepareOptions, prepare
from userlens.data.prepared import PreparedData
from userlens.models.registry import list_models
from userlens.training.config import resolve_config
from userlens.training.evaluate import evaluate_run
from userlens.training.trainer import fit

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
CASES = {  # folder -> (adapter, bad-row policy: the two real defects documented in the README)
    "movielens-100k": ("movielens", "error"),
    "movielens-latest-small": ("movielens", "error"),
    "lastfm-hetrec2011-2k": ("lastfm", "skip"),
    "amazon-grocery-rechorus": ("amazon", "error"),
    "taobao-userbehavior-sample": ("taobao", "skip"),
}


def prepared(folder: str, work: Path, content: bool = False, split: str = "time",
             sampler: str = "uniform") -> PreparedData:
    """The prepared dataset; with ``content``, item titles embedded by MiniLM (PCA 64) where the dataset has them."""
    out = work / f"{split}-{sampler}" / folder
    fmt, policy = CASES[folder]
    if not (out / "meta.json").exists():
        opts = PrepareOptions(on_bad_rows=policy, split=split, negative_sampler=sampler)  # type: ignore[arg-type]
        prepare(load_adapter(fmt, DATASETS / folder), out, opts, log=lambda s: None)
    if content and not (out / "items" / "content.json").exists():
        items = load_adapter(fmt, DATASETS / folder).items
        if items is not None and "title" in items.frame.columns:
            from userlens.data.content import build_content

            titles = work / f"{folder}-titles.parquet"
            items.frame.select("item_id", "title").write_parquet(titles)
            print(json.dumps({"content": folder, **build_content(out, items=titles, pca_dim=64)}), flush=True)
    return PreparedData(out)


def auc_seen(data: PreparedData, predictions: Path) -> float | None:
    """Test AUC over the samples whose item had a behavior (anyone's) before the sample (see the docstring)."""
    import numpy as np
    import polars as pl

    from userlens.metrics import auc

    s = data.samples("test")
    seen = data.item_counts.before(np.asarray(s.item), np.asarray(s.time)) > 0
    p = pl.read_parquet(predictions)
    label, score = p["label"].to_numpy(), p["logit"].to_numpy()
    if len(np.unique(label[seen])) < 2:
        return None
    return float(auc(label[seen], score[seen]))


def protocol(r: dict) -> tuple:
    """What makes rows comparable: the sample protocol and the training budget."""
    return (r.get("split", "leave-last-out"), r.get("sampler", "uniform-v1"), r["max_epochs"], r["patience"])


def is_lifelong(model: str) -> bool:
    from userlens.models.lifelong import LifelongConfig
    from userlens.models.registry import get_model

    return issubclass(get_model(model).config_cls, LifelongConfig)


def ablation(rows: list[dict]) -> str:
    """Per lifelong model and dataset: AUC with the whole history, with ``long_len = short_len``, and the
    per-seed paired difference (mean ± std)."""
    out = ["| dataset | model | seeds | AUC, whole history | AUC, long_len = short_len | difference (paired) |",
           "|---|---|---|---|---|---|"]
    by = {(r["dataset"], r["model"], r["seed"]): r["auc"] for r in rows}
    for ds, m in sorted({(r["dataset"], r["model"]) for r in rows if r["model"].endswith("@short")}):
        base = m.removesuffix("@short")
        seeds = sorted(sd for (d, mm, sd) in by if d == ds and mm == m and (d, base, sd) in by)
        if not seeds:
            continue
        full = [by[(ds, base, sd)] for sd in seeds]
        short = [by[(ds, m, sd)] for sd in seeds]
        diff = [a - b for a, b in zip(full, short)]
        out.append(f"| {ds} | {base} | {len(seeds)} | {_ms(full)} | {_ms(short)} | {_ms(diff, signed=True)} |")
    return "\n".join(out)


#: the zero-parameter baselines: every learned model must beat the best of them on each dataset
BASELINES = ("popularity", "history_match")


def against_baselines(rows: list[dict]) -> str:
    """Per dataset: the best baseline and, per learned model without and with the counting features, the test
    AUC (mean ± std over seeds, their number) and the margin over that baseline of the *worst* seed (negative =
    below it on some seed); the same on the seen-item samples."""
    out = ["| dataset | best baseline: AUC (seen-item AUC) | model | AUC (seeds) | worst margin | AUC +counts (seeds) | "
           "worst margin +counts | seen-item AUC +counts | worst margin |", "|---|---|---|---|---|---|---|---|---|"]

    def values(ds: str, m: str, key: str) -> list[float]:
        return [r[key] for r in rows if r["dataset"] == ds and r["model"] == m and r.get(key) is not None]

    def cell(xs: list[float], base: float | None) -> str:
        return f"{_ms(xs)} ({len(xs)}) | {min(xs) - base:+.4f}" if xs and base is not None else " | "

    for ds in sorted({r["dataset"] for r in rows}):
        have = [(statistics.mean(xs), b) for b in BASELINES if (xs := values(ds, b, "auc"))]
        if not have:
            continue
        best, name = max(have)
        seen = [statistics.mean(xs) for b in BASELINES if (xs := values(ds, b, "auc_seen"))]
        best_seen = max(seen) if seen else None
        head = f"{name} {best:.4f}" + (f" ({best_seen:.4f})" if best_seen is not None else "")
        for m in sorted({r["model"] for r in rows if r["dataset"] == ds and r["model"] not in BASELINES
                         and "@" not in r["model"] and "+" not in r["model"]}):
            out.append(f"| {ds} | {head} | {m} | {cell(values(ds, m, 'auc'), best)} | "
                       f"{cell(values(ds, f'{m}+counts', 'auc'), best)} | "
                       f"{cell(values(ds, f'{m}+counts', 'auc_seen'), best_seen)} |")
    return "\n".join(out)


def _ms(xs: list[float], nd: int = 4, signed: bool = False) -> str:
    f = f"{{:+.{nd}f}}" if signed else f"{{:.{nd}f}}"
    if len(xs) > 1:
        return f"{f.format(statistics.mean(xs))} ± {statistics.stdev(xs):.{nd}f}"
    return f.format(xs[0])


def table(rows: list[dict]) -> str:
    out = ["| dataset | model | seeds | test AUC | test GAUC | logloss | train samples/s | epochs (best) |",
           "|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["dataset"], r["model"]) for r in rows})
    for ds, m in keys:
        rs = [r for r in rows if r["dataset"] == ds and r["model"] == m]
        out.append(f"| {ds} | {m} | {len(rs)} | {_ms([r['auc'] for r in rs])} | {_ms([r['gauc'] for r in rs])} | "
                   f"{_ms([r['logloss'] for r in rs])} | {statistics.mean(r['samples_per_s'] for r in rs):,.0f} | "
                   f"{statistics.mean(r['epochs'] for r in rs):.1f} ({statistics.mean(r['best_epoch'] for r in rs):.1f}) |")
    return "\n".join(out)


def matrix(rows: list[dict], metric: str = "auc") -> str:
    """Models × datasets, mean ± std of ``metric`` over seeds; the best mean per dataset in bold."""
    datasets = sorted({r["dataset"] for r in rows})
    models = sorted({r["model"] for r in rows})
    cell: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        cell.setdefault((r["model"], r["dataset"]), []).append(r[metric])
    best = {ds: max(statistics.mean(v) for (m, d), v in cell.items() if d == ds) for ds in datasets}
    out = [f"| {metric} | " + " | ".join(datasets) + " |", "|---" * (len(datasets) + 1) + "|"]
    for m in models:
        parts = []
        for ds in datasets:
            v = cell.get((m, ds))
            if not v:
                parts.append("")
                continue
            text = f"{statistics.mean(v):.4f} ± {statistics.stdev(v):.4f}" if len(v) > 1 else f"{v[0]:.4f}"
            parts.append(f"**{text}**" if statistics.mean(v) == best[ds] else text)
        out.append(f"| {m} | " + " | ".join(parts) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(CASES))
    ap.add_argument("--models", default="all")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--patience", type=int, default=2)
    ap.add_argument("--long-len", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default="/tmp/userlens-bench-quality")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "quality.jsonl"))
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--content", action="store_true",
                    help="embed item titles (MiniLM, PCA 64) where a dataset has them; muse and qin then use them")
    ap.add_argument("--split", default="time", choices=["time", "leave-last-out"])
    ap.add_argument("--sampler", default="uniform", choices=["uniform", "popularity", "category"])
    ap.add_argument("--ablate-long", action="store_true",
                    help="also run every lifelong model with long_len = short_len (rows '<model>@short')")
    ap.add_argument("--count-features", action="store_true",
                    help="also run every learned model with count_features=all (rows '<model>+counts')")
    ap.add_argument("--no-base", action="store_true",
                    help="run only the --variant / --count-features / --ablate-long rows, not the models as they are")
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME:key=value[,key=value]: also run every learned model with these settings "
                         "(rows '<model>+NAME'), e.g. ucounts:count_features=user")
    args = ap.parse_args()
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(x) for x in results.read_text().splitlines() if x.strip()] if results.exists() else []
    if not args.table_only:
        if not DATASETS.is_dir():
            raise SystemExit(f"{DATASETS} not found: the datasets live in ../shared/datasets")
        torch.set_num_threads(args.threads)
        work = Path(args.workdir)
        models = [e.name for e in list_models()] if args.models == "all" else args.models.split(",")
        want = (args.split, args.sampler, args.epochs, args.patience)
        have = {(r["dataset"], r["model"], r["seed"]) for r in done if protocol(r) == want}
        runs = [] if args.no_base else [(m, m, {"long_len": args.long_len}) for m in models]
        if args.ablate_long:  # short_len is 50 by default
            runs += [(f"{m}@short", m, {"long_len": 50}) for m in models if is_lifelong(m)]
        variants = args.variant + (["counts:count_features=all"] if args.count_features else [])
        for v in variants:
            name, _, pairs = v.partition(":")
            settings = {"long_len": args.long_len, **dict(kv.split("=", 1) for kv in pairs.split(",") if kv)}
            runs += [(f"{m}+{name}", m, settings) for m in models if m not in BASELINES]
        for ds in args.datasets.split(","):
            data = prepared(ds, work, args.content, args.split, args.sampler)
            for label, m, settings in runs:
                for seed in (int(s) for s in args.seeds.split(",")):
                    if (ds, label, seed) in have:
                        continue
                    cfg = resolve_config(m, {"seed": seed, "epochs": args.epochs, "patience": args.patience,
                                             "threads": args.threads, **settings})
                    content = data.content() is not None
                    run = work / "runs" / f"{args.split}-{args.sampler}" / ds / label / str(seed)
                    if run.exists():  # the bench owns its workdir: a run left by an interrupted bench is redone
                        shutil.rmtree(run)
                    t0 = time.perf_counter()
                    res = fit(data, cfg, run, show_progress=False, log=lambda s: None, force=True)
                    scores = run.with_name(f"{seed}-test.parquet")  # beside the run: evaluate refuses a path in it
                    ev = evaluate_run(run, predictions=scores)
                    row = {"dataset": ds, "model": label, "seed": seed, "auc": ev["auc"], "gauc": ev["gauc"],
                           "auc_seen": auc_seen(data, scores),
                           "logloss": ev["logloss"], "n_test": ev["n"], "samples_per_s": res.train_samples_per_s_steady,
                           "epochs": res.epochs_run, "best_epoch": res.best_epoch,
                           "wall_s": round(time.perf_counter() - t0, 1), "date": time.strftime("%Y-%m-%d"),
                           "torch": torch.__version__, "threads": args.threads, "content": content,
                           "max_epochs": args.epochs, "patience": args.patience, "split": args.split,
                           "sampler": args.sampler, "long_len": int(settings["long_len"]),
                           **{k: v for k, v in settings.items() if k != "long_len"}}
                    done.append(row)
                    with open(results, "a") as fh:
                        fh.write(json.dumps(row) + "\n")
                    print(json.dumps(row), flush=True)
    want = (args.split, args.sampler, args.epochs, args.patience)
    same = [r for r in done if protocol(r) == want]
    print(f"protocol: {args.split} split, {args.sampler} negatives, at most {args.epochs} epochs, patience "
          f"{args.patience} ({len(same)} of {len(done)} rows)")
    print(table(same))
    if same:
        print()
        print(matrix([r for r in same if not r["model"].endswith("@short")]))
        print()
        print(ablation(same))
        print()
        print(against_baselines(same))


if __name__ == "__main__":
    main()
