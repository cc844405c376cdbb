"""TIN: Temporal Interest Network (Zhou et al., "Temporal Interest Network for User Response Prediction",
WWW 2024, arXiv:2308.08487).

Two target-aware pieces over the recent history: **target-aware temporal
encoding** — every behavior and the target get an embedding of the behavior's
time gap to the target (log2 minute buckets), so attention can learn
semantic–temporal correlation — and **target-aware representation** — the
attention weights (dot product of temporally encoded behavior and target)
average ``behavior ⊙ target`` rather than the behaviors alone, capturing the
4-way semantic-temporal interaction.

Departure: time-gap buckets instead of the paper's relative positions (we
have timestamps); the target's own temporal term is one extra learned row of
the temporal table (index ``TIME_BUCKETS``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from userlens.batch import Batch
from userlens.layers import MLP
from userlens.layers.embedding import fields_for
from userlens.layers.interest import TIME_BUCKETS, time_gap_buckets
from userlens.models.registry import register_model
from userlens.models.spec import FeatureSpec, feature_embedding


@dataclass
class TINConfig:
    embed_dim: int = 16
    mlp: tuple[int, ...] = (200, 80)
    activation: str = "dice"
    dropout: float = 0.0
    use_user: bool = False


class TIN(nn.Module):
    """Logit = MLP([target, Σ_j softmax_j(⟨e_j + p_j, v + p_v⟩/√d) · (e_j + p_j) ⊙ (v + p_v), user/context])."""

    # embeds only the batch's item / category ids (short history, target): TorchRec can shard its tables
    shardable_tables = True

    def __init__(self, spec: FeatureSpec, cfg: TINConfig) -> None:
        super().__init__()
        self.embedding = feature_embedding(spec, cfg.embed_dim, cfg.use_user)
        d = self.embedding.item_dim
        self.temporal = nn.Embedding(TIME_BUCKETS + 1, d)  # rows 1..: behavior gaps; row TIME_BUCKETS: the target
        nn.init.normal_(self.temporal.weight, std=0.02)
        self.tower = MLP(2 * d + self.embedding.side_dim, cfg.mlp, cfg.activation, cfg.dropout, out_dim=1)
        #: batch fields the loader must build for this model
        self.fields: frozenset[str] = fields_for(self.embedding, extra=("hist_time", "time"))

    def forward(self, batch: Batch) -> Tensor:
        hist = batch.history
        mask = hist.mask()
        v = self.embedding.target(batch)  # (B, D)
        vt = v + self.temporal.weight[TIME_BUCKETS]
        e = self.embedding.history(hist) + self.temporal(time_gap_buckets(batch.target["time"], hist["time"], mask))
        s = (e @ vt.unsqueeze(-1)).squeeze(-1) / e.shape[-1] ** 0.5
        w = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1).nan_to_num(0.0)
        interest = (w.unsqueeze(-1) * (e * vt.unsqueeze(1))).sum(1)
        return self.tower(torch.cat([v, interest, self.embedding.side(batch)], dim=-1)).squeeze(-1)


@register_model("tin", TINConfig, "TIN: target-aware temporal encoding + target-aware representation (WWW 2024)")
def build_tin(spec: FeatureSpec, cfg: TINConfig) -> TIN:
    return TIN(spec, cfg)
