"""The training loop: Adam(W) on BCE-with-logits, early stopping on validation AUC, best weights kept.

A model may define ``forward_train(batch) -> (logits (B,), {name: loss term})``:
training then uses it and adds the sum of the (already weighted) extra terms to
the BCE, e.g. DIEN's auxiliary next-behavior loss; ``forward`` stays pure
scoring. A model without trainable parameters (``popularity``, ``history_match``)
is not optimised: :func:`fit` validates it once and saves the run.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from userlens.batch import Batch
from userlens.data.counts import resolve_count_features
from userlens.data.loader import BatchLoader
from userlens.data.prepared import PreparedData
from userlens.layers.activation import compile_hot_layers
from userlens.metrics import evaluate_predictions
from userlens.models.registry import build_model
from userlens.models.spec import FeatureSpec
from userlens.artifacts import (DirLock, check_output_path, clean_stale, disk_full, no_space, refuse_link,
                                swap_in, write_atomic)
from userlens.errors import ConfigError, InputError, Interrupted, TrainingError
from userlens.training.checkpoint import (CONFIG, METRICS, STATE, STATE_META, load_checkpoint, partial_dir,
                                          save_checkpoint, save_run)
from userlens.training.progress import RunReporter
from userlens.training.config import RunConfig
from userlens.training.distributed import (DEFAULT_TIMEOUT_S, SINGLE, TrainStep, World, all_sum_dict, barrier,
                                           collectives, gather_predictions, loss_weight, process_group,
                                           replica_digests, share, share_outcome, sync_buffers, wrap)
from userlens.training.sharded import ShardedItemTables, check_sharding, embedding_of, full_state, unshard
from userlens.training.table_optim import TableOptimizer


@dataclass
class FitResult:
    best_epoch: int
    best_valid: dict[str, float]
    epochs_run: int
    # training samples / training seconds over all epochs (the first, with compile warm-up, included; validation
    # excluded): Σ train_samples / Σ train_seconds of metrics.jsonl, the figure `userlens train` prints
    train_samples_per_s: float
    train_samples_per_s_steady: float  # the same over the epochs after the first (benchmarks: speed without warm-up)


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


@torch.inference_mode()
def predict(model: nn.Module, loader: BatchLoader, on_batch: Callable[[], None] | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits, labels, user indices) over the loader, in sample order.

    Logits, not probabilities: a float32 sigmoid saturates to exactly 1.0 above
    ~17 and would tie distinct scores; metrics rank the logits and take the
    float64 sigmoid for logloss (:func:`userlens.metrics.evaluate_predictions`).
    """
    was_training = model.training
    model.eval()
    logits, labels, users = [], [], []
    order_users = np.asarray(loader.samples.user)
    if loader.world_size > 1:  # this rank's block of the split (torchrun)
        order_users = order_users[loader.indices]
    seen = 0
    for batch in loader:
        logits.append(model(batch).detach().cpu().numpy())
        if on_batch is not None:
            on_batch()
        labels.append(batch.label.numpy())
        users.append(order_users[seen : seen + len(batch)])
        seen += len(batch)
    model.train(was_training)
    if not logits:
        return np.zeros(0, dtype=np.float32), np.zeros(0), np.zeros(0, dtype=np.int64)
    return np.concatenate(logits), np.concatenate(labels), np.concatenate(users)


def predict_split(model: nn.Module, loader: BatchLoader, world: World = SINGLE,
                  on_batch: Callable[[], None] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """:func:`predict` over the whole split: under torchrun each rank scores its block (``loader`` sharded) and
    rank 0 gets every sample's (logit, label, user) once, in sample order; the other ranks get None."""
    return gather_predictions(predict(model, loader, on_batch), world)  # type: ignore[return-value]


def _validate(model: nn.Module, loader: BatchLoader, epoch: int, on_batch: Callable[[], None] | None = None,
              world: World = SINGLE, tables: ShardedItemTables | None = None) -> dict[str, float]:
    """Validation metrics after ``epoch`` ({} without validation samples); undefined ones (one class) are None.

    Under torchrun rank 0 computes them from the gathered predictions and every rank gets the same dict (so
    early stopping decides alike). Non-finite logits raise a :class:`TrainingError` (the model diverged).
    With sharded ``tables`` every batch is a collective lookup: a rank with fewer batches joins the others'
    lookups with empty ones before the predictions are gathered.
    """
    if tables is None:
        gathered = predict_split(model, loader, world, on_batch)
    else:
        most, before = tables.most_over_ranks(len(loader)), tables.lookups
        parts = predict(model, loader, on_batch)
        tables.idle(most - (tables.lookups - before))
        gathered = gather_predictions(parts, world)

    def metrics() -> dict[str, float]:
        assert gathered is not None  # rank 0
        logits, labels, users = gathered
        if not len(labels):
            return {}
        try:
            m = evaluate_predictions(labels, logits, users)
            return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in m.items()}
        except ValueError as e:
            raise TrainingError(f"validation after epoch {epoch}: {e}. Fix: lower lr (the model diverged) or "
                                "check the data") from None

    return share_outcome(metrics, world, f"validation after epoch {epoch}")  # type: ignore[no-any-return]


def logloss_note(model: nn.Module, name: str) -> str | None:
    """Why the logloss of ``model`` means nothing, or None: a model with ``calibrated = False`` (the
    zero-parameter baselines) outputs a ranking score, and its sigmoid is no probability of a click."""
    if getattr(model, "calibrated", True):
        return None
    return (f"logloss is not meaningful for {name}: its score ranks candidates but is not a probability fitted "
            "to the labels; compare auc / gauc only")


def _check_paths(out: Path, work: Path, resume: bool, force: bool) -> None:
    """Refuse to overwrite a finished run (unless ``force``) or to silently restart an interrupted one."""
    refuse_link(out)  # before any work: the finished run replaces what is at `out`
    refuse_link(work)
    if resume:
        if force:
            raise ConfigError("--resume continues an interrupted run, --force starts over: give one of them")
        if not (work / STATE_META).is_file():
            raise InputError(f"{out}: nothing to resume (no checkpoint in {work}). Fix: train without --resume.")
        return
    if (work / STATE_META).is_file() and not force:
        raise InputError(f"{out}: an interrupted run of it waits in {work}. Fix: --resume to continue it, or "
                         "--force to start over.")
    check_output_path(out, "run directory", CONFIG, force)


def fit(data: PreparedData, cfg: RunConfig, out: str | Path, *, resume: bool = False, force: bool = False,
        show_progress: bool = True, log: Callable[[str], None] = print,
        dist_timeout: float = DEFAULT_TIMEOUT_S) -> FitResult:
    """Train ``cfg.model`` on ``data`` and write the run directory ``out``.

    Per epoch: one pass over shuffled training samples, validation AUC/GAUC/logloss
    appended to ``metrics.jsonl``, and a checkpoint. Stops after ``patience`` consecutive
    epochs without a better validation ``monitor`` (AUC, higher is better, or logloss,
    lower is better: a model can rank well while over-confident) and saves the best
    epoch's weights. The loss is BCE plus the extra terms of the model's ``forward_train``
    when it has one (:func:`training_loss`); each extra term's mean is logged as
    ``train_extra_<name>``.

    The run is built in ``<out>.partial`` under a lock and moved to ``out`` only when
    finished; an existing run is replaced only with ``force``. A killed or interrupted
    run keeps its last epoch's checkpoint there: ``resume=True`` continues it and ends
    with the same weights as an uninterrupted run (same config, data and seed).

    A model without trainable parameters is evaluation-only: no optimiser, one
    ``metrics.jsonl`` row with ``epoch`` 0 and ``evaluation_only: true``, the run
    saved with its buffers (possibly none), ``epochs_run == best_epoch == 0``.

    With ``deterministic`` (default) two calls with the same config and data give
    bitwise-equal weights and metrics (see :func:`seed_everything`).

    Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment: :mod:`userlens.training.distributed`)
    every rank calls this: the ranks train one DDP model, ``batch_size`` is the *global* batch (each
    rank takes its part of every batch of the same seeded order), metrics come from every validation
    sample once, and rank 0 alone logs and writes ``out`` (others write nothing). ``dist_timeout``:
    seconds a rank waits in a collective for the others before the run fails.
    """
    cfg.train.check()
    out = Path(out)
    work = partial_dir(out)
    world = World.from_env()
    check_sharding(cfg, world)
    if resume and (cfg.train.shard_tables != "none" or cfg.train.embedding_optimizer != "same"):
        raise ConfigError("--resume does not restore sharded tables or embedding_optimizer state yet (their "
                          "checkpoints are not kept). Fix: train again without --resume (--force)")
    with process_group(world, dist_timeout), ExitStack() as held:
        def claim() -> None:  # rank 0: refuse to overwrite, lock, start (or keep) the partial directory
            _check_paths(out, work, resume, force)
            held.enter_context(DirLock(out))
            if clean_stale(out, CONFIG):  # a swap that died halfway: the old run is back
                _check_paths(out, work, resume, force)
            if not resume:
                shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True, exist_ok=True)

        share_outcome(claim, world, "checking the run directory")
        if not world.is_main:  # writes nothing, keeps nothing: rank 0 owns the run directory
            with deterministic_algorithms(cfg.train.deterministic), collectives(world, "training"):
                result = _fit(data, cfg, work, resume, False, _silent, world)
            barrier(world, "waiting for rank 0 to write the run")
            return result
        try:
            with deterministic_algorithms(cfg.train.deterministic), collectives(world, "training"):
                result = _fit(data, cfg, work, resume, show_progress, log, world)
        except KeyboardInterrupt:
            kept = _checkpoint_epoch(work)
            raise Interrupted(
                f"interrupted; {out}: " + (f"kept the checkpoint after epoch {kept} in {work}. Fix: continue with the "
                                          "same `userlens train` command plus --resume" if kept else
                                          "no epoch had finished, nothing kept. Fix: train again")) from None
        except BaseException as e:
            kept = _checkpoint_epoch(work)
            if kept is None:  # nothing worth resuming: leave no half-made directory
                shutil.rmtree(work, ignore_errors=True)
            if disk_full(e):
                raise no_space(work, "nothing was written" if kept is None else
                               f"the run is not finished; the checkpoint after epoch {kept} is kept in {work} "
                               "(after freeing space, continue with --resume)") from None
            raise
        for f in (STATE, STATE_META):
            (work / f).unlink(missing_ok=True)
        swap_in(work, out)
        barrier(world, "writing the run")
    return result


def _silent(line: str) -> None:
    """The log of ranks other than 0: one voice per run."""


def _checkpoint_epoch(work: Path) -> int | None:
    """The epoch of the checkpoint in ``work``, or None: none, or one too damaged to resume (any shape of JSON,
    so that the error that brought us here, e.g. "the training checkpoint is list", is the one reported)."""
    try:
        return int(json.loads((work / STATE_META).read_text())["progress"]["epoch"])
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def _fit(data: PreparedData, cfg: RunConfig, work: Path, resume: bool, show_progress: bool,
         log: Callable[[str], None], world: World = SINGLE) -> FitResult:
    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    seed_everything(t.seed)
    spec = FeatureSpec.from_meta(data.meta, content_dim=data.content_dim(),
                                 counts=resolve_count_features(t.count_features))
    model = build_model(cfg.model, spec, cfg.model_config)
    notes = {"content_vectors": spec.content_dim > 0}
    inputs = data.item_inputs(model.fields)  # recorded with the run: scoring other item features is refused
    if getattr(model, "can_use_content", False) and spec.content_dim == 0:
        log(f"note: {cfg.model} trains without item content vectors: {data.path} has none. Fix: run "
            "`userlens embed-items` on it first to use them.")
    if t.compile:
        compile_hot_layers(model)
    limit = 1 if t.fast_dev_run else t.limit_batches
    shard = {"rank": world.rank, "world_size": world.size}
    train_loader = BatchLoader(data, "train", model.fields, t.batch_size, t.short_len, shuffle=True,
                               seed=t.seed, limit_batches=limit, prefetch=t.prefetch, long_len=t.long_len,
                               user_group=t.user_group, **shard)
    valid_loader = BatchLoader(data, "valid", model.fields, t.eval_batch_size, t.short_len,
                               limit_batches=1 if t.fast_dev_run else t.limit_valid_batches, prefetch=t.prefetch,
                               long_len=t.long_len, **shard)
    if len(train_loader.samples) == 0:
        raise InputError(f"{data.path}: the train split is empty; nothing to train on. Fix: prepare with another "
                         "split (e.g. larger --valid-fraction/--test-fraction leave less for training).")
    if len(train_loader) == 0:
        raise InputError(f"{data.path}: {len(train_loader.samples)} train sample(s) cannot feed {world.size} ranks. "
                         "Fix: train with fewer processes (--nproc-per-node).")
    log(f"config: {json.dumps(cfg.to_json())}")
    if (note := logloss_note(model, cfg.model)) is not None:
        log(f"note: {note}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:  # a fixed scoring rule: nothing to optimise, validate once
        valid = _validate(model, valid_loader, 0, world=world)
        if world.is_main:
            (work / METRICS).write_text("")
            _log_row(work, log, {"epoch": 0, "evaluation_only": True, "train_samples": 0,
                                 **{f"valid_{k}": v for k, v in valid.items()}})
            save_run(work, model, cfg, spec, data.path, inputs, notes=notes)
        return FitResult(0, valid or {"auc": float("nan")}, 0, 0.0, 0.0)
    tables, table_params = None, []
    if t.shard_tables != "none":  # the item and category tables leave the model for TorchRec shards
        tables = ShardedItemTables(embedding_of(model)[1], t.shard_tables, t.embedding_optimizer,
                                   t.embedding_lr or t.lr, world)
        model.register_forward_pre_hook(lambda m, args: tables.prefetch(args[0]))
        params = [p for p in model.parameters() if p.requires_grad]
    elif t.embedding_optimizer != "same":
        emb = embedding_of(model)[1]
        table_params = [emb.item.weight, emb.category.weight]
    opt_cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls([p for p in params if all(p is not q for q in table_params)], lr=t.lr,
                        weight_decay=t.weight_decay)
    table_opt = (TableOptimizer(table_params, t.embedding_optimizer, t.embedding_lr or t.lr)  # type: ignore[arg-type]
                 if table_params else None)
    epochs = 1 if t.fast_dev_run else t.epochs
    sign = 1.0 if t.monitor == "auc" else -1.0  # compare sign * metric, higher is better
    run_id = {"config": cfg.to_json(), "data_fingerprint": data.fingerprint, "inputs": inputs}
    p = {"epoch": 0, "best_epoch": -1, "best_valid": {}, "best_score": None, "bad": 0, "timings": [],
         "stopped": False}
    best_state = None
    if resume:
        p, best_state = _resume(work, model, optimizer, run_id, world)
        if world.is_main:
            _keep_rows(work / METRICS, p["epoch"])
        train_loader.epoch = p["epoch"]  # the shuffle of epoch e is seeded by seed + e
        log(f"resuming after epoch {p['epoch']} of {epochs} (best so far: epoch {p['best_epoch']})")
    elif world.is_main:
        (work / METRICS).write_text("")
    def loss_fn(m: nn.Module, b: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        if tables is not None:  # forward_train bypasses the forward hook
            tables.prefetch(b)
        return training_loss(m, b)

    ddp = wrap(TrainStep(model, loss_fn), world) if world.distributed else None
    with RunReporter(show_progress, log, epochs, len(train_loader), first_epoch=p["epoch"]) as report:
        for epoch in range(p["epoch"], epochs):
            if p["stopped"]:
                break
            model.train()
            report.epoch_start(epoch)
            t0, seen, loss_sum = time.perf_counter(), 0, 0.0
            extra_sum: dict[str, float] = {}
            for step, batch in enumerate(train_loader):
                if ddp is None:
                    loss, extra = training_loss(model, batch)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                else:  # weighted by the rank's share of the global batch: the average is its gradient
                    loss, extra = ddp(batch)
                    optimizer.zero_grad(set_to_none=True)
                    (loss * loss_weight(len(batch), train_loader.global_batch_size(step), world)).backward()
                optimizer.step()
                if table_opt is not None:
                    table_opt.step()
                    table_opt.zero_grad(set_to_none=True)
                seen += len(batch)
                loss_sum += loss.item() * len(batch)
                for name, term in extra.items():
                    extra_sum[name] = extra_sum.get(name, 0.0) + float(term.detach()) * len(batch)
                report.step(epoch, step, seen, loss_sum / seen)
            secs = round(time.perf_counter() - t0, 6)  # as metrics.jsonl holds it: the run's rate is summed from it
            if world.distributed:  # rank 0's buffers everywhere; the epoch's figures are all ranks' samples
                sync_buffers(model, world)
                totals = all_sum_dict({"seen": seen, "loss": loss_sum, **extra_sum}, world)
                seen, loss_sum = totals.pop("seen"), totals.pop("loss")
                extra_sum = totals
            if not np.isfinite(loss_sum):
                raise TrainingError(f"epoch {epoch + 1}: the training loss is {loss_sum / max(seen, 1)} (diverged). "
                                    f"Fix: lower lr (now {t.lr}).")
            valid = _validate(model, valid_loader, epoch + 1, report.validating(epoch + 1, len(valid_loader)), world,
                              tables)
            row = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "train_samples": seen,
                   "train_seconds": secs, "train_samples_per_s": round(seen / max(secs, 1e-9), 1),
                   **{f"train_extra_{k}": v / max(seen, 1) for k, v in extra_sum.items()},
                   **{f"valid_{k}": v for k, v in valid.items()}}
            if world.is_main:
                _append_row(work, row)
            report.epoch_end(epoch + 1, json_line(row))
            p["timings"].append([seen, secs])
            score = sign * valid[t.monitor] if valid and valid.get(t.monitor) is not None else None
            if (score is not None and (p["best_score"] is None or score > p["best_score"])) or best_state is None \
                    or not valid:  # no validation split: keep the latest epoch
                best_state = ({k: v.detach().clone() for k, v in model.state_dict().items()} if tables is None
                              else full_state(model, tables))  # the shards gathered to rank 0
                p.update(best_epoch=epoch + 1, best_valid=valid, bad=0,
                         best_score=score if score is not None else p["best_score"])
            else:
                p["bad"] += 1
                p["stopped"] = p["bad"] >= t.patience  # `patience` consecutive epochs without a better monitor
            p["epoch"] = epoch + 1
            if world.is_main and tables is None:  # sharded runs keep no checkpoint (no --resume yet)
                save_checkpoint(work, model, optimizer, best_state, p, run_id)
            if p["stopped"]:
                break
    if world.distributed:  # proof, in the run, that DDP kept the replicas bitwise equal
        notes["distributed"] = {"world_size": world.size, "batch_size": "global",
                                "replica_digests": replica_digests(model.state_dict(), world)}
    if tables is not None:  # the dense replicas are compared above; the tables were sharded, not replicated
        notes["sharded"] = {"shard_tables": t.shard_tables, "placement": tables.placement()}
        if world.is_main:
            unshard(model, tables)  # plain tables again: the run is saved as any other
    if world.is_main:
        save_run(work, model, cfg, spec, data.path, inputs, state=best_state,
                 notes={**notes, "best_epoch": p["best_epoch"]})
    timings = [tuple(x) for x in p["timings"]]
    return FitResult(p["best_epoch"], p["best_valid"] or {"auc": float("nan")}, p["epoch"],
                     samples_per_second(timings), samples_per_second(timings[1:] or timings))


def _resume(work: Path, model: nn.Module, optimizer: torch.optim.Optimizer, run_id: dict, world: World
            ) -> tuple[dict, dict | None]:
    """Restore the checkpoint in ``work``: (progress, best state). Under torchrun rank 0 reads it and sends the
    weights, optimiser and torch RNG states to the other ranks, which need not see rank 0's file system."""
    p, best = share_outcome(lambda: load_checkpoint(work, model, optimizer, run_id), world, "reading the checkpoint")
    if world.distributed:
        mine = (model.state_dict(), optimizer.state_dict(), torch.get_rng_state()) if world.is_main else None
        states = share(mine, world, "sending the checkpoint")
        if not world.is_main:
            model.load_state_dict(states[0])
            optimizer.load_state_dict(states[1])
            torch.set_rng_state(states[2])
    return p, best


def samples_per_second(timings: list[tuple[int, float]]) -> float:
    """Σ samples / Σ seconds of (train_samples, train_seconds) epochs: one figure for a run, summed as stored."""
    return sum(n for n, _ in timings) / max(sum(s for _, s in timings), 1e-9)


def json_line(row: dict) -> str:
    """One strict-JSON line: NaN / ±inf (never valid JSON) become null."""
    return json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()})


def _append_row(work: Path, row: dict) -> None:
    with open(work / METRICS, "a") as fh:
        fh.write(json_line(row) + "\n")


def _log_row(work: Path, log: Callable[[str], None], row: dict) -> None:
    _append_row(work, row)
    log(json_line(row))


def _keep_rows(path: Path, epochs: int) -> None:
    """Drop the metrics rows of epochs after the checkpoint (redone on resume)."""
    rows = [x for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
    kept = [x for x in rows if json.loads(x).get("epoch", 0) <= epochs]
    write_atomic(path, "".join(x + "\n" for x in kept))
