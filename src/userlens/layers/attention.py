"""Target attention (the DIN local activation unit) over packed real behaviors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from userlens.layers.activation import make_activation
from userlens.layers.explain import note_weights


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
        # index_select, not [rows]: its backward is an index_add, not a (sorting) accumulating index_put
        z = torch.addmm(z_t.index_select(0, rows), keys, (w_h + w_d).t())  # (N, H0)
        z = z + (keys * target.index_select(0, rows)) @ w_p.t()
        return self.rest(z).squeeze(-1)

    def forward(self, target: Tensor, keys: Tensor, rows: Tensor) -> Tensor:
        s = self.scores(target, keys, rows)
        w = segment_softmax(s, rows, target.shape[0]) if self.normalize == "softmax" else s
        return torch.zeros_like(target).index_add(0, rows, w.unsqueeze(-1) * keys)


def rms_normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    """``x / rms(x)`` over the last dim: unit mean square whatever the scale of ``x``; a zero row stays 0."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


class MultiHeadTargetAttention(nn.Module):
    """Scaled dot-product attention of one target query over a padded behavior set (the ESU of TWIN and ETA).

    Per head ``h``: ``logit_hj = q_h·k_hj / √d_h + bias_hj`` with ``q = W_q n(t)``,
    ``k_j = W_k n(x_j)`` (``x_j``: the behavior's *inherent* features, so ``W_k n(x)``
    can be computed once per item; ``n``: see ``qk_norm``) and an optional per-behavior scalar ``bias``
    (TWIN's cross features compressed to a scalar); ``softmax_j`` over real
    behaviors only averages ``v_j = W_v u_j`` (``u_j``: the value features,
    ``x_j`` unless given), heads are concatenated and projected back to ``dim``.
    :meth:`logits` is the head-averaged logit, and :meth:`query` with :meth:`key_table`
    lets a GSU compute the same number from a per-item key table (TWIN's consistency).

    Departures from the papers' attention (every model using this unit lists them too):

    * ``W_k`` starts equal to ``W_q`` (and ``W_q``'s bias at 0), so before
      training the logit is a similarity ``(W t)·(W x)``: a top-k over it already
      favours behaviors like the target. With independent random inits a GSU that
      ranks by it starts from a random selection and, on small data, may never
      bootstrap.
    * ``qk_norm`` (default on): query and keys read RMS-normalised features
      ``n(x) = x / rms(x)`` and ``W_q = W_k`` start as ``N(0, 1/dim)``, so the logits
      have a transformer's unit scale from the first step: the same item scores
      ``≈ √d_h`` (4 for ``d_h = 16``), the same category with another item ``≈ √d_h / 2``,
      unrelated behaviors ``≈ N(0, 1)``. Without it the logits scale with the
      squared embedding norm (tables start at std 0.02, so every logit is ``~1e-3``):
      the softmax stays uniform over the ``k`` retrieved behaviors for a whole
      short training, the output is their plain mean and the evidence below is
      ``log k`` for every sample. ``n`` is per vector, so a per-item key table
      still gives the ESU's exact logit.
    * The output also carries, per head, the "evidence" ``log Σ_j exp(logit_hj)``
      (0 for an empty row): softmax discards how much evidence there is (50 strong
      matches and one weak one give the same mean), and this restores it.

    Shapes: ``target (B, dim)``, ``keys (B, K, dim)``, ``mask (B, K)``, ``bias (B, heads, K)``,
    ``values (B, K, value_dim)`` → ``(B, dim + heads)``; a row without behaviors gets zeros.
    """

    def __init__(self, dim: int, heads: int = 2, head_dim: int = 16, value_dim: int | None = None,
                 qk_norm: bool = True) -> None:
        super().__init__()
        self.heads, self.head_dim, self.qk_norm = heads, head_dim, qk_norm
        self.out_dim = dim + heads
        self.q = nn.Linear(dim, heads * head_dim)
        self.k = nn.Linear(dim, heads * head_dim, bias=False)
        self.v = nn.Linear(value_dim or dim, heads * head_dim, bias=False)
        self.out = nn.Linear(heads * head_dim, dim)
        with torch.no_grad():  # start as a similarity search: q·k = (W t)·(W h), so like items score high
            if qk_norm:  # unit-variance features in, unit-variance q and k out: logits of order 1
                nn.init.normal_(self.q.weight, std=dim**-0.5)
            self.k.weight.copy_(self.q.weight)
            self.q.bias.zero_()

    def _norm(self, x: Tensor) -> Tensor:
        return rms_normalize(x) if self.qk_norm else x

    def key_table(self, features: Tensor) -> Tensor:
        """``(n, heads·head_dim)`` keys of inherent ``features (n, dim)`` (e.g. one row per item) for a GSU."""
        return self.k(self._norm(features))

    def query(self, target: Tensor) -> Tensor:
        """``(B, heads·head_dim)`` query, pre-scaled so that ``query · key_table(x)`` is the head-averaged ``q·k`` term."""
        return self.q(self._norm(target)) / (self.heads * self.head_dim**0.5)

    def head_logits(self, target: Tensor, keys: Tensor, bias: Tensor | None = None) -> Tensor:
        """``(B, heads, K)`` logits ``q_h·k_hj / √d_h (+ bias_hj)``, padding not masked."""
        b, n, _ = keys.shape
        q = self.q(self._norm(target)).view(b, self.heads, 1, self.head_dim)
        k = self.key_table(keys).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        s = (q @ k.transpose(-1, -2)).squeeze(2) / self.head_dim**0.5  # (B, H, K)
        return s if bias is None else s + bias

    def logits(self, target: Tensor, keys: Tensor, bias: Tensor | None = None) -> Tensor:
        """``(B, K)`` head-averaged logits: the relevance a consistent GSU ranks by."""
        return self.head_logits(target, keys, bias).mean(1)

    def forward(self, target: Tensor, keys: Tensor, mask: Tensor, bias: Tensor | None = None,
                values: Tensor | None = None) -> Tensor:
        b, n, _ = keys.shape
        u = keys if values is None else values
        v = self.v(u).view(b, n, self.heads, self.head_dim).transpose(1, 2)  # (B, H, K, dh)
        s = self.head_logits(target, keys, bias).masked_fill(~mask[:, None, :], float("-inf"))  # (B, H, K)
        w = torch.softmax(s, dim=-1).nan_to_num(0.0)  # empty rows: all -inf → 0
        note_weights(w.mean(1))  # head-averaged, for explained requests only
        evidence = torch.logsumexp(s, dim=-1)  # (B, H)
        evidence = torch.where(mask.any(1, keepdim=True), evidence, torch.zeros_like(evidence))
        pooled = (w.unsqueeze(2) @ v).reshape(b, self.heads * self.head_dim)
        return torch.cat([self.out(pooled), evidence], dim=-1)
