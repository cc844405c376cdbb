"""The figures of ``benchmarks/RESULTS.md``, drawn from the benchmarks' machine-readable results.

One function per figure, each writing a PNG under ``benchmarks/figures/``:

* :func:`plot_long_throughput`: training samples/s against history length, per
  model (``results/long.jsonl``, appended by ``bench_long.py``);
* :func:`plot_serve_latency`: in-process score latency p50 and p99 against
  history length, per model (``results/serve.jsonl``, appended by ``bench_serve.py``);
* :func:`plot_history_auc`: test AUC by the test sample's history length, a
  lifelong model with the whole history against the same model with
  ``long_len = short_len`` (the ``<model>@short`` rows of ``bench_quality.py
  --ablate-long``), from its per-sample prediction files.

A figure shows the newest row of each cell (rows are appended in time order).
``bench_long.py`` and ``bench_serve.py`` redraw their figure at the end of a run;
this script redraws them from the files (matplotlib: ``pip install -e '.[bench]'``):

    .venv/bin/python benchmarks/plots.py
    .venv/bin/python benchmarks/plots.py --history-auc /tmp/userlens-bench-quality \\
        --dataset taobao-userbehavior-sample --model sim_hard
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from records import newest, read_rows
from userlens.metrics import auc

HERE = Path(__file__).resolve().parent
FIGURES = HERE / "figures"
LONG = HERE / "results" / "long.jsonl"
SERVE = HERE / "results" / "serve.jsonl"
#: history-length buckets of figure (c): ≤ 50 (what long_len = short_len keeps), 51–200, 201–1,000, > 1,000
EDGES = (50, 200, 1000)


def _figure(panels: int = 1, width: float = 7.0):  # type: ignore[no-untyped-def]
    """A figure without pyplot: no global state and no display needed (the Agg canvas renders the PNG)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, 4.5), layout="constrained")
    return fig, fig.subplots(1, panels, sharey=True, squeeze=False)[0]


def _save(fig, out: Path) -> Path:  # type: ignore[no-untyped-def]
    """Write the PNG atomically: a temporary file beside ``out``, then a rename."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    fig.savefig(tmp, format="png", dpi=120)
    os.replace(tmp, out)
    return out


def _out(out: str | Path | None, results: str | Path, default: Path, name: str) -> Path:
    """``out``; else ``figures/<name>`` for the default results file, and ``<results>.png`` beside any other
    (a trial run with ``--results /tmp/x.jsonl`` must not overwrite the published figure)."""
    if out is not None:
        return Path(out)
    return FIGURES / name if Path(results).resolve() == default.resolve() else Path(results).with_suffix(".png")


def _dates(rows: list[dict]) -> str:
    return ", ".join(sorted({str(r.get("date", "?")).split(" ")[0] for r in rows}))


def _by_model(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows grouped by model (in first-seen order), each group sorted by history length."""
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["model"], []).append(r)
    return {m: sorted(rs, key=lambda r: r["L"]) for m, rs in out.items()}


def plot_long_throughput(results: str | Path = LONG, out: str | Path | None = None) -> Path:
    """Training samples/s against history length (log-log), one line per model; returns the PNG's path.

    Raises:
        FileNotFoundError: ``results`` does not exist.
        ValueError: it holds no speed rows (``bench_long.py`` without ``--auc-epochs``).
    """
    fix = "run benchmarks/bench_long.py (it appends one row per model and length)"
    rows = [r for r in read_rows(results, fix) if r.get("mode", "speed") == "speed" and r.get("train_samples_per_s")]
    if not rows:
        raise ValueError(f"{results}: no speed rows (only --auc-epochs runs?). Fix: {fix}.")
    rows = newest(rows, ("model", "L"))
    fig, (ax,) = _figure()
    for model, rs in _by_model(rows).items():
        style = "--" if model in ("din", "din_full") else "-"
        ax.plot([r["L"] for r in rs], [r["train_samples_per_s"] for r in rs], style, marker="o", label=model)
    ax.set(xscale="log", yscale="log", xlabel="behaviors per user (L)", ylabel="training samples/s",
           title=f"Training throughput against history length (bench_long.py, {_dates(rows)})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    return _save(fig, _out(out, results, LONG, "long-samples-per-s.png"))


def plot_serve_latency(results: str | Path = SERVE, out: str | Path | None = None, candidates: int = 100) -> Path:
    """In-process score latency, p50 and p99 side by side, against history length, one line per model; returns
    the PNG's path.

    Raises:
        FileNotFoundError: ``results`` does not exist.
        ValueError: it holds no in-process row with ``candidates`` candidates.
    """
    fix = "run benchmarks/bench_serve.py (it appends one row per model, length, candidates and path)"
    rows = [r for r in read_rows(results, fix) if r.get("path") == "in-process" and r.get("candidates") == candidates]
    if not rows:
        raise ValueError(f"{results}: no in-process rows with {candidates} candidates. Fix: {fix}, "
                         f"with --candidates {candidates}.")
    rows = newest(rows, ("model", "L"))
    fig, axes = _figure(panels=2, width=10.0)
    for ax, q in zip(axes, ("p50", "p99")):
        for model, rs in _by_model(rows).items():
            ax.plot([r["L"] for r in rs], [r[f"{q}_ms"] for r in rs], marker="o", label=model)
        ax.set(xscale="log", yscale="log", xlabel="behaviors per user (L)", title=f"{q}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel(f"ms per request ({candidates} candidates, in process)")
    axes[1].legend(fontsize="small", ncol=2)
    fig.suptitle(f"Score latency against history length (bench_serve.py, {_dates(rows)})")
    return _save(fig, _out(out, results, SERVE, "serve-latency.png"))


def bucket_labels(edges: tuple[int, ...] = EDGES) -> list[str]:
    """``(50, 200, 1000)`` → ``["≤50", "51–200", "201–1000", ">1000"]``."""
    inner = [f"{lo + 1}–{hi}" for lo, hi in zip(edges, edges[1:])]
    return [f"≤{edges[0]}", *inner, f">{edges[-1]}"]


def _predictions(run: Path, samples, what: str) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    """The logits of every seed's test predictions under ``run``, each file checked against the samples."""
    import polars as pl

    files = sorted(run.glob("*-test.parquet"))
    if not files:
        raise FileNotFoundError(f"{run}: no <seed>-test.parquet predictions of {what}. Fix: run "
                                "benchmarks/bench_quality.py for this dataset and model with --ablate-long "
                                "(it writes them beside each run), or pass its --workdir.")
    label, time_ms = np.asarray(samples.label), np.asarray(samples.time)
    out = []
    for f in files:
        p = pl.read_parquet(f, columns=["label", "time_ms", "logit"])
        same = len(p) == len(label) and bool((p["label"].to_numpy() == label).all()
                                             and (p["time_ms"].to_numpy() == time_ms).all())
        if not same:
            raise ValueError(f"{f}: {len(p):,} predictions that do not match the {len(label):,} prepared test "
                             "samples row by row (label and time): they come from another preparation. Fix: pass "
                             "the workdir and protocol the predictions were made with.")
        out.append(p["logit"].to_numpy())
    return out


def _bucket_aucs(label: np.ndarray, logit: np.ndarray, bucket: np.ndarray, n: int) -> list[float]:
    """AUC of each of the ``n`` buckets (NaN for an empty or one-class bucket)."""
    return [auc(label[bucket == b], logit[bucket == b]) if (bucket == b).any() else float("nan") for b in range(n)]


def auc_by_history(workdir: str | Path, dataset: str, model: str, protocol: str = "time-uniform",
                   edges: tuple[int, ...] = EDGES) -> dict:
    """Test AUC per history-length bucket of ``model`` and ``model@short``, mean and std over their seeds.

    The history length of a test sample is ``cutoff - offsets[user]`` of the prepared data
    ``<workdir>/<protocol>/<dataset>``; predictions are
    ``<workdir>/runs/<protocol>/<dataset>/<label>/<seed>-test.parquet`` in the order of
    ``data.samples("test")``, as ``bench_quality.py`` writes them (checked row by row on label and time).
    A bucket with one class only has no AUC (NaN).

    Returns:
        ``{"buckets": [...], "n": [...], model: {"mean": [...], "std": [...], "seeds": k}, model@short: {...}}``.
    """
    from userlens.data.prepared import PreparedData

    workdir = Path(workdir)
    prepared = workdir / protocol / dataset
    if not (prepared / "meta.json").is_file():
        raise FileNotFoundError(f"{prepared}: no prepared data of {dataset} under protocol {protocol!r}. Fix: pass the "
                                "--workdir bench_quality.py ran with (default /tmp/userlens-bench-quality) and its "
                                "<split>-<sampler> as the protocol.")
    data = PreparedData(prepared)
    s = data.samples("test")
    history = np.asarray(s.cutoff) - data.offsets[np.asarray(s.user)]
    bucket = np.searchsorted(np.asarray(edges), history, side="left")  # ≤ edges[0] → 0, …, > edges[-1] → last
    label = np.asarray(s.label)
    out: dict = {"buckets": bucket_labels(edges), "n": np.bincount(bucket, minlength=len(edges) + 1).tolist()}
    for name, what in ((model, "the whole-history model"), (f"{model}@short", "its long_len = short_len ablation")):
        logits = _predictions(workdir / "runs" / protocol / dataset / name, s, f"{name} ({what})")
        a = np.asarray([_bucket_aucs(label, logit, bucket, len(edges) + 1) for logit in logits])  # (seeds, buckets)
        finite = np.isfinite(a).any(axis=0)  # nanmean of an all-NaN column warns: skip it
        mean = np.full(a.shape[1], np.nan)
        std = np.full(a.shape[1], np.nan)
        mean[finite] = np.nanmean(a[:, finite], axis=0)
        std[finite] = np.nanstd(a[:, finite], axis=0, ddof=1) if len(a) > 1 else 0.0  # sample std, as the tables
        out[name] = {"mean": mean.tolist(), "std": std.tolist(), "seeds": len(logits)}
    return out


def plot_history_auc(workdir: str | Path, dataset: str, model: str, protocol: str = "time-uniform",
                     out: str | Path | None = None, edges: tuple[int, ...] = EDGES) -> Path:
    """Test AUC per history-length bucket, whole history against ``long_len = short_len``: two lines with the
    seeds' spread as error bars (points, not bars: AUC axes do not start at 0).

    Raises:
        FileNotFoundError: no prepared data at ``<workdir>/<protocol>/<dataset>``, or no predictions for
            ``model`` or ``model@short``.
        ValueError: predictions that do not match the prepared test samples.
    """
    res = auc_by_history(workdir, dataset, model, protocol, edges)
    x = np.arange(len(res["buckets"]))
    fig, (ax,) = _figure()
    for shift, name, text in ((-0.05, model, "whole history"), (0.05, f"{model}@short", "long_len = short_len")):
        r = res[name]
        ax.errorbar(x + shift, r["mean"], yerr=r["std"], marker="o", capsize=3,
                    label=f"{name}: {text} ({r['seeds']} seed{'s' if r['seeds'] != 1 else ''})")
    ax.set_xticks(x, [f"{b}\n(n = {n:,})" for b, n in zip(res["buckets"], res["n"])])
    ax.set(xlabel="behaviors before the test sample", ylabel="test AUC (mean ± std over seeds)",
           title=f"{model} on {dataset}\nAUC by history length ({protocol} protocol)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, Path(out) if out is not None else FIGURES / f"history-auc-{dataset}-{model}.png")


def draw_after_run(plot: Callable[[Path], Path], results: Path) -> None:
    """Redraw a benchmark's figure at the end of its run; never fail the run (its rows are already saved)."""
    try:
        print(f"figure: {plot(results)}")
    except ImportError:
        print("figure not drawn: matplotlib is not installed (pip install -e '.[bench]'); "
              "redraw later with benchmarks/plots.py")
    except (OSError, ValueError) as e:
        print(f"figure not drawn: {e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--long", default=str(LONG), help="bench_long.py results (JSON lines)")
    ap.add_argument("--serve", default=str(SERVE), help="bench_serve.py results (JSON lines)")
    ap.add_argument("--history-auc", metavar="WORKDIR", default=None,
                    help="draw only the AUC-by-history figure from this bench_quality.py workdir")
    ap.add_argument("--dataset", default=None, help="with --history-auc")
    ap.add_argument("--model", default=None, help="with --history-auc: a lifelong model run with --ablate-long")
    ap.add_argument("--protocol", default="time-uniform", help="with --history-auc: <split>-<sampler>")
    args = ap.parse_args()
    try:
        if args.history_auc:
            if not (args.dataset and args.model):
                raise ValueError("--history-auc needs --dataset and --model. Fix: add both")
            print(plot_history_auc(args.history_auc, args.dataset, args.model, args.protocol))
        else:
            print(plot_long_throughput(args.long))
            print(plot_serve_latency(args.serve))
    except ImportError:
        raise SystemExit("error: matplotlib is not installed. Fix: pip install -e '.[bench]'") from None
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
