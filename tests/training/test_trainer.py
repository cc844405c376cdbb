from __future__ import annotations

import json
import re

import numpy as np
import pytest
from safetensors.numpy import load_file

from userlens.data.prepared import PreparedData
from userlens.errors import ConfigError
from userlens.training.config import resolve_config
from userlens.training.evaluate import evaluate_run
from userlens.training.trainer import fit

FAST = {"epochs": 2, "batch_size": 128, "compile": False, "prefetch": 1}


def test_seeded_runs_reproduce_exactly(small_data: PreparedData, tmp_path) -> None:
    cfg = resolve_config("din", FAST)
    fit(small_data, cfg, tmp_path / "a", show_progress=False, log=lambda s: None)
    fit(small_data, cfg, tmp_path / "b", show_progress=False, log=lambda s: None)
    wa, wb = load_file(str(tmp_path / "a/model.safetensors")), load_file(str(tmp_path / "b/model.safetensors"))
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
    strip = lambda p: [{k: v for k, v in json.loads(l).items() if "second" not in k and "per_s" not in k}  # noqa: E731
                       for l in p.read_text().splitlines()]
    assert strip(tmp_path / "a/metrics.jsonl") == strip(tmp_path / "b/metrics.jsonl")
    other = resolve_config("din", {**FAST, "seed": 7})
    fit(small_data, other, tmp_path / "c", show_progress=False, log=lambda s: None)
    wc = load_file(str(tmp_path / "c/model.safetensors"))
    assert not all(np.array_equal(wa[k], wc[k]) for k in wa)


def test_best_epoch_weights_are_kept(small_data: PreparedData, tmp_path) -> None:
    cfg = resolve_config("avgpool", {**FAST, "epochs": 4, "lr": 0.05, "patience": 5})
    res = fit(small_data, cfg, tmp_path, show_progress=False, log=lambda s: None)
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and {"train_loss", "valid_auc", "valid_gauc", "valid_logloss"} <= rows[0].keys()
    best = max(rows, key=lambda r: r["valid_auc"])
    assert res.best_epoch == best["epoch"]
    # the saved weights are the best epoch's, not the last one's
    again = evaluate_run(tmp_path, split="valid")
    assert again["auc"] == pytest.approx(best["valid_auc"], abs=1e-9)


def test_monitor_logloss_keeps_the_lowest_logloss_epoch(small_data: PreparedData, tmp_path) -> None:
    # a high learning rate makes the model over-confident: logloss turns up while AUC may still rise
    cfg = resolve_config("avgpool", {**FAST, "epochs": 6, "lr": 0.3, "patience": 6, "monitor": "logloss"})
    res = fit(small_data, cfg, tmp_path, show_progress=False, log=lambda s: None)
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    best = min(rows, key=lambda r: r["valid_logloss"])
    assert res.best_epoch == best["epoch"]
    assert evaluate_run(tmp_path, split="valid")["logloss"] == pytest.approx(best["valid_logloss"], abs=1e-9)
    with pytest.raises(ConfigError, match=re.escape("monitor must be one of ['auc', 'logloss'], got 'gauc'")):
        resolve_config("avgpool", {"monitor": "gauc"}).train.check()


def test_early_stopping_and_debug_switches(small_data: PreparedData, tmp_path) -> None:
    res = fit(small_data, resolve_config("din", {**FAST, "fast_dev_run": True}), tmp_path / "f",
              show_progress=False, log=lambda s: None)
    assert res.epochs_run == 1
    row = json.loads((tmp_path / "f/metrics.jsonl").read_text())
    assert row["train_samples"] == 128  # one batch
    assert row["valid_n"] == min(8192, len(small_data.samples("valid")))
    fit(small_data, resolve_config("din", {**FAST, "limit_batches": 2, "epochs": 1}), tmp_path / "l",
        show_progress=False, log=lambda s: None)
    assert json.loads((tmp_path / "l/metrics.jsonl").read_text())["train_samples"] == 256
    res = fit(small_data, resolve_config("avgpool", {**FAST, "epochs": 30, "lr": 0.3, "patience": 0}),
              tmp_path / "e", show_progress=False, log=lambda s: None)
    assert res.epochs_run < 30  # stopped on the first non-improving epoch


def test_evaluate_writes_predictions(small_data: PreparedData, tmp_path) -> None:
    fit(small_data, resolve_config("avgpool", FAST), tmp_path, show_progress=False, log=lambda s: None)
    res = evaluate_run(tmp_path, split="test", predictions=tmp_path / "pred.parquet")
    import polars as pl

    pred = pl.read_parquet(tmp_path / "pred.parquet")
    assert pred.height == res["n"] == len(small_data.samples("test"))
    assert set(pred.columns) == {"user_id", "item_id", "time_ms", "label", "score"}
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(pred["label"], pred["score"]) == pytest.approx(res["auc"], abs=1e-6)
