"""SDIM: Sampling-based Deep Interest Modeling (Cao et al., "Sampling Is All You Need on Modeling Long-Term
User Behaviors for CTR Prediction", CIKM 2022, arXiv:2205.10249).

No top-k and no attention network over the long history: ``rounds`` SimHash
functions of ``width`` bits put the candidate and every behavior into buckets;
per round, the behaviors sharing the candidate's bucket are summed and
L2-normalised, and the rounds are averaged. This approximates target
attention whose weights are the collision probability of the two hashes
(angular similarity), at the cost of one gather per behavior
(:func:`~userlens.layers.gsu.bucket_sum`, chunked with a recomputing backward).

Departure: bucket codes are recomputed per forward from the current item
embeddings (the paper serves them from a separate hashing server).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from userlens.batch import Batch
from userlens.layers.gsu import SimHash, bucket_sum
from userlens.layers.interest import item_table
from userlens.models.lifelong import LifelongConfig, LifelongModel
from userlens.models.registry import register_model
from userlens.models.spec import FeatureSpec


@dataclass
class SDIMConfig(LifelongConfig):
    rounds: int = 16  # hash functions (m in the paper)
    width: int = 3  # bits per hash (τ in the paper); rounds × width <= 64
    hash_seed: int = 0


class SDIM(LifelongModel):
    def __init__(self, spec: FeatureSpec, cfg: SDIMConfig) -> None:
        super().__init__(spec, cfg, long_dim=2 * cfg.embed_dim)
        if cfg.rounds * cfg.width > 64:
            raise ValueError(f"sdim: rounds × width must be <= 64, got {cfg.rounds} × {cfg.width}")
        self.hasher = SimHash(self.embedding.item_dim, 64, cfg.hash_seed)

    def long_interest(self, batch: Batch, target: Tensor) -> Tensor:
        long = batch.need_long()
        table = item_table(self.embedding, long.item_category)  # (n_items, 2D), gradients flow
        codes = self.hasher.codes(table, self.cfg.rounds, self.cfg.width)
        query = self.hasher.codes(target, self.cfg.rounds, self.cfg.width)
        sums = bucket_sum(long, table, codes, query)  # (B, rounds, 2D)
        return F.normalize(sums, dim=-1).mean(dim=1)


@register_model("sdim", SDIMConfig, "SDIM: multi-round SimHash bucket sampling over the whole history, no top-k (CIKM 2022)")
def build_sdim(spec: FeatureSpec, cfg: SDIMConfig) -> SDIM:
    return SDIM(spec, cfg)
