"""SDIM's collision-count aggregation and MUSE's SimTier over the retrieved set, against direct references."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from userlens.batch import Batch
from userlens.layers.interest import item_table
from userlens.models import build_model
from userlens.models.muse import MUSEConfig
from userlens.models.sdim import SDIMConfig

from .conftest import SPEC, random_batch, random_long


@pytest.mark.parametrize("normalize", ["once", "per_round"])
@pytest.mark.parametrize(("rounds", "width", "item_weight"), [(6, 2, 1.0), (8, 8, 0.0), (4, 8, 0.3)])
def test_sdim_long_interest_equals_the_collision_weighted_sum(normalize: str, rounds: int, width: int,
                                                              item_weight: float) -> None:
    torch.manual_seed(0)
    cfg = SDIMConfig(rounds=rounds, width=width, normalize=normalize, hash_item_weight=item_weight)
    model = build_model("sdim", SPEC, cfg).eval()
    batch = random_batch(batch=6, seed=1)
    long = batch.long
    d = cfg.embed_dim
    with torch.no_grad():
        target = model.embedding.target(batch)
        got = model.long_interest(batch, target)
        table = item_table(model.embedding, long.item_category)

        def hashed(x: torch.Tensor) -> torch.Tensor:  # [w · item ; category], written out
            return torch.cat([x[:, :d] * item_weight, x[:, d:]], dim=1)

        codes = model.hasher.codes(hashed(table), rounds, width)
        query = model.hasher.codes(hashed(target), rounds, width)
    for b in range(len(long.lo)):
        items = torch.from_numpy(long.timeline["item"][long.lo[b] : long.hi[b]].astype(np.int64))
        match = (codes[items] == query[b]).float()  # (n_b, rounds)
        if normalize == "once":  # the paper: each behavior weighted by its collisions over all hashes
            ref = F.normalize(match.sum(1) @ table[items], dim=0)
        else:
            ref = F.normalize(match.t() @ table[items], dim=1).mean(0)
        count = torch.log1p(match.sum(0)).mean()  # mean over rounds of log(1 + colliding behaviors)
        least = torch.log1p(match.sum(0).min())  # count-min: the least-filled round
        torch.testing.assert_close(got[b], torch.cat([ref, ref * target[b], count[None], least[None]]),
                                   rtol=1e-5, atol=1e-6)


def test_sdim_rejects_an_unknown_normalisation() -> None:
    with pytest.raises(ValueError, match="normalize must be 'once' or 'per_round'"):
        build_model("sdim", SPEC, SDIMConfig(normalize="twice"))  # type: ignore[arg-type]


def test_muse_reads_only_the_retrieved_behaviors_of_the_long_history() -> None:
    """SimTier bins the retrieved top-k, so a behavior the GSU does not pick changes nothing."""
    spec = dataclasses.replace(SPEC, content_dim=12)
    torch.manual_seed(0)
    model = build_model("muse", spec, MUSEConfig(k=10)).eval()
    batch = random_batch(spec, batch=2, seed=3).take(1, 2)  # one row, the whole 400-behavior timeline
    batch.long = random_long(spec, 2, seed=3, content_dim=12).take(slice(1, 2))
    long = batch.long
    content = model.content(model.embedding, long)
    sel = model.search(batch, content)
    cos = (content @ content[batch.target["target_item"][0]]).numpy()
    picked = set(sel.positions[0, : sel.lengths[0]].tolist())
    assert cos[long.timeline["item"][sorted(picked)]].min() > cos[2:].min()
    low = int(np.argmin(np.where(np.arange(len(cos)) >= 2, cos, np.inf)))  # the least similar item
    far_from_low = [q for q in range(long.lo[0], long.hi[0])  # not picked, and in another cosine tier than `low`
                    if q not in picked and abs(cos[long.timeline["item"][q]] - cos[low]) > 0.2]
    p = far_from_low[0]
    tl = {k: v.copy() for k, v in long.timeline.items()}
    tl["item"][p] = low
    tl["category"][p] = long.item_category[low]
    changed = Batch(batch.target, batch.history, batch.label, batch.context, dataclasses.replace(long, timeline=tl))
    assert np.array_equal(model.search(changed, content).positions, sel.positions)
    with torch.no_grad():
        torch.testing.assert_close(model(changed), model(batch), rtol=0, atol=0)
