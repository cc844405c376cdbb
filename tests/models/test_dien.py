"""DIEN's auxiliary loss: returned by forward_train (no hidden state), negatives from other users, never
equal to the positive."""

from __future__ import annotations

import pytest
import torch

from userlens.batch import Batch, History
from userlens.models import build_model
from userlens.models.dien import DIENConfig, auxiliary_pairs, other_user_rows

from .conftest import SPEC, random_batch


def test_auxiliary_negatives_never_equal_the_positive() -> None:
    g = torch.Generator().manual_seed(0)
    item = torch.randint(2, 4, (16, 10), generator=g)  # two items: a negative often equals the positive
    lengths = torch.randint(0, 11, (16,), generator=g)
    user = torch.randint(0, 5, (16,), generator=g)
    mask = torch.arange(10)[None, :] < lengths[:, None]
    pair, neg_row, neg_ok, lone = auxiliary_pairs(item * mask, mask, user)
    assert torch.equal(pair, mask[:, :-1] & mask[:, 1:])
    assert not (neg_ok & ~pair).any() and neg_ok.any()
    assert (item[neg_row, 1:] != item[:, 1:])[neg_ok].all()
    assert mask[neg_row, 1:][neg_ok].all() and (user[neg_row] != user).all() and lone == 0
    # every other-user negative that differs from the positive is kept
    assert torch.equal(neg_ok, pair & mask[neg_row, 1:] & (item[neg_row, 1:] != item[:, 1:]))


def _user_group_batch(seed: int, users: int = 12, batch: int = 64, max_len: int = 12) -> tuple[torch.Tensor, ...]:
    """Rows as ``user_group`` batches them: runs of one user's samples, a positive and its sampled
    negatives sharing one cutoff, hence one history (``item``, ``mask``, ``user`` per row)."""
    g = torch.Generator().manual_seed(seed)
    timeline = torch.randint(2, 500, (users, 40), generator=g)  # each user's own behaviors
    rows_item, rows_len, rows_user = [], [], []
    while len(rows_user) < batch:
        u = int(torch.randint(0, users, (1,), generator=g))
        for cutoff in torch.randint(max_len, 40, (int(torch.randint(1, 4, (1,), generator=g)),), generator=g).tolist():
            hist = timeline[u, cutoff - max_len:cutoff]
            n = int(torch.randint(max_len // 2, max_len + 1, (1,), generator=g))
            for _ in range(4):  # the positive and 3 negatives of one cutoff
                rows_item.append(torch.cat([hist[-n:], hist.new_zeros(max_len - n)]))
                rows_len.append(n)
                rows_user.append(u)
    item, lengths, user = torch.stack(rows_item)[:batch], torch.tensor(rows_len)[:batch], torch.tensor(rows_user)[:batch]
    return item, torch.arange(max_len)[None, :] < lengths[:, None], user


@pytest.mark.parametrize("seed", range(5))
def test_user_group_batches_keep_their_auxiliary_negatives_and_never_draw_the_same_user(seed: int) -> None:
    """The previous-row rule lost most pairs on such batches (its negative was the same user's same behavior);
    other users' rows keep them usable."""
    item, mask, user = _user_group_batch(seed)
    pair, neg_row, neg_ok, lone = auxiliary_pairs(item, mask, user)
    usable = float(neg_ok.sum() / pair.sum())
    prev = torch.roll(torch.arange(len(user)), 1)  # the old rule, for comparison
    usable_prev = float((pair & mask[prev, 1:] & (item[prev, 1:] != item[:, 1:])).sum() / pair.sum())
    assert usable_prev < 0.4 < 0.7 < usable
    assert lone == 0 and (user[neg_row] != user).all()
    assert torch.equal(auxiliary_pairs(item, mask, user).neg_row, neg_row)  # deterministic: no random draw
    perm = torch.randperm(len(user), generator=torch.Generator().manual_seed(seed))  # any row order
    assert (user[perm][auxiliary_pairs(item[perm], mask[perm], user[perm]).neg_row] != user[perm]).all()


def test_negatives_spread_over_the_other_users_and_a_lone_user_has_none() -> None:
    user = torch.tensor([7, 7, 7, 7, 7, 3, 9, 9])  # user 7 holds more than half the batch
    other = other_user_rows(user)
    assert (user[other] != user).all()
    assert sorted(other[:5].tolist()) == [5, 6, 6, 7, 7]  # 7's five rows cycle over the three others
    assert other_user_rows(torch.tensor([4, 4, 4])).tolist() == [-1, -1, -1]
    assert other_user_rows(torch.zeros(0, dtype=torch.int64)).shape == (0,)
    item = torch.randint(2, 9, (3, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 6, dtype=torch.bool)
    pair, neg_row, neg_ok, lone = auxiliary_pairs(item, mask, torch.tensor([4, 4, 4]))
    assert lone == 3 and not neg_ok.any() and pair.all() and torch.equal(neg_row, torch.arange(3))


def test_the_auxiliary_loss_needs_the_user_field() -> None:
    model = build_model("dien", SPEC, DIENConfig())
    assert "user" in model.fields
    batch = random_batch(batch=4, seed=4)
    del batch.target["user"]
    with pytest.raises(ValueError, match="needs the `user` field"):
        model.forward_train(batch)


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
