"""Popularity: a zero-parameter baseline that scores a candidate by how often anyone did it before.

``logit = log1p(n)``, where ``n`` is the number of behaviors on the target item,
by any user, strictly before the sample's time (``batch.target["target_count"]``,
from :attr:`userlens.data.prepared.PreparedData.item_counts`). It reads no
history and learns nothing: it shows how much of a model's AUC a pure
popularity shortcut already explains. Sampled negatives are drawn uniformly from
items already seen, so on behavior-derived data a positive is usually a popular
item: test AUC 0.81 on MovieLens-100k, 0.73 on MovieLens-latest and Last.fm,
0.65 on Amazon Grocery (above DIN's 0.56). On the Taobao sample it is 0.29, *below*
chance: a positive is often an item's first behavior ever, while negatives come
from items seen before (default protocol, 2026-11-27). Every quality table
reports it beside the learned models.

The score is a ranking score, **not a calibrated logit**: the logloss reported
for it (sigmoid of ``log1p(n)``) is not meaningful; compare AUC / GAUC only.

Not from a paper: the "most popular" recommender every evaluation should beat.
Counting stops strictly before the sample's time, so the count leaks nothing of
the sample itself or of later events.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from userlens.batch import Batch
from userlens.models.registry import register_model
from userlens.models.spec import FeatureSpec


@dataclass
class PopularityConfig:
    """No settings: the score is a fixed function of the data."""


class Popularity(nn.Module):
    """Logit = ``log1p(target_count)``; no parameters, no buffers.

    Shapes: ``batch.target["target_count"]`` ``(B,)`` int64 → ``(B,)`` float32 scores.

    Example:
        >>> from userlens.batch import Batch, History
        >>> b = Batch({"target_item": torch.tensor([2, 3]), "target_count": torch.tensor([0, 9])},
        ...           History({}, torch.tensor([0, 0])))
        >>> Popularity()(b).tolist() == [0.0, float(torch.log1p(torch.tensor(9.0)))]
        True
    """

    #: a ranking score, not a probability fitted to labels: evaluate and train say its logloss means nothing
    calibrated: bool = False

    def __init__(self) -> None:
        super().__init__()
        #: batch fields the loader must build for this model (the item id only identifies the candidate)
        self.fields: frozenset[str] = frozenset({"target_item", "target_count"})

    def forward(self, batch: Batch) -> Tensor:
        return torch.log1p(batch.target["target_count"].to(torch.float32))  # (B,)


@register_model("popularity", PopularityConfig,
                "zero-parameter baseline: log1p(behaviors on the target item before the sample's time)")
def build_popularity(spec: FeatureSpec, cfg: PopularityConfig) -> Popularity:
    return Popularity()
