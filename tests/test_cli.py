"""The CLI contract of DESIGN §6, end to end on a tiny generated log."""

from __future__ import annotations

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from userlens.cli import app
from userlens.synthetic import planted_interest_log

runner = CliRunner()


def _prepared(tmp_path: Path, items: bool = True) -> Path:
    """A tiny generated log (with impressions) prepared by the CLI into tmp_path/data."""
    p = planted_interest_log(n_users=60, n_items=100, n_categories=10, behaviors_per_user=40,
                             impressions_per_user=10, seed=1).write(tmp_path / "raw")
    r = runner.invoke(app, ["prepare", "--behaviors", str(p["behaviors"]), "--impressions", str(p["impressions"]),
                            *(["--items", str(p["items"])] if items else []), "--out", str(tmp_path / "data")])
    assert r.exit_code == 0, r.output
    return tmp_path / "data"


def test_models_lists_registered() -> None:
    r = runner.invoke(app, ["models"])
    assert r.exit_code == 0
    names = [line.split()[0] for line in r.output.splitlines() if line.strip()]
    assert "avgpool" in names and "din" in names


def test_models_listing_is_aligned_on_the_longest_name() -> None:
    from userlens.models import list_models

    lines = runner.invoke(app, ["models"]).output.splitlines()
    entries = list_models()
    assert len(lines) == len(entries)
    starts = {line.index(e.summary) for line, e in zip(lines, entries)}
    assert starts == {max(len(e.name) for e in entries) + 2}, lines  # history_match (13) fits too


def test_models_name_lists_its_config_keys_with_defaults() -> None:
    from userlens.models import get_model

    r = runner.invoke(app, ["models", "sdim"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    for key, default in (("rounds", "8"), ("normalize", "per_round"), ("mlp", "200,80"), ("epochs", "10"),
                         ("threads", "none")):
        assert any(line.split()[:2] == [key, default] for line in lines), (key, lines)
    assert get_model("sdim").summary in lines[0]
    r = runner.invoke(app, ["models", "simhard"])
    assert r.exit_code == 1 and "Did you mean 'sim_hard'?" in r.output


def test_prepare_help_lists_every_format() -> None:
    from userlens.data.adapters import ADAPTERS

    out = runner.invoke(app, ["prepare", "--help"], env={"COLUMNS": "80"}).output
    words = set(re.findall(r"[a-z]+", out))
    assert set(ADAPTERS) <= words, out  # a|b|c was cropped to "movielens|amazon|taob…" at 80 columns


def test_train_help_lists_the_training_keys_with_defaults() -> None:
    from userlens.training.keys import train_keys

    out = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "100"}).output
    for k in train_keys():
        assert re.search(rf"\b{k.name}\s+{re.escape(k.default)}\s", out), (k, out)
    assert "userlens models NAME" in out


def test_prepare_train_evaluate(tmp_path: Path) -> None:
    _prepared(tmp_path)
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
    _prepared(tmp_path, items=False)
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


def test_final_samples_per_second_is_the_figure_of_metrics_jsonl(tmp_path: Path) -> None:
    """One figure for a run: all epochs (the first included), Σ train_samples / Σ train_seconds of metrics.jsonl."""
    _prepared(tmp_path, items=False)
    r = runner.invoke(app, ["train", str(tmp_path / "data"), "--model", "avgpool", "--out", str(tmp_path / "run"),
                            "--set", "epochs=3", "--set", "batch_size=16", "--set", "patience=5", "--no-progress"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    rate = sum(x["train_samples"] for x in rows) / sum(x["train_seconds"] for x in rows)
    last = r.stderr.strip().splitlines()[-1]
    assert f"; {rate:,.0f} train samples/s over all 3 epoch(s) " in last, (last, rows)


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
