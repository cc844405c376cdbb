"""BST: Behavior Sequence Transformer (Chen et al., "Behavior Sequence Transformer for E-commerce
Recommendation in Alibaba", DLP-KDD 2019, arXiv:1905.06874).

The recent behaviors and the candidate form one sequence; a Transformer
encoder layer (multi-head self-attention + feed-forward) with learned
recency-position embeddings models their interactions; the candidate's output
and the mean of the behaviors' outputs feed the MLP tower.

Departures: positions count back from the most recent behavior (the paper
uses time-gap positions); mean-pooled behavior outputs instead of
concatenating all of them (sequence lengths vary).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from userlens.batch import Batch
from userlens.layers import MLP, masked_mean
from userlens.layers.embedding import fields_for
from userlens.models.registry import register_model
from userlens.models.spec import FeatureSpec, feature_embedding


@dataclass
class BSTConfig:
    embed_dim: int = 16
    heads: int = 2
    layers: int = 1
    max_len: int = 512  # positions embedded; older behaviors share the last row
    mlp: tuple[int, ...] = (200, 80)
    activation: str = "prelu"
    dropout: float = 0.0
    use_user: bool = False


class BST(nn.Module):
    # embeds only the batch's item / category ids (short history, target): TorchRec can shard its tables
    shardable_tables = True

    def __init__(self, spec: FeatureSpec, cfg: BSTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = feature_embedding(spec, cfg.embed_dim, cfg.use_user)
        d = self.embedding.item_dim
        self.position = nn.Embedding(cfg.max_len + 1, d)  # row 0: the candidate; 1..: recency rank
        nn.init.normal_(self.position.weight, std=0.02)
        layer = nn.TransformerEncoderLayer(d, cfg.heads, dim_feedforward=4 * d, dropout=cfg.dropout,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.tower = MLP(3 * d + self.embedding.side_dim, cfg.mlp, cfg.activation, cfg.dropout, out_dim=1)
        #: batch fields the loader must build for this model
        self.fields: frozenset[str] = fields_for(self.embedding)

    def forward(self, batch: Batch) -> Tensor:
        hist = batch.history
        mask = hist.mask()  # (B, L)
        target = self.embedding.target(batch)
        rank = hist.lengths.unsqueeze(1) - torch.arange(hist.max_len, device=mask.device)  # 1 = most recent
        pos = rank.clamp(1, self.cfg.max_len) * mask
        seq = torch.cat([target.unsqueeze(1) + self.position.weight[0], self.embedding.history(hist)
                         + self.position(pos)], dim=1)
        keep = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        out = self.encoder(seq, src_key_padding_mask=~keep)
        pooled = masked_mean(out[:, 1:], mask)
        return self.tower(torch.cat([target, out[:, 0], pooled, self.embedding.side(batch)], -1)).squeeze(-1)


@register_model("bst", BSTConfig, "BST: Transformer over the recent behaviors and the candidate (DLP-KDD 2019)")
def build_bst(spec: FeatureSpec, cfg: BSTConfig) -> BST:
    return BST(spec, cfg)
