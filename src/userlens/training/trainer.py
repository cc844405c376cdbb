"""The training loop: Adam(W) on BCE-with-logits, early stopping on validation AUC, best weights kept."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from userlens.data.loader import BatchLoader
from userlens.data.prepared import PreparedData
from userlens.layers.activation import compile_hot_layers
from userlens.metrics import evaluate_predictions
from userlens.models.registry import build_model
from userlens.models.spec import FeatureSpec
from userlens.training.checkpoint import METRICS, save_run
from userlens.training.config import RunConfig


@dataclass
class FitResult:
    best_epoch: int
    best_valid: dict[str, float]
    epochs_run: int
    train_samples_per_s: float  # steady state: epochs after the first (warm-up, compile), validation excluded
    train_samples_per_s_overall: float  # all epochs, first (with compile warm-up) included


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(),
        disable=not enabled, transient=False,
    )


@torch.inference_mode()
def predict(model: nn.Module, loader: BatchLoader) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probabilities, labels, user indices) over the loader, in sample order."""
    was_training = model.training
    model.eval()
    probs, labels, users = [], [], []
    order_users = np.asarray(loader.samples.user)
    seen = 0
    for batch in loader:
        probs.append(torch.sigmoid(model(batch)).numpy())
        labels.append(batch.label.numpy())
        users.append(order_users[seen : seen + len(batch)])
        seen += len(batch)
    model.train(was_training)
    if not probs:
        return np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64)
    return np.concatenate(probs), np.concatenate(labels), np.concatenate(users)


def fit(data: PreparedData, cfg: RunConfig, out: str | Path, *, show_progress: bool = True,
        log: Callable[[str], None] = print) -> FitResult:
    """Train ``cfg.model`` on ``data`` and write the run directory ``out``.

    Per epoch: one pass over shuffled training samples, validation AUC/GAUC/logloss
    appended to ``metrics.jsonl``. Stops after ``patience`` epochs without a better
    validation ``monitor`` (AUC, higher is better, or logloss, lower is better: a model
    can rank well while over-confident) and saves the best epoch's weights.
    """
    t = cfg.train
    t.check()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if t.threads:
        torch.set_num_threads(t.threads)
    seed_everything(t.seed)
    spec = FeatureSpec.from_meta(data.meta, content_dim=data.content_dim())
    model = build_model(cfg.model, spec, cfg.model_config)
    if t.compile:
        compile_hot_layers(model)
    limit = 1 if t.fast_dev_run else t.limit_batches
    train_loader = BatchLoader(data, "train", model.fields, t.batch_size, t.short_len, shuffle=True,
                               seed=t.seed, limit_batches=limit, prefetch=t.prefetch, long_len=t.long_len)
    valid_loader = BatchLoader(data, "valid", model.fields, t.eval_batch_size, t.short_len,
                               limit_batches=1 if t.fast_dev_run else None, prefetch=t.prefetch,
                               long_len=t.long_len)
    if len(train_loader.samples) == 0:
        raise ValueError(f"{data.path}: the train split is empty. Fix: prepare with a different split.")
    opt_cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    epochs = 1 if t.fast_dev_run else t.epochs
    (out / METRICS).write_text("")
    sign = 1.0 if t.monitor == "auc" else -1.0  # compare sign * metric, higher is better
    best_state, best_epoch, best_valid, best_score, bad = None, -1, {}, float("-inf"), 0
    timings: list[tuple[int, float]] = []  # (samples, seconds) per epoch
    epochs_run = 0
    with _progress(show_progress) as bar:
        for epoch in range(epochs):
            model.train()
            task = bar.add_task(f"epoch {epoch + 1}/{epochs}", total=len(train_loader), rate="", loss="")
            t0, seen, loss_sum = time.perf_counter(), 0, 0.0
            for step, batch in enumerate(train_loader):
                loss = loss_fn(model(batch), batch.label)
                aux = getattr(model, "auxiliary_loss", None)  # e.g. DIEN's next-behavior loss
                if aux is not None:
                    loss = loss + aux()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                seen += len(batch)
                loss_sum += loss.item() * len(batch)
                if step % 10 == 0 or step == len(train_loader) - 1:
                    rate = seen / max(time.perf_counter() - t0, 1e-9)
                    bar.update(task, completed=step + 1, rate=f"{rate:,.0f} samples/s", loss=f"{loss_sum / seen:.4f}")
            secs = time.perf_counter() - t0
            timings.append((seen, secs))
            epochs_run = epoch + 1
            probs, labels, users = predict(model, valid_loader)
            valid = evaluate_predictions(labels, probs, users) if len(labels) else {}
            row = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "train_samples": seen,
                   "train_seconds": round(secs, 3),
                   "train_samples_per_s": round(seen / max(secs, 1e-9), 1),
                   **{f"valid_{k}": v for k, v in valid.items()}}
            with open(out / METRICS, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            log(json.dumps(row))
            score = sign * valid.get(t.monitor, float("nan"))
            improved = not np.isnan(score) and score > best_score
            if improved or best_state is None or not valid:  # no validation split: keep the latest epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                best_epoch, best_valid, bad = epoch + 1, valid or {"auc": float("nan")}, 0
                best_score = score if not np.isnan(score) else float("-inf")
            else:
                bad += 1
                if bad > t.patience:
                    break
    save_run(out, model, cfg, spec, data.path, state=best_state)
    steady = timings[1:] or timings
    rate = sum(n for n, _ in steady) / max(sum(s for _, s in steady), 1e-9)
    overall = sum(n for n, _ in timings) / max(sum(s for _, s in timings), 1e-9)
    return FitResult(best_epoch, best_valid, epochs_run, rate, overall)
