"""TWIN: TWo-stage Interest Network (Chang et al., "TWIN: TWo-stage Interest Network for Lifelong User
Behavior Modeling in CTR Prediction at Kuaishou", KDD 2023, arXiv:2302.02352).

TWIN's point is a GSU **consistent** with the ESU: both rank behaviors by the
same relevance, the ESU's target-attention logit
(:class:`~userlens.layers.interest.MultiHeadExactUnit`), per head
``q_h·(W_k e_j)_h / √d_h [+ β_h(gap_j)]``:

* ``e_j`` are the behavior's *inherent* features (item ⊕ category), so
  ``W_k e`` is a per-item table computed once per forward (TWIN's
  inherent-feature keys) and a behavior's key is one gather;
* with ``time_bias=True`` the cross feature, the time gap between behavior and
  sample, is "compressed to a scalar bias" as in TWIN: ``β_h(gap) = g(gap)·u_h``
  (the paper's ``(K_c W_c) β``), looked up per behavior in **both** stages.

The GSU ranks the whole history by the head-averaged logit and keeps the top
``k`` (ties → more recent); the ESU attends over them with that same logit, so
the GSU's top-k is exactly the top-k of the ESU's logits over the full range
(``tests/models/test_twin.py`` checks it by brute force, with and without the
bias). Values are ``W_v [e_j ; g_j]``: inherent features concatenated with the
time-gap embedding, as TWIN's values carry the cross features.

``time_bias`` defaults to False. With the bias, on the known-answer log the
learned per-bucket bias outgrows the still-small item similarity within a few
steps, the GSU then retrieves by time bucket and AUC drops and varies by seed;
without it the time gap still reaches the ESU through the values:

======================  ======  ======  ======
test AUC                seed 3  seed 4  seed 5
======================  ======  ======  ======
``time_bias=true``      0.7186  0.7827  0.5493
``time_bias=false``     0.8206  0.8678  0.8734
inconsistent (before)   0.8127  0.8250  0.7992
======================  ======  ======  ======

("before": the GSU scored item-only keys while the ESU added a time-gap
embedding to the keys, so the two stages ranked by different numbers. All three
rows were measured before ``qk_norm``, below.)

(``lifelong_interest_log(n_users=300, seed=s)``;
``.venv/bin/python benchmarks/bench_variants.py twin --seeds 3,4,5 --set time_bias=true``.)

Departures:

* by default no cross feature in the relevance (above); with ``time_bias`` the
  only cross feature is the time gap (TWIN also uses user–item cross features
  such as play time and interaction counts), and the GSU ranks by the
  head-averaged logit;
* ``W_k`` is initialised equal to ``W_q`` (and ``W_q``'s bias and ``u`` to 0),
  so an untrained GSU already retrieves behaviors similar to the target;
* ``qk_norm`` (default): query and keys read RMS-normalised item ⊕ category
  features and ``W_q = W_k`` start as ``N(0, 1/dim)``, so logits are of order 1
  from the first step (see :class:`~userlens.layers.attention.MultiHeadTargetAttention`).
  With the raw std-0.02 embeddings every logit is ~1e-3: the softmax stays uniform
  over the top-k for a whole short training, the evidence is ``log k`` for every
  sample, and on the family logs (``benchmarks/bench_family.py``) the retrieval
  drifted away from the candidate's category (few-early-clicks: recall of its
  category 0.66 → 0.34 over training, test AUC 0.53 with 400 users, 0.62 with 2000;
  with ``qk_norm`` 0.91). The per-vector normalisation keeps the GSU exact: a
  per-item key table still gives the ESU's logit;
* the ESU output is ``[out, out ⊙ target, evidence]``: ``out ⊙ target`` adds a
  target-aware representation (as in TIN / DARE) and the evidence
  ``log Σ_j exp(logit_hj)`` per head restores how much matched, which softmax
  discards (neither is in TWIN, which feeds the tower ``out`` alone);
* the GSU scan is exact and runs on the CPU (the paper serves cached keys on
  its own search servers); the keys are recomputed each forward from the
  current weights instead of refreshed offline;
* the short-term DIN view and the tower are the shared
  :class:`~userlens.models.lifelong.LifelongModel` frame.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from userlens.batch import Batch
from userlens.layers.gsu import Selection
from userlens.layers.interest import MultiHeadExactUnit, selected_history
from userlens.models.lifelong import LifelongConfig, LifelongModel
from userlens.models.registry import register_model
from userlens.models.spec import FeatureSpec


@dataclass
class TWINConfig(LifelongConfig):
    heads: int = 2
    head_dim: int = 16
    time_bias: bool = False  # the time gap as a scalar logit bias per head, in both stages (see above)
    qk_norm: bool = True  # query and keys read RMS-normalised features: unit-scale logits from the start (see above)


class TWIN(LifelongModel):
    def __init__(self, spec: FeatureSpec, cfg: TWINConfig) -> None:
        super().__init__(spec, cfg, long_dim=4 * cfg.embed_dim + cfg.heads)  # MultiHeadExactUnit.out_dim
        self.esu = MultiHeadExactUnit(self.embedding.item_dim, cfg.embed_dim, cfg.heads, cfg.head_dim,
                                      cfg.time_bias, cfg.qk_norm)

    def search(self, batch: Batch, target: Tensor) -> Selection:
        """The GSU: top-``k`` of the whole history by the ESU's own (head-averaged) attention logit."""
        return self.esu.search(self.embedding, batch.need_long(), target, batch.target["time"], self.cfg.k)

    def long_interest(self, batch: Batch, target: Tensor) -> Tensor:
        hist = selected_history(batch.need_long(), self.search(batch, target), device=target.device)
        return self.esu(self.embedding, target, hist, batch.target["time"])


@register_model("twin", TWINConfig,
                "TWIN: the GSU ranks the whole history by the ESU's own attention logit (KDD 2023)")
def build_twin(spec: FeatureSpec, cfg: TWINConfig) -> TWIN:
    return TWIN(spec, cfg)
