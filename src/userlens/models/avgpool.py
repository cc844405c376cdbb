"""Embedding & MLP with a mean-pooled history: the classic baseline ("Base Model" in DIN, KDD 2018 §4.2).

Every behavior counts equally, whatever the candidate: the history collapses
to one fixed vector. Departure from the paper's base model: mean instead of sum
pooling (sum pooling grows with history length and destabilises long histories).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from userlens.batch import Batch
from userlens.layers import MLP, FeatureEmbedding, masked_mean
from userlens.layers.embedding import fields_for
from userlens.models.registry import register_model
from userlens.models.spec import FeatureSpec, feature_embedding


@dataclass
class AvgPoolConfig:
    embed_dim: int = 16
    mlp: tuple[int, ...] = (200, 80)
    activation: str = "prelu"
    dropout: float = 0.0
    use_user: bool = False


class AvgPool(nn.Module):
    """Logit = MLP([target, mean(history), user/context]).

    Shapes: batch of B samples → ``(B,)`` logits.
    """

    # embeds only the batch's item / category ids (short history, target): TorchRec can shard its tables
    shardable_tables = True

    def __init__(self, embedding: FeatureEmbedding, tower: MLP) -> None:
        super().__init__()
        self.embedding, self.tower = embedding, tower
        #: batch fields the loader must build for this model
        self.fields: frozenset[str] = fields_for(embedding)

    def forward(self, batch: Batch) -> Tensor:
        target = self.embedding.target(batch)  # (B, 2D)
        hist = self.embedding.history(batch.history)  # (B, L, 2D)
        pooled = masked_mean(hist, batch.history.mask())  # (B, 2D)
        return self.tower(torch.cat([target, pooled, self.embedding.side(batch)], dim=-1)).squeeze(-1)


@register_model("avgpool", AvgPoolConfig, "embedding & MLP over the mean-pooled short history (baseline)")
def build_avgpool(spec: FeatureSpec, cfg: AvgPoolConfig) -> AvgPool:
    emb = feature_embedding(spec, cfg.embed_dim, cfg.use_user)
    tower = MLP(2 * emb.item_dim + emb.side_dim, cfg.mlp, cfg.activation, cfg.dropout, out_dim=1)
    return AvgPool(emb, tower)
