"""ETA (Chen et al., 2021): SimHash signatures and the top-k by Hamming distance to the target's."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from userlens.batch import LongHistory
from userlens.layers.gsu.base import CHUNK_BUDGET, Selection, serving_state
from userlens.layers.gsu.slab import chunked_topk


class SimHash(torch.nn.Module):
    """Locality-sensitive signatures ``sign(x·R)`` with a fixed Gaussian ``R`` (Charikar, 2002).

    ``R`` is a buffer (saved with the model, never trained); ``bits`` in {8, 16, 32, 64}
    are packed into one unsigned integer per vector, so a behavior's signature costs
    ``bits/8`` bytes and a Hamming distance is one XOR + popcount.
    """

    def __init__(self, dim: int, bits: int = 64, seed: int = 0) -> None:
        super().__init__()
        if bits not in (8, 16, 32, 64):
            raise ValueError(f"SimHash bits must be 8, 16, 32 or 64, got {bits}")
        self.bits = bits
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("projection", torch.randn(dim, bits, generator=g))

    def forward(self, x: Tensor) -> np.ndarray:
        """``(..., dim)`` on any device → ``(...)`` unsigned signatures (NumPy on the CPU, ``uint{bits}``)."""
        with torch.no_grad():
            on = (x.detach().float() @ self.projection > 0).cpu().numpy()
        packed = np.packbits(on, axis=-1, bitorder="little")
        return np.ascontiguousarray(packed).view(f"<u{self.bits // 8}")[..., 0]

    def codes(self, x: Tensor, rounds: int, width: int) -> Tensor:
        """SDIM bucket codes: ``rounds`` integers of ``width`` sign bits each → ``(..., rounds)`` int64.

        Computed on the device of ``x``.
        """
        if rounds * width > self.bits:
            raise ValueError(f"rounds × width = {rounds * width} exceeds the {self.bits} projection bits")
        with torch.no_grad():
            on = (x.detach().float() @ self.projection[:, : rounds * width] > 0).long()
            on = on.reshape(*on.shape[:-1], rounds, width)
            return (on << torch.arange(width, device=on.device)).sum(-1)


def hamming_topk(long: LongHistory, target_sig: np.ndarray, item_sig: np.ndarray, k: int,
                 budget: int = CHUNK_BUDGET) -> Selection:
    """ETA: the ``k`` behaviors whose item signature is nearest the target's in Hamming distance.

    A serving request with per-user state scores each distinct item of the history once
    (:class:`userlens.serving.state.ItemGroups`: the distance depends on the item only).
    """
    t = target_sig[:, None]

    def item_scores(items: np.ndarray, newest: np.ndarray) -> tuple[Tensor, Tensor | None]:
        ham = torch.from_numpy(np.bitwise_count(item_sig[items][None, :] ^ t).astype(np.float32))  # (B, U)
        keys = None
        if int(newest.max(initial=0)) < (1 << 17):  # (64 − distance)·2**17 + newest < 2**24: exact float32, no ties
            keys = (64 - ham) * float(1 << 17) + torch.from_numpy(newest.astype(np.float32))
        return -ham, keys

    state = serving_state(long)
    sel = state.item_topk(long, item_scores, k) if state is not None else None
    if sel is not None:
        return sel

    def score(ids: Tensor, rows: Tensor) -> Tensor:  # a slab: its signatures gathered once, XOR-ed with every target
        sig = item_sig[ids[0].numpy()][None, :] if ids.stride(0) == 0 else item_sig[ids.numpy()]
        ham = np.bitwise_count(sig ^ t[rows.numpy()])
        return -torch.from_numpy(ham.astype(np.int8))  # small integer scores: exact int32 keys, see chunked_topk

    return chunked_topk(long, k, score, dim=1, budget=budget)
