"""TWIN: TWo-stage Interest Network (Chang et al., "TWIN: TWo-stage Interest Network for Lifelong User
Behavior Modeling in CTR Prediction at Kuaishou", KDD 2023, arXiv:2302.02352).

The GSU and the ESU use the **same** target attention: the GSU ranks the whole
history by the ESU's (head-averaged) query–key logit and keeps the top ``k``;
the ESU then attends over them with that attention. Behavior keys depend only
on the item (TWIN's "inherent features"), so ``W_k`` is applied once per item
per forward and a behavior's score is one gather and one dot product.

The GSU scores inherent features only; the ESU adds the time-gap embedding, as
TWIN adds its cross features in the ESU alone. Departure: no user–item cross
features beyond the time gap.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from userlens.batch import Batch
from userlens.layers.gsu import table_topk
from userlens.layers.interest import MultiHeadExactUnit, item_table, selected_history
from userlens.models.lifelong import LifelongConfig, LifelongModel
from userlens.models.registry import register_model
from userlens.models.spec import FeatureSpec


@dataclass
class TWINConfig(LifelongConfig):
    heads: int = 2
    head_dim: int = 16


class TWIN(LifelongModel):
    def __init__(self, spec: FeatureSpec, cfg: TWINConfig) -> None:
        super().__init__(spec, cfg, long_dim=4 * cfg.embed_dim + cfg.heads)  # MultiHeadExactUnit.out_dim
        self.esu = MultiHeadExactUnit(self.embedding.item_dim, cfg.heads, cfg.head_dim)

    def long_interest(self, batch: Batch, target: Tensor) -> Tensor:
        long = batch.need_long()
        with torch.no_grad():
            att = self.esu.attention  # the GSU scores with the ESU's own attention
            key_table = att.k(item_table(self.embedding, long.item_category))  # (n_items, H·dh)
            sel = table_topk(long, att.query(target), key_table, self.cfg.k)
        return self.esu(self.embedding, target, selected_history(long, sel), batch.target["time"])


@register_model("twin", TWINConfig, "TWIN: the ESU's own target attention scores the whole history in the GSU (KDD 2023)")
def build_twin(spec: FeatureSpec, cfg: TWINConfig) -> TWIN:
    return TWIN(spec, cfg)
