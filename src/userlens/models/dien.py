"""DIEN: Deep Interest Evolution Network (Zhou et al., "Deep Interest Evolution Network for
Click-Through Rate Prediction", AAAI 2019, arXiv:1809.03672).

**Interest extractor**: a GRU over the recent behaviors, supervised by an
auxiliary loss — each hidden state must tell the next real behavior from a
negative (a behavior at the same step of another user in the batch, as in the
DIEN's public code samples them from other users' sequences too).
**Interest evolving**: an AUGRU (GRU whose update
gate is scaled by the target attention weight of each step) runs over the
extracted interests; its final state is the user's interest in the candidate.

The trainer adds :meth:`DIEN.auxiliary_loss` (``aux_weight`` × the auxiliary
BCE) to the click loss. Departures: the auxiliary classifier is a dot product
of a projected hidden state and the behavior embedding (the paper uses a small
MLP); the AUGRU attention is DIN's MLP over ``[h, t, h − t, h ⊙ t]`` (the paper
uses a bilinear ``h W e``) with sigmoid hidden units when ``activation`` is
``dice``, since Dice's batch statistics over padded steps would break padding
invariance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from userlens.batch import Batch
from userlens.layers import MLP, FeatureEmbedding
from userlens.layers.activation import make_activation
from userlens.layers.embedding import fields_for
from userlens.models.registry import register_model
from userlens.models.spec import FeatureSpec


@dataclass
class DIENConfig:
    embed_dim: int = 16
    gru_dim: int = 32
    attention_mlp: tuple[int, ...] = (64, 32)
    mlp: tuple[int, ...] = (200, 80)
    activation: str = "dice"
    dropout: float = 0.0
    aux_weight: float = 1.0
    use_user: bool = False


class DIEN(nn.Module):
    def __init__(self, spec: FeatureSpec, cfg: DIENConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = FeatureEmbedding(spec.n_items, spec.n_categories, cfg.embed_dim,
                                          n_users=spec.n_users if cfg.use_user else 0, context=spec.context)
        d, h = self.embedding.item_dim, cfg.gru_dim
        self.extractor = nn.GRU(d, h, batch_first=True)
        self.aux_proj = nn.Linear(h, d)
        self.target_proj = nn.Linear(d, h)
        att: list[nn.Module] = []
        a = 4 * h
        for width in cfg.attention_mlp:
            att += [nn.Linear(a, width), make_activation("sigmoid" if cfg.activation == "dice" else cfg.activation, width)]
            a = width
        self.att_mlp = nn.Sequential(*att, nn.Linear(a, 1))
        self.aug_x = nn.Linear(h, 3 * h)
        self.aug_h = nn.Linear(h, 3 * h, bias=False)
        self.tower = MLP(d + h + self.embedding.side_dim, cfg.mlp, cfg.activation, cfg.dropout, out_dim=1)
        self._aux: Tensor | None = None
        #: batch fields the loader must build for this model
        self.fields: frozenset[str] = fields_for(cfg.use_user)

    def auxiliary_loss(self) -> Tensor:
        """``aux_weight`` × the next-behavior BCE of the last training forward (0 outside training)."""
        aux, self._aux = self._aux, None
        return self.cfg.aux_weight * aux if aux is not None else torch.zeros(())

    def _extract(self, e: Tensor, lengths: Tensor, mask: Tensor) -> Tensor:
        packed = pack_padded_sequence(e, lengths.clamp_min(1).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.extractor(packed)
        out = pad_packed_sequence(out, batch_first=True, total_length=e.shape[1])[0]
        return out * mask.unsqueeze(-1)

    def _aux_loss(self, states: Tensor, e: Tensor, mask: Tensor) -> Tensor:
        pair = mask[:, :-1] & mask[:, 1:]  # step t has a real next behavior
        perm = torch.roll(torch.arange(e.shape[0]), 1)  # another row's behavior (never the row itself when B > 1)
        neg_ok = pair & mask[perm, 1:] & (perm != torch.arange(e.shape[0])).unsqueeze(1)
        pred = self.aux_proj(states[:, :-1])
        pos = (pred * e[:, 1:]).sum(-1)[pair]
        neg = (pred * e[perm, 1:]).sum(-1)[neg_ok]
        if pos.numel() == 0:
            return states.sum() * 0.0
        return (F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos), reduction="sum")
                + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg), reduction="sum")) / (
                    pos.numel() + neg.numel())

    def _evolve(self, states: Tensor, weights: Tensor, mask: Tensor) -> Tensor:
        """AUGRU: the update gate of step t is scaled by its attention weight; padded steps keep the state."""
        x = self.aug_x(states)  # (B, L, 3h)
        hid = states.new_zeros(states.shape[0], states.shape[2])
        for t in range(states.shape[1]):
            xr, xu, xn = x[:, t].chunk(3, dim=-1)
            hr, hu, hn = self.aug_h(hid).chunk(3, dim=-1)
            r, u = torch.sigmoid(xr + hr), torch.sigmoid(xu + hu)
            n = torch.tanh(xn + r * hn)
            u = weights[:, t : t + 1] * u
            hid = torch.where(mask[:, t : t + 1], (1 - u) * hid + u * n, hid)
        return hid

    def forward(self, batch: Batch) -> Tensor:
        hist = batch.history
        mask = hist.mask()
        target = self.embedding.target(batch)
        e = self.embedding.history(hist)
        states = self._extract(e, hist.lengths, mask)  # (B, L, h)
        if self.training and hist.max_len > 1:
            self._aux = self._aux_loss(states, e, mask)
        t = self.target_proj(target).unsqueeze(1).expand_as(states)
        s = self.att_mlp(torch.cat([states, t, states - t, states * t], -1)).squeeze(-1)
        w = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1).nan_to_num(0.0)
        interest = self._evolve(states, w, mask)
        return self.tower(torch.cat([target, interest, self.embedding.side(batch)], -1)).squeeze(-1)


@register_model("dien", DIENConfig, "DIEN: GRU interest extractor with auxiliary loss + AUGRU evolution (AAAI 2019)")
def build_dien(spec: FeatureSpec, cfg: DIENConfig) -> DIEN:
    return DIEN(spec, cfg)
