"""Target attention (the DIN local activation unit) over packed real behaviors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from userlens.layers.activation import make_activation


def segment_softmax(scores: Tensor, rows: Tensor, n_rows: int) -> Tensor:
    """Softmax of packed ``scores (N,)`` within each row id of ``rows (N,)``."""
    row_max = torch.full((n_rows,), float("-inf"), dtype=scores.dtype, device=scores.device)
    row_max = row_max.scatter_reduce(0, rows, scores, reduce="amax", include_self=True)
    e = torch.exp(scores - row_max[rows])
    denom = torch.zeros(n_rows, dtype=scores.dtype, device=scores.device).index_add(0, rows, e)
    return e / denom[rows]


class TargetAttention(nn.Module):
    """DIN's local activation unit (Zhou et al., KDD 2018, Fig. 2).

    ``w_j = MLP([h_j, t, h_j − t, h_j ⊙ t])`` and ``out = Σ_j w_j · h_j`` over the
    user's real behaviors ``j`` (no softmax, as in the paper, which keeps the
    intensity of an interest; ``normalize="softmax"`` gives the normalised variant).

    It takes the **packed** behaviors (see :meth:`History.packed_index`), so
    padding is never computed and cannot reach Dice's batch statistics, and
    splits the first layer ``W·[h, t, h−t, h⊙t]`` as
    ``(W₁+W₃)·h + (W₂−W₃)·t + W₄·(h⊙t)``: the target term is computed once per
    row instead of once per behavior. Same parameters, same function as the concat.

    Args:
        dim: embedding size D of targets and behaviors.
        hidden: attention MLP sizes, e.g. ``(64, 32)``.

    Shapes: ``target (B, D)``, ``keys (N, D)`` packed behaviors, ``rows (N,)`` their
    row in the batch → ``(B, D)``; a row with no behavior gets zeros.
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (64, 32), activation: str = "dice",
                 normalize: Literal["none", "softmax"] = "none") -> None:
        super().__init__()
        if not hidden:
            raise ValueError("TargetAttention needs at least one hidden layer, e.g. (64, 32)")
        self.dim, self.normalize = dim, normalize
        self.first = nn.Linear(4 * dim, hidden[0])
        rest: list[nn.Module] = [make_activation(activation, hidden[0])]
        for a, b in zip(hidden[:-1], hidden[1:]):
            rest += [nn.Linear(a, b), make_activation(activation, b)]
        rest.append(nn.Linear(hidden[-1], 1))
        self.rest = nn.Sequential(*rest)

    def scores(self, target: Tensor, keys: Tensor, rows: Tensor) -> Tensor:
        """Attention logits ``(N,)`` of the packed behaviors."""
        w_h, w_t, w_d, w_p = self.first.weight.split(self.dim, dim=1)  # each (H0, D)
        z_t = torch.addmm(self.first.bias, target, (w_t - w_d).t())  # (B, H0), once per row
        z = torch.addmm(z_t[rows], keys, (w_h + w_d).t()) + (keys * target[rows]) @ w_p.t()  # (N, H0)
        return self.rest(z).squeeze(-1)

    def forward(self, target: Tensor, keys: Tensor, rows: Tensor) -> Tensor:
        s = self.scores(target, keys, rows)
        w = segment_softmax(s, rows, target.shape[0]) if self.normalize == "softmax" else s
        return torch.zeros_like(target).index_add(0, rows, w.unsqueeze(-1) * keys)
