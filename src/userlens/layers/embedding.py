"""ID embeddings of items, categories, users and context features, shared by history and target."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from userlens.batch import COUNT_BUCKETS, COUNTS_FIELD, Batch, History


def _gather(weight: Tensor, ids: Tensor) -> Tensor:
    """``weight[ids]`` as one ``index_select`` over the flattened ids."""
    return weight.index_select(0, ids.reshape(-1)).view(*ids.shape, weight.shape[1])


class _GatherRows(torch.autograd.Function):
    """``weight[ids]`` whose backward is one ``index_add`` (the padding row's gradient zeroed).

    ``nn.Embedding``'s CPU backward (``embedding_dense_backward``) sorts the
    indices first: 4.2 ms for 41,000 lookups into a 100,000 × 16 table on this
    machine, against 1.0 ms for ``index_add`` (``benchmarks/RESULTS.md``, "Where
    does a DIN step's time go"). Forward values are identical; gradients equal up to float
    summation order (``tests/layers/test_embedding.py``).
    """

    @staticmethod
    def forward(ctx, weight: Tensor, ids: Tensor, padding_idx: int | None) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(ids.reshape(-1))
        ctx.num_rows, ctx.padding_idx = weight.shape[0], padding_idx
        return _gather(weight, ids)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (flat,) = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        out = g.new_zeros(ctx.num_rows, g.shape[1]).index_add_(0, flat, g)
        if ctx.padding_idx is not None:
            out[ctx.padding_idx] = 0
        return out, None, None


class Table(nn.Embedding):
    """``nn.Embedding`` (same parameters, same ``state_dict``) with the faster :class:`_GatherRows` backward.

    Dense gradients only (``sparse=True`` and ``max_norm`` are not supported).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.sparse or self.max_norm is not None:
            raise ValueError("Table supports dense gradients without max_norm; use nn.Embedding for those")

    def forward(self, ids: Tensor) -> Tensor:
        if not torch.is_grad_enabled() or not self.weight.requires_grad:
            return _gather(self.weight, ids)
        return _GatherRows.apply(self.weight, ids, self.padding_idx)  # type: ignore[no-any-return]


_MODULE_DICT_NAMES = frozenset(dir(nn.ModuleDict()))


def _table_key(name: str) -> str:
    """A context feature name as a ModuleDict key: the name itself when torch takes it (so state dicts keep
    their keys), else ``%`` + its UTF-8 hex ("dev.ice", "type", "" are column names torch refuses as keys).
    """
    if name and "." not in name and not name.startswith("%") and name not in _MODULE_DICT_NAMES:
        return name
    return "%" + name.encode().hex()


class FeatureEmbedding(nn.Module):
    """Item ⊕ category embeddings (size ``2·dim``) for targets and behaviors, plus user / context tables.

    Index 0 is padding (its row is zero and gets no gradient); 1 is "unknown",
    a learned cold-start row.

    Args:
        n_items, n_categories: vocabulary sizes (including the two reserved rows).
        dim: size of each table.
        n_users: user vocabulary size, or 0 for no user embedding.
        context: context feature name → vocabulary size.
        counts: counting features (:mod:`userlens.data.counts`), each embedded from its bucket index.
        init_std: normal init scale.
        item_init_std: normal init scale of the item table (default ``init_std``): a smaller one starts every
            item at its category (see :class:`userlens.models.lifelong.LifelongConfig`).
    """

    def __init__(self, n_items: int, n_categories: int, dim: int, n_users: int = 0,
                 context: dict[str, int] | None = None, counts: Sequence[str] = (), init_std: float = 0.02,
                 item_init_std: float | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.item = Table(n_items, dim, padding_idx=0)
        self.category = Table(max(n_categories, 2), dim, padding_idx=0)
        self.user = Table(n_users, dim, padding_idx=0) if n_users > 0 else None
        self.context_names = list(context or {})
        self.context = nn.ModuleDict({_table_key(k): Table(v, dim, padding_idx=0) for k, v in (context or {}).items()})
        self.counts = nn.ModuleDict({k: Table(COUNT_BUCKETS, dim, padding_idx=0) for k in counts})
        for emb in self.modules():
            if isinstance(emb, nn.Embedding):
                std = item_init_std if emb is self.item and item_init_std is not None else init_std
                nn.init.normal_(emb.weight, std=std)
                with torch.no_grad():
                    emb.weight[0].zero_()

    @property
    def item_dim(self) -> int:
        return 2 * self.dim

    @property
    def side_dim(self) -> int:
        """Size of :meth:`side` (user + context + counting-feature embeddings)."""
        return self.dim * ((self.user is not None) + len(self.context) + len(self.counts))

    @property
    def fields(self) -> frozenset[str]:
        """The batch fields :meth:`side` reads beyond the item ones (``user``, ``counts``)."""
        return frozenset({"user"} if self.user is not None else set()) | frozenset(
            {COUNTS_FIELD} if len(self.counts) else set())

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
        """``(B, side_dim)``: user, context and counting-feature embeddings, concatenated (empty when none)."""
        parts: list[Tensor] = []
        if self.user is not None:
            parts.append(self.user(batch.target["user"]))
        parts += [self.context[_table_key(k)](batch.context[k]) for k in self.context_names]
        parts += [self.counts[k](batch.counts[k]) for k in self.counts]
        if not parts:
            return batch.history.lengths.new_zeros((len(batch), 0), dtype=torch.float32)
        return torch.cat(parts, dim=-1)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over real positions: ``x (B, L, D)``, ``mask (B, L)`` → ``(B, D)``; empty rows give 0."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def fields_for(embedding: FeatureEmbedding, extra: Sequence[str] = ()) -> frozenset[str]:
    """The batch fields an item-and-category model needs: its embedding's side features plus ``extra``."""
    return frozenset({"hist_item", "hist_category", "target_item", "target_category", *extra}) | embedding.fields
