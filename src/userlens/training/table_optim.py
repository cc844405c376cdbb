"""Optimizers for the item and category tables (``embedding_optimizer``): fbgemm's exact CPU update rules.

TorchRec's sharded tables (``shard_tables``) update in backward with fbgemm's fused optimizers, and on CPU
those are only ``exact_sgd``, ``exact_adagrad`` and ``exact_row_wise_adagrad`` (Adam is refused). A plain
(one process, or DDP) run with the same ``embedding_optimizer`` steps its ``item`` / ``category`` tables with
:class:`TableOptimizer`, the same arithmetic on the whole table, so the two runs can be compared:
``tests/training/test_torchrec.py`` trains both and finds the same weights.

Per table ``W`` with (averaged) gradient ``g``, on the rows ``r`` whose gradient is not all zero (fbgemm
updates the rows a batch looked up; a row looked up whose gradient is zero gets a zero update in both):

- ``sgd``: ``W[r] -= lr · g[r]``
- ``adagrad``: ``S[r] += g[r]²``; ``W[r] -= lr · g[r] / (√S[r] + eps)`` (elementwise state)
- ``rowwise_adagrad``: ``s[r] += mean(g[r]²)``; ``W[r] -= lr · g[r] / (√s[r] + eps)`` (one number per row;
  column-wise sharding keeps one per row *per column shard*, so compare it with table-wise runs only)

No weight decay (``weight_decay`` applies to the other parameters only).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

TableOptim = Literal["sgd", "adagrad", "rowwise_adagrad"]
#: fbgemm's default ``eps`` of its adagrad updates, used on both sides
EPS = 1e-8


class TableOptimizer(torch.optim.Optimizer):
    """``kind`` update of embedding tables (2-D parameters), see the module docstring.

    Example:
        >>> w = torch.nn.Parameter(torch.ones(3, 2))
        >>> opt = TableOptimizer([w], "sgd", lr=0.5)
        >>> w.grad = torch.tensor([[0.0, 0.0], [2.0, 2.0], [0.0, 0.0]])
        >>> opt.step(); w[1].tolist()
        [0.0, 0.0]
    """

    def __init__(self, params: list[Tensor], kind: TableOptim, lr: float, eps: float = EPS) -> None:
        if kind not in ("sgd", "adagrad", "rowwise_adagrad"):
            raise ValueError(f"kind must be sgd, adagrad or rowwise_adagrad, got {kind!r}")
        super().__init__(params, {"lr": lr, "eps": eps})
        self.kind = kind

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            lr, eps = group["lr"], group["eps"]
            for w in group["params"]:
                if w.grad is None:
                    continue
                g = w.grad
                rows = (g != 0).any(1).nonzero().squeeze(1)  # the rows this step touched
                gr = g.index_select(0, rows)
                if self.kind == "sgd":
                    w.index_add_(0, rows, gr, alpha=-lr)
                    continue
                state = self.state[w]
                if "sum" not in state:
                    state["sum"] = torch.zeros_like(w) if self.kind == "adagrad" else w.new_zeros(w.shape[0], 1)
                s = state["sum"]
                sq = gr * gr if self.kind == "adagrad" else (gr * gr).mean(1, keepdim=True)
                s.index_add_(0, rows, sq)
                w.index_add_(0, rows, gr / (s.index_select(0, rows).sqrt() + eps), alpha=-lr)
