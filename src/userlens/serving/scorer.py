"""The online scorer: model package + behavior store → scores for (user, candidates) at a moment.

One request = one user, a few hundred candidates, a timestamp ``t`` (the moment
scored at; default now). The user's history is read from the store **once**,
cut to the behaviors strictly before ``t`` (as every training sample's history
is), and the candidates become the rows of one :class:`~userlens.batch.Batch`
that all share that history: the short window is its last ``short_len``
behaviors, the lifelong models' :class:`~userlens.batch.LongHistory` is the user's
history itself (``[max(0, n − long_len), n)``), so the GSU scans it once,
vectorised across the candidates, with the very code training used. Replaying a
log therefore gives the offline ``evaluate`` scores (``tests/serving`` proves it
for every registered model).

Cold start is explicit, never an error: an unknown user is scored with an empty
history, an unknown candidate with the "unknown" item row (code 1); both are
flagged in the result.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from userlens.batch import Batch, History, LongHistory
from userlens.errors import InputError
from userlens.serving.package import ModelPackage
from userlens.serving.store.base import UNKNOWN, BehaviorStore, Event, UserHistory


@dataclass
class ScoreResult:
    """Scores in candidate order, with what was cold."""

    scores: list[float]  # probabilities (float64 sigmoid of the logits)
    logits: list[float]
    unknown_candidates: list[int] = field(default_factory=list)  # positions of candidates the model does not know
    cold_user: bool = False  # no behavior before the request's time
    history_length: int = 0  # behaviors before the request's time that the model could read
    timestamp_ms: int = 0


class Scorer:
    """Scores requests against one :class:`ModelPackage` and one :class:`BehaviorStore`.

    Example:
        >>> scorer = Scorer(load_package("pkg"), open_store("lmdb://store", cap=100_000))  # doctest: +SKIP
        >>> scorer.score("u42", ["i1", "i7"]).scores  # doctest: +SKIP
    """

    def __init__(self, package: ModelPackage, store: BehaviorStore) -> None:
        self.package, self.store = package, store
        self.model = package.model
        self.fields = frozenset(getattr(self.model, "fields", ()))

    # ------------------------------------------------------------------ writes

    def encode_event(self, user_id: str, item_id: str, timestamp_ms: int, behavior: str | None = None,
                     category: str | None = None, event_id: str | None = None) -> Event:
        """An :class:`Event` coded with the package's vocabularies (unknown ids → code 1, raw id kept).

        A known item's category is the package's (as in training); ``category`` is used only for
        items the package does not know.
        """
        v = self.package.vocabs
        item = v["item"].code(item_id)
        if item != UNKNOWN:
            cat = int(self.package.item_category[item])
        else:
            cat = v["category"].code(category) if category is not None else UNKNOWN
        beh = v["behavior"].code(behavior) if behavior is not None else 0
        return Event(str(user_id), str(item_id), int(timestamp_ms), int(item), int(cat), int(beh),
                     None if event_id is None else str(event_id))

    # ------------------------------------------------------------------ reads

    def score(self, user_id: str, candidates: Sequence[object], timestamp_ms: int | None = None,
              context: dict[str, object] | None = None) -> ScoreResult:
        """Score ``candidates`` (raw item ids) for ``user_id`` at ``timestamp_ms`` (epoch ms; default now)."""
        if len(candidates) == 0:
            raise InputError("no candidates to score. Fix: send at least one item id in `candidates`.")
        t = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
        history = self.store.history(str(user_id))
        batch, n = self.batch(str(user_id), candidates, t, history, context or {})
        with torch.inference_mode():
            logits = self.model(batch).detach().cpu().double().numpy()
        scores = 1.0 / (1.0 + np.exp(-logits))
        unknown = [i for i, c in enumerate(batch.target["target_item"].tolist()) if c == UNKNOWN]
        return ScoreResult(scores.tolist(), logits.tolist(), unknown, n == 0, n, t)

    def batch(self, user_id: str, candidates: Sequence[object], t: int, history: UserHistory,
              context: dict[str, object]) -> tuple[Batch, int]:
        """The request as a batch: one row per candidate, all sharing the user's history before ``t``."""
        pkg = self.package
        b = len(candidates)
        n = int(np.searchsorted(history.time, t, side="left"))  # strictly before t
        timeline = {"item": history.item[:n], "category": history.category[:n], "behavior": history.behavior[:n],
                    "time": history.time[:n]}
        item = np.array([pkg.vocabs["item"].code(c) for c in candidates], dtype=np.int64)
        target: dict[str, torch.Tensor] = {
            "target_item": torch.from_numpy(item),
            "target_category": torch.from_numpy(pkg.item_category[item].astype(np.int64)),
            "time": torch.full((b,), t, dtype=torch.int64),
        }
        if "user" in self.fields:
            target["user"] = torch.full((b,), pkg.vocabs["user"].code(user_id), dtype=torch.int64)
        if "target_count" in self.fields:
            offsets, times = pkg.item_times
            counts = [np.searchsorted(times[offsets[i]: offsets[i + 1]], t, side="left") for i in item]
            target["target_count"] = torch.tensor(counts, dtype=torch.int64)
        hist_fields = [f[len("hist_"):] for f in sorted(self.fields) if f.startswith("hist_")]
        k = min(n, pkg.short_len)
        width = max(k, 1)  # at least one (padded) column, as the offline loader always has
        values = {}
        for f in hist_fields:
            row = np.zeros(width, dtype=np.int64)
            row[:k] = timeline[f][n - k:]
            values[f] = torch.from_numpy(row).expand(b, width).contiguous()
        short = History(values, torch.full((b,), k, dtype=torch.int64))
        long = None
        if "long" in self.fields:
            index = None
            if "long_category" in self.fields:
                from userlens.layers.gsu import CategoryIndex

                index = CategoryIndex(np.asarray(timeline["category"]))
            lo = np.full(b, max(0, n - pkg.long_len), dtype=np.int64)
            long = LongHistory(timeline, lo, np.full(b, n, dtype=np.int64), pkg.item_category,
                               category_index=index, content=pkg.content if "long_content" in self.fields else None)
        ctx = {c: torch.full((b,), pkg.vocabs[f"ctx_{c}"].code(context.get(c, "")), dtype=torch.int64)
               for c in pkg.manifest.get("context_columns", [])}
        return Batch(target, short, None, ctx, long), n


__all__ = ("ScoreResult", "Scorer")
