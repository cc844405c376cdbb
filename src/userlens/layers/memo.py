"""Per-item tables computed once while serving, recomputed whenever a weight they read changes.

A GSU scores candidates against per-item tables (item ⊕ category embeddings,
TWIN's keys, DARE's attention table, SimHash signatures and bucket codes). In
training they change every step and are rebuilt per forward; at inference they
are constants, and rebuilding them per request (``n_items × d`` work) would cost
more than scanning a 1K history. :func:`frozen` returns the cached value when no
gradient is being recorded, the owner is in eval mode and every tensor it
depends on is the same tensor at the same in-place version (an optimizer step
or ``load_state_dict`` bumps ``Tensor._version``), and rebuilds it otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

import torch
from torch import Tensor, nn

T = TypeVar("T")


def _signature(deps: Iterable[nn.Module | Tensor | object]) -> tuple:
    sig: list[object] = []
    for d in deps:
        tensors = list(d.parameters()) + list(d.buffers()) if isinstance(d, nn.Module) else [d]
        for t in tensors:
            if isinstance(t, Tensor):
                sig.append((t.data_ptr(), t._version, tuple(t.shape), t.device.type))
            else:  # arrays and other inputs: by identity (they are not modified in place by contract)
                sig.append((id(t), getattr(t, "shape", None)))
    return tuple(sig)


def frozen(owner: nn.Module, key: str, deps: Iterable[nn.Module | Tensor | object], build: Callable[[], T]) -> T:
    """``build()``, cached on ``owner`` under ``key`` at inference (see the module docstring)."""
    if torch.is_grad_enabled() or owner.training:
        return build()
    sig = _signature(deps)
    memo: dict[str, tuple[tuple, object]] = owner.__dict__.setdefault("_frozen_memo", {})
    hit = memo.get(key)
    if hit is not None and hit[0] == sig:
        return hit[1]  # type: ignore[return-value]
    value = build()
    memo[key] = (sig, value)
    return value


__all__ = ("frozen",)
