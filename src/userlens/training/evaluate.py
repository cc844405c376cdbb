"""``userlens evaluate``: score a split with a trained run; optionally write per-sample predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from userlens.data.loader import BatchLoader
from userlens.errors import InputError
from userlens.data.prepared import PreparedData
from userlens.metrics import evaluate_predictions, sigmoid
from userlens.training.checkpoint import load_run
from userlens.training.trainer import logloss_note, predict


PREDICTION_FORMATS = (".parquet", ".csv")


def _data_for(run_dir: Path, doc: dict, data_dir: str | Path | None) -> PreparedData:
    """The prepared data to score: ``data_dir`` or the run's own, refused unless its fingerprint matches."""
    if data_dir is None and not Path(doc["data_dir"]).is_dir():
        raise InputError(f"{run_dir}: the prepared directory it was trained on ({doc['data_dir']}) is gone or "
                         "moved. Fix: pass --data DIR (that directory, or one prepared identically).")
    data = PreparedData(data_dir or doc["data_dir"])
    if data.fingerprint != doc.get("data_fingerprint"):
        raise InputError(f"{data.path}: its vocabularies (fingerprint {data.fingerprint[:19]}…) are not those "
                         f"{run_dir} was trained on ({str(doc.get('data_fingerprint'))[:19]}…): ids would mean "
                         "other users and items. Fix: evaluate on the prepared directory the run was trained on "
                         "(or one prepared from the same files with the same options), or retrain.")
    return data


def evaluate_run(run_dir: str | Path, data_dir: str | Path | None = None, split: str = "test",
                 predictions: str | Path | None = None) -> dict[str, float | int | str | None]:
    """Metrics (``auc``, ``gauc``, ``logloss``, ``n``) of the run's best weights on ``split``.

    A metric that the split makes undefined (AUC with one class only, GAUC when no user has both
    labels) is ``None`` with the reason under ``notes``: JSON has no NaN. A model whose score only ranks
    (``calibrated = False``: the zero-parameter baselines) gets a note that its logloss means nothing. An
    empty split, or data with other vocabularies than the run's, is refused.

    ``predictions`` (a ``.parquet`` or ``.csv`` path) receives one row per sample:
    raw user and item ids, time (epoch ms), label, ``score`` (probability, float64
    sigmoid of the logit) and ``logit`` (what AUC ranks: probabilities saturate).
    """
    run_dir = Path(run_dir)
    if predictions is not None and Path(predictions).suffix.lower() not in PREDICTION_FORMATS:
        raise InputError(f"{predictions}: unknown predictions format {Path(predictions).suffix!r}. Fix: end the "
                         f"path with one of {list(PREDICTION_FORMATS)}.")
    model, cfg, doc = load_run(run_dir)
    data = _data_for(run_dir, doc, data_dir)
    if len(data.samples(split)) == 0:
        raise InputError(f"{data.path}: the {split} split is empty; there is nothing to evaluate. Fix: choose "
                         "another --split, or prepare with a non-empty one.")
    loader = BatchLoader(data, split, model.fields, cfg.train.eval_batch_size, cfg.train.short_len,
                         prefetch=cfg.train.prefetch, long_len=cfg.train.long_len)
    logits, labels, users = predict(model, loader)
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
    if (note := logloss_note(model, cfg.model)) is not None:
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
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp")
        frame.write_csv(tmp) if p.suffix.lower() == ".csv" else frame.write_parquet(tmp)
        tmp.replace(p)
    return result


def _raw_items(data: PreparedData, idx: np.ndarray) -> pl.Series:
    raw = data.vocab("item")["raw"]
    return raw.gather(np.maximum(idx - 2, 0))  # items are all in the vocabulary (index >= 2)
