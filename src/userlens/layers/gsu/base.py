"""What every GSU shares: the :class:`Selection` it returns, the chunk budget, the serving-state hook."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from userlens.batch import LongHistory

#: elements (batch × chunk × dim) one chunk may materialise: 4M floats = 16 MiB
CHUNK_BUDGET = 1 << 22


@dataclass
class Selection:
    """Behaviors picked by a GSU.

    Attributes:
        positions: ``(B, k)`` int64 global timeline positions, left-aligned, oldest first, ``-1`` = none.
        lengths: ``(B,)`` int64 number of picked behaviors per row.
    """

    positions: np.ndarray
    lengths: np.ndarray


def oldest_first(positions: np.ndarray) -> Selection:
    """Sort each row's picked positions ascending with the ``-1`` holes moved to the end."""
    big = np.iinfo(np.int64).max
    s = np.sort(np.where(positions >= 0, positions, big), axis=1)
    lengths = (s != big).sum(1).astype(np.int64)
    return Selection(np.where(s == big, -1, s), lengths)


#: ``(distinct items (U,), newest position of each (U,))`` → ``((B, U) scores, optional (B, U) exact keys)``
ItemScorer = Callable[[np.ndarray, np.ndarray], tuple[Tensor, Tensor | None]]


class SearchState(Protocol):
    """Per-user state a serving scorer attaches to a request's ``LongHistory.state``.

    Implemented by :class:`userlens.serving.state.HistoryState`; the GSUs only call
    these two methods (layers know nothing of serving), and only through
    :func:`serving_state`. Both answer None when the state cannot serve this
    request (the request's history stops before the user's window ends): the caller scans instead.
    """

    def item_topk(self, long: LongHistory, score: ItemScorer, k: int) -> Selection | None:
        """The top-``k`` behaviors of ``[0, hi)`` for a score that depends on the item only, scoring each
        distinct item once (``score``; ``keys`` optional, exact and tie-free in (score, newest) order)."""
        ...

    def total(self, name: str, long: LongHistory,
              add: Callable[[object | None, np.ndarray, int], object]) -> object | None:
        """A running aggregate ``name`` over ``[0, hi)``, kept with ``add(acc or None, items, sign)`` (sign 1:
        appended behaviors, -1: evicted ones)."""
        ...


def serving_state(long: LongHistory) -> SearchState | None:
    """The per-user state when ``long`` is one user's request over ``[0, hi)`` with no gradient, else None."""
    state = getattr(long, "state", None)
    if state is None or torch.is_grad_enabled() or not len(long.lo):
        return None
    if int(long.lo.max()) != 0 or int(long.hi.min()) != int(long.hi.max()):
        return None
    return state  # type: ignore[no-any-return]
