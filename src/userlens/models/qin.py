"""QIN-style model: a lifelong variant built from the two ideas of QIN (Li et al., "Quadratic Interest
Network for Multimodal Click-Through Rate Prediction", WWW 2025 MMCTR challenge, arXiv:2504.17699).

**Not the paper's model.** What it takes from QIN: an **adaptive sparse target
attention** of the candidate over behaviors (ID ⊕ projected content features),
here a *sparsemax* with a learned temperature, so irrelevant behaviors get
exactly zero weight; and a **quadratic** tower, each layer
``LayerNorm((A·x + a) ⊙ (B·x + b) + C·x)``, modelling high-order feature
interactions explicitly.

Departures (every one):

* the core attention is replaced: the released QIN code scores behaviors with
  an unnormalised ``ReLU(q·k/√d)``; here weights are sparsemax
  (Martins & Astudillo, 2016) of ``q·k/√d`` scaled by a learned temperature
  (exactly sparse and normalised);
* the tower is replaced: the released QNN layer is ``x ⊙ (Σ_r W_r x)`` with
  PReLU and a residual; here ``LayerNorm((A·x)⊙(B·x) + C·x)``. The two have not
  been compared;
* the behaviors attended over are the ``k`` most recent of the candidate's
  category in the whole history (a SIM-hard GSU), so the model joins the
  lifelong family; QIN attends over the given recent sequence;
* it adds the shared short-term DIN view (:class:`~userlens.models.lifelong.LifelongModel`)
  to the tower input, which QIN does not have;
* each behavior's features also carry its time-gap embedding (``time_gap``,
  default on; the target's part is zeros), as SIM's ESU: family member
  very-long-noise, seed 1: 0.834 → 0.929;
* content features are used only when ``embed-items`` has run (QIN uses the
  challenge's multimodal embeddings); otherwise behaviors are IDs only;
* the long-term output also carries ``log(1 + n)``, ``n`` the behaviors the
  category GSU returned (at most ``k``): sparsemax weights sum to 1, so how many
  behaviors of the candidate's category the user has (the signal when every
  category also collects noise behaviors) is otherwise lost. Family log long-noise
  (1000 users, default settings): test AUC 0.773 without, 0.901 with (sim_hard,
  whose DIN unit sums unnormalised weights over the same selection: 0.934).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from userlens.batch import Batch
from userlens.layers.explain import note_weights
from userlens.layers.interest import ContentTable, GapEmbedding, selected_history, time_gap_buckets
from userlens.models.lifelong import LifelongConfig, LifelongModel
from userlens.models.registry import register_model
from userlens.models.spec import FeatureSpec


def sparsemax(scores: Tensor, mask: Tensor) -> Tensor:
    """Sparsemax (Martins & Astudillo, 2016) over the last dim, real positions only; empty rows → 0."""
    z = scores.masked_fill(~mask, -1e9)
    zs = z.sort(dim=-1, descending=True).values
    ks = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype, device=z.device)
    cs = zs.cumsum(-1)
    support = (1 + ks * zs > cs).sum(-1, keepdim=True).clamp_min(1)
    tau = (cs.gather(-1, support - 1) - 1) / support.to(z.dtype)
    return (z - tau).clamp_min(0) * mask


class QuadraticTower(nn.Module):
    """Layers ``LayerNorm((A·x + a) ⊙ (B·x + b) + C·x)``, then a linear logit."""

    def __init__(self, in_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        d = in_dim
        for h in hidden:
            self.layers.append(nn.ModuleDict({"a": nn.Linear(d, h), "b": nn.Linear(d, h),
                                              "c": nn.Linear(d, h, bias=False), "norm": nn.LayerNorm(h)}))
            d = h
        self.out = nn.Linear(d, 1)

    def forward(self, x: Tensor) -> Tensor:
        for lyr in self.layers:
            x = lyr["norm"](lyr["a"](x) * lyr["b"](x) + lyr["c"](x))
        return self.out(x)


@dataclass
class QINConfig(LifelongConfig):
    attention_dim: int = 32
    qnn: tuple[int, ...] = (200, 80)
    time_gap: bool = True  # each behavior's features also carry its time-gap embedding (as SIM's ESU)


class QIN(LifelongModel):
    can_use_content = True

    def __init__(self, spec: FeatureSpec, cfg: QINConfig) -> None:
        super().__init__(spec, cfg, long_dim=cfg.attention_dim + 1, tower=lambda d: QuadraticTower(d, cfg.qnn),
                         extras=("long_category", "long_content") if spec.content_dim else ("long_category",))
        d = self.embedding.item_dim
        self.content = ContentTable(self.embedding.item_dim, spec.content_dim) if spec.content_dim else None
        self.gap = GapEmbedding(cfg.embed_dim) if cfg.time_gap else None
        feat = d + (d if self.content is not None else 0) + (cfg.embed_dim if cfg.time_gap else 0)
        self.proj = nn.Linear(spec.content_dim, d) if self.content is not None else None
        self.q = nn.Linear(feat, cfg.attention_dim)
        self.k = nn.Linear(feat, cfg.attention_dim, bias=False)
        self.v = nn.Linear(feat, cfg.attention_dim, bias=False)
        self.log_temperature = nn.Parameter(torch.zeros(()))

    def _features(self, emb: Tensor, items: Tensor, content: Tensor | None) -> Tensor:
        if content is None or self.proj is None:
            return emb
        return torch.cat([emb, self.proj(content[items])], dim=-1)

    def long_interest(self, batch: Batch, target: Tensor) -> Tensor:
        long = batch.need_long()
        if long.category_index is None:
            raise ValueError("qin needs the category index on the LongHistory (the loader attaches it)")
        category = batch.target["target_category"].detach().cpu().numpy().astype(np.int64)
        sel = long.category_index.search(category, long.lo, long.hi, self.cfg.k)
        hist = selected_history(long, sel, ("item", "category", "time"), device=target.device)
        content = self.content(self.embedding, long) if self.content is not None else None
        t = self._features(target, batch.target["target_item"], content)
        h = self._features(self.embedding.history(hist), hist["item"], content)
        if self.gap is not None:  # behaviors carry their time gap; the target none (zeros), as SIM's ESU
            h = torch.cat([h, self.gap(time_gap_buckets(batch.target["time"], hist["time"], hist.mask()))], -1)
            t = F.pad(t, (0, self.gap.dim))
        s = (self.k(h) @ self.q(t).unsqueeze(-1)).squeeze(-1) / (self.cfg.attention_dim ** 0.5)
        w = sparsemax(s * torch.exp(-self.log_temperature), hist.mask())  # (B, k), exact zeros allowed
        note_weights(w)  # explained requests only
        count = torch.log1p(hist.lengths.to(w.dtype)).unsqueeze(-1)  # (B, 1): how many matched, which sparsemax discards
        return torch.cat([(w.unsqueeze(-1) * self.v(h)).sum(1), count], dim=-1)


@register_model("qin", QINConfig, "QIN-style (not the paper's model): category GSU + sparsemax target attention "
                "+ quadratic tower, after QIN (WWW 2025)")
def build_qin(spec: FeatureSpec, cfg: QINConfig) -> QIN:
    return QIN(spec, cfg)
