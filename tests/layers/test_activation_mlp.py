from __future__ import annotations

import pytest
import torch

from userlens.layers import MLP, Dice, make_activation
from userlens.layers.activation import compile_hot_layers


def test_dice_matches_paper_formula_in_training() -> None:
    torch.manual_seed(0)
    d = Dice(3)
    with torch.no_grad():
        d.alpha.copy_(torch.tensor([0.1, -0.5, 2.0]))
    x = torch.randn(50, 3) * 3 + 1
    p = torch.sigmoid((x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-8))
    expected = p * x + (1 - p) * d.alpha * x
    torch.testing.assert_close(d.train()(x), expected)
    torch.testing.assert_close(d.running_mean, 0.1 * x.mean(0))


@pytest.mark.parametrize("compiled", [False, True])
def test_dice_gradients_match_autograd_of_the_formula(compiled: bool) -> None:
    """The hand-written backward (batch-norm gradient through mean and var) against autograd."""
    torch.manual_seed(1)
    d = Dice(4)
    if compiled:
        compile_hot_layers(torch.nn.Sequential(d))
    with torch.no_grad():
        d.alpha.copy_(torch.tensor([0.3, -0.7, 1.5, 0.0]))
    alpha = d.alpha.detach().clone().requires_grad_(True)
    x = (torch.randn(33, 4, dtype=torch.float64) * 2 + 0.5).float().requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    g = torch.randn(33, 4)
    d.train()(x).backward(g)
    var, mean = torch.var_mean(x_ref, dim=0, unbiased=False)
    p = torch.sigmoid((x_ref - mean) / torch.sqrt(var + d.eps))
    (p * x_ref + (1 - p) * alpha * x_ref).backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(d.alpha.grad, alpha.grad, rtol=1e-4, atol=1e-5)


def test_dice_eval_uses_running_stats_and_batch_of_one_trains() -> None:
    d = Dice(2)
    x = torch.tensor([[1.0, -2.0]])
    out_train = d.train()(x)  # one row: running statistics, no crash
    out_eval = d.eval()(x)
    torch.testing.assert_close(out_train, out_eval)


def test_compiled_dice_equals_eager() -> None:
    torch.manual_seed(0)
    eager = Dice(8)
    compiled = Dice(8)
    compiled.load_state_dict(eager.state_dict())
    assert compile_hot_layers(torch.nn.Sequential(compiled)) == 1
    for n in (64, 17):  # dynamic shapes
        x = torch.randn(n, 8, requires_grad=True)
        x2 = x.detach().clone().requires_grad_(True)
        torch.testing.assert_close(compiled(x2), eager(x), rtol=1e-5, atol=1e-6)
        eager(x).sum().backward()
        compiled(x2).sum().backward()
        torch.testing.assert_close(x2.grad, x.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(compiled.running_mean, eager.running_mean)


def test_mlp_shapes_and_unknown_activation() -> None:
    m = MLP(5, (4, 3), "prelu", dropout=0.1, out_dim=1)
    assert m(torch.zeros(2, 5)).shape == (2, 1) and m.out_dim == 1
    with pytest.raises(ValueError, match="unknown activation 'gelu2'; known"):
        make_activation("gelu2", 3)


def test_mlp_batch_norm_normalises_hidden_layers_and_takes_a_one_row_batch() -> None:
    from userlens.layers.mlp import BatchNorm

    torch.manual_seed(0)
    mlp = MLP(6, (5, 3), "relu", out_dim=1, batch_norm=True)
    assert sum(isinstance(m, BatchNorm) for m in mlp.modules()) == 2
    x = torch.randn(64, 6) * 50 + 7
    mlp.train()
    h = mlp.net[1](mlp.net[0](x))  # after Linear → BatchNorm: zero mean, unit variance per feature
    torch.testing.assert_close(h.mean(0), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(h.var(0, unbiased=False), torch.ones(5), atol=1e-3, rtol=0)
    one = mlp(x[:1])  # a one-row training batch uses the running statistics instead of raising
    mlp.eval()
    torch.testing.assert_close(one, mlp(x[:1]))
