"""Pieces shared by the lifelong (GSU → ESU) models: short-term interest, per-item tables, time gaps, ESUs."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from userlens.batch import Batch, History, LongHistory
from userlens.layers import explain
from userlens.layers.attention import MultiHeadTargetAttention, TargetAttention
from userlens.layers.embedding import FeatureEmbedding
from userlens.layers.gsu import Selection, table_topk
from userlens.layers.memo import frozen

#: time-gap buckets: 0 = padding, 1..N-1 = 1 + floor(log2(1 + gap in minutes)), capped
TIME_BUCKETS = 24


def time_gap_buckets(sample_time: Tensor, behavior_time: Tensor, mask: Tensor) -> Tensor:
    """``(B, K)`` log2 buckets of how long before the sample each behavior happened (SIM/TIN time encodings).

    Times are epoch milliseconds; padded positions get bucket 0. ``1 + floor(log2(1 + g))``
    is read off the float exponent (``frexp``), so it is exact and equal on every device.
    """
    gap_min = (sample_time.unsqueeze(1) - behavior_time).clamp_min(0).double() / 60_000.0
    bucket = torch.frexp(1 + gap_min).exponent.long().clamp_(1, TIME_BUCKETS - 1)
    return torch.where(mask, bucket, torch.zeros_like(bucket))


def item_table(embedding: FeatureEmbedding, item_category: np.ndarray) -> Tensor:
    """``(n_items, 2·dim)``: every item's id ⊕ category embedding, as behaviors are embedded.

    Per-item tables are what a GSU scores against: built once per forward and
    gathered per behavior, they make scoring 100,000 behaviors one gather each.
    """
    return pair_table(embedding.item, embedding.category, item_category)


def pair_table(item: nn.Embedding, category: nn.Embedding, item_category: np.ndarray) -> Tensor:
    """``(n_items, d_item + d_category)``: any item ⊕ category table pair, per item (e.g. DARE's attention tables)."""
    def build() -> Tensor:
        cat = torch.from_numpy(np.asarray(item_category, dtype=np.int64)).to(category.weight.device)
        return torch.cat([item.weight, category.weight[cat]], dim=-1)

    return frozen(item, f"pair_table:{id(category)}", (item, category, item_category), build)


def selected_history(long: LongHistory, sel: Selection, fields: tuple[str, ...] = ("item", "category", "time"),
                     device: torch.device | str | None = None) -> History:
    """The behaviors a GSU picked, as a ``(B, k)`` :class:`History` (oldest first, zero-padded) on ``device``."""
    hist = long.gather(sel.positions, sel.lengths, fields)
    if device is None:
        return hist
    return History({f: v.to(device) for f, v in hist.values.items()}, hist.lengths.to(device))


class GapEmbedding(nn.Module):
    """A learned embedding of each behavior's time-gap bucket (:func:`time_gap_buckets`); padding embeds to 0."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.table = nn.Embedding(TIME_BUCKETS, dim, padding_idx=0)
        nn.init.normal_(self.table.weight, std=0.02)
        with torch.no_grad():
            self.table.weight[0].zero_()

    def forward(self, buckets: Tensor) -> Tensor:
        return self.table(buckets)


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
        """``(n_items, dim)`` unit (or zero) rows on the device of ``embedding``; no gradient."""
        if self.content_dim == 0:
            with torch.no_grad():
                return frozen(embedding, "unit_item_table", (embedding, long.item_category),
                              lambda: F.normalize(item_table(embedding, long.item_category), dim=1))
        if long.content is None:
            raise ValueError("this model was built with item content vectors but the batch has none. "
                             "Fix: run `userlens embed-items` on the prepared directory before training/scoring.")
        arr = long.content[0]
        if arr.shape[1] != self.content_dim:
            raise ValueError(f"content vectors have {arr.shape[1]} dims, the model expects {self.content_dim}. "
                             "Fix: re-run embed-items with the same --pca-dim, or retrain.")
        device = embedding.item.weight.device
        if self._cache is None or self._cache[0] is not arr or self._cache[1].device != device:
            # a writable float32 copy: the stored vectors may be int8 or a read-only memory map
            vectors = torch.from_numpy(np.array(arr, dtype=np.float32))
            self._cache = (arr, F.normalize(vectors, dim=1).to(device))
        return self._cache[1]


class DINExactUnit(nn.Module):
    """SIM's ESU: DIN target attention over the selected behaviors, each concatenated with its time-gap embedding.

    Behavior ``j`` enters as ``[e_j ; g_j]`` (SIM §3.3 concatenates the
    time-information embedding to the behavior embedding); the target, which has
    no time gap, as ``[t ; 0]``. Output ``(B, dim + gap_dim)``.
    """

    def __init__(self, dim: int, gap_dim: int, hidden: tuple[int, ...] = (64, 32), activation: str = "dice") -> None:
        super().__init__()
        self.gap = GapEmbedding(gap_dim)
        self.attention = TargetAttention(dim + gap_dim, hidden, activation)
        self.out_dim = dim + gap_dim

    def forward(self, embedding: FeatureEmbedding, target: Tensor, hist: History, sample_time: Tensor) -> Tensor:
        rows, cols = hist.packed_index()
        gaps = self.gap(time_gap_buckets(sample_time, hist["time"], hist.mask()))  # (B, K, gap_dim)
        behaviors = embedding.items(hist["item"][rows, cols], hist["category"][rows, cols])  # (N, dim) packed
        keys = torch.cat([behaviors, gaps[rows, cols]], dim=-1)
        query = F.pad(target, (0, self.gap.dim))
        if explain.active():  # DIN's unnormalised weights of the picks, for explained requests only
            explain.note_weights(self.attention.scores(query, keys, rows), rows, cols, tuple(hist["item"].shape))
        return self.attention(query, keys, rows)


class MultiHeadExactUnit(nn.Module):
    """TWIN's ESU (ETA uses it too): multi-head target attention with a relevance the GSU can compute exactly.

    Per head, ``logit_hj = q_h·(W_k e_j)_h / √d_h + β_h(gap_j)``: keys are the
    behavior's inherent features ``e_j`` (item ⊕ category, so ``W_k e`` is a
    per-item table) and, with ``time_bias``, the cross feature (the time-gap
    bucket) enters as a scalar per head, TWIN's "cross features compressed to a
    scalar bias": ``β_h(gap) = g(gap) · u_h``, the time-gap embedding ``g``
    compressed by a learned ``u`` (``(K_c W_c) β`` in the paper), so one lookup
    per bucket. Values are ``W_v [e_j ; g_j]`` (TWIN's values carry the cross
    features too). :meth:`search` ranks the whole history by the head-averaged
    logit, the number :meth:`logits` gives for a selected set.

    ``qk_norm``: query and keys read RMS-normalised features, so the logits have unit
    scale from the start (see :class:`~userlens.layers.attention.MultiHeadTargetAttention`).

    Returns ``[out, out ⊙ target, evidence per head]`` ``(B, 2·dim + heads)``:
    ``out ⊙ target`` is a target-aware representation (as in TIN / DARE), the
    evidence is described in :class:`~userlens.layers.attention.MultiHeadTargetAttention`;
    both are departures from TWIN and ETA, listed in their model files.
    """

    def __init__(self, dim: int, gap_dim: int, heads: int = 2, head_dim: int = 16, time_bias: bool = True,
                 qk_norm: bool = True) -> None:
        super().__init__()
        self.gap = GapEmbedding(gap_dim)
        self.compress: nn.Linear | None = None
        if time_bias:
            self.compress = nn.Linear(gap_dim, heads, bias=False)
            nn.init.zeros_(self.compress.weight)  # start as a pure similarity (see MultiHeadTargetAttention)
        self.attention = MultiHeadTargetAttention(dim, heads, head_dim, value_dim=dim + gap_dim, qk_norm=qk_norm)
        self.dim = dim
        self.out_dim = 2 * dim + heads

    def bias_table(self) -> Tensor | None:
        """``(TIME_BUCKETS, heads)`` logit bias of each time-gap bucket, or None without ``time_bias``."""
        return None if self.compress is None else self.compress(self.gap.table.weight)

    def _bias(self, buckets: Tensor) -> Tensor | None:
        table = self.bias_table()
        return None if table is None else table[buckets].transpose(1, 2)  # (B, K, H) → (B, H, K)

    def logits(self, embedding: FeatureEmbedding, target: Tensor, hist: History, sample_time: Tensor) -> Tensor:
        """``(B, K)`` head-averaged attention logits of ``hist`` (padding not masked): what :meth:`search` ranks by."""
        buckets = time_gap_buckets(sample_time, hist["time"], hist.mask())
        return self.attention.logits(target, embedding.history(hist), self._bias(buckets))

    def search(self, embedding: FeatureEmbedding, long: LongHistory, target: Tensor, sample_time: Tensor,
               k: int) -> Selection:
        """TWIN's GSU: the top-``k`` of the whole history by :meth:`logits` (ties → more recent), on the CPU."""
        with torch.no_grad():
            keys = frozen(self, "keys", (self.attention, embedding, long.item_category),  # (n_items, H·dh), per item
                          lambda: self.attention.key_table(item_table(embedding, long.item_category)))
            table = self.bias_table()
            if table is None:
                return table_topk(long, self.attention.query(target), keys, k)
            beta = table.mean(1).cpu()  # (TIME_BUCKETS,) head-averaged bias per bucket
            times, now = np.asarray(long.timeline["time"]), sample_time.detach().cpu()

            def bias(pos: Tensor, rows: Tensor) -> Tensor:  # (B', C) global positions of rows → time-gap bias
                t = torch.from_numpy(times[pos.numpy()].astype(np.int64))
                return beta[time_gap_buckets(now[rows], t, torch.ones_like(pos, dtype=torch.bool))]

            return table_topk(long, self.attention.query(target), keys, k, bias=bias)

    def forward(self, embedding: FeatureEmbedding, target: Tensor, hist: History, sample_time: Tensor) -> Tensor:
        mask = hist.mask()
        buckets = time_gap_buckets(sample_time, hist["time"], mask)
        e = embedding.history(hist)  # (B, K, dim)
        values = torch.cat([e, self.gap(buckets)], dim=-1)
        out = self.attention(target, e, mask, self._bias(buckets), values)
        d = self.dim
        return torch.cat([out[:, :d], out[:, :d] * target, out[:, d:]], dim=-1)
