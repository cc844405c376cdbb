"""The lifelong ESUs and SimTier against hand-written references (the papers' formulas)."""

from __future__ import annotations

import math

import pytest
import torch

from userlens.batch import History
from userlens.layers import FeatureEmbedding
from userlens.layers.attention import MultiHeadTargetAttention
from userlens.layers.interest import TIME_BUCKETS, DINExactUnit, time_gap_buckets
from userlens.layers.simtier import SimTier, simtier_counts

from .test_attention import _reference


def _hist(seed: int = 0) -> tuple[History, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor([3, 0, 5, 1])
    mask = torch.arange(5)[None, :] < lens[:, None]
    vals = {"item": torch.randint(2, 20, (4, 5), generator=g) * mask,
            "category": torch.randint(2, 6, (4, 5), generator=g) * mask,
            "time": torch.randint(0, 10**9, (4, 5), generator=g) * mask}
    return History(vals, lens), torch.full((4,), 10**9 + 1)


def test_time_gap_buckets_are_one_plus_floor_log2_minutes() -> None:
    gaps_min = torch.tensor([0, 0.5, 1, 2, 3, 7, 8, 1023, 1024, 2**22, 2**40], dtype=torch.float64)
    behavior = torch.zeros(1, len(gaps_min), dtype=torch.int64)
    now = (gaps_min * 60_000).long()
    got = time_gap_buckets(now, behavior.expand(len(now), -1), torch.ones(len(now), len(now), dtype=torch.bool))
    expect = [min(1 + math.floor(math.log2(1 + g)), TIME_BUCKETS - 1) for g in gaps_min.tolist()]
    assert got[:, 0].tolist() == expect
    assert time_gap_buckets(now[:1], behavior, torch.zeros(1, len(now), dtype=torch.bool)).eq(0).all()


def test_sim_esu_concatenates_the_time_gap_embedding() -> None:
    """SIM §3.3: attention over [e_j ; g_j] with the target [t ; 0], by the DIN concat formula."""
    torch.manual_seed(0)
    emb = FeatureEmbedding(20, 6, 2)
    unit = DINExactUnit(4, 3, (5,), "relu").eval()
    hist, now = _hist()
    target = torch.randn(4, 4)
    keys = torch.cat([emb.history(hist), unit.gap(time_gap_buckets(now, hist["time"], hist.mask()))], dim=-1)
    ref = _reference(unit.attention, torch.cat([target, torch.zeros(4, 3)], -1), keys, hist.mask())
    out = unit(emb, target, hist, now)
    assert out.shape == (4, 7)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("qk_norm", [True, False])
def test_multi_head_attention_with_bias_and_values_matches_a_per_head_loop(qk_norm: bool) -> None:
    torch.manual_seed(1)
    att = MultiHeadTargetAttention(4, heads=2, head_dim=3, value_dim=6, qk_norm=qk_norm)
    target, keys, values = torch.randn(2, 4), torch.randn(2, 5, 4) * 0.02, torch.randn(2, 5, 6)
    bias = torch.randn(2, 2, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    out = att(target, keys, mask, bias, values)
    norm = (lambda x: x / x.pow(2).mean(-1, keepdim=True).sqrt()) if qk_norm else (lambda x: x)
    q, k, v = att.q(norm(target)), att.k(norm(keys)), att.v(values)
    b = 0
    heads, evidence = [], []
    for h in range(2):
        sl = slice(3 * h, 3 * h + 3)
        s = torch.stack([q[b, sl] @ k[b, j, sl] / math.sqrt(3) + bias[b, h, j] for j in range(3)])
        heads.append((torch.softmax(s, 0)[:, None] * v[b, :3, sl]).sum(0))
        evidence.append(torch.logsumexp(s, 0))
    torch.testing.assert_close(out[0], torch.cat([att.out(torch.cat(heads)), torch.stack(evidence)]))
    assert torch.equal(out[1, 4:], torch.zeros(2))  # an empty row: no evidence
    logits = att.logits(target, keys, bias)  # head-averaged relevance
    s0 = torch.stack([(q[0, :3] @ k[0, 1, :3] + q[0, 3:] @ k[0, 1, 3:]) / math.sqrt(3) / 2 + bias[0, :, 1].mean()])
    torch.testing.assert_close(logits[0, 1:2], s0)
    torch.testing.assert_close(att.query(target)[0] @ k[0, 1] + bias[0, :, 1].mean(), logits[0, 1])
    torch.testing.assert_close(att.key_table(keys[0]), k[0])


def test_qk_norm_gives_unit_scale_similarity_logits_at_init() -> None:
    """Embeddings at std 0.02: with qk_norm the same item scores ~√d_h, unrelated ones O(1) around 0; without, ~0."""
    torch.manual_seed(0)
    x = torch.randn(2000, 32) * 0.02
    for qk_norm, lo, hi in ((True, 3.0, 5.0), (False, 0.0, 0.01)):
        att = MultiHeadTargetAttention(32, heads=2, head_dim=16, qk_norm=qk_norm)
        with torch.no_grad():
            same = att.logits(x[:1000], x[:1000, None, :])[:, 0]  # each row against itself
            other = att.logits(x[:1000], x[1000:, None, :])[:, 0]
        assert lo < same.mean() < hi
        if qk_norm:
            assert 0.5 < other.std() < 1.5 and abs(other.mean()) < 0.2  # of order 1


def test_simtier_counts_and_embeds_log_counts() -> None:
    cos = torch.tensor([[1.0, 0.95, -1.0, 0.1, 0.3], [0.2, 0.2, 0.2, 0.2, 0.2]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    counts = simtier_counts(cos, mask, 4)  # bins [-1,-.5) [-.5,0) [0,.5) [.5,1]
    assert counts.tolist() == [[1, 0, 1, 2], [0, 0, 0, 0]]
    layer = SimTier(4, 3)
    expect = torch.log1p(counts) @ layer.embed.weight.t()  # Σ_t log(1 + n_t) E_t
    torch.testing.assert_close(layer(cos, mask), expect)
    assert torch.equal(layer(cos, mask)[1], torch.zeros(3))
