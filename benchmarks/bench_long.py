"""Long-sequence cost: training samples/s and peak memory over the whole history, per model and length.

For each history length L (1,000 / 10,000 / 100,000) a generated lifelong log
(:func:`userlens.synthetic.lifelong_interest_log`) gives every user exactly L
behaviors before the impressions. ``din`` is short-window DIN (the 50 most
recent behaviors, the speed every lifelong model is compared with: column
"vs din"); ``din_full`` is DIN attending over all L behaviors (``short_len =
L``); the lifelong models keep DIN's 50 recent behaviors and search all L with
their GSU (``long_len = L``, k = 50). With 8 users at L = 100,000 a shuffled
batch of 256 holds ~32 samples of each user: the GSUs scan each user's
history once per batch for all of them (slabs, ``layers/gsu/slab.py``). "rows/user"
reports that sharing.

Every (model, L) runs in a fresh process (so peak RSS is its own): 3 warm-up
steps, then timed training steps (forward, backward, Adam) over shuffled
batches of 256, with Dice compiled as in training. Optionally (``--auc-epochs``) a full training run at the
smallest L reports test AUC, for the "as accurate as full DIN" half of the claim.

Each measured cell is also appended as one JSON row to ``--results`` (default
``benchmarks/results/long.jsonl``: date, machine note, torch version and the
printed figures), and the samples/s figure (``benchmarks/figures/long-samples-per-s.png``,
:func:`plots.plot_long_throughput`) is redrawn from it at the end of a run.

    .venv/bin/python benchmarks/bench_long.py
    .venv/bin/python benchmarks/bench_long.py --lengths 1000 --models din_full,sdim --auc-epochs 3
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from plots import LONG, draw_after_run, plot_long_throughput
from records import append_row, commit, machine_note, now

MODELS = ("din", "din_full", "sim_hard", "sim_soft", "eta", "sdim", "twin", "dare", "muse")
USERS = {1000: 400, 10_000: 60, 100_000: 8}  # ~0.4-0.8M behaviors per length


def data_for(length: int, work: Path) -> Path:
    from userlens.data.prepare import prepare, sources_from_files
    from userlens.synthetic import lifelong_interest_log

    out = work / f"L{length}"
    if not (out / "data" / "meta.json").exists():
        log = lifelong_interest_log(n_users=USERS[length], n_items=20_000, n_categories=500,
                                    behaviors_per_user=length, recent=min(100, length // 2),
                                    impressions_per_user=max(40, 20_000 // USERS[length]), seed=7)
        p = log.write(out / "raw")
        prepare(sources_from_files(p["behaviors"], p["impressions"], p["items"]), out / "data", log=lambda s: None)
    return out / "data"


def one(model: str, length: int, steps: int, batch: int, threads: int, work: Path, auc_epochs: int,
        seed: int = 2024, patience: int = 3) -> dict:
    import torch

    from userlens.data.loader import BatchLoader
    from userlens.data.prepared import PreparedData
    from userlens.layers.activation import compile_hot_layers
    from userlens.layers.gsu import partition
    from userlens.models.registry import build_model
    from userlens.models.spec import FeatureSpec
    from userlens.training.config import resolve_config
    from userlens.training.evaluate import evaluate_run
    from userlens.training.trainer import fit

    torch.set_num_threads(threads)
    data = PreparedData(data_for(length, work))
    name = "din" if model in ("din", "din_full") else model
    short = length if model == "din_full" else 50
    row: dict = {"model": model, "L": length, "batch": batch, "torch": torch.__version__}
    if auc_epochs:
        cfg = resolve_config(name, {"short_len": short, "long_len": length, "epochs": auc_epochs, "batch_size": batch,
                                    "threads": threads, "compile": False, "seed": seed, "patience": patience})
        run = work / "runs" / f"{model}-{length}-{seed}"
        res = fit(data, cfg, run, show_progress=False, log=lambda s: None, force=True)
        row.update(auc=evaluate_run(run)["auc"], train_samples_per_s=res.train_samples_per_s, seed=seed,
                   epochs=res.epochs_run, best_epoch=res.best_epoch,
                   train_seconds=round(sum(json.loads(x).get("train_seconds", 0)
                                           for x in (run / "metrics.jsonl").read_text().splitlines()), 1))
    else:
        torch.manual_seed(0)
        cfg = resolve_config(name, {})
        m = build_model(name, FeatureSpec.from_meta(data.meta), cfg.model_config).train()
        compile_hot_layers(m)  # as the trainer does by default; compiled during the warm-up steps
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        loader = BatchLoader(data, "train", m.fields, batch, short, shuffle=True, seed=0, prefetch=2, long_len=length)
        it = iter(loader)
        t0 = None
        groups = []
        for step in range(3 + steps):
            if step == 3:
                t0 = time.perf_counter()
            b = next(it)
            if b.long is not None and step >= 3:  # how many rows each history scan serves (slabs, layers/gsu/slab.py)
                parts = partition(b.long.lo, b.long.hi)  # slabs, then the rows scanned one by one
                scans = sum(1 if slab else len(rows) for rows, slab in parts)
                groups.append(len(b.long.lo) / scans)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(m(b), b.label)
            opt.zero_grad()
            loss.backward()
            opt.step()
        row["train_samples_per_s"] = steps * batch / (time.perf_counter() - t0)
        it.close()  # stops the prefetch thread before the process exits
        row["rows_per_scan"] = sum(groups) / len(groups) if groups else None
    row["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="1000,10000,100000")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--auc-epochs", type=int, default=0,
                    help="train at most this many epochs (early stopping, --patience) and report test AUC instead")
    ap.add_argument("--seeds", default="2024", help="AUC mode: comma list of seeds (mean ± std is printed)")
    ap.add_argument("--patience", type=int, default=3, help="AUC mode: early-stopping patience")
    ap.add_argument("--max-din-elems", type=float, default=2e8,
                    help="skip din_full when batch × L × 64 attention activations exceed this (memory guard)")
    ap.add_argument("--workdir", default="/tmp/userlens-bench-long")
    ap.add_argument("--results", default=str(LONG), help="append one JSON row per measured cell here")
    ap.add_argument("--note", default="", help="machine note stored with each row, e.g. 'idle'")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = Path(args.workdir)
    if args.one:
        model, length, seed = (args.one.split(":") + ["2024"])[:3]
        print(json.dumps(one(model, int(length), args.steps, args.batch, args.threads, work, args.auc_epochs,
                             int(seed), args.patience)))
        return
    if args.auc_epochs:
        auc_table(args, work)
        return
    print(f"# threads {args.threads}, batch {args.batch}, {time.strftime('%Y-%m-%d')}")
    metric = "test AUC | " if args.auc_epochs else ""
    print(f"| L | model | {metric}train samples/s | peak RSS GiB | vs din | rows per scan |")
    print("|---|---|---|---|---|---|" + ("---|" if args.auc_epochs else ""), flush=True)
    for length in (int(x) for x in args.lengths.split(",")):
        data_for(length, work)
        base = None
        for model in args.models.split(","):
            if model == "din_full" and args.batch * length * 64 > args.max_din_elems:
                need = args.batch * length * 64 * 4 * 6 / 2**30
                print(f"| {length:,} | din_full | " + ("– | " if args.auc_epochs else "")
                      + f"not run: ≈{need:.0f} GiB of attention activations | – | – | – |", flush=True)
                continue
            cmd = [sys.executable, __file__, "--one", f"{model}:{length}", "--steps", str(args.steps), "--batch",
                   str(args.batch), "--threads", str(args.threads), "--auc-epochs", str(args.auc_epochs),
                   "--workdir", str(work)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                print(f"| {length:,} | {model} | failed: {r.stderr.strip().splitlines()[-1][:120]} | | | |", flush=True)
                continue
            row = json.loads(r.stdout.strip().splitlines()[-1])
            base = row["train_samples_per_s"] if model == "din" else base
            row["vs_din"] = row["train_samples_per_s"] / base if base else None
            append_row(args.results, record(args, "speed", row))
            speed = f"{row['vs_din']:.0%}" if base else "–"
            auc = f"{row['auc']:.4f} | " if args.auc_epochs else ""
            share = f"{row['rows_per_scan']:.1f}" if row.get("rows_per_scan") else "–"
            print(f"| {length:,} | {model} | {auc}{row['train_samples_per_s']:,.0f} | {row['peak_rss_gib']:.2f} | "
                  f"{speed} | {share} |", flush=True)
    draw_after_run(plot_long_throughput, Path(args.results))


def record(args: argparse.Namespace, mode: str, row: dict) -> dict:
    """One results-file row: when, where and how it was measured, then what ``one`` measured."""
    how = {"steps": args.steps} if mode == "speed" else {"max_epochs": args.auc_epochs, "patience": args.patience}
    return {"date": now(), "machine": machine_note(args.note), "commit": commit(), "mode": mode,
            "threads": args.threads, "batch": args.batch, **how, **row}


def auc_table(args: argparse.Namespace, work: Path) -> None:
    """Test AUC and training cost per model over seeds: every model trained to early stopping."""
    import statistics

    print(f"# AUC mode: at most {args.auc_epochs} epochs, patience {args.patience}, batch {args.batch}, "
          f"threads {args.threads}, seeds {args.seeds}, {time.strftime('%Y-%m-%d')}")
    print("| L | model | seed | test AUC | epochs (best) | train s | train samples/s |")
    print("|---|---|---|---|---|---|---|", flush=True)
    rows: dict[tuple[int, str], list[dict]] = {}
    for length in (int(x) for x in args.lengths.split(",")):
        data_for(length, work)
        for model in args.models.split(","):
            for seed in args.seeds.split(","):
                cmd = [sys.executable, __file__, "--one", f"{model}:{length}:{seed}", "--batch", str(args.batch),
                       "--threads", str(args.threads), "--auc-epochs", str(args.auc_epochs), "--patience",
                       str(args.patience), "--workdir", str(work)]
                r = subprocess.run(cmd, capture_output=True, text=True)
                if r.returncode != 0:
                    print(f"| {length:,} | {model} | {seed} | failed: {r.stderr.strip().splitlines()[-1][:100]} |")
                    continue
                row = json.loads(r.stdout.strip().splitlines()[-1])
                append_row(args.results, record(args, "auc", row))
                rows.setdefault((length, model), []).append(row)
                print(f"| {length:,} | {model} | {seed} | {row['auc']:.4f} | {row['epochs']} ({row['best_epoch']}) | "
                      f"{row['train_seconds']} | {row['train_samples_per_s']:,.0f} |", flush=True)
    print("\n| L | model | seeds | test AUC | train seconds | train samples/s |")
    print("|---|---|---|---|---|---|")
    for (length, model), rs in rows.items():
        a = [r["auc"] for r in rs]
        sd = f" ± {statistics.stdev(a):.4f}" if len(a) > 1 else ""
        print(f"| {length:,} | {model} | {len(rs)} | {statistics.mean(a):.4f}{sd} | "
              f"{statistics.mean(r['train_seconds'] for r in rs):.0f} | "
              f"{statistics.mean(r['train_samples_per_s'] for r in rs):,.0f} |")


if __name__ == "__main__":
    main()
