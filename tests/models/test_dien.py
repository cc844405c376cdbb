"""DIEN's auxiliary loss: returned by forward_train (no hidden state), negatives never equal the positive."""

from __future__ import annotations

import torch

from userlens.batch import Batch, History
from userlens.models import build_model
from userlens.models.dien import DIENConfig, auxiliary_pairs

from .conftest import SPEC, random_batch


def test_auxiliary_negatives_never_equal_the_positive() -> None:
    g = torch.Generator().manual_seed(0)
    item = torch.randint(2, 4, (16, 10), generator=g)  # two items: a negative often equals the positive
    lengths = torch.randint(0, 11, (16,), generator=g)
    mask = torch.arange(10)[None, :] < lengths[:, None]
    pair, neg_row, neg_ok = auxiliary_pairs(item * mask, mask)
    assert torch.equal(pair, mask[:, :-1] & mask[:, 1:])
    assert not (neg_ok & ~pair).any() and neg_ok.any()
    assert (item[neg_row, 1:] != item[:, 1:])[neg_ok].all()
    assert mask[neg_row, 1:][neg_ok].all() and (neg_row != torch.arange(16)).all()
    # every other-row negative that differs from the positive is kept
    assert torch.equal(neg_ok, pair & mask[neg_row, 1:] & (item[neg_row, 1:] != item[:, 1:]))


def _twice(batch: Batch) -> Batch:
    """The one-row batch stacked twice: every auxiliary negative would equal its positive."""
    cat = lambda t: torch.cat([t, t])  # noqa: E731
    hist = History({k: cat(v) for k, v in batch.history.values.items()}, cat(batch.history.lengths))
    return Batch({k: cat(v) for k, v in batch.target.items()}, hist, cat(batch.label),
                 {k: cat(v) for k, v in batch.context.items()})


def test_a_negative_equal_to_the_positive_is_not_trained_against() -> None:
    torch.manual_seed(0)
    model = build_model("dien", SPEC, DIENConfig()).eval()
    one = random_batch(batch=1, seed=1, lengths=[9])
    _, extra_one = model.forward_train(one)  # one row: no negatives at all
    _, extra_two = model.forward_train(_twice(one))  # two identical rows: all negatives equal positives
    torch.testing.assert_close(extra_two["auxiliary"], extra_one["auxiliary"])
    assert extra_one["auxiliary"] > 0


def test_forward_is_pure_and_forward_train_returns_the_weighted_loss() -> None:
    torch.manual_seed(0)
    model = build_model("dien", SPEC, DIENConfig(aux_weight=0.5)).eval()
    batch = random_batch(batch=8, seed=2)
    assert not hasattr(model, "auxiliary_loss") and not hasattr(model, "_aux")
    logits, extra = model.forward_train(batch)
    torch.testing.assert_close(logits, model(batch), rtol=0, atol=0)
    assert set(extra) == {"auxiliary"} and extra["auxiliary"].dim() == 0
    half = extra["auxiliary"]
    model.cfg.aux_weight = 1.0
    torch.testing.assert_close(model.forward_train(batch)[1]["auxiliary"], 2 * half)


def test_short_histories_give_a_zero_loss_that_still_backpropagates() -> None:
    model = build_model("dien", SPEC, DIENConfig()).train()
    batch = random_batch(batch=4, max_len=1, seed=3)
    logits, extra = model.forward_train(batch)
    assert extra["auxiliary"].item() == 0.0
    (logits.sum() + extra["auxiliary"]).backward()
