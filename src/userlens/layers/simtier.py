"""MUSE's SimTier: how many behaviors fall in each band of similarity to the candidate, as a learned vector."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def simtier_counts(cos: Tensor, mask: Tensor, tiers: int) -> Tensor:
    """``(B, tiers)`` number of real behaviors per equal-width cosine bin over ``[-1, 1]``.

    Args:
        cos: ``(B, K)`` target–behavior cosines (clamped to [-1, 1]; 1 falls in the last bin).
        mask: ``(B, K)`` bool, True at real behaviors (padding counts nowhere).
    """
    tier = ((cos.clamp(-1, 1) + 1) / 2 * tiers).long().clamp_(0, tiers - 1)
    counts = torch.zeros(cos.shape[0], tiers, dtype=cos.dtype, device=cos.device)
    return counts.scatter_add_(1, tier, mask.to(cos.dtype))


class SimTier(nn.Module):
    """``Σ_t log(1 + count_t) · E_t``: each tier's log-count times a learned per-tier embedding ``E_t``.

    Shapes: ``cos (B, K)``, ``mask (B, K)`` → ``(B, dim)``; a row without behaviors gets zeros.

    Example:
        >>> SimTier(4, 3)(torch.tensor([[0.9, -0.2]]), torch.tensor([[True, False]])).shape
        torch.Size([1, 3])
    """

    def __init__(self, tiers: int, dim: int) -> None:
        super().__init__()
        self.tiers = tiers
        self.embed = nn.Linear(tiers, dim, bias=False)  # column t is the embedding E_t of tier t

    def forward(self, cos: Tensor, mask: Tensor) -> Tensor:
        return self.embed(torch.log1p(simtier_counts(cos, mask, self.tiers)))
