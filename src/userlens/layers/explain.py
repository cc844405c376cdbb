"""What a lifelong model looked at, for ``POST /v1/score`` with ``explain``: the GSU's picks and ESU weights.

Tracing is off unless a caller opens :func:`tracing` (the scorer does, for an
explained request); then the first General Search Unit to run notes its
:class:`~userlens.layers.gsu.Selection` (``"gsu"``) and the first Exact Search
Unit its attention weights over those picks (``"esu_weights"``, ``(B, k)``
aligned with the selection's columns). Nothing is recorded, and nothing costs
anything, in training or plain scoring.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor

_TRACE: ContextVar[dict[str, object] | None] = ContextVar("userlens_explain", default=None)


@contextmanager
def tracing() -> Iterator[dict[str, object]]:
    """Record into the returned dict for the duration of the block (per thread / task)."""
    trace: dict[str, object] = {}
    token = _TRACE.set(trace)
    try:
        yield trace
    finally:
        _TRACE.reset(token)


def active() -> bool:
    return _TRACE.get() is not None


def note(key: str, value: object) -> None:
    """Keep ``value`` under ``key`` if tracing and nothing was noted under it yet (the first unit wins)."""
    trace = _TRACE.get()
    if trace is not None and key not in trace:
        trace[key] = value


def note_weights(weights: Tensor, rows: Tensor | None = None, cols: Tensor | None = None,
                 shape: tuple[int, int] | None = None) -> None:
    """Note ESU weights, ``(B, k)`` or packed ``(N,)`` with their ``rows``/``cols`` in a ``shape`` grid."""
    if not active():
        return
    w = weights.detach().float().cpu()
    if rows is not None and cols is not None and shape is not None:
        grid = torch.zeros(shape)
        grid[rows.cpu(), cols.cpu()] = w
        w = grid
    note("esu_weights", w)


__all__ = ("active", "note", "note_weights", "tracing")
