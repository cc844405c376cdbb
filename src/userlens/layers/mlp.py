"""Multi-layer perceptron used by towers and attention units."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from userlens.layers.activation import make_activation


class BatchNorm(nn.BatchNorm1d):
    """``BatchNorm1d`` that takes a training batch of one row with its running statistics (as :class:`Dice`).

    A one-row variance is undefined and ``nn.BatchNorm1d`` raises; a last
    training batch of one sample must not crash a run.
    """

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


class MLP(nn.Module):
    """``Linear → [BatchNorm] → activation → dropout`` per hidden size, then an optional ``Linear(·, out_dim)``.

    ``batch_norm`` normalises each hidden layer's pre-activations over the batch
    (as RecBole's and DeepCTR's DNN with ``bn``): a DIN tower reads attention
    sums whose scale grows with the history, and normalising them made DIN both
    better and faster to converge on every peer set (``benchmarks/RESULTS.md``).

    Args:
        in_dim: input features; input ``(N, in_dim)``.
        hidden: hidden sizes, e.g. ``(200, 80)``.
        activation: name from :func:`make_activation`.
        batch_norm: BatchNorm1d before each hidden activation.
        out_dim: final linear size without activation (``None`` = end at the last hidden layer).

    Example:
        >>> MLP(8, (4,), "relu", out_dim=1)(torch.zeros(2, 8)).shape
        torch.Size([2, 1])
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], activation: str = "relu",
                 dropout: float = 0.0, out_dim: int | None = None, batch_norm: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers.append(nn.Linear(d, h))
            if batch_norm:
                layers.append(BatchNorm(h))
            layers.append(make_activation(activation, h))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = h
        if out_dim is not None:
            layers.append(nn.Linear(d, out_dim))
            d = out_dim
        self.net = nn.Sequential(*layers)
        self.out_dim = d

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
