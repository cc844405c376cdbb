"""DARE: Decoupled Attention and Representation Embeddings (Feng et al., "Long-Sequence Recommendation
Models Need Decoupled Embeddings", ICLR 2025, arXiv:2410.02604).

TWIN's single embedding must serve two jobs, scoring (attention) and being
summed (representation), and their gradients conflict. DARE gives each
behavior two tables: **attention** embeddings (size ``attention_dim`` per field,
may be much smaller) used by both the GSU top-k and the ESU weights, and
**representation** embeddings (``embed_dim``) that the weights average. A
smaller attention table makes the whole-history scan proportionally cheaper.
The output uses target-aware representation (behavior ⊙ target), as in DARE.

Departure: no time-gap or cross features in the attention logit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from userlens.batch import Batch
from userlens.layers.gsu import table_topk
from userlens.layers.interest import pair_table, selected_history
from userlens.models.lifelong import LifelongConfig, LifelongModel
from userlens.models.registry import register_model
from userlens.models.spec import FeatureSpec


@dataclass
class DAREConfig(LifelongConfig):
    attention_dim: int = 16  # per field (item, category) of the attention tables; representation is embed_dim


class DARE(LifelongModel):
    def __init__(self, spec: FeatureSpec, cfg: DAREConfig) -> None:
        super().__init__(spec, cfg, long_dim=2 * cfg.embed_dim)
        self.att_item = nn.Embedding(spec.n_items, cfg.attention_dim, padding_idx=0)
        self.att_category = nn.Embedding(max(spec.n_categories, 2), cfg.attention_dim, padding_idx=0)
        for emb in (self.att_item, self.att_category):
            nn.init.normal_(emb.weight, std=0.02)
            with torch.no_grad():
                emb.weight[0].zero_()
        self.scale = (2 * cfg.attention_dim) ** -0.5

    def _att(self, item: Tensor, category: Tensor) -> Tensor:
        return torch.cat([self.att_item(item), self.att_category(category)], dim=-1)

    def long_interest(self, batch: Batch, target: Tensor) -> Tensor:
        long = batch.need_long()
        q = self._att(batch.target["target_item"], batch.target["target_category"])  # (B, 2a)
        with torch.no_grad():
            sel = table_topk(long, q, pair_table(self.att_item, self.att_category, long.item_category), self.cfg.k)
        hist = selected_history(long, sel)
        mask = hist.mask()
        logits = (self._att(hist["item"], hist["category"]) @ q.unsqueeze(-1)).squeeze(-1) * self.scale
        w = torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1).nan_to_num(0.0)  # (B, k)
        rep = self.embedding.history(hist) * target.unsqueeze(1)  # target-aware representation
        return (w.unsqueeze(-1) * rep).sum(1)


@register_model("dare", DAREConfig, "DARE: TWIN with decoupled attention / representation embeddings (ICLR 2025)")
def build_dare(spec: FeatureSpec, cfg: DAREConfig) -> DARE:
    return DARE(spec, cfg)
