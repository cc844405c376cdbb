"""The frame every lifelong model shares: short-term DIN view + a long-term view from a GSU → ESU.

``logit = MLP([target, short interest, long interest, user/context])``. A model
file subclasses :class:`LifelongModel` and writes only :meth:`long_interest`
(its search unit and exact unit); everything else is this one frame, so the
models differ exactly where their papers do.

**Items start at their category** (``item_init_std = 0.002``, a tenth of every
other table's 0.02). The search units rank behaviors by item ⊕ category vectors
(or hash them), so at the usual init two items of one category sit at ~60° and
the id half, noise until an item has been seen often, decides much of the
ranking. With the id half small, an untrained search already finds the
candidate's category, and an item moves away from it only as fast as its own
samples teach it: a shrinkage of rarely seen items toward their category. On
the generated family member with few samples per item (``sparse-items``: 60,000
items, 36,000 training samples; ``benchmarks/bench_family.py``, seed 1, batch
1024), test AUC at 0.02 → 0.002: sim_soft 0.849 → 0.861, eta 0.824 → 0.873,
twin 0.816 → 0.854, muse 0.763 → 0.859 (dare searches with its own attention
tables and keeps 0.02; see :mod:`userlens.models.dare`). Not from any of the
papers, which train on far more samples per item.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from userlens.batch import Batch
from userlens.layers import MLP
from userlens.layers.embedding import fields_for
from userlens.layers.interest import ShortInterest
from userlens.models.spec import FeatureSpec, feature_embedding


@dataclass
class LifelongConfig:
    embed_dim: int = 16
    k: int = 50  # behaviors the GSU passes to the ESU
    attention_mlp: tuple[int, ...] = (64, 32)  # short-term DIN attention
    mlp: tuple[int, ...] = (200, 80)
    activation: str = "dice"
    dropout: float = 0.0
    use_user: bool = False
    item_init_std: float = 0.002  # init scale of the item id table (other tables: 0.02; see the module docstring)


class LifelongModel(nn.Module):
    """Base: subclasses set ``long_dim`` and implement :meth:`long_interest` → ``(B, long_dim)``.

    ``extras`` are the optional parts of the long history a model reads (``long_category``,
    ``long_content``), so the loader builds the category index or loads content only when needed.
    """

    long_dim: int
    #: reads item content vectors when the prepared data has them (``userlens embed-items``); the trainer
    #: says so at the start of a run without them
    can_use_content: bool = False

    def __init__(self, spec: FeatureSpec, cfg: LifelongConfig, long_dim: int,
                 tower: Callable[[int], nn.Module] | None = None, extras: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = feature_embedding(spec, cfg.embed_dim, cfg.use_user, cfg.item_init_std)
        self.short = ShortInterest(self.embedding.item_dim, cfg.attention_mlp, cfg.activation)
        d = self.embedding.item_dim
        in_dim = 2 * d + long_dim + self.embedding.side_dim
        self.tower = tower(in_dim) if tower else MLP(in_dim, cfg.mlp, cfg.activation, cfg.dropout, out_dim=1)
        #: batch fields the loader must build for this model
        self.fields: frozenset[str] = fields_for(self.embedding, extra=("long", "time", *extras))

    def long_interest(self, batch: Batch, target: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, batch: Batch) -> Tensor:
        target = self.embedding.target(batch)  # (B, 2D)
        parts = [target, self.short(self.embedding, batch, target), self.long_interest(batch, target), self.embedding.side(batch)]
        return self.tower(torch.cat(parts, dim=-1)).squeeze(-1)
