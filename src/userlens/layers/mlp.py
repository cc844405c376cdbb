"""Multi-layer perceptron used by towers and attention units."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from userlens.layers.activation import make_activation


class MLP(nn.Module):
    """``Linear → activation → dropout`` per hidden size, then an optional ``Linear(·, out_dim)``.

    Args:
        in_dim: input features; input ``(N, in_dim)``.
        hidden: hidden sizes, e.g. ``(200, 80)``.
        activation: name from :func:`make_activation`.
        out_dim: final linear size without activation (``None`` = end at the last hidden layer).

    Example:
        >>> MLP(8, (4,), "relu", out_dim=1)(torch.zeros(2, 8)).shape
        torch.Size([2, 1])
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], activation: str = "relu",
                 dropout: float = 0.0, out_dim: int | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers += [nn.Linear(d, h), make_activation(activation, h)]
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
