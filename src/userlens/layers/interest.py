"""Pieces shared by the lifelong (GSU → ESU) models: short-term interest, per-item tables, time gaps, ESU input."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from userlens.batch import Batch, History, LongHistory
from userlens.layers.attention import MultiHeadTargetAttention, TargetAttention
from userlens.layers.embedding import FeatureEmbedding
from userlens.layers.gsu import Selection

#: time-gap buckets: 0 = padding, 1..N-1 = 1 + floor(log2(1 + gap in minutes)), capped
TIME_BUCKETS = 24


def time_gap_buckets(sample_time: Tensor, behavior_time: Tensor, mask: Tensor) -> Tensor:
    """``(B, K)`` log2 buckets of how long before the sample each behavior happened (SIM/TIN time encodings).

    Times are epoch milliseconds; padded positions get bucket 0.
    """
    gap_min = ((sample_time.unsqueeze(1) - behavior_time).clamp_min(0).double() / 60_000.0)
    bucket = (1 + torch.floor(torch.log2(1 + gap_min))).long().clamp_(1, TIME_BUCKETS - 1)
    return torch.where(mask, bucket, torch.zeros_like(bucket))


def item_table(embedding: FeatureEmbedding, item_category: np.ndarray) -> Tensor:
    """``(n_items, 2·dim)``: every item's id ⊕ category embedding, as behaviors are embedded.

    Per-item tables are what a GSU scores against: built once per forward and
    gathered per behavior, they make scoring 100,000 behaviors one gather each.
    """
    return pair_table(embedding.item, embedding.category, item_category)


def pair_table(item: nn.Embedding, category: nn.Embedding, item_category: np.ndarray) -> Tensor:
    """``(n_items, d_item + d_category)``: any item ⊕ category table pair, per item (e.g. DARE's attention tables)."""
    cat = torch.from_numpy(np.asarray(item_category, dtype=np.int64))
    return torch.cat([item.weight, category.weight[cat]], dim=-1)


def selected_history(long: LongHistory, sel: Selection, fields: tuple[str, ...] = ("item", "category", "time")) -> History:
    """The behaviors a GSU picked, as a ``(B, k)`` :class:`History` (oldest first, zero-padded)."""
    return long.gather(sel.positions, sel.lengths, fields)


class ShortInterest(nn.Module):
    """DIN target attention over the short (recent) history, packed: the short-term view every model keeps.

    Shared tables are passed to ``forward``, never owned, so each weight is registered once.
    """

    def __init__(self, dim: int, hidden: tuple[int, ...] = (64, 32), activation: str = "dice") -> None:
        super().__init__()
        self.attention = TargetAttention(dim, hidden, activation)

    def forward(self, embedding: FeatureEmbedding, batch: Batch, target: Tensor) -> Tensor:
        rows, cols = batch.history.packed_index()
        keys = embedding.items(batch.history["item"][rows, cols], batch.history["category"][rows, cols])
        return self.attention(target, keys, rows)


class TimedKeys(nn.Module):
    """Behavior embeddings of a selected history plus a learned time-gap embedding (SIM's ESU input)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gap = nn.Embedding(TIME_BUCKETS, dim, padding_idx=0)
        nn.init.normal_(self.gap.weight, std=0.02)
        with torch.no_grad():
            self.gap.weight[0].zero_()

    def forward(self, embedding: FeatureEmbedding, hist: History, sample_time: Tensor) -> Tensor:
        """``(B, K, 2·dim)`` keys; padded positions are exactly zero."""
        mask = hist.mask()
        e = embedding.history(hist) + self.gap(time_gap_buckets(sample_time, hist["time"], mask))
        return e * mask.unsqueeze(-1)


class ContentTable:
    """Frozen, L2-normalised item content vectors for content GSUs (MUSE, QIN), with an ID fallback.

    With ``content_dim > 0`` the vectors come from the batch's
    :class:`LongHistory` (``userlens embed-items``); items without content are zero
    rows (cosine 0 to everything). With ``content_dim == 0`` the model's own item
    ⊕ category embeddings, detached, stand in (documented fallback for datasets
    without titles or images). The normalised table is cached per source array
    (:meth:`PreparedData.content` loads it once per dataset).
    """

    def __init__(self, item_dim: int, content_dim: int) -> None:
        self.content_dim = content_dim
        self.dim = content_dim or item_dim
        self._cache: tuple[np.ndarray, Tensor] | None = None  # (source array, its normalised tensor)

    def __call__(self, embedding: FeatureEmbedding, long: LongHistory) -> Tensor:
        """``(n_items, dim)`` unit (or zero) rows; no gradient."""
        if self.content_dim == 0:
            with torch.no_grad():
                return torch.nn.functional.normalize(item_table(embedding, long.item_category), dim=1)
        if long.content is None:
            raise ValueError("this model was built with item content vectors but the batch has none. "
                             "Fix: run `userlens embed-items` on the prepared directory before training/scoring.")
        arr = long.content[0]
        if arr.shape[1] != self.content_dim:
            raise ValueError(f"content vectors have {arr.shape[1]} dims, the model expects {self.content_dim}. "
                             "Fix: re-run embed-items with the same --pca-dim, or retrain.")
        if self._cache is None or self._cache[0] is not arr:
            # a writable float32 copy: the stored vectors may be int8 or a read-only memory map
            vectors = torch.from_numpy(np.array(arr, dtype=np.float32))
            self._cache = (arr, torch.nn.functional.normalize(vectors, dim=1))
        return self._cache[1]


class DINExactUnit(nn.Module):
    """SIM's ESU: DIN target attention over the selected behaviors, each with its time-gap embedding."""

    def __init__(self, dim: int, hidden: tuple[int, ...] = (64, 32), activation: str = "dice") -> None:
        super().__init__()
        self.keys = TimedKeys(dim)
        self.attention = TargetAttention(dim, hidden, activation)
        self.out_dim = dim

    def forward(self, embedding: FeatureEmbedding, target: Tensor, hist: History, sample_time: Tensor) -> Tensor:
        keys = self.keys(embedding, hist, sample_time)
        rows, cols = hist.packed_index()
        return self.attention(target, keys[rows, cols], rows)


class MultiHeadExactUnit(nn.Module):
    """ETA / TWIN's ESU: multi-head target attention over timed keys.

    Returns ``[out, out ⊙ target, evidence per head]``: the target-aware
    representation (as in TIN / DARE) and the attention's log-normaliser.
    """

    def __init__(self, dim: int, heads: int = 2, head_dim: int = 16) -> None:
        super().__init__()
        self.keys = TimedKeys(dim)
        self.attention = MultiHeadTargetAttention(dim, heads, head_dim)
        self.dim = dim
        self.out_dim = 2 * dim + heads

    def forward(self, embedding: FeatureEmbedding, target: Tensor, hist: History, sample_time: Tensor) -> Tensor:
        out = self.attention(target, self.keys(embedding, hist, sample_time), hist.mask())
        d = self.dim
        return torch.cat([out[:, :d], out[:, :d] * target, out[:, d:]], dim=-1)
