"""SIM (soft search): Search-based Interest Model (Pi et al., CIKM 2020, arXiv:2006.05639), §3.2 soft search.

GSU: inner product between the candidate's embedding and every behavior's
embedding over the whole history, top-``k`` (:func:`~userlens.layers.gsu.table_topk`,
chunked, per-item table built once per forward). ESU: DIN target attention
with time-gap embeddings, as :mod:`userlens.models.sim_hard`.

Departure: the paper trains the soft-search embeddings on an auxiliary task
over the long sequence; here the GSU scores with the model's own (jointly
trained) item ⊕ category embeddings, which removes a second training stage.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from userlens.batch import Batch
from userlens.layers.gsu import table_topk
from userlens.layers.interest import DINExactUnit, item_table, selected_history
from userlens.models.lifelong import LifelongConfig, LifelongModel
from userlens.models.registry import register_model
from userlens.models.spec import FeatureSpec


@dataclass
class SIMSoftConfig(LifelongConfig):
    pass


class SIMSoft(LifelongModel):
    def __init__(self, spec: FeatureSpec, cfg: SIMSoftConfig) -> None:
        super().__init__(spec, cfg, long_dim=2 * cfg.embed_dim)
        self.esu = DINExactUnit(self.embedding.item_dim, cfg.attention_mlp, cfg.activation)

    def long_interest(self, batch: Batch, target: Tensor) -> Tensor:
        long = batch.need_long()
        sel = table_topk(long, target, item_table(self.embedding, long.item_category), self.cfg.k)
        return self.esu(self.embedding, target, selected_history(long, sel), batch.target["time"])


@register_model("sim_soft", SIMSoftConfig, "SIM soft search: embedding inner-product top-k GSU + DIN ESU (CIKM 2020)")
def build_sim_soft(spec: FeatureSpec, cfg: SIMSoftConfig) -> SIMSoft:
    return SIMSoft(spec, cfg)
