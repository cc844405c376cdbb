"""Training on several processes and machines under ``torchrun``: DDP with the gloo backend on CPU.

``torchrun`` starts one process per rank and tells each, through its environment
(``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` / ``MASTER_PORT``), who it is;
:meth:`World.from_env` reads that, and a process started without ``torchrun`` (or with
one rank) is :data:`SINGLE`, for which every helper here is the identity: the
single-process path draws no extra random number and runs no extra operation.

What the ranks share and what they do alone:

- **samples**: every rank draws the same shuffle from the seed and takes its part of each
  *global* batch (:meth:`userlens.data.loader.BatchLoader.shard`), so a step sees the samples
  one process would; the timeline stays memory-mapped read-only, never copied per rank.
- **gradients**: :class:`~torch.nn.parallel.DistributedDataParallel` averages them; each
  rank's loss is weighted by its share of the global batch (:func:`loss_weight`), so the
  averaged gradient is the one-process gradient of the whole batch, whatever the split.
  Dense all-reduce only: no model has sparse embedding gradients (``layers/embedding.Table``
  accumulates dense ones with one ``index_add``, 4× faster than ``nn.Embedding``'s sorted
  backward on CPU), and DDP with gloo reduces sparse gradients only when every rank touches the
  same rows' layout, which sampled batches do not promise.
- **metrics**: each rank scores a contiguous block of the split, rank 0 gathers the exact
  (logit, label, user) triples in sample order (:func:`gather_predictions`; no padding, so no
  duplicate enters AUC / GAUC / logloss) and computes the metrics, then sends them to every
  rank (:func:`share`), so early stopping decides the same everywhere.
- **files**: rank 0 writes the run directory and checkpoints (``artifacts`` helpers, atomic);
  the others write nothing. On ``--resume`` rank 0 reads the checkpoint and sends it to the
  others, so the nodes need not share a file system (only the prepared data, at the same path).

A rank that dies ends the job: ``torchrun``'s agent stops the other workers when one exits
non-zero, and a rank stuck in a collective whose peer is gone or frozen gives up after the
process group's timeout (``userlens train --dist-timeout``) with a :class:`TrainingError`
naming the fix, instead of hanging.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from userlens.errors import ConfigError, TrainingError

T = TypeVar("T")

#: seconds a collective waits for the other ranks before the run fails (``--dist-timeout``)
DEFAULT_TIMEOUT_S = 600


@dataclass(frozen=True)
class World:
    """Which rank this process is, of how many (``torchrun``'s environment)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> World:
        """The world ``torchrun`` describes in ``env`` (default ``os.environ``); :data:`SINGLE` without it.

        Raises:
            ConfigError: ``WORLD_SIZE`` / ``RANK`` that are not integers with ``0 <= RANK < WORLD_SIZE``.
        """
        env = os.environ if env is None else env
        if "WORLD_SIZE" not in env:
            return SINGLE
        try:
            size, rank, local = int(env["WORLD_SIZE"]), int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0"))
        except ValueError:
            raise ConfigError(f"WORLD_SIZE={env.get('WORLD_SIZE')!r} / RANK={env.get('RANK')!r} are not integers. "
                              "Fix: launch with torchrun, which sets them, or unset them.") from None
        if size < 1 or not 0 <= rank < size:
            raise ConfigError(f"RANK={rank} does not fit WORLD_SIZE={size}. Fix: launch with torchrun, which sets "
                              "them, or unset them.")
        return cls(rank, size, local) if size > 1 else SINGLE


SINGLE = World()


@contextmanager
def process_group(world: World, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[World]:
    """A gloo process group for the block when ``world`` is distributed (destroyed after, if we made it)."""
    if not world.distributed or dist.is_initialized():
        yield world
        return
    if not timeout_s > 0:
        raise ConfigError(f"--dist-timeout must be > 0 seconds, got {timeout_s}")
    dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))
    try:
        yield world
    finally:
        dist.destroy_process_group()


@contextmanager
def collectives(world: World, where: str) -> Iterator[None]:
    """Turn a failed collective (a peer died, or hung past the timeout) into one clear :class:`TrainingError`."""
    try:
        yield
    except (RuntimeError, dist.DistError) as e:
        if not world.distributed or not lost_peer(e):
            raise
        first = (str(e).splitlines() or [""])[0][:300]
        raise TrainingError(f"rank {world.rank} of {world.size}: lost the other ranks during {where} ({first}): "
                            "another rank died or hung past --dist-timeout. Fix: read the first failing rank's "
                            "error above; a run that finished an epoch continues with the same torchrun command "
                            "plus --resume") from None


#: what gloo and the DDP reducer say when a peer is gone or silent (they raise plain RuntimeErrors)
LOST_PEER = ("gloo", "Connection closed by peer", "Connection reset by peer", "Broken pipe", "Timed out")


def lost_peer(e: BaseException) -> bool:
    """Whether ``e`` is a collective that lost its peers (not a bug of the model raising a RuntimeError)."""
    return isinstance(e, dist.DistError) or any(s in str(e) for s in LOST_PEER)


class TrainStep(nn.Module):
    """``training_loss(model, batch)`` as a module's forward: what DDP wraps, since DDP hooks only ``forward``
    and a model may train through ``forward_train`` (DIEN's auxiliary loss)."""

    def __init__(self, model: nn.Module, loss_fn: Any) -> None:
        super().__init__()
        self.model, self._loss_fn = model, loss_fn

    def forward(self, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        return self._loss_fn(self.model, batch)  # type: ignore[no-any-return]


def wrap(step: TrainStep, world: World) -> nn.Module:
    """``step`` in DDP when distributed (gradients averaged over ranks), else itself.

    ``find_unused_parameters`` only for models with ``forward_train``: their extra terms may leave a parameter
    without a gradient on some rank's part of a batch (DIEN's auxiliary loss has no negatives in a one-user
    batch), which DDP would otherwise wait for. For the others every parameter is used on every batch (each
    registered model is trained under DDP in ``tests/training/test_distributed.py``), and the search for unused
    ones would cost a traversal of the autograd graph per step.
    """
    if not world.distributed:
        return step
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(step, find_unused_parameters=hasattr(step.model, "forward_train"))


def sync_buffers(model: nn.Module, world: World) -> None:
    """Rank 0's buffers (batch-norm running statistics) on every rank, in place.

    DDP broadcasts them from rank 0 before each training forward, but the forward itself then updates each
    rank's copy from its own part of the batch: after an epoch's last step they differ, and validation or the
    saved weights would depend on the rank. One broadcast after the epoch restores DDP's rule.
    """
    if not world.distributed:
        return
    with collectives(world, "synchronising buffers"), torch.no_grad():
        for b in model.buffers():
            dist.broadcast(b, src=0)


def loss_weight(local: int, global_: int, world: World) -> float:
    """Factor on a rank's mean loss so that DDP's average of the ranks' gradients is the gradient of the global
    batch's mean loss: ``world.size · local / global``; 1 for one process (never applied there)."""
    return world.size * local / global_ if world.distributed else 1.0


def all_sum_dict(values: dict[str, float], world: World) -> dict[str, float]:
    """Each key's values summed over the ranks (an epoch's samples, loss sum, extra loss terms), on every rank.

    Objects, not one tensor: ranks may hold different keys (a loss term one rank's part never produced).
    """
    if not world.distributed:
        return values
    got: list[Any] = [None] * world.size
    with collectives(world, "summing the epoch's loss"):
        dist.all_gather_object(got, values)
    out: dict[str, float] = {}
    for part in got:
        for k, v in part.items():
            out[k] = out.get(k, 0) + v
    return out


def gather_predictions(parts: tuple[np.ndarray, ...], world: World) -> tuple[np.ndarray, ...] | None:
    """Each rank's (logits, labels, users) of its block, concatenated in rank order on rank 0 (None elsewhere).

    Ranks score contiguous blocks of the split in order, so the result is the split's sample order, each
    sample exactly once. Variable lengths are fine: ``gather_object`` pickles each rank's arrays.
    """
    if not world.distributed:
        return parts
    got: list[Any] = [None] * world.size if world.is_main else []
    with collectives(world, "gathering predictions"):
        dist.gather_object(parts, got if world.is_main else None, dst=0)
    if not world.is_main:
        return None
    return tuple(np.concatenate([g[i] for g in got]) for i in range(len(parts)))


def share(obj: T, world: World, where: str) -> T:
    """Rank 0's ``obj`` on every rank (the others pass anything, e.g. None)."""
    if not world.distributed:
        return obj
    box = [obj]
    with collectives(world, where):
        dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[no-any-return]


def share_outcome(fn: Any, world: World, where: str) -> Any:
    """Run ``fn()`` on rank 0 and give every rank its value, or raise its error on every rank.

    A rank 0 that raised alone would leave the others waiting in the next collective; this way all
    ranks stop with rank 0's message.
    """
    if not world.distributed:
        return fn()
    out: tuple[str, Any] = ("ok", None)
    if world.is_main:
        try:
            out = ("ok", fn())
        except Exception as e:  # noqa: BLE001 - any error: re-raised on every rank below
            out = ("error", e)
    kind, value = share(out, world, where)
    if kind == "error":
        raise value
    return value


def barrier(world: World, where: str) -> None:
    if world.distributed:
        with collectives(world, where):
            dist.barrier()


def state_digest(state: Mapping[str, Tensor]) -> str:
    """BLAKE2b of a state dict's names, dtypes, shapes and bytes: equal digests, bitwise-equal replicas."""
    h = hashlib.blake2b(digest_size=16)
    for k in sorted(state):
        v = state[k].detach().contiguous().cpu()
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return "blake2b:" + h.hexdigest()


def replica_digests(state: Mapping[str, Tensor], world: World) -> list[str]:
    """Every rank's :func:`state_digest` on rank 0 (the others get []).

    Raises:
        TrainingError: on every rank, when the replicas differ (a bug: DDP keeps them equal).
    """
    mine = state_digest(state)
    if not world.distributed:
        return [mine]
    got: list[Any] = [None] * world.size
    with collectives(world, "comparing replicas"):
        dist.all_gather_object(got, mine)
    if len(set(got)) != 1:
        raise TrainingError(f"the {world.size} replicas differ after training ({got}); this is a bug in userlens' "
                            "DDP path. Fix: train on one process and report it")
    return list(got) if world.is_main else []
