"""The zero-parameter baselines against brute-force references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from userlens.batch import Batch, History
from userlens.errors import ConfigError
from userlens.models import build_model
from userlens.models.history_match import HistoryMatch, HistoryMatchConfig

from .conftest import SPEC, random_batch


def _reference(batch: Batch, decay: float, item_weight: float) -> list[float]:
    """One behavior at a time, in plain Python."""
    long, out = batch.long, []
    for b in range(len(batch)):
        item, cat = int(batch.target["target_item"][b]), int(batch.target["target_category"][b])
        s = 0.0
        for j in range(int(long.lo[b]), int(long.hi[b])):
            rank = int(long.hi[b]) - 1 - j  # 0 = newest
            it = int(long.timeline["item"][j])
            c = int(long.item_category[it])
            s += decay**rank * (item_weight * (it == item) + (c == cat and c >= 2))
        out.append(s)
    return out


@pytest.mark.parametrize("budget", [1 << 22, 8 * 7])  # one chunk; chunks of 7 behaviors for 8 rows
@pytest.mark.parametrize(("decay", "item_weight"), [(0.99, 10.0), (0.7, 3.0), (1.0, 0.0)])
def test_history_match_equals_a_brute_force_reference(budget: int, decay: float, item_weight: float) -> None:
    batch = random_batch(batch=8, seed=11)
    # plant repeats: half the targets are an item of their own history, with its category
    long = batch.long
    for b in range(0, 8, 2):
        if long.hi[b] > long.lo[b]:
            it = int(long.timeline["item"][(long.lo[b] + long.hi[b]) // 2])
            batch.target["target_item"][b] = it
            batch.target["target_category"][b] = int(long.item_category[it])
    got = HistoryMatch(decay, item_weight, budget=budget)(batch)
    want = torch.tensor(_reference(batch, decay, item_weight), dtype=torch.float32)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert got[0] == 0  # row 0 has an empty range


def test_history_match_by_hand() -> None:
    from userlens.batch import LongHistory

    tl_item = np.array([4, 5, 4, 6, 7])  # one user, oldest first
    # categories: 4 → 2, 5 → 2, 6 → 3, 7 → 1 (unknown)
    item_cat = np.array([0, 1, 1, 1, 2, 2, 3, 1])
    long = LongHistory({"item": tl_item}, np.array([0, 0, 0]), np.array([5, 5, 5]), item_cat)
    batch = Batch({"target_item": torch.tensor([4, 6, 2]), "target_category": torch.tensor([2, 3, 1])},
                  History({}, torch.zeros(3, dtype=torch.long)), long=long)
    got = HistoryMatch(0.5, 10.0)(batch).tolist()
    # row 0 (item 4, cat 2): ranks of the behaviors 4, 5, 4 are 4, 3, 2 → 11·0.5⁴ + 1·0.5³ + 11·0.5²
    # row 1 (item 6, cat 3): behavior 6 at rank 1 → 11·0.5
    # row 2 (item 2, unknown category): behavior 7 has an unknown category too, which is no match
    assert got == pytest.approx([11 * 0.5**4 + 0.5**3 + 11 * 0.5**2, 11 * 0.5, 0.0])


def test_history_match_config_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"decay must be in \(0, 1\], got 1.5"):
        build_model("history_match", SPEC, HistoryMatchConfig(decay=1.5))
    with pytest.raises(ConfigError, match="item_weight must be >= 0, got -1"):
        build_model("history_match", SPEC, HistoryMatchConfig(item_weight=-1))


@pytest.mark.parametrize("name", ["popularity", "history_match"])
def test_baselines_have_no_state(name: str) -> None:
    model = build_model(name, SPEC)
    assert list(model.parameters()) == [] and model.state_dict() == {}


def test_popularity_is_log1p_of_the_count() -> None:
    batch = random_batch(batch=6, seed=2)
    got = build_model("popularity", SPEC)(batch)
    assert got.tolist() == pytest.approx([math.log1p(c) for c in batch.target["target_count"].tolist()])
