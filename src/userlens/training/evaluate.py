"""``userlens evaluate``: score a split with a trained run; optionally write per-sample predictions."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl
from torch import nn

from userlens.artifacts import inside_artifact, output_errors, refuse_file_parent, refuse_link
from userlens.data.loader import BatchLoader
from userlens.errors import InputError
from userlens.data.prepared import PreparedData
from userlens.metrics import evaluate_predictions, sigmoid
from userlens.training.checkpoint import data_for_run, load_run
from userlens.training.distributed import DEFAULT_TIMEOUT_S, World, process_group, share_outcome
from userlens.training.trainer import logloss_note, predict_split


PREDICTION_FORMATS = (".parquet", ".csv")


def evaluate_run(run_dir: str | Path, data_dir: str | Path | None = None, split: str = "test",
                 predictions: str | Path | None = None, dist_timeout: float = DEFAULT_TIMEOUT_S
                 ) -> dict[str, float | int | str | None]:
    """Metrics (``auc``, ``gauc``, ``logloss``, ``n``) of the run's best weights on ``split``.

    A metric that the split makes undefined (AUC with one class only, GAUC when no user has both
    labels) is ``None`` with the reason under ``notes``: JSON has no NaN. A model whose score only ranks
    (``calibrated = False``: the zero-parameter baselines) gets a note that its logloss means nothing. An
    empty split, or data with other vocabularies than the run's, is refused.

    ``predictions`` (a ``.parquet`` or ``.csv`` path) receives one row per sample:
    raw user and item ids, time (epoch ms), label, ``score`` (probability, float64
    sigmoid of the logit) and ``logit`` (what AUC ranks: probabilities saturate).

    Under ``torchrun`` each rank scores a contiguous block of the split and rank 0 computes the metrics
    (and writes ``predictions``) from every sample's exact (logit, label, user), in order; every rank
    returns them (:mod:`userlens.training.distributed`).
    """
    run_dir = Path(run_dir)
    if predictions is not None:
        _check_predictions_path(Path(predictions))
    model, cfg, doc = load_run(run_dir)
    data = data_for_run(run_dir, doc, data_dir, model.fields)
    if len(data.samples(split)) == 0:
        raise InputError(f"{data.path}: the {split} split is empty; there is nothing to evaluate. Fix: choose "
                         "another --split, or prepare with a non-empty one.")
    world = World.from_env()
    with process_group(world, dist_timeout):
        loader = BatchLoader(data, split, model.fields, cfg.train.eval_batch_size, cfg.train.short_len,
                             prefetch=cfg.train.prefetch, long_len=cfg.train.long_len, rank=world.rank,
                             world_size=world.size)
        gathered = predict_split(model, loader, world)  # every sample once, in order, on rank 0
        return share_outcome(lambda: _report(gathered, run_dir, model, cfg.model, data, split, predictions),
                             world, f"evaluating {split}")


def _report(gathered: tuple[np.ndarray, ...] | None, run_dir: Path, model: nn.Module, name: str,
            data: PreparedData, split: str, predictions: str | Path | None) -> dict:
    """Metrics and notes of the scored split, and the predictions file when asked (rank 0 under torchrun)."""
    assert gathered is not None
    logits, labels, users = gathered
    try:
        result: dict = evaluate_predictions(labels, logits, users)
    except ValueError as e:
        raise InputError(f"{run_dir}: {e}. Fix: the weights produce non-finite scores; retrain (lower lr).") from None
    notes = []
    if result["auc"] is None or result["auc"] != result["auc"]:
        result["auc"] = None
        notes.append(f"auc is undefined: the {split} split has only label {int(labels[0])}")
    if result["gauc"] is None or result["gauc"] != result["gauc"]:
        result["gauc"] = None
        notes.append("gauc is undefined: no user has both a positive and a negative sample")
    if (note := logloss_note(model, name)) is not None:
        notes.append(note)
    if notes:
        result["notes"] = notes
    if predictions is not None:
        s = data.samples(split)
        frame = pl.DataFrame({
            "user_id": data.vocab("user")["raw"].gather(np.asarray(s.user) - 2),
            "item_id": _raw_items(data, np.asarray(s.item)),
            "time_ms": np.asarray(s.time), "label": np.asarray(s.label),
            "score": sigmoid(logits), "logit": logits,
        })
        p = Path(predictions)
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
        with output_errors(p, tmp):
            p.parent.mkdir(parents=True, exist_ok=True)
            frame.write_csv(tmp) if p.suffix.lower() == ".csv" else frame.write_parquet(tmp)
            tmp.replace(p)
    return result


# directories userlens writes and verifies as a whole: a loose file inside one would replace or join its files
ARTIFACT_MARKERS = (("meta.json", "vocab"), ("config.json", "model.safetensors"), ("package.json", "model.safetensors"),
                    ("checkpoint.json", "checkpoint.safetensors"))


def _check_predictions_path(p: Path) -> None:
    """A predictions path must be a new or plain file outside every prepared, run and package directory."""
    if p.suffix.lower() not in PREDICTION_FORMATS:
        raise InputError(f"{p}: unknown predictions format {p.suffix!r}. Fix: end the path with one of "
                         f"{list(PREDICTION_FORMATS)}.")
    refuse_link(p)
    refuse_file_parent(p)
    if p.is_dir():
        raise InputError(f"{p}: is a directory. Fix: pass a file path for --predictions, e.g. {p / 'predictions'}"
                         f"{p.suffix}.")
    owner = inside_artifact(p, ARTIFACT_MARKERS)
    if owner is not None:
        raise InputError(f"{p}: is inside {owner}, a directory userlens wrote and verifies (a file written there "
                         "could replace one of its files). Fix: write --predictions outside it.")


def _raw_items(data: PreparedData, idx: np.ndarray) -> pl.Series:
    raw = data.vocab("item")["raw"]
    return raw.gather(np.maximum(idx - 2, 0))  # items are all in the vocabulary (index >= 2)
