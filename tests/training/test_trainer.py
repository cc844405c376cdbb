from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from torch import nn

from userlens.data.loader import BatchLoader
from userlens.data.prepared import PreparedData
from userlens.errors import ConfigError, InputError
from userlens.training.config import resolve_config
from userlens.training.evaluate import evaluate_run
from userlens.models.registry import build_model
from userlens.training.trainer import fit, predict, training_loss

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


@pytest.mark.parametrize("deterministic", [True, False])
def test_fit_trains_with_deterministic_algorithms_and_restores_the_setting(small_data: PreparedData, tmp_path,
                                                                         monkeypatch, deterministic: bool) -> None:
    """Parallel atomic adds in index backward made seeded runs differ by ~1e-7 under load (seed_everything)."""
    import userlens.training.trainer as trainer

    seen: list[bool] = []
    real = trainer.training_loss

    def spy(model, batch):  # type: ignore[no-untyped-def]
        seen.append(torch.are_deterministic_algorithms_enabled())
        return real(model, batch)

    monkeypatch.setattr(trainer, "training_loss", spy)
    assert not torch.are_deterministic_algorithms_enabled()
    cfg = resolve_config("avgpool", {**FAST, "epochs": 1, "limit_batches": 2, "deterministic": deterministic})
    fit(small_data, cfg, tmp_path, show_progress=False, log=lambda s: None)
    assert seen == [deterministic] * 2
    assert not torch.are_deterministic_algorithms_enabled()  # the caller's setting is back


def _script_monitor(monkeypatch, aucs: list[float]) -> list[dict]:
    """Make epoch k's validation AUC ``aucs[k]`` (logloss = 1 − AUC); returns the list of states seen per epoch."""
    import userlens.training.trainer as trainer

    seq = iter(aucs)
    states: list[dict] = []
    real_predict = trainer.predict

    def predict(model, loader, on_batch=None):  # type: ignore[no-untyped-def]
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})  # the weights validated
        return real_predict(model, loader, on_batch)

    def scripted(labels, logits, users):  # type: ignore[no-untyped-def]
        a = next(seq)
        return {"auc": a, "gauc": a, "logloss": 1.0 - a, "n": len(labels)}

    monkeypatch.setattr(trainer, "predict", predict)
    monkeypatch.setattr(trainer, "evaluate_predictions", scripted)
    return states


def test_best_epoch_weights_are_kept(small_data: PreparedData, tmp_path, monkeypatch) -> None:
    states = _script_monitor(monkeypatch, [0.60, 0.80, 0.70, 0.75])  # best is epoch 2 of 4
    cfg = resolve_config("avgpool", {**FAST, "epochs": 4, "lr": 0.05, "patience": 5, "limit_batches": 2})
    res = fit(small_data, cfg, tmp_path, show_progress=False, log=lambda s: None)
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4 == len(states)
    assert {"train_loss", "valid_auc", "valid_gauc", "valid_logloss"} <= rows[0].keys()
    assert res.best_epoch == 2 and res.epochs_run == 4 and res.best_valid["auc"] == 0.80
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert saved.keys() == states[1].keys()
    assert all(np.array_equal(saved[k], states[1][k].numpy()) for k in saved)  # epoch 2's weights ...
    assert not all(np.array_equal(saved[k], states[3][k].numpy()) for k in saved)  # ... not the last epoch's


def test_best_weights_are_what_evaluate_scores(small_data: PreparedData, tmp_path) -> None:
    cfg = resolve_config("avgpool", {**FAST, "epochs": 3, "lr": 0.05, "patience": 5})
    res = fit(small_data, cfg, tmp_path, show_progress=False, log=lambda s: None)
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    best = max(rows, key=lambda r: r["valid_auc"])
    assert res.best_epoch == best["epoch"]
    assert evaluate_run(tmp_path, split="valid")["auc"] == pytest.approx(best["valid_auc"], abs=1e-9)


@pytest.mark.parametrize(("aucs", "patience", "stops_after"), [
    ([0.6, 0.7, 0.65, 0.66, 0.9, 0.95], 1, 3),  # the first epoch not better than 0.7 stops training
    ([0.6, 0.7, 0.65, 0.66, 0.9, 0.95], 2, 4),  # two in a row
    ([0.6, 0.5, 0.7, 0.65, 0.64, 0.99], 2, 5),  # an improvement (epoch 3) resets the count
    ([0.6, 0.6, 0.9, 0.95], 1, 2),  # equal is not better
])
def test_patience_counts_consecutive_epochs_without_improvement(small_data: PreparedData, tmp_path, monkeypatch,
                                                                aucs: list[float], patience: int,
                                                                stops_after: int) -> None:
    _script_monitor(monkeypatch, aucs)
    cfg = resolve_config("avgpool", {**FAST, "epochs": len(aucs), "patience": patience, "limit_batches": 1})
    res = fit(small_data, cfg, tmp_path, show_progress=False, log=lambda s: None)
    assert res.epochs_run == stops_after
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == stops_after
    assert res.best_valid["auc"] == max(aucs[:stops_after])


def test_patience_with_monitor_logloss(small_data: PreparedData, tmp_path, monkeypatch) -> None:
    _script_monitor(monkeypatch, [0.6, 0.7, 0.65, 0.9])  # logloss 0.4, 0.3, 0.35 (worse): stop
    cfg = resolve_config("avgpool", {**FAST, "epochs": 4, "patience": 1, "limit_batches": 1, "monitor": "logloss"})
    res = fit(small_data, cfg, tmp_path, show_progress=False, log=lambda s: None)
    assert (res.epochs_run, res.best_epoch) == (3, 2)


def test_patience_must_be_at_least_one() -> None:
    with pytest.raises(ConfigError, match=r"patience must be >= 1 \(stop after that many consecutive epochs.*got 0"):
        resolve_config("din", {"patience": 0})
    assert resolve_config("din", {"patience": 1}).train.patience == 1


def test_runs_saved_with_patience_zero_still_load(small_data: PreparedData, tmp_path) -> None:
    fit(small_data, resolve_config("popularity", FAST), tmp_path, show_progress=False, log=lambda s: None)
    doc = json.loads((tmp_path / "config.json").read_text())
    doc["train"]["patience"] = 0  # the old spelling of "stop on the first bad epoch"
    for newer in ("manifest_checksum", "inputs"):  # an old run has neither
        del doc[newer]
    (tmp_path / "config.json").write_text(json.dumps(doc))
    assert evaluate_run(tmp_path, split="valid")["n"] == len(small_data.samples("valid"))


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


def test_debug_switches(small_data: PreparedData, tmp_path) -> None:
    res = fit(small_data, resolve_config("din", {**FAST, "fast_dev_run": True}), tmp_path / "f",
              show_progress=False, log=lambda s: None)
    assert res.epochs_run == 1
    row = json.loads((tmp_path / "f/metrics.jsonl").read_text())
    assert row["train_samples"] == 128  # one batch
    assert row["valid_n"] == min(8192, len(small_data.samples("valid")))
    fit(small_data, resolve_config("din", {**FAST, "limit_batches": 2, "epochs": 1}), tmp_path / "l",
        show_progress=False, log=lambda s: None)
    assert json.loads((tmp_path / "l/metrics.jsonl").read_text())["train_samples"] == 256


def test_evaluate_writes_predictions(small_data: PreparedData, tmp_path) -> None:
    fit(small_data, resolve_config("avgpool", FAST), tmp_path / "run", show_progress=False, log=lambda s: None)
    res = evaluate_run(tmp_path / "run", split="test", predictions=tmp_path / "pred.parquet")
    import polars as pl

    pred = pl.read_parquet(tmp_path / "pred.parquet")
    assert pred.height == res["n"] == len(small_data.samples("test"))
    assert set(pred.columns) == {"user_id", "item_id", "time_ms", "label", "score", "logit"}
    assert pred["score"].dtype == pl.Float64
    logit = pred["logit"].to_numpy().astype(np.float64)
    np.testing.assert_allclose(pred["score"].to_numpy(), 1 / (1 + np.exp(-logit)), rtol=1e-12)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(pred["label"], pred["logit"]) == pytest.approx(res["auc"], abs=1e-12)


class _Saturated(nn.Module):
    """Logits 20 + item / 100: every float32 sigmoid is exactly 1.0, but the logits are distinct."""

    fields = frozenset({"target_item"})

    def forward(self, batch):  # type: ignore[no-untyped-def]
        return 20.0 + batch.target["target_item"].to(torch.float32) / 100


def test_metrics_rank_logits_not_saturated_probabilities(small_data: PreparedData) -> None:
    from sklearn.metrics import roc_auc_score

    from userlens.data.loader import BatchLoader
    from userlens.metrics import evaluate_predictions

    loader = BatchLoader(small_data, "valid", {"target_item"}, batch_size=64, prefetch=0)
    logits, labels, users = predict(_Saturated(), loader)
    assert (torch.sigmoid(torch.from_numpy(logits)) == 1.0).all()  # float32 probabilities would all tie
    got = evaluate_predictions(labels, logits, users)
    want = roc_auc_score(labels, logits)
    assert abs(want - 0.5) > 0.01 and got["auc"] == pytest.approx(want, abs=1e-12)


# --------------------------------------------------------------------------- forward_train


class _WithExtraLoss(nn.Module):
    """avgpool plus a parameter that only a named extra loss term (from forward_train) reaches."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base, self.fields = base, base.fields
        self.only_in_extra = nn.Parameter(torch.tensor(3.0))
        self.scored = 0

    def forward(self, batch):  # type: ignore[no-untyped-def]
        self.scored += 1
        return self.base(batch)

    def forward_train(self, batch):  # type: ignore[no-untyped-def]
        return self.base(batch), {"pull": 0.5 * self.only_in_extra.square()}

    def auxiliary_loss(self):  # type: ignore[no-untyped-def]  # the removed hook: must not be called
        raise AssertionError("the trainer must not call auxiliary_loss any more")


def test_forward_train_extra_terms_are_added_to_the_loss(small_data: PreparedData, tmp_path, monkeypatch) -> None:
    import userlens.training.trainer as trainer

    made: list[_WithExtraLoss] = []

    def build(name, spec, cfg):  # type: ignore[no-untyped-def]
        made.append(_WithExtraLoss(build_model(name, spec, cfg)))
        return made[-1]

    monkeypatch.setattr(trainer, "build_model", build)
    cfg = resolve_config("avgpool", {**FAST, "epochs": 1, "limit_batches": 3, "lr": 0.1})
    fit(small_data, cfg, tmp_path, show_progress=False, log=lambda s: None)
    model = made[0]
    assert model.only_in_extra.item() < 3.0 - 0.2  # Adam moved it: the extra term was in the loss
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert 0 < row["train_extra_pull"] <= 0.5 * 9  # logged per epoch (mean over samples)
    assert row["train_loss"] > row["train_extra_pull"]  # BCE + extra
    assert model.scored == len(BatchLoader(small_data, "valid", model.fields, cfg.train.eval_batch_size))


def test_training_loss_is_bce_plus_the_extra_terms() -> None:
    from userlens.batch import Batch, History

    class Two(nn.Module):
        def forward(self, batch):  # type: ignore[no-untyped-def]
            raise AssertionError("forward_train must be used in training")

        def forward_train(self, batch):  # type: ignore[no-untyped-def]
            return torch.tensor([0.0, 2.0]), {"a": torch.tensor(0.25), "b": torch.tensor(1.0)}

    batch = Batch({}, History({}, torch.tensor([0, 0])), torch.tensor([1.0, 0.0]))
    loss, extra = training_loss(Two(), batch)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor([0.0, 2.0]), batch.label)
    assert set(extra) == {"a", "b"} and loss.item() == pytest.approx(bce.item() + 1.25)

    class Bad(nn.Module):
        def forward_train(self, batch):  # type: ignore[no-untyped-def]
            return torch.zeros(2)

    with pytest.raises(TypeError, match=r"Bad.forward_train must return \(logits, dict of loss terms\)"):
        training_loss(Bad(), batch)


def test_non_finite_validation_logits_stop_training_with_a_clear_error(small_data: PreparedData, tmp_path,
                                                                       monkeypatch) -> None:
    import userlens.training.trainer as trainer

    class Diverged(nn.Module):
        def __init__(self, base: nn.Module) -> None:
            super().__init__()
            self.base, self.fields = base, base.fields

        def forward(self, batch):  # type: ignore[no-untyped-def]
            out = self.base(batch)
            return out if self.training else out * float("nan")

    monkeypatch.setattr(trainer, "build_model", lambda n, s, c: Diverged(build_model(n, s, c)))
    with pytest.raises(ValueError, match=r"validation after epoch 1: logits contain \d+ NaN/inf"):
        fit(small_data, resolve_config("avgpool", {**FAST, "limit_batches": 1}), tmp_path, show_progress=False,
            log=lambda s: None)


# --------------------------------------------------------------------------- zero-parameter models


@pytest.mark.parametrize("name", ["popularity", "history_match"])
def test_parameter_free_models_are_evaluated_not_trained(small_data: PreparedData, tmp_path, name: str) -> None:
    lines: list[str] = []
    res = fit(small_data, resolve_config(name, FAST), tmp_path, show_progress=False, log=lines.append)
    assert (res.epochs_run, res.best_epoch) == (0, 0)
    [row] = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert row["epoch"] == 0 and row["evaluation_only"] is True and row["train_samples"] == 0
    assert load_file(str(tmp_path / "model.safetensors")) == {}  # no parameters, no buffers
    again = evaluate_run(tmp_path, split="valid")
    assert again["auc"] == row["valid_auc"] == res.best_valid["auc"] and again["auc"] > 0.5
    # a ranking score, not a probability: the logloss beside it is flagged where it is shown
    said = f"logloss is not meaningful for {name}"
    assert any(x.startswith(f"note: {said}") for x in lines), lines
    assert again["logloss"] is not None and any(n.startswith(said) for n in again["notes"]), again
    assert evaluate_run(tmp_path, split="test")["n"] == len(small_data.samples("test"))


def test_content_models_say_when_they_train_without_content(small_data: PreparedData, tmp_path) -> None:
    lines: list[str] = []
    fit(small_data, resolve_config("muse", {**FAST, "epochs": 1, "limit_batches": 1}), tmp_path / "m",
        show_progress=False, log=lines.append)
    assert any("muse trains without item content vectors" in x and "embed-items" in x for x in lines)
    assert json.loads((tmp_path / "m" / "config.json").read_text())["content_vectors"] is False
    lines.clear()
    fit(small_data, resolve_config("din", {**FAST, "epochs": 1, "limit_batches": 1}), tmp_path / "d",
        show_progress=False, log=lines.append)
    assert not any("content vectors" in x for x in lines)


def test_a_run_whose_swap_died_halfway_is_restored_not_deleted(small_data: PreparedData, tmp_path) -> None:
    """Killed between swap_in's renames, a finished run sits at `.run.old-PID` and `run` is missing.

    The next `train` puts it back and refuses to overwrite it without force, like any finished run (it
    used to delete it as litter, then train into an empty place).
    """
    cfg = resolve_config("din", {**FAST, "epochs": 1})
    fit(small_data, cfg, tmp_path / "run", show_progress=False, log=lambda s: None)
    weights = (tmp_path / "run" / "model.safetensors").read_bytes()
    (tmp_path / "run").rename(tmp_path / ".run.old-999999")
    with pytest.raises(InputError, match="force"):
        fit(small_data, cfg, tmp_path / "run", show_progress=False, log=lambda s: None)
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == weights
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".run")) == []
