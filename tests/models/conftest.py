"""Random batches for model tests (no files: models know nothing of them)."""

from __future__ import annotations

import pytest
import torch

from userlens.batch import Batch, History
from userlens.models import FeatureSpec

SPEC = FeatureSpec(n_users=30, n_items=60, n_categories=9, n_behaviors=4, context={"device": 5})


def random_batch(spec: FeatureSpec = SPEC, batch: int = 8, max_len: int = 12, seed: int = 0,
                 lengths: list[int] | None = None) -> Batch:
    """A batch with every field, varied lengths (including 0 and full), zero padding."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor(lengths) if lengths is not None else torch.randint(0, max_len + 1, (batch,), generator=g)
    if lengths is None and batch >= 2:
        lens[0], lens[1] = 0, max_len
    b = len(lens)
    mask = torch.arange(max_len)[None, :] < lens[:, None]

    def seq(n: int) -> torch.Tensor:
        return torch.randint(2, n, (b, max_len), generator=g) * mask

    hist = History({"item": seq(spec.n_items), "category": seq(spec.n_categories), "behavior": seq(spec.n_behaviors),
                    "time": torch.arange(max_len).repeat(b, 1) * mask}, lens)
    target = {"user": torch.randint(2, spec.n_users, (b,), generator=g),
              "target_item": torch.randint(2, spec.n_items, (b,), generator=g),
              "target_category": torch.randint(2, spec.n_categories, (b,), generator=g),
              "time": torch.full((b,), 100)}
    ctx = {k: torch.randint(2, v, (b,), generator=g) for k, v in spec.context.items()}
    return Batch(target, hist, torch.randint(0, 2, (b,), generator=g).float(), ctx)


@pytest.fixture
def batch() -> Batch:
    return random_batch()
