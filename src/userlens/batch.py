"""The batch types shared by the data loader and the models.

One representation of a behavior sequence, settled once (STYLE §4): a
:class:`History` holds, per field, a ``(B, L)`` int64 tensor that is
**left-aligned** and ordered **oldest → newest** (position ``lengths[b]-1`` is
the most recent behavior), plus ``lengths`` ``(B,)``. Positions at or beyond
``lengths[b]`` are padding and hold 0 (the padding index of every vocabulary).
The mask is derived here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

#: Fields a model may ask the loader for. ``hist_*`` fields form the History.
HIST_FIELDS = ("hist_item", "hist_category", "hist_behavior", "hist_time")
TARGET_FIELDS = ("user", "target_item", "target_category", "time")
ALL_FIELDS = frozenset(HIST_FIELDS + TARGET_FIELDS)


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
class Batch:
    """One training / scoring batch.

    ``label`` is float32 (B,) in {0, 1} (absent when scoring online).
    ``target`` holds ``user``, ``target_item``, ``target_category``, ``time`` (B,)
    int64 tensors, as requested by the model; ``context`` the declared context
    feature indices (B,).
    """

    target: dict[str, Tensor]
    history: History
    label: Tensor | None = None
    context: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.history.lengths.shape[0])
