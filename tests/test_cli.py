"""The CLI contract of DESIGN §6, end to end on a tiny generated log."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from userlens.cli import app
from userlens.synthetic import planted_interest_log

runner = CliRunner()


def test_models_lists_registered() -> None:
    r = runner.invoke(app, ["models"])
    assert r.exit_code == 0
    names = [line.split()[0] for line in r.output.splitlines() if line.strip()]
    assert "avgpool" in names and "din" in names


def test_prepare_train_evaluate(tmp_path: Path) -> None:
    p = planted_interest_log(n_users=60, n_items=100, n_categories=10, behaviors_per_user=40,
                             impressions_per_user=10, seed=1).write(tmp_path / "raw")
    r = runner.invoke(app, ["prepare", "--behaviors", str(p["behaviors"]), "--impressions", str(p["impressions"]),
                            "--items", str(p["items"]), "--out", str(tmp_path / "data")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["train", str(tmp_path / "data"), "--model", "din", "--out", str(tmp_path / "run"),
                            "--set", "epochs=1", "--set", "compile=false", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run/config.json").is_file() and (tmp_path / "run/model.safetensors").is_file()
    r = runner.invoke(app, ["evaluate", str(tmp_path / "run"), "--predictions", str(tmp_path / "p.csv")])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout.strip().splitlines()[-1])
    n_test = json.loads((tmp_path / "data/meta.json").read_text())["samples"]["test"]["samples"]
    assert set(res) == {"auc", "gauc", "logloss", "n"} and res["n"] == n_test > 0
    assert (tmp_path / "p.csv").read_text().count("\n") == n_test + 1  # header + one row per sample


def test_errors_are_one_line_and_nonzero(tmp_path: Path) -> None:
    r = runner.invoke(app, ["train", str(tmp_path), "--model", "dien2", "--out", str(tmp_path / "r")])
    assert r.exit_code == 1
    assert "unknown model 'dien2'" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["train", str(tmp_path), "--model", "din", "--set", "lr=abc"])
    assert r.exit_code == 1 and "lr expects float" in r.output
    r = runner.invoke(app, ["evaluate", str(tmp_path / "nope")])
    assert r.exit_code == 1 and "not a run directory" in r.output
    (tmp_path / "empty.csv").write_text("")
    r = runner.invoke(app, ["prepare", "--behaviors", str(tmp_path / "empty.csv"), "--out", str(tmp_path / "d")])
    assert r.exit_code == 1 and "empty" in r.output


def test_training_log_reads_in_order_in_a_file(tmp_path: Path) -> None:
    """stderr is not a terminal here: no bars; quarter-epoch lines, validation, then each epoch's JSON, in order."""
    p = planted_interest_log(n_users=60, n_items=100, n_categories=10, behaviors_per_user=40,
                             impressions_per_user=10, seed=1).write(tmp_path / "raw")
    r = runner.invoke(app, ["prepare", "--behaviors", str(p["behaviors"]), "--impressions", str(p["impressions"]),
                            "--out", str(tmp_path / "data")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["train", str(tmp_path / "data"), "--model", "avgpool", "--out", str(tmp_path / "run"),
                            "--set", "epochs=2", "--set", "batch_size=16", "--set", "patience=5"])
    assert r.exit_code == 0, r.output
    lines = r.stderr.splitlines()
    kinds = [("json" if x.startswith("{") else x.split(":")[0]) for x in lines if not x.startswith("config")]
    epoch1 = kinds.index("json")
    assert kinds[:epoch1] == ["epoch 1/2"] * 3 + ["epoch 1"], lines  # 25 / 50 / 75 %, then "validating"
    assert kinds[epoch1 + 1] == "run" and "at most" in lines[[i for i, x in enumerate(lines)
                                                             if x.startswith("run:")][0]]
    assert json.loads(lines[[i for i, x in enumerate(lines) if x.startswith("{")][1]])["epoch"] == 2
    assert "\x1b[" not in r.stderr and "━" not in r.stderr  # no bars, no escape codes


def test_context_columns_with_any_name_go_from_prepare_to_serving(tmp_path: Path) -> None:
    """"dev/ice" (not a file name), "type" and "dev.ice" (not torch module keys) used to end in a traceback."""
    import numpy as np
    import polars as pl

    from userlens.serving.package import load_package
    from userlens.serving.scorer import Scorer
    from userlens.serving.store import bulk_load_prepared, open_store
    from userlens.data.prepared import PreparedData

    p = planted_interest_log(n_users=30, n_items=40, n_categories=4, behaviors_per_user=20,
                             impressions_per_user=8, seed=2).write(tmp_path / "raw")
    imp = pl.read_parquet(p["impressions"])
    rng = np.random.default_rng(0)
    names = {"dev/ice": ["ios", "web"], "type": ["a", "b", "c"], "dev.ice": ["x", "y"]}
    imp = imp.with_columns(*(pl.Series(k, rng.choice(v, imp.height)) for k, v in names.items()))
    imp.write_parquet(tmp_path / "i.parquet")
    ctx = [a for k in names for a in ("--context", k)]
    r = runner.invoke(app, ["prepare", "--behaviors", str(p["behaviors"]), "--impressions", str(tmp_path / "i.parquet"),
                            *ctx, "--out", str(tmp_path / "data")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["train", str(tmp_path / "data"), "--model", "din", "--out", str(tmp_path / "run"),
                            "--set", "epochs=1", "--set", "compile=false", "--no-progress"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "pkg")])
    assert r.exit_code == 0, r.output
    pkg = load_package(tmp_path / "pkg")
    with open_store(f"lmdb://{tmp_path}/store", cap=pkg.long_len) as store:
        bulk_load_prepared(store, PreparedData(tmp_path / "data"))
        scorer = Scorer(pkg, store)
        user = str(imp["user_id"][0])
        web = scorer.score(user, ["1", "2"], context={"dev/ice": "web", "type": "a", "dev.ice": "x"}).logits
        ios = scorer.score(user, ["1", "2"], context={"dev/ice": "ios", "type": "a", "dev.ice": "x"}).logits
    assert web != ios  # the context reaches the model by its raw name
