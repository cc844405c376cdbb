"""The batch types shared by the data loader and the models.

One representation of a behavior sequence, settled once (STYLE §4): a
:class:`History` holds, per field, a ``(B, L)`` int64 tensor that is
**left-aligned** and ordered **oldest → newest** (position ``lengths[b]-1`` is
the most recent behavior), plus ``lengths`` ``(B,)``. Positions at or beyond
``lengths[b]`` are padding and hold 0 (the padding index of every vocabulary).
The mask is derived here and nowhere else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

#: Fields a model may ask the loader for. ``hist_*`` fields form the History;
#: ``long`` attaches the whole history before each sample as a :class:`LongHistory`; ``long_category``
#: adds its category index (SIM hard search) and ``long_content`` the item content vectors.
HIST_FIELDS = ("hist_item", "hist_category", "hist_behavior", "hist_time")
#: ``target_count`` is how often the target item occurred (any user) strictly before the sample (popularity).
TARGET_FIELDS = ("user", "target_item", "target_category", "time", "target_count")
LONG_FIELD = "long"
LONG_EXTRAS = ("long_category", "long_content")
#: ``counts``: the counting features of :mod:`userlens.data.counts` (bucket indices), in ``Batch.counts``
COUNTS_FIELD = "counts"
#: bucket vocabulary of every counting feature: 0 is never produced (padding row), 1..23 log2 buckets, 24 = never
COUNT_BUCKETS = 25
ALL_FIELDS = frozenset(HIST_FIELDS + TARGET_FIELDS + (LONG_FIELD,) + LONG_EXTRAS + (COUNTS_FIELD,))


@dataclass
class History:
    """A padded batch of behavior sequences.

    Args:
        values: field name (``item``, ``category``, ``behavior``, ``time``) →
            ``(B, L)`` int64 tensor, left-aligned, oldest first, 0-padded.
        lengths: ``(B,)`` int64 number of real behaviors per row (0 allowed).

    Example:
        >>> h = History({"item": torch.tensor([[5, 7, 0]])}, torch.tensor([2]))
        >>> h.mask().tolist()
        [[True, True, False]]
    """

    values: dict[str, Tensor]
    lengths: Tensor

    def __post_init__(self) -> None:
        if self.lengths.dim() != 1:
            raise ValueError(f"History.lengths must be 1-D (B,), got shape {tuple(self.lengths.shape)}")
        for name, v in self.values.items():
            if v.dim() != 2 or v.shape[0] != self.lengths.shape[0]:
                raise ValueError(
                    f"History field {name!r} must be (B, L) with B={self.lengths.shape[0]}, got {tuple(v.shape)}"
                )

    @property
    def max_len(self) -> int:
        return next(iter(self.values.values())).shape[1] if self.values else 0

    def mask(self) -> Tensor:
        """``(B, L)`` bool, True at real behaviors."""
        pos = torch.arange(self.max_len, device=self.lengths.device)
        return pos.unsqueeze(0) < self.lengths.unsqueeze(1)

    def packed_index(self) -> tuple[Tensor, Tensor]:
        """``(rows, cols)``, each ``(N,)``: the real positions, row-major (the jagged view of the batch).

        ``values[f][rows, cols]`` is the flat ``(N,)`` sequence of real behaviors;
        models that run per-behavior MLPs work on it, so padding costs nothing.
        """
        return self.mask().nonzero(as_tuple=True)

    def __getitem__(self, name: str) -> Tensor:
        try:
            return self.values[name]
        except KeyError:
            raise KeyError(
                f"history field {name!r} was not loaded (have {sorted(self.values)}); "
                "add 'hist_" + name + "' to the model's `fields`"
            ) from None


@dataclass
class LongHistory:
    """The whole history of each sample as a range of the shared timeline: nothing is copied per sample.

    Sample ``b`` sees ``timeline[f][lo[b]:hi[b]]`` (oldest first; ``hi`` is the
    sample's cutoff, so only behaviors strictly before its time). A General
    Search Unit (:mod:`userlens.layers.gsu`) reads these ranges in chunks and
    returns a few global positions; :meth:`gather` turns them into a
    :class:`History`. With 100,000 behaviors per user the ranges cost 16 bytes
    per sample, never a ``(B, 100000)`` tensor.

    Args:
        timeline: field (``item``, ``category``, ``behavior``, ``time``) → ``(N,)``
            array over all users' behaviors (memory-mapped or in RAM).
        lo, hi: ``(B,)`` int64 global positions, ``lo <= hi``.
        item_category: ``(n_items,)`` category index of every item (for per-item tables).
        category_index: optional precomputed :class:`userlens.layers.gsu.CategoryIndex`.
        content: optional ``(n_items, d)`` float32 frozen content vectors and their
            ``(n_items,)`` bool mask (``userlens embed-items``).
    """

    timeline: dict[str, np.ndarray]
    lo: np.ndarray
    hi: np.ndarray
    item_category: np.ndarray
    category_index: Any = None
    content: tuple[np.ndarray, np.ndarray] | None = None
    state: Any = None  # serving only: the user's :class:`userlens.serving.state.HistoryState` (one user, lo = 0)

    def __post_init__(self) -> None:
        if self.lo.shape != self.hi.shape or self.lo.ndim != 1:
            raise ValueError(f"LongHistory lo/hi must be (B,), got {self.lo.shape} and {self.hi.shape}")
        if np.any(self.hi < self.lo):
            raise ValueError("LongHistory needs lo <= hi for every sample")

    @property
    def lengths(self) -> np.ndarray:
        return self.hi - self.lo

    @property
    def longest(self) -> int:
        """The longest range in the batch (0 for an empty batch)."""
        return int(self.lengths.max()) if len(self.lo) else 0

    def gather(self, positions: np.ndarray, lengths: np.ndarray, fields: Iterable[str]) -> History:
        """A :class:`History` of the selected global ``positions`` ``(B, k)`` (left-aligned, ``-1`` = padding)."""
        valid = np.arange(positions.shape[1])[None, :] < lengths[:, None]
        safe = np.where(valid, positions, 0)
        values = {}
        for f in fields:
            col = self.timeline[f]
            if len(col) == 0:  # an empty timeline (a cold user online): nothing can be selected
                v = np.zeros(safe.shape, dtype=np.int64)
            else:
                v = np.asarray(col[safe.ravel()], dtype=np.int64).reshape(safe.shape)
            v[~valid] = 0
            values[f] = torch.from_numpy(v)
        return History(values, torch.from_numpy(lengths.astype(np.int64)))

    def take(self, idx: slice | np.ndarray) -> LongHistory:
        return dataclasses.replace(self, lo=self.lo[idx], hi=self.hi[idx])


@dataclass
class Batch:
    """One training / scoring batch.

    ``label`` is float32 (B,) in {0, 1} (absent when scoring online).
    ``target`` holds ``user``, ``target_item``, ``target_category``, ``time``,
    ``target_count`` (B,) int64 tensors, as requested by the model; ``context`` the declared context
    feature indices (B,); ``counts`` the counting features' bucket indices (B,) (:mod:`userlens.data.counts`).
    """

    target: dict[str, Tensor]
    history: History
    label: Tensor | None = None
    context: dict[str, Tensor] = field(default_factory=dict)
    long: LongHistory | None = None
    counts: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.history.lengths.shape[0])

    def take(self, start: int, stop: int) -> Batch:
        """Rows ``start:stop`` of every part (tests and chunked scoring)."""
        sl = slice(start, stop)
        return Batch({k: v[sl] for k, v in self.target.items()},
                     History({k: v[sl] for k, v in self.history.values.items()}, self.history.lengths[sl]),
                     None if self.label is None else self.label[sl], {k: v[sl] for k, v in self.context.items()},
                     None if self.long is None else self.long.take(sl), {k: v[sl] for k, v in self.counts.items()})

    def need_long(self) -> LongHistory:
        if self.long is None:
            raise ValueError("this model reads the whole history: the batch has no `long` part. "
                             "Fix: add 'long' to the model's `fields` so the loader attaches it.")
        return self.long
