"""DIEN: Deep Interest Evolution Network (Zhou et al., "Deep Interest Evolution Network for
Click-Through Rate Prediction", AAAI 2019, arXiv:1809.03672).

**Interest extractor**: a GRU over the recent behaviors, supervised by an
auxiliary loss — each hidden state must tell the next real behavior from a
negative (a behavior at the same step of another user in the batch,
:func:`other_user_rows`; DIEN's public code samples them from other users'
sequences too). A negative whose item equals the positive is dropped
(:func:`auxiliary_pairs`): it would train the state to reject the behavior that
really came next. A batch of one user has no negatives (its positives still
count; :class:`AuxiliaryPairs` ``lone`` counts such rows).
**Interest evolving**: an AUGRU (GRU whose update
gate is scaled by the target attention weight of each step) runs over the
extracted interests; its final state is the user's interest in the candidate.

``forward`` returns the click logits only. The auxiliary loss is returned, not
stored: :meth:`DIEN.forward_train` gives ``(logits, {"auxiliary": aux_weight ×
auxiliary BCE})`` and the trainer adds the extra terms to the click loss.

Departures: the auxiliary classifier is a dot product of a projected hidden
state and the behavior embedding (the paper uses a small MLP); the AUGRU
attention is DIN's MLP over ``[h, t, h − t, h ⊙ t]`` (the paper uses a bilinear
``h W e``) with sigmoid hidden units when ``activation`` is ``dice``, since
Dice's batch statistics over padded steps would break padding invariance;
negatives come from the batch (the paper samples them from the item pool).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from userlens.batch import Batch
from userlens.layers import MLP
from userlens.layers.activation import make_activation
from userlens.layers.embedding import fields_for
from userlens.models.registry import register_model
from userlens.models.spec import FeatureSpec, feature_embedding


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


def other_user_rows(user: Tensor) -> Tensor:
    """For each row of a batch, a row of **another user** ``(B,)``; ``-1`` when no other user is in the batch.

    Rows are grouped by user (a stable sort, so the rule does not depend on where a user's
    rows sit); the i-th row of a user's group takes the i-th row after the group, cyclically
    and skipping the group. Each user's negatives spread over the other users' rows and never
    come from its own: with ``user_group`` batches (runs of one user's samples, which often
    share one cutoff and so one history) the previous row was mostly the same user's same
    behavior. No random draw: the same batch always gets the same negatives.
    """
    b = user.shape[0]
    if b == 0:
        return user.new_zeros(0)
    order = torch.sort(user, stable=True).indices
    u = user[order]
    ar = torch.arange(b, device=user.device)
    first = torch.ones(b, dtype=torch.bool, device=user.device)
    first[1:] = u[1:] != u[:-1]
    start = torch.cummax(torch.where(first, ar, 0), 0).values  # (B,) where each row's group starts
    group = torch.cumsum(first.long(), 0) - 1
    size = torch.bincount(group)[group]
    others = b - size
    after = b - start - size  # rows after the group (sorted order); the rest lie before it
    j = (ar - start) % others.clamp_min(1)
    pos = torch.where(j < after, start + size + j, j - after).clamp(0, b - 1)
    out = torch.empty_like(order)
    out[order] = torch.where(others > 0, order[pos], -1)
    return out


class AuxiliaryPairs(NamedTuple):
    """What DIEN's auxiliary loss scores, for ``item``/``mask`` ``(B, L)`` (:func:`auxiliary_pairs`).

    ``pair (B, L-1)``: step ``t`` has a real next behavior (a positive). ``neg_row (B,)``: the row
    whose behavior at ``t + 1`` is row ``b``'s negative (:func:`other_user_rows`; the row itself when
    there is none). ``neg_ok (B, L-1)``: that negative exists, is another user's, and its item differs
    from the positive's. ``lone``: rows with no other user in the batch (no negatives; their
    positives still count).
    """

    pair: Tensor
    neg_row: Tensor
    neg_ok: Tensor
    lone: int


def auxiliary_pairs(item: Tensor, mask: Tensor, user: Tensor) -> AuxiliaryPairs:
    """Next-behavior positives and other users' negatives (see :class:`AuxiliaryPairs`)."""
    rows = torch.arange(item.shape[0], device=item.device)
    other = other_user_rows(user)
    has = other >= 0
    neg_row = torch.where(has, other, rows)
    pair = mask[:, :-1] & mask[:, 1:]
    neg_ok = pair & has.unsqueeze(1) & mask[neg_row, 1:] & (item[neg_row, 1:] != item[:, 1:])
    return AuxiliaryPairs(pair, neg_row, neg_ok, int((~has).sum()))


class DIEN(nn.Module):
    # embeds only the batch's item / category ids (short history, target): TorchRec can shard its tables
    shardable_tables = True

    def __init__(self, spec: FeatureSpec, cfg: DIENConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = feature_embedding(spec, cfg.embed_dim, cfg.use_user)
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
        #: batch fields the loader must build for this model
        self.fields: frozenset[str] = fields_for(self.embedding, extra=("user",))  # user: the auxiliary negatives

    def _extract(self, e: Tensor, lengths: Tensor, mask: Tensor) -> Tensor:
        packed = pack_padded_sequence(e, lengths.clamp_min(1).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.extractor(packed)
        out = pad_packed_sequence(out, batch_first=True, total_length=e.shape[1])[0]
        return out * mask.unsqueeze(-1)

    def _aux_loss(self, states: Tensor, e: Tensor, item: Tensor, mask: Tensor, user: Tensor) -> Tensor:
        """Mean BCE of next-behavior positives (label 1) and other users' behaviors (label 0)."""
        pair, neg_row, neg_ok, _ = auxiliary_pairs(item, mask, user)
        pred = self.aux_proj(states[:, :-1])
        pos = (pred * e[:, 1:]).sum(-1)[pair]
        neg = (pred * e[neg_row, 1:]).sum(-1)[neg_ok]
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

    def _score(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(logits (B,), GRU states (B, L, h), behavior embeddings (B, L, D), mask (B, L))``."""
        hist = batch.history
        mask = hist.mask()
        target = self.embedding.target(batch)
        e = self.embedding.history(hist)
        states = self._extract(e, hist.lengths, mask)  # (B, L, h)
        t = self.target_proj(target).unsqueeze(1).expand_as(states)
        s = self.att_mlp(torch.cat([states, t, states - t, states * t], -1)).squeeze(-1)
        w = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1).nan_to_num(0.0)
        interest = self._evolve(states, w, mask)
        logits = self.tower(torch.cat([target, interest, self.embedding.side(batch)], -1)).squeeze(-1)
        return logits, states, e, mask

    def forward(self, batch: Batch) -> Tensor:
        """Click logits ``(B,)``."""
        return self._score(batch)[0]

    def forward_train(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """``(logits (B,), {"auxiliary": aux_weight × next-behavior BCE})``: the trainer adds the extra terms."""
        logits, states, e, mask = self._score(batch)
        if "user" not in batch.target:
            raise ValueError("DIEN's auxiliary loss draws its negatives from other users' rows: the batch needs "
                             "the `user` field. Fix: build batches with the model's `fields` (they include it).")
        if batch.history.max_len > 1:
            aux = self._aux_loss(states, e, batch.history["item"], mask, batch.target["user"])
        else:
            aux = states.sum() * 0.0
        return logits, {"auxiliary": self.cfg.aux_weight * aux}


@register_model("dien", DIENConfig, "DIEN: GRU interest extractor with auxiliary loss + AUGRU evolution (AAAI 2019)")
def build_dien(spec: FeatureSpec, cfg: DIENConfig) -> DIEN:
    return DIEN(spec, cfg)
