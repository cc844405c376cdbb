"""benchmarks/plots.py: each figure is written from tiny inputs, and missing or wrong input fails by name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import bench_long  # benchmarks/ is on sys.path (conftest.py); matplotlib comes with the `dev` extra
import bench_serve
import numpy as np
import plots
import polars as pl
import pytest
import records

from userlens.data.prepare import prepare, sources_from_files
from userlens.data.prepared import PreparedData
from userlens.metrics import auc

PNG = b"\x89PNG\r\n\x1a\n"


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG
    assert not list(path.parent.glob(".*.tmp")), "the temporary file of the atomic write was left behind"


# --- (a) samples/s against history length ---------------------------------------------------------------------


def long_rows() -> list[dict]:
    return [{"date": "2026-11-27 19:45 UTC", "mode": "speed", "model": m, "L": n, "train_samples_per_s": s}
            for m, base in (("din", 12_000.0), ("sdim", 3_000.0)) for n, s in ((1000, base), (10_000, base / 4))]


def test_long_throughput_writes_png(tmp_path: Path) -> None:
    rows = long_rows() + [{"mode": "auc", "model": "din_full", "L": 1000, "auc": 0.7, "train_samples_per_s": 180}]
    out = plots.plot_long_throughput(write_rows(tmp_path / "long.jsonl", rows), tmp_path / "fig" / "long.png")
    assert out == tmp_path / "fig" / "long.png"
    assert_png(out)


def test_figure_of_other_results_goes_beside_them_not_over_the_published_one(tmp_path: Path) -> None:
    """A trial run with --results /tmp/x.jsonl redraws /tmp/x.png; benchmarks/figures/ is for the default file."""
    results = write_rows(tmp_path / "trial.jsonl", long_rows())
    assert plots.plot_long_throughput(results) == tmp_path / "trial.png"
    assert_png(tmp_path / "trial.png")


def test_long_throughput_missing_file_names_the_benchmark(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothing\.jsonl: no such results file\. Fix: run .*bench_long\.py"):
        plots.plot_long_throughput(tmp_path / "nothing.jsonl", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_long_throughput_without_speed_rows_is_refused(tmp_path: Path) -> None:
    results = write_rows(tmp_path / "long.jsonl", [{"mode": "auc", "model": "sdim", "L": 1000, "auc": 0.96}])
    with pytest.raises(ValueError, match="no speed rows"):
        plots.plot_long_throughput(results, tmp_path / "x.png")


def test_bench_long_rows_carry_what_the_figure_reads() -> None:
    """The row bench_long.py appends: when and where (date, machine, commit), then the measured cell."""
    args = bench_long.argparse.Namespace(note="idle", threads=1, batch=256, steps=8, auc_epochs=0, patience=3)
    row = bench_long.record(args, "speed", {"model": "din", "L": 1000, "torch": "2.13.0+cpu",
                                            "train_samples_per_s": 11917.0, "vs_din": 1.0})
    assert row["mode"] == "speed" and row["machine"].endswith("; idle") and row["date"].endswith("UTC")
    assert {"model", "L", "train_samples_per_s", "torch", "commit", "threads", "batch", "steps"} <= set(row)


# --- (b) serving latency against history length ----------------------------------------------------------------


def serve_rows() -> list[dict]:
    rows = []
    for model, base in (("sdim", 1.5), ("sim_soft", 4.0)):
        for n, f in ((1000, 1.0), (100_000, 3.0)):
            for path in ("in-process", "HTTP"):
                rows.append({"model": model, "L": n, "candidates": 100, "path": path,
                             **bench_serve.percentiles([base * f, base * f * 1.1, base * f * 1.5])})
    return rows


def test_serve_latency_writes_png(tmp_path: Path) -> None:
    assert_png(plots.plot_serve_latency(write_rows(tmp_path / "serve.jsonl", serve_rows()), tmp_path / "s.png"))


def test_serve_latency_needs_rows_with_those_candidates(tmp_path: Path) -> None:
    results = write_rows(tmp_path / "serve.jsonl", serve_rows())
    with pytest.raises(ValueError, match="no in-process rows with 1000 candidates.*--candidates 1000"):
        plots.plot_serve_latency(results, tmp_path / "s.png", candidates=1000)
    with pytest.raises(FileNotFoundError, match="bench_serve.py"):
        plots.plot_serve_latency(tmp_path / "missing.jsonl", tmp_path / "s.png")


# --- results files -----------------------------------------------------------------------------------------------


def test_newest_row_of_each_cell_wins() -> None:
    rows = [{"model": "din", "L": 1, "v": 1}, {"model": "eta", "L": 1, "v": 2}, {"model": "din", "L": 1, "v": 3}]
    assert records.newest(rows, ("model", "L")) == [{"model": "din", "L": 1, "v": 3}, {"model": "eta", "L": 1, "v": 2}]


def test_a_broken_line_is_named(tmp_path: Path) -> None:
    p = tmp_path / "long.jsonl"
    p.write_text(json.dumps(long_rows()[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"long\.jsonl, line 2: not JSON"):
        records.read_rows(p, "rerun")
    p.write_text("[1, 2]\n")
    with pytest.raises(ValueError, match="line 1: expected a JSON object, got list"):
        records.read_rows(p, "rerun")
    p.write_text("\n")
    with pytest.raises(ValueError, match="holds no rows. Fix: rerun"):
        records.read_rows(p, "rerun")


def test_append_row_adds_one_line_per_call(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "rows.jsonl"
    records.append_row(p, {"a": 1})
    records.append_row(p, {"a": 2})
    assert records.read_rows(p, "-") == [{"a": 1}, {"a": 2}]


def test_a_benchmark_run_survives_a_figure_it_cannot_draw(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The rows are saved before the figure: neither bad rows nor a missing matplotlib may fail the run."""
    plots.draw_after_run(plots.plot_long_throughput, tmp_path / "none.jsonl")
    assert "figure not drawn: " in capsys.readouterr().out

    def no_matplotlib(results: Path) -> Path:
        raise ImportError("No module named 'matplotlib'")

    plots.draw_after_run(no_matplotlib, tmp_path / "none.jsonl")
    assert "matplotlib is not installed (pip install -e '.[bench]')" in capsys.readouterr().out
    plots.draw_after_run(plots.plot_long_throughput, write_rows(tmp_path / "long.jsonl", long_rows()))
    assert capsys.readouterr().out == f"figure: {tmp_path / 'long.png'}\n"


def test_cli_reports_a_missing_file_as_one_error_line(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(plots.HERE / "plots.py"), "--long", str(tmp_path / "none.jsonl")],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.startswith("error: ") and "none.jsonl: no such results file" in r.stderr
    assert "Traceback" not in r.stderr


# --- (c) AUC against the test sample's history length ------------------------------------------------------------

EDGES = (20, 60)  # the tiny log's histories: ≤ 20, 21–60, > 60
LENGTHS = [12] * 30 + [45] * 20 + [100] * 10  # behaviors per user: ~70 test samples in each bucket, or more


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bench_quality-shaped workdir: prepared data at <workdir>/time-uniform/toy. Every user's behaviors spread
    over the same hour, so the test samples (the last 10 % of times) have ~90 % of the user's history."""
    work = tmp_path_factory.mktemp("quality")
    rng = np.random.default_rng(0)
    frames = [pl.DataFrame({"user_id": u, "item_id": rng.integers(0, 50, n),
                            "timestamp": np.sort(rng.choice(3600, n, replace=False)) + 1_600_000_000})
              for u, n in enumerate(LENGTHS)]
    pl.concat(frames).write_parquet(work / "behaviors.parquet")
    prepare(sources_from_files(work / "behaviors.parquet"), work / "time-uniform" / "toy", log=lambda s: None)
    return work


def fake_predictions(work: Path, label: str, seed: int, logits: np.ndarray) -> None:
    """What bench_quality.py writes beside each run (only the columns the figure reads, in sample order)."""
    s = PreparedData(work / "time-uniform" / "toy").samples("test")
    p = work / "runs" / "time-uniform" / "toy" / label / f"{seed}-test.parquet"
    p.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"time_ms": np.asarray(s.time), "label": np.asarray(s.label), "logit": logits}).write_parquet(p)


def test_auc_by_history_known_answer(workdir: Path) -> None:
    """The whole-history model ranks perfectly on long histories and at random elsewhere; the short one at random
    everywhere. Per bucket, the figure's AUC must equal metrics.auc on that bucket's samples, averaged over seeds."""
    data = PreparedData(workdir / "time-uniform" / "toy")
    s = data.samples("test")
    label = np.asarray(s.label)
    history = np.asarray(s.cutoff) - data.offsets[np.asarray(s.user)]
    bucket = np.digitize(history, EDGES, right=True)  # bucketed independently: ≤ 20 → 0, 21–60 → 1, > 60 → 2
    assert np.bincount(bucket, minlength=3).min() > 20, "the fixture must fill every bucket"
    rng = np.random.default_rng(1)
    logits = {}
    for seed in (1, 2):
        full = rng.normal(size=len(label))
        full[bucket == 2] = label[bucket == 2] + 0.01 * rng.random((bucket == 2).sum())
        logits[("m", seed)], logits[("m@short", seed)] = full, rng.normal(size=len(label))
        fake_predictions(workdir, "m", seed, full)
        fake_predictions(workdir, "m@short", seed, logits[("m@short", seed)])

    res = plots.auc_by_history(workdir, "toy", "m", edges=EDGES)

    assert res["buckets"] == ["≤20", "21–60", ">60"]
    assert res["n"] == np.bincount(bucket, minlength=3).tolist()
    assert res["m"]["mean"][2] == pytest.approx(1.0) and res["m"]["seeds"] == 2
    for name in ("m", "m@short"):
        for b in range(3):
            per_seed = [auc(label[bucket == b], logits[(name, sd)][bucket == b]) for sd in (1, 2)]
            assert res[name]["mean"][b] == pytest.approx(np.mean(per_seed))
            assert res[name]["std"][b] == pytest.approx(np.std(per_seed, ddof=1), abs=1e-12)  # as the tables
    assert_png(plots.plot_history_auc(workdir, "toy", "m", out=workdir / "h.png", edges=EDGES))


def test_history_auc_needs_the_ablation_rows(workdir: Path) -> None:
    s = PreparedData(workdir / "time-uniform" / "toy").samples("test")
    fake_predictions(workdir, "lonely", 1, np.zeros(len(s)))
    with pytest.raises(FileNotFoundError, match=r"lonely@short: no <seed>-test\.parquet.*--ablate-long"):
        plots.auc_by_history(workdir, "toy", "lonely", edges=EDGES)


def test_history_auc_refuses_predictions_of_other_samples(workdir: Path) -> None:
    """Predictions from another preparation would be joined to the wrong histories: refused, not plotted."""
    s = PreparedData(workdir / "time-uniform" / "toy").samples("test")
    fake_predictions(workdir, "shifted", 1, np.zeros(len(s)))
    fake_predictions(workdir, "shifted@short", 1, np.zeros(len(s)))
    p = workdir / "runs" / "time-uniform" / "toy" / "shifted@short" / "1-test.parquet"
    pl.read_parquet(p).with_columns(pl.col("label").reverse()).write_parquet(p)  # same rows, another order
    with pytest.raises(ValueError, match=r"1-test\.parquet: .* do not match the .* prepared test samples"):
        plots.auc_by_history(workdir, "toy", "shifted", edges=EDGES)


def test_history_auc_without_prepared_data_names_the_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"time-uniform/toy: no prepared data of toy .*Fix: pass the --workdir"):
        plots.plot_history_auc(tmp_path, "toy", "m", out=tmp_path / "h.png")
