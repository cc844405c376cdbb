"""ETA: End-to-end Target Attention (Chen et al., "End-to-End User Behavior Retrieval in Click-Through
Rate Prediction Model", 2021, arXiv:2108.04468).

GSU: SimHash signatures (``bits`` random hyperplanes, packed into one integer)
of the candidate and of every behavior's embedding; the ``k`` behaviors at the
smallest Hamming distance (:func:`~userlens.layers.gsu.hamming_topk`). The
signatures come from the model's current embeddings, so the retrieval trains
end to end with the ESU, which is multi-head target attention.

Departures: signatures are recomputed per forward from the per-item table (the
paper refreshes them per request); no time-gap feature inside the hash.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from userlens.batch import Batch
from userlens.layers.gsu import SimHash, hamming_topk
from userlens.layers.interest import MultiHeadExactUnit, item_table, selected_history
from userlens.models.lifelong import LifelongConfig, LifelongModel
from userlens.models.registry import register_model
from userlens.models.spec import FeatureSpec


@dataclass
class ETAConfig(LifelongConfig):
    bits: int = 64  # SimHash signature length (8, 16, 32 or 64)
    heads: int = 2
    head_dim: int = 16
    hash_seed: int = 0


class ETA(LifelongModel):
    def __init__(self, spec: FeatureSpec, cfg: ETAConfig) -> None:
        super().__init__(spec, cfg, long_dim=4 * cfg.embed_dim + cfg.heads)  # MultiHeadExactUnit.out_dim
        self.hasher = SimHash(self.embedding.item_dim, cfg.bits, cfg.hash_seed)
        self.esu = MultiHeadExactUnit(self.embedding.item_dim, cfg.heads, cfg.head_dim)

    def long_interest(self, batch: Batch, target: Tensor) -> Tensor:
        long = batch.need_long()
        with torch.no_grad():
            item_sig = self.hasher(item_table(self.embedding, long.item_category))
        sel = hamming_topk(long, np.asarray(self.hasher(target)), item_sig, self.cfg.k)
        return self.esu(self.embedding, target, selected_history(long, sel), batch.target["time"])


@register_model("eta", ETAConfig, "ETA: SimHash / Hamming top-k GSU + multi-head target attention (2021)")
def build_eta(spec: FeatureSpec, cfg: ETAConfig) -> ETA:
    return ETA(spec, cfg)
