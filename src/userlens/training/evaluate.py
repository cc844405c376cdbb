"""``userlens evaluate``: score a split with a trained run; optionally write per-sample predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from userlens.data.loader import BatchLoader
from userlens.data.prepared import PreparedData
from userlens.metrics import evaluate_predictions, sigmoid
from userlens.training.checkpoint import load_run
from userlens.training.trainer import predict


def evaluate_run(run_dir: str | Path, data_dir: str | Path | None = None, split: str = "test",
                 predictions: str | Path | None = None) -> dict[str, float]:
    """Metrics (``auc``, ``gauc``, ``logloss``, ``n``) of the run's best weights on ``split``.

    ``predictions`` (a ``.parquet`` or ``.csv`` path) receives one row per sample:
    raw user and item ids, time (epoch ms), label, ``score`` (probability, float64
    sigmoid of the logit) and ``logit`` (what AUC ranks: probabilities saturate).
    """
    model, cfg, doc = load_run(run_dir)
    data = PreparedData(data_dir or doc["data_dir"])
    loader = BatchLoader(data, split, model.fields, cfg.train.eval_batch_size, cfg.train.short_len,
                         prefetch=cfg.train.prefetch, long_len=cfg.train.long_len)
    logits, labels, users = predict(model, loader)
    result = evaluate_predictions(labels, logits, users)
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
        frame.write_csv(p) if p.suffix == ".csv" else frame.write_parquet(p)
    return result


def _raw_items(data: PreparedData, idx: np.ndarray) -> pl.Series:
    raw = data.vocab("item")["raw"]
    return raw.gather(np.maximum(idx - 2, 0))  # items are all in the vocabulary (index >= 2)
