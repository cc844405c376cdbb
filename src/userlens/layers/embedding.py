"""ID embeddings of items, categories, users and context features, shared by history and target."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from userlens.batch import Batch, History


class FeatureEmbedding(nn.Module):
    """Item ⊕ category embeddings (size ``2·dim``) for targets and behaviors, plus user / context tables.

    Index 0 is padding (its row is zero and gets no gradient); 1 is "unknown",
    a learned cold-start row.

    Args:
        n_items, n_categories: vocabulary sizes (including the two reserved rows).
        dim: size of each table.
        n_users: user vocabulary size, or 0 for no user embedding.
        context: context feature name → vocabulary size.
        init_std: normal init scale.
    """

    def __init__(self, n_items: int, n_categories: int, dim: int, n_users: int = 0,
                 context: dict[str, int] | None = None, init_std: float = 0.02) -> None:
        super().__init__()
        self.dim = dim
        self.item = nn.Embedding(n_items, dim, padding_idx=0)
        self.category = nn.Embedding(max(n_categories, 2), dim, padding_idx=0)
        self.user = nn.Embedding(n_users, dim, padding_idx=0) if n_users > 0 else None
        self.context = nn.ModuleDict({k: nn.Embedding(v, dim, padding_idx=0) for k, v in (context or {}).items()})
        for emb in self.modules():
            if isinstance(emb, nn.Embedding):
                nn.init.normal_(emb.weight, std=init_std)
                with torch.no_grad():
                    emb.weight[0].zero_()

    @property
    def item_dim(self) -> int:
        return 2 * self.dim

    @property
    def side_dim(self) -> int:
        """Size of :meth:`side` (user + context embeddings)."""
        return self.dim * ((self.user is not None) + len(self.context))

    def items(self, item: Tensor, category: Tensor) -> Tensor:
        """``(...)`` item and category indices → ``(..., 2·dim)``."""
        return torch.cat([self.item(item), self.category(category)], dim=-1)

    def target(self, batch: Batch) -> Tensor:
        """``(B, 2·dim)`` embedding of the candidate item."""
        return self.items(batch.target["target_item"], batch.target["target_category"])

    def history(self, hist: History) -> Tensor:
        """``(B, L, 2·dim)``; padded positions embed to zero (padding_idx)."""
        return self.items(hist["item"], hist["category"])

    def side(self, batch: Batch) -> Tensor:
        """``(B, side_dim)``: user and context embeddings, concatenated (empty when there are none)."""
        parts: list[Tensor] = []
        if self.user is not None:
            parts.append(self.user(batch.target["user"]))
        parts += [self.context[k](batch.context[k]) for k in self.context]
        if not parts:
            return batch.history.lengths.new_zeros((len(batch), 0), dtype=torch.float32)
        return torch.cat(parts, dim=-1)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over real positions: ``x (B, L, D)``, ``mask (B, L)`` → ``(B, D)``; empty rows give 0."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def fields_for(use_user: bool, extra: Sequence[str] = ()) -> frozenset[str]:
    """The batch fields an item-and-category model needs."""
    base = {"hist_item", "hist_category", "target_item", "target_category", *extra}
    return frozenset(base | ({"user"} if use_user else set()))
