"""The training loop: Adam(W) on BCE-with-logits, early stopping on validation AUC, best weights kept.

A model may define ``forward_train(batch) -> (logits (B,), {name: loss term})``:
training then uses it and adds the sum of the (already weighted) extra terms to
the BCE, e.g. DIEN's auxiliary next-behavior loss; ``forward`` stays pure
scoring. A model without trainable parameters (``popularity``, ``history_match``)
is not optimised: :func:`fit` validates it once and saves the run.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor, nn

from userlens.batch import Batch
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
    """Seed Python, NumPy and torch (initialisation, dropout); the loader shuffles with its own seed.

    Seeding alone does not make two runs equal. With more than one intra-op thread,
    the backward of advanced indexing (``x[rows]``, e.g. the target gathered per
    behavior in target attention) is ``index_put_(accumulate=True)``, which torch
    runs on CPU with parallel atomic float adds: their order, hence the rounding,
    depends on thread timing, so it varies more under CPU load. Measured on the
    2-core dev machine (torch 2.13 CPU, DIN, 120 users, 2 epochs, identical seeds,
    same process): max |Δweight| 0.5–1.9e-7, max |Δlogit| 3–6e-8, |ΔAUC| up to
    3.5e-5, in most pairs of runs; one thread, or deterministic algorithms, gave
    bitwise-equal runs every time. Neither torch.compile (the drift shows with
    ``compile=False``), MKL_DYNAMIC, OMP_DYNAMIC nor MKL_CBWR changed it.

    So :func:`fit` also turns on ``torch.use_deterministic_algorithms`` while it
    runs (``TrainConfig.deterministic``, default on; the previous setting is
    restored): the accumulation becomes a sorted, serial scatter. On CPU this cost
    nothing measurable (0.8–1.1× step time over din, avgpool, dien, sim_soft, sdim,
    twin). Reproduce: ``benchmarks/seed_drift.py`` (see its docstring).
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """Turn torch's deterministic algorithms on for the block (``enabled``), then restore the previous setting.

    ``warn_only``: an op without a deterministic implementation warns rather than
    stopping training (none of the registered models has one on CPU).
    """
    if not enabled:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def training_loss(model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
    """(loss to minimise, the model's extra loss terms) of one training batch.

    ``loss = BCE(logits, label) + Σ extra``, where ``logits, extra = model.forward_train(batch)``
    when the model defines it (terms already weighted, e.g. DIEN's auxiliary loss),
    else ``model(batch), {}``.
    """
    train_step = getattr(model, "forward_train", None)
    if train_step is None:
        logits, extra = model(batch), {}
    else:
        out = train_step(batch)
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict)):
            raise TypeError(f"{type(model).__name__}.forward_train must return (logits, dict of loss terms), "
                            f"got {type(out).__name__}")
        logits, extra = out
    loss = F.binary_cross_entropy_with_logits(logits, batch.label)
    for term in extra.values():
        loss = loss + term
    return loss, extra


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(),
        disable=not enabled, transient=False,
    )


@torch.inference_mode()
def predict(model: nn.Module, loader: BatchLoader) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits, labels, user indices) over the loader, in sample order.

    Logits, not probabilities: a float32 sigmoid saturates to exactly 1.0 above
    ~17 and would tie distinct scores; metrics rank the logits and take the
    float64 sigmoid for logloss (:func:`userlens.metrics.evaluate_predictions`).
    """
    was_training = model.training
    model.eval()
    logits, labels, users = [], [], []
    order_users = np.asarray(loader.samples.user)
    seen = 0
    for batch in loader:
        logits.append(model(batch).numpy())
        labels.append(batch.label.numpy())
        users.append(order_users[seen : seen + len(batch)])
        seen += len(batch)
    model.train(was_training)
    if not logits:
        return np.zeros(0, dtype=np.float32), np.zeros(0), np.zeros(0, dtype=np.int64)
    return np.concatenate(logits), np.concatenate(labels), np.concatenate(users)


def _validate(model: nn.Module, loader: BatchLoader, epoch: int) -> dict[str, float]:
    """Validation metrics after ``epoch`` ({} without validation samples); non-finite logits raise."""
    logits, labels, users = predict(model, loader)
    if not len(labels):
        return {}
    try:
        return evaluate_predictions(labels, logits, users)
    except ValueError as e:
        raise ValueError(f"validation after epoch {epoch}: {e}") from None


def fit(data: PreparedData, cfg: RunConfig, out: str | Path, *, show_progress: bool = True,
        log: Callable[[str], None] = print) -> FitResult:
    """Train ``cfg.model`` on ``data`` and write the run directory ``out``.

    Per epoch: one pass over shuffled training samples, validation AUC/GAUC/logloss
    appended to ``metrics.jsonl``. Stops after ``patience`` consecutive epochs without
    a better validation ``monitor`` (AUC, higher is better, or logloss, lower is
    better: a model can rank well while over-confident) and saves the best epoch's
    weights. The loss is BCE plus the extra terms of the model's ``forward_train``
    when it has one (:func:`training_loss`); each extra term's mean is logged as
    ``train_extra_<name>``.

    A model without trainable parameters is evaluation-only: no optimiser, one
    ``metrics.jsonl`` row with ``epoch`` 0 and ``evaluation_only: true``, the run
    saved with its buffers (possibly none), ``epochs_run == best_epoch == 0``.

    With ``deterministic`` (default) two calls with the same config and data give
    bitwise-equal weights and metrics (see :func:`seed_everything`).
    """
    cfg.train.check()
    with deterministic_algorithms(cfg.train.deterministic):
        return _fit(data, cfg, Path(out), show_progress, log)


def _fit(data: PreparedData, cfg: RunConfig, out: Path, show_progress: bool, log: Callable[[str], None]) -> FitResult:
    t = cfg.train
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
    (out / METRICS).write_text("")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:  # a fixed scoring rule: nothing to optimise, validate once
        valid = _validate(model, valid_loader, 0)
        _log_row(out, log, {"epoch": 0, "evaluation_only": True, "train_samples": 0,
                            **{f"valid_{k}": v for k, v in valid.items()}})
        save_run(out, model, cfg, spec, data.path)
        return FitResult(0, valid or {"auc": float("nan")}, 0, 0.0, 0.0)
    opt_cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(params, lr=t.lr, weight_decay=t.weight_decay)
    epochs = 1 if t.fast_dev_run else t.epochs
    sign = 1.0 if t.monitor == "auc" else -1.0  # compare sign * metric, higher is better
    best_state, best_epoch, best_valid, best_score, bad = None, -1, {}, float("-inf"), 0
    timings: list[tuple[int, float]] = []  # (samples, seconds) per epoch
    epochs_run = 0
    with _progress(show_progress) as bar:
        for epoch in range(epochs):
            model.train()
            task = bar.add_task(f"epoch {epoch + 1}/{epochs}", total=len(train_loader), rate="", loss="")
            t0, seen, loss_sum = time.perf_counter(), 0, 0.0
            extra_sum: dict[str, float] = {}
            for step, batch in enumerate(train_loader):
                loss, extra = training_loss(model, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                seen += len(batch)
                loss_sum += loss.item() * len(batch)
                for name, term in extra.items():
                    extra_sum[name] = extra_sum.get(name, 0.0) + float(term.detach()) * len(batch)
                if step % 10 == 0 or step == len(train_loader) - 1:
                    rate = seen / max(time.perf_counter() - t0, 1e-9)
                    bar.update(task, completed=step + 1, rate=f"{rate:,.0f} samples/s", loss=f"{loss_sum / seen:.4f}")
            secs = time.perf_counter() - t0
            timings.append((seen, secs))
            epochs_run = epoch + 1
            valid = _validate(model, valid_loader, epoch + 1)
            _log_row(out, log, {
                "epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "train_samples": seen,
                "train_seconds": round(secs, 3), "train_samples_per_s": round(seen / max(secs, 1e-9), 1),
                **{f"train_extra_{k}": v / max(seen, 1) for k, v in extra_sum.items()},
                **{f"valid_{k}": v for k, v in valid.items()}})
            score = sign * valid.get(t.monitor, float("nan"))
            improved = not np.isnan(score) and score > best_score
            if improved or best_state is None or not valid:  # no validation split: keep the latest epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                best_epoch, best_valid, bad = epoch + 1, valid or {"auc": float("nan")}, 0
                best_score = score if not np.isnan(score) else float("-inf")
            else:
                bad += 1
                if bad >= t.patience:  # `patience` consecutive epochs without a better monitor
                    break
    save_run(out, model, cfg, spec, data.path, state=best_state)
    steady = timings[1:] or timings
    rate = sum(n for n, _ in steady) / max(sum(s for _, s in steady), 1e-9)
    overall = sum(n for n, _ in timings) / max(sum(s for _, s in timings), 1e-9)
    return FitResult(best_epoch, best_valid, epochs_run, rate, overall)


def _log_row(out: Path, log: Callable[[str], None], row: dict) -> None:
    with open(out / METRICS, "a") as fh:
        fh.write(json.dumps(row) + "\n")
    log(json.dumps(row))
