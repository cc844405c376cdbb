"""MUSE: MUltimodal SEarch-based user interest modeling (Wu et al., "MUSE: A Simple Yet Effective
Multimodal Search-Based Framework for Lifelong User Interest Modeling", 2025, arXiv:2512.07216).

GSU: cosine between **frozen content embeddings** of the candidate and of every
behavior (``userlens embed-items``), top ``k``. Plus **SimTier**: the share of
the whole history in each cosine bin, a cheap summary of how much of the
history resembles the candidate. ESU: target attention over the retrieved
behaviors embedded as ID ⊕ projected content (MUSE's ID–content fusion).

Departures (from the paper and its released code):

* SimTier here is the share of the **whole** searched history in each cosine
  bin, fed to the tower as numbers; the paper bins the retrieved top-k (and the
  recent sequence) and maps each bin's ``log(1 + count)`` through a learned
  per-tier embedding.
* The ESU is DIN's activation unit over ID ⊕ projected content; the paper's
  SA-TA also injects the target–behavior cosine into the attention score.
* Without content vectors the GSU falls back to the model's own detached ID
  embeddings (see :class:`~userlens.layers.interest.ContentTable`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from userlens.batch import Batch
from userlens.layers import TargetAttention
from userlens.layers.gsu import simtier, table_topk
from userlens.layers.interest import ContentTable, selected_history
from userlens.models.lifelong import LifelongConfig, LifelongModel
from userlens.models.registry import register_model
from userlens.models.spec import FeatureSpec


@dataclass
class MUSEConfig(LifelongConfig):
    tiers: int = 20  # SimTier bins over cosine [-1, 1]


class MUSE(LifelongModel):
    def __init__(self, spec: FeatureSpec, cfg: MUSEConfig) -> None:
        d = 2 * cfg.embed_dim
        super().__init__(spec, cfg, long_dim=2 * d + cfg.tiers, extras=("long_content",) if spec.content_dim else ())
        self.content = ContentTable(self.embedding.item_dim, spec.content_dim)
        self.proj = nn.Linear(self.content.dim, d)
        self.esu = TargetAttention(2 * d, cfg.attention_mlp, cfg.activation)

    def long_interest(self, batch: Batch, target: Tensor) -> Tensor:
        long = batch.need_long()
        content = self.content(self.embedding, long)  # (n_items, c), unit rows
        q = content[batch.target["target_item"]]
        sel = table_topk(long, q, content, self.cfg.k)
        tiers = simtier(long, content, q, self.cfg.tiers)
        hist = selected_history(long, sel, ("item", "category"))
        rows, cols = hist.packed_index()
        items = hist["item"][rows, cols]
        keys = torch.cat([self.embedding.items(items, hist["category"][rows, cols]), self.proj(content[items])], -1)
        fused_target = torch.cat([target, self.proj(q)], dim=-1)
        return torch.cat([self.esu(fused_target, keys, rows), tiers], dim=-1)


@register_model("muse", MUSEConfig, "MUSE: content-cosine GSU + SimTier + ID/content fused ESU (2024)")
def build_muse(spec: FeatureSpec, cfg: MUSEConfig) -> MUSE:
    return MUSE(spec, cfg)
