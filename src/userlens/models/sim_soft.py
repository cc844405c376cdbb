"""SIM (soft search): Search-based Interest Model (Pi et al., CIKM 2020, arXiv:2006.05639), §3.2 soft search.

GSU: inner product between the candidate's embedding and every behavior's
embedding over the whole history, top-``k`` (:func:`~userlens.layers.gsu.table_topk`,
chunked, per-item table built once per forward). ESU (``esu="multi_head"``,
default): SIM's multi-head target attention over the selected behaviors
(:class:`~userlens.layers.interest.MultiHeadExactUnit`, shared with TWIN and ETA;
values carry the time-gap embedding, as SIM's ESU concatenates it).
``esu="din"``: DIN's activation unit over behavior ⊕ time-gap embeddings, as
:mod:`userlens.models.sim_hard`.

Why multi-head by default: the soft GSU returns the candidate's few real matches
among ``k`` look-alikes, so the ESU must *discriminate* (sim_hard's category GSU
returns only matches, so any weighting works there). DIN's unit reads
``[h, t, h − t, h ⊙ t]`` of std-0.02 embeddings, where the match term ``h ⊙ t``
is ~4e-4, and learned it too slowly on the independent family log few-early-clicks
(2000 users, default settings: test AUC 0.84, overfitting from epoch 5); the
multi-head unit with unit-scale logits and the evidence term reaches 0.91.

Departures:

* the paper trains the soft-search embeddings on an auxiliary task over the
  long sequence; here the GSU scores with the model's own (jointly trained,
  detached for the search) item ⊕ category embeddings: no second training stage;
* the paper's search is approximate (MIPS); this one is exact (ties → more recent);
* the multi-head ESU departs from SIM's as listed in
  :class:`~userlens.layers.attention.MultiHeadTargetAttention` (``W_k = W_q`` at
  init, RMS-normalised query and keys, the evidence and ``out ⊙ target`` outputs);
  the time gap enters the values only, as a log2-minute bucket embedding;
* ``esu="din"`` departs as in :mod:`userlens.models.sim_hard` (DIN's unit,
  log2-minute gap buckets, zero-padded target).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from userlens.batch import Batch
from userlens.layers.gsu import table_topk
from userlens.layers.interest import DINExactUnit, MultiHeadExactUnit, item_table, selected_history
from userlens.models.lifelong import LifelongConfig, LifelongModel
from userlens.models.registry import register_model
from userlens.models.spec import FeatureSpec


@dataclass
class SIMSoftConfig(LifelongConfig):
    esu: Literal["multi_head", "din"] = "multi_head"  # SIM's multi-head target attention, or DIN's unit (see above)
    heads: int = 2  # multi_head ESU only
    head_dim: int = 16


class SIMSoft(LifelongModel):
    def __init__(self, spec: FeatureSpec, cfg: SIMSoftConfig) -> None:
        if cfg.esu not in ("multi_head", "din"):
            raise ValueError(f"sim_soft: esu must be 'multi_head' or 'din', got {cfg.esu!r}")
        d = 2 * cfg.embed_dim  # item ⊕ category
        esu_dim = 2 * d + cfg.heads if cfg.esu == "multi_head" else d + cfg.embed_dim  # the units' out_dim
        super().__init__(spec, cfg, long_dim=esu_dim)
        self.esu: MultiHeadExactUnit | DINExactUnit
        if cfg.esu == "multi_head":
            self.esu = MultiHeadExactUnit(d, cfg.embed_dim, cfg.heads, cfg.head_dim, time_bias=False)
        else:
            self.esu = DINExactUnit(d, cfg.embed_dim, cfg.attention_mlp, cfg.activation)

    def long_interest(self, batch: Batch, target: Tensor) -> Tensor:
        long = batch.need_long()
        sel = table_topk(long, target, item_table(self.embedding, long.item_category), self.cfg.k)
        return self.esu(self.embedding, target, selected_history(long, sel, device=target.device), batch.target["time"])


@register_model("sim_soft", SIMSoftConfig, "SIM soft search: embedding inner-product top-k GSU + DIN ESU (CIKM 2020)")
def build_sim_soft(spec: FeatureSpec, cfg: SIMSoftConfig) -> SIMSoft:
    return SIMSoft(spec, cfg)
