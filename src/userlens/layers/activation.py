"""Activations, by name: ``relu``, ``prelu``, ``sigmoid``, ``dice``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn


class _DiceBatch(torch.autograd.Function):
    """Dice with batch statistics; returns ``(y, mean, var)``, the statistics for the running averages.

    The backward is written out (the batch-norm gradient through ``mean`` and
    ``var``, reusing the saved gate ``p``) so that compiled it is two passes over
    ``x``: autograd's own graph of the formula compiles to 1.5x the time (5.4 against
    3.6 ms fwd+bwd for 41,000 × 64 on this machine). ``tests/layers/test_activation_mlp.py``
    checks it against autograd of the formula.
    """

    @staticmethod
    def forward(ctx, x: Tensor, alpha: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        var, mean = torch.var_mean(x, dim=0, unbiased=False)
        r = torch.rsqrt(var + eps)
        p = torch.sigmoid((x - mean) * r)
        ctx.save_for_backward(x, alpha, mean, r, p)
        ctx.mark_non_differentiable(mean, var)
        return x * (alpha + (1 - alpha) * p), mean, var

    @staticmethod
    def backward(ctx, gy: Tensor, _gm: Tensor, _gv: Tensor) -> tuple[Tensor, Tensor, None]:  # type: ignore[override]
        x, alpha, mean, r, p = ctx.saved_tensors
        xh = (x - mean) * r
        gx = gy * x
        g_alpha = (gx * (1 - p)).sum(0)
        g_xh = gx * (1 - alpha) * p * (1 - p)  # dL/d x̂, x̂ = (x − mean)·r
        dx = gy * (alpha + (1 - alpha) * p) + r * (g_xh - g_xh.mean(0) - xh * (g_xh * xh).mean(0))
        return dx, g_alpha, None


def _dice_train(x: Tensor, alpha: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    return _DiceBatch.apply(x, alpha, eps)  # type: ignore[no-any-return]


def _dice_fixed(x: Tensor, alpha: Tensor, mean: Tensor, var: Tensor, eps: float) -> Tensor:
    p = torch.sigmoid((x - mean) * torch.rsqrt(var + eps))
    return x * (alpha + (1 - alpha) * p)


_EAGER = (_dice_train, _dice_fixed)
_compiled: tuple[Callable[..., Any], Callable[..., Any]] | None = None


def _any_width(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.compile(fn, dynamic=True)`` whose Parameter arguments (α) get dynamic sizes too.

    Dynamo keeps a Parameter's sizes static by default, which would trace once per layer width.
    """
    compiled = torch.compile(fn, dynamic=True)

    def call(*args: Any) -> Any:
        with torch._dynamo.config.patch(force_parameter_static_shapes=False):
            return compiled(*args)
    return call


def _compiled_kernels() -> tuple[Callable[..., Any], Callable[..., Any]]:
    """One compiled pair shared by every Dice: one trace serves all sizes (dynamic shapes)."""
    global _compiled
    if _compiled is None:
        _compiled = (_any_width(_dice_train), _any_width(_dice_fixed))
    return _compiled


class Dice(nn.Module):
    """Data-adaptive activation of DIN (Zhou et al., KDD 2018, §4.3).

    ``f(x) = p(x)·x + (1 − p(x))·α·x`` with ``p(x) = sigmoid((x − E[x]) / sqrt(Var[x] + eps))``,
    statistics over the batch while training (running averages at inference).
    Departure: a training batch of one row uses the running statistics, since a
    one-row variance is undefined (BatchNorm would raise).

    Args:
        dim: feature size; input is ``(N, dim)``.
    """

    def __init__(self, dim: int, eps: float = 1e-8, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.alpha = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))
        self.kernels = _EAGER  # (batch statistics, fixed statistics); compile_hot_layers swaps in compiled ones

    def forward(self, x: Tensor) -> Tensor:
        train, fixed = self.kernels
        if self.training and x.shape[0] > 1:
            y, mean, var = train(x, self.alpha, self.eps)
            with torch.no_grad():
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var, self.momentum)
            return y  # type: ignore[no-any-return]
        return fixed(x, self.alpha, self.running_mean, self.running_var, self.eps)  # type: ignore[no-any-return]


#: activation name → builder ``(width) -> nn.Module``: what :func:`make_activation` and config checks accept
ACTIVATIONS: dict[str, Callable[[int], nn.Module]] = {
    "relu": lambda d: nn.ReLU(),
    "prelu": lambda d: nn.PReLU(d),
    "sigmoid": lambda d: nn.Sigmoid(),
    "dice": Dice,
}


def make_activation(name: str, dim: int) -> nn.Module:
    """Build an activation for ``dim`` features; unknown names list the known ones."""
    try:
        return ACTIVATIONS[name](dim)
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}") from None


def compile_hot_layers(model: nn.Module) -> int:
    """Give the layers whose eager cost is many elementwise passes (Dice) compiled kernels, in place.

    Dice over ``(B·L, 64)`` attention activations is ~15 memory-bound kernels
    eagerly; fused it is ~5x faster and DIN trains ~2x faster on CPU. Every Dice
    shares one compiled pair with dynamic shapes (packed behavior counts vary per
    batch, sizes per layer), so the first-step warm-up compiles once, not per layer.
    Returns how many layers were switched.
    """
    n = 0
    for m in model.modules():
        if isinstance(m, Dice):
            m.kernels = _compiled_kernels()
            n += 1
    return n
