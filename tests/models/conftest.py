"""Random batches for model tests (no files: models know nothing of them)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from userlens.batch import COUNT_BUCKETS, Batch, History, LongHistory
from userlens.data.counts import COUNT_FEATURES
from userlens.layers.gsu import CategoryIndex
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
              "time": torch.full((b,), 60_000_000)}
    ctx = {k: torch.randint(2, v, (b,), generator=g) for k, v in spec.context.items()}
    label = torch.randint(0, 2, (b,), generator=g).float()
    target["target_count"] = torch.randint(0, 1000, (b,), generator=g)  # drawn last: earlier fields unchanged
    counts = {k: torch.randint(1, COUNT_BUCKETS, (b,), generator=g) for k in COUNT_FEATURES}
    return Batch(target, hist, label, ctx, random_long(spec, b, seed), counts)


def random_long(spec: FeatureSpec, batch: int, seed: int = 0, n: int = 400, content_dim: int = 0) -> LongHistory:
    """A shared random timeline and one whole-history range per row (row 0 empty, row 1 long)."""
    rng = np.random.default_rng(seed)
    item_cat = rng.integers(2, spec.n_categories, size=spec.n_items).astype(np.int32)
    item = rng.integers(2, spec.n_items, size=n).astype(np.int32)
    tl = {"item": item, "category": item_cat[item], "behavior": np.ones(n, dtype=np.int32),
          "time": np.sort(rng.integers(0, 50_000_000, size=n)).astype(np.int64)}
    lo = rng.integers(0, n // 2, size=batch)
    hi = np.minimum(lo + rng.integers(1, n // 2, size=batch), n)
    if batch >= 2:
        lo[0] = hi[0] = 3
        lo[1], hi[1] = 0, n
    content = None
    if content_dim:
        vec = rng.normal(size=(spec.n_items, content_dim)).astype(np.float32)
        vec[:2] = 0
        content = (vec, np.arange(spec.n_items) >= 2)
    return LongHistory(tl, lo.astype(np.int64), hi.astype(np.int64), item_cat, CategoryIndex(tl["category"]), content)


@pytest.fixture
def batch() -> Batch:
    return random_batch()
