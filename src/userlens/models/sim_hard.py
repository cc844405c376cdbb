"""SIM (hard search): Search-based Interest Model (Pi et al., "Search-based User Interest Modeling with
Lifelong Sequential Behavior Data for Click-Through Rate Prediction", CIKM 2020, arXiv:2006.05639).

GSU: the ``k`` most recent behaviors of the candidate's category in the whole
history (:class:`~userlens.layers.gsu.CategoryIndex`, two binary searches per
sample however long the history). ESU: DIN target attention over those
behaviors, each embedded with a time-gap embedding as in SIM's ESU.

Departures: the ESU uses DIN's activation unit rather than SIM's multi-head
attention (the paper allows either); no separate user-behavior tree: the
category index is built once per prepared dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor

from userlens.batch import Batch
from userlens.layers.interest import DINExactUnit, selected_history
from userlens.models.lifelong import LifelongConfig, LifelongModel
from userlens.models.registry import register_model
from userlens.models.spec import FeatureSpec


@dataclass
class SIMHardConfig(LifelongConfig):
    pass


class SIMHard(LifelongModel):
    def __init__(self, spec: FeatureSpec, cfg: SIMHardConfig) -> None:
        super().__init__(spec, cfg, long_dim=2 * cfg.embed_dim, extras=("long_category",))
        self.esu = DINExactUnit(self.embedding.item_dim, cfg.attention_mlp, cfg.activation)

    def long_interest(self, batch: Batch, target: Tensor) -> Tensor:
        long = batch.need_long()
        index = long.category_index
        if index is None:
            raise ValueError("sim_hard needs the category index on the LongHistory (the loader attaches it)")
        sel = index.search(batch.target["target_category"].numpy().astype(np.int64), long.lo, long.hi, self.cfg.k)
        return self.esu(self.embedding, target, selected_history(long, sel), batch.target["time"])


@register_model("sim_hard", SIMHardConfig, "SIM hard search: category GSU over the whole history + DIN ESU (CIKM 2020)")
def build_sim_hard(spec: FeatureSpec, cfg: SIMHardConfig) -> SIMHard:
    return SIMHard(spec, cfg)
