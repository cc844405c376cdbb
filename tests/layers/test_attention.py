"""TargetAttention against a hand-written concat reference (the DIN paper's formula)."""

from __future__ import annotations

import torch
from torch import nn

from userlens.layers import TargetAttention
from userlens.layers.attention import segment_softmax


def _reference(att: TargetAttention, target: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor,
               softmax: bool = False) -> torch.Tensor:
    """Dense, per-row, per-behavior loop: w_j = MLP([h, t, h - t, h * t]); out = sum_j w_j h_j."""
    out = torch.zeros_like(target)
    for b in range(target.shape[0]):
        ws, hs = [], []
        for j in range(keys.shape[1]):
            if not mask[b, j]:
                continue
            h, t = keys[b, j], target[b]
            z = att.first(torch.cat([h, t, h - t, h * t]).unsqueeze(0))
            ws.append(att.rest(z).squeeze())
            hs.append(h)
        if ws:
            w = torch.stack(ws)
            if softmax:
                w = torch.softmax(w, 0)
            out[b] = (w.unsqueeze(1) * torch.stack(hs)).sum(0)
    return out


def _packed(keys: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = mask.nonzero(as_tuple=True)
    return keys[rows, cols], rows


def test_three_behaviour_example_matches_concat_formula() -> None:
    torch.manual_seed(0)
    att = TargetAttention(4, (6, 3), activation="prelu").eval()
    target = torch.randn(2, 4)
    keys = torch.randn(2, 3, 4)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    k, rows = _packed(keys, mask)
    torch.testing.assert_close(att(target, k, rows), _reference(att, target, keys, mask), rtol=1e-5, atol=1e-6)


def test_softmax_variant_and_empty_rows() -> None:
    torch.manual_seed(1)
    att = TargetAttention(4, (5,), activation="relu", normalize="softmax").eval()
    target, keys = torch.randn(3, 4), torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    k, rows = _packed(keys, mask)
    out = att(target, k, rows)
    torch.testing.assert_close(out, _reference(att, target, keys, mask, softmax=True), rtol=1e-5, atol=1e-6)
    assert torch.equal(out[1], torch.zeros(4))


def test_hand_computed_single_unit() -> None:
    """A 1-unit attention with fixed weights, computed by hand on 3 behaviors."""
    att = TargetAttention(1, (1,), activation="relu").eval()
    with torch.no_grad():
        att.first.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 1.0]]))  # z = h + h*t
        att.first.bias.zero_()
        last: nn.Linear = att.rest[-1]  # type: ignore[assignment]
        last.weight.fill_(1.0)
        last.bias.zero_()
    t = torch.tensor([[2.0]])
    h = torch.tensor([[1.0], [-1.0], [3.0]])  # z = 3, -3 -> relu 0, 9
    out = att(t, h, torch.zeros(3, dtype=torch.long))
    assert out.item() == 3.0 * 1.0 + 0.0 * -1.0 + 9.0 * 3.0


def test_segment_softmax_matches_dense() -> None:
    s = torch.tensor([1.0, 2.0, 3.0, -1.0, 0.5])
    rows = torch.tensor([0, 0, 0, 2, 2])
    got = segment_softmax(s, rows, 3)
    torch.testing.assert_close(got[:3], torch.softmax(s[:3], 0))
    torch.testing.assert_close(got[3:], torch.softmax(s[3:], 0))


def test_gradients_match_the_concat_formula() -> None:
    """The split first layer and the index_select gathers give the paper formula's gradients too
    (inputs and every weight), softmax or not."""
    for softmax in (False, True):
        torch.manual_seed(3)
        att = TargetAttention(4, (6, 3), activation="prelu", normalize="softmax" if softmax else "none").eval()
        target = torch.randn(3, 4, requires_grad=True)
        keys = torch.randn(3, 5, 4, requires_grad=True)
        mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
        k, rows = _packed(keys, mask)
        w = torch.randn(3, 4)
        params = [target, keys, *att.parameters()]
        got = torch.autograd.grad((att(target, k, rows) * w).sum(), params)
        ref = torch.autograd.grad((_reference(att, target, keys, mask, softmax=softmax) * w).sum(), params)
        for g, r in zip(got, ref):
            torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
