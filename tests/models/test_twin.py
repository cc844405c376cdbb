"""TWIN's GSU ranks the whole history by exactly the ESU's own attention logit (the paper's consistency)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from userlens.batch import Batch, History, LongHistory
from userlens.layers.gsu import CategoryIndex
from userlens.models import build_model
from userlens.models.twin import TWINConfig

from .conftest import SPEC, random_batch

NOW = 10**10 + 1  # sample time (ms): gaps from 0 to ~115 days, so many time-gap buckets are used


def _twin_batch(seed: int) -> Batch:
    """Random targets over a shared timeline with few items (exact ties) and widely spread times."""
    rng = np.random.default_rng(seed)
    n, b = 500, 10
    item_cat = rng.integers(2, SPEC.n_categories, size=SPEC.n_items)
    item = rng.integers(2, 14, size=n)  # 12 distinct items: many repeats
    tl = {"item": item.astype(np.int32), "category": item_cat[item].astype(np.int32),
          "time": np.sort(rng.integers(0, NOW - 1, size=n)).astype(np.int64)}
    lo = rng.integers(0, n // 2, size=b)
    hi = np.minimum(lo + rng.integers(0, n, size=b), n)
    lo[0], hi[0] = 7, 7  # an empty history
    lo[1], hi[1] = 0, n
    long = LongHistory(tl, lo.astype(np.int64), hi.astype(np.int64), item_cat, CategoryIndex(tl["category"]))
    base = random_batch(batch=b, seed=seed)
    target = dict(base.target, time=torch.full((b,), NOW))
    return Batch(target, base.history, base.label, base.context, long)


def _full_range_logits(model, batch: Batch, target: torch.Tensor,  # type: ignore[no-untyped-def]
                       b: int) -> tuple[np.ndarray, torch.Tensor]:
    """Row ``b``'s whole range as one History and the ESU's own logits over it (brute force)."""
    long = batch.long
    pos = np.arange(long.lo[b], long.hi[b])
    fields = {f: torch.from_numpy(long.timeline[f][pos].astype(np.int64))[None] for f in ("item", "category", "time")}
    with torch.no_grad():
        s = model.esu.logits(model.embedding, target[b : b + 1], History(fields, torch.tensor([len(pos)])),
                             batch.target["time"][b : b + 1])[0]
    return pos, s


def _brute_force(model, batch: Batch, target: torch.Tensor, k: int) -> list[list[int]]:  # type: ignore[no-untyped-def]
    """The ESU's own logits over each full range, ranked: highest first, ties to the more recent, oldest first."""
    out = []
    for b in range(len(batch.long.lo)):
        pos, s = _full_range_logits(model, batch, target, b)
        best = sorted(range(len(pos)), key=lambda j: (-float(s[j]), -j))[:k]
        out.append(sorted(int(pos[j]) for j in best))
    return out


def _selected(sel) -> list[list[int]]:  # type: ignore[no-untyped-def]
    return [sel.positions[b, : sel.lengths[b]].tolist() for b in range(len(sel.lengths))]


@pytest.mark.parametrize("time_bias", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_gsu_top_k_is_the_top_k_of_the_esu_logits_exactly(seed: int, time_bias: bool) -> None:
    """Small-integer weights make every logit exact, so ties are exact and the tie rule is tested too.

    ``qk_norm=False``: the RMS normalisation would make the logits inexact; the default is checked to
    rounding by the next test.
    """
    torch.manual_seed(seed)
    cfg = TWINConfig(embed_dim=3, heads=2, head_dim=4, k=9, time_bias=time_bias, qk_norm=False)
    model = build_model("twin", SPEC, cfg).eval()
    g = torch.Generator().manual_seed(seed)
    att = model.esu.attention
    weights = [model.embedding.item.weight, model.embedding.category.weight, att.q.weight, att.q.bias, att.k.weight]
    if time_bias:
        weights += [model.esu.gap.table.weight, model.esu.compress.weight]
    with torch.no_grad():
        for p in weights:
            p.copy_(torch.randint(-2, 3, p.shape, generator=g).float())
    batch = _twin_batch(seed)
    target = model.embedding.target(batch)
    sel = model.search(batch, target)
    assert _selected(sel) == _brute_force(model, batch, target, 9)
    if time_bias:
        assert len(np.unique(model.esu.bias_table().mean(1).detach().numpy())) > 1  # the bias does rank


def test_gsu_matches_the_esu_logits_with_trained_like_weights() -> None:
    """Random float weights: the retrieved logits are the brute-force top-k logits (to rounding)."""
    torch.manual_seed(3)
    model = build_model("twin", SPEC, TWINConfig(k=20, time_bias=True)).eval()
    with torch.no_grad():
        model.esu.compress.weight.normal_(0, 20.0)  # a bias large enough to reorder the item ranking
        model.esu.attention.k.weight.normal_(0, 0.3)
    batch = _twin_batch(5)
    target = model.embedding.target(batch)
    got = _selected(model.search(batch, target))
    ref = _brute_force(model, batch, target, 20)
    for b in range(len(batch.long.lo)):
        pos, s = _full_range_logits(model, batch, target, b)
        by_pos = dict(zip(pos.tolist(), s.tolist()))
        torch.testing.assert_close(sorted(by_pos[p] for p in got[b]), sorted(by_pos[p] for p in ref[b]),
                                   rtol=0, atol=1e-5)


def test_the_time_gap_reaches_both_stages() -> None:
    """A bias growing with the gap makes the GSU pick the oldest behaviors, as the ESU's logits would."""
    torch.manual_seed(0)
    model = build_model("twin", SPEC, TWINConfig(k=5, time_bias=True)).eval()
    with torch.no_grad():  # bias = bucket index in both heads: older behaviors win
        model.esu.gap.table.weight.zero_()
        model.esu.gap.table.weight[:, 0] = torch.arange(24.0)
        model.esu.compress.weight.zero_()
        model.esu.compress.weight[:, 0] = 1.0
    batch = _twin_batch(2)
    target = model.embedding.target(batch)
    sel = model.search(batch, target)
    b = 1  # the whole timeline: all 5 picks come from the oldest bucket (gap >= 2**17 minutes)
    picked = sel.positions[b, : sel.lengths[b]]
    assert picked.tolist() == _brute_force(model, batch, target, 5)[b]
    assert (batch.long.timeline["time"][picked] <= NOW - 2**17 * 60_000).all()
