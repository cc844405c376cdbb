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


class MultiHeadTargetAttention(nn.Module):
    """Scaled dot-product attention of one target query over a padded behavior set (the ESU of TWIN and ETA).

    ``q = W_q t``, ``k_j = W_k h_j``, ``v_j = W_v h_j`` split into ``heads``;
    per head ``softmax_j(q·k_j / √d_h)`` over real behaviors only, outputs
    concatenated and projected back to ``dim``. :meth:`logits` exposes the
    head-averaged relevance so a GSU can score behaviors with the **same**
    function the ESU attends with (TWIN's consistency). ``W_k`` starts equal to
    ``W_q``, so before training the logit is a similarity (``(W t)·(W h)``) and a
    top-k over it already favours behaviors like the target; with independent
    random inits a GSU that ranks by it starts from a random selection and, on
    small data, may never bootstrap.

    The output also carries, per head, ``log Σ_j exp(logit_j)`` (0 for an empty
    row): softmax discards how much evidence there is (50 strong matches and one
    weak one give the same mean), and this restores it.

    Shapes: ``target (B, dim)``, ``keys (B, K, dim)``, ``mask (B, K)`` →
    ``(B, dim + heads)``; a row without behaviors gets zeros.
    """

    def __init__(self, dim: int, heads: int = 2, head_dim: int = 16) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.out_dim = dim + heads
        self.q = nn.Linear(dim, heads * head_dim)
        self.k = nn.Linear(dim, heads * head_dim, bias=False)
        self.v = nn.Linear(dim, heads * head_dim, bias=False)
        self.out = nn.Linear(heads * head_dim, dim)
        with torch.no_grad():  # start as a similarity search: q·k = (W t)·(W h), so like items score high
            self.k.weight.copy_(self.q.weight)
            self.q.bias.zero_()

    def query(self, target: Tensor) -> Tensor:
        """``(B, heads·head_dim)`` query, pre-scaled so that ``query · W_k h`` is the head-averaged logit."""
        return self.q(target) / (self.heads * self.head_dim**0.5)

    def forward(self, target: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        b, n, _ = keys.shape
        q = self.q(target).view(b, self.heads, 1, self.head_dim)
        k = self.k(keys).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        v = self.v(keys).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        s = (q @ k.transpose(-1, -2)) / self.head_dim**0.5  # (B, H, 1, K)
        s = s.masked_fill(~mask[:, None, None, :], float("-inf"))
        w = torch.softmax(s, dim=-1).nan_to_num(0.0)  # empty rows: all -inf → 0
        evidence = torch.logsumexp(s, dim=-1).reshape(b, self.heads)
        evidence = torch.where(mask.any(1, keepdim=True), evidence, torch.zeros_like(evidence))
        return torch.cat([self.out((w @ v).reshape(b, self.heads * self.head_dim)), evidence], dim=-1)
