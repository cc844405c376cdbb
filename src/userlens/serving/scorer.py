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

Per-user GSU state is kept between requests, not recomputed: SIM hard's
category index and SDIM's per-round bucket sums live in a
:class:`~userlens.serving.state.HistoryState` per user (least recently used first out
beyond ``state_bytes``, 1 GiB by default: SIM's index is 16 bytes per behavior, 1.6 MB for a
100K history; SDIM's sums 17 KB per user)
and are extended with the behaviors appended since the previous request. The
state is trusted while the stored history only grew at its end: same
``version``, or an order-dependent fingerprint of the covered prefix unchanged
(an out-of-order insert, a capped history dropping its oldest behaviors or a
restored store rebuild it). After ``BehaviorStore.restore`` call
:meth:`Scorer.clear_state`.

Cold start is explicit, never an error: an unknown user is scored with an empty
history, an unknown candidate with the "unknown" item row (code 1); both are
flagged in the result.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from userlens.batch import COUNTS_FIELD, Batch, History, LongHistory
from userlens.data.counts import UserIndexes, count_features, item_counts_from_csr
from userlens.errors import InputError
from userlens.layers.explain import tracing
from userlens.layers.gsu import CategoryIndex
from userlens.serving.package import ModelPackage
from userlens.serving.state import HistoryState
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
    explain: dict | None = None  # with ``explain=True``: see :meth:`Scorer.explanation`


_MIX = np.uint64(0x9E3779B97F4A7C15)


def history_fingerprint(h: UserHistory, start: int, stop: int) -> int:
    """Order-dependent 64-bit hash of behaviors ``[start, stop)`` (item, category, time, position); additive
    over adjacent ranges, so a prefix's fingerprint extends with its tail only."""
    if stop <= start:
        return 0
    pos = np.arange(start, stop, dtype=np.uint64)
    x = (h.item[start:stop].astype(np.uint64) * np.uint64(0x100000001B3)) ^ (
        h.category[start:stop].astype(np.uint64) << np.uint64(40)) ^ h.time[start:stop].astype(np.uint64)
    return int((x * (pos * _MIX | np.uint64(1))).sum(dtype=np.uint64))


@dataclass
class _UserState:
    state: HistoryState
    version: int
    n: int
    fingerprint: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    nbytes: int = 0  # the state's size when last accounted


class Scorer:
    """Scores requests against one :class:`ModelPackage` and one :class:`BehaviorStore`.

    Example:
        >>> scorer = Scorer(load_package("pkg"), open_store("lmdb://store", cap=100_000))  # doctest: +SKIP
        >>> scorer.score("u42", ["i1", "i7"]).scores  # doctest: +SKIP
    """

    def __init__(self, package: ModelPackage, store: BehaviorStore, state_bytes: int = 1 << 30) -> None:
        self.package, self.store = package, store
        self.model = package.model
        self.fields = frozenset(getattr(self.model, "fields", ()))
        self.item_times = item_counts_from_csr(*package.item_times)  # behaviors per item before a time (all users)
        self.state_bytes = state_bytes
        self._states: OrderedDict[str, _UserState] = OrderedDict()
        self._state_total = 0  # bytes held by all users' states, as last measured
        self._states_lock = threading.Lock()

    def clear_state(self) -> None:
        """Forget every user's GSU state (after the store was restored or replaced)."""
        with self._states_lock:
            self._states.clear()
            self._state_total = 0

    def _user_state(self, user_id: str, history: UserHistory) -> _UserState:
        """The user's GSU state, valid for ``history`` (kept, extended, or rebuilt; see the module docstring)."""
        with self._states_lock:
            entry = self._states.get(user_id)
            if entry is not None:
                self._states.move_to_end(user_id)
        n = len(history)
        if entry is not None and entry.version == history.version and entry.n == n:
            return entry
        if entry is not None and n >= entry.n and history_fingerprint(history, 0, entry.n) == entry.fingerprint:
            with entry.lock:
                entry.fingerprint += history_fingerprint(history, entry.n, n)
                entry.fingerprint &= (1 << 64) - 1
                entry.version, entry.n = history.version, n
            return entry
        entry = _UserState(HistoryState(), history.version, n, history_fingerprint(history, 0, n))
        with self._states_lock:
            old = self._states.pop(user_id, None)
            self._state_total -= old.nbytes if old is not None else 0
            self._states[user_id] = entry
        return entry

    def _account(self, user_id: str, entry: _UserState) -> None:
        """Record the state's new size; evict least recently used users beyond ``state_bytes``."""
        with self._states_lock:
            if self._states.get(user_id) is not entry:
                return  # replaced or cleared meanwhile
            size = entry.state.nbytes()
            self._state_total += size - entry.nbytes
            entry.nbytes = size
            while self._state_total > self.state_bytes and len(self._states) > 1:
                _, gone = self._states.popitem(last=False)
                self._state_total -= gone.nbytes

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
              context: dict[str, object] | None = None, explain: bool = False) -> ScoreResult:
        """Score ``candidates`` (raw item ids) for ``user_id`` at ``timestamp_ms`` (epoch ms; default now).

        ``explain``: also return, per candidate, the behaviors the GSU picked and the ESU's weights on them.
        """
        if len(candidates) == 0:
            raise InputError("no candidates to score. Fix: send at least one item id in `candidates`.")
        t = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
        history = self.store.history(str(user_id))
        entry = self._user_state(str(user_id), history) if "long" in self.fields else None
        with entry.lock if entry is not None else contextlib.nullcontext():
            batch, n = self.batch(str(user_id), candidates, t, history, context or {},
                                  entry.state if entry is not None else None)
            with torch.inference_mode(), tracing() if explain else contextlib.nullcontext() as trace:
                logits = self.model(batch).detach().cpu().double().numpy()
            if entry is not None:
                self._account(str(user_id), entry)
        scores = 1.0 / (1.0 + np.exp(-logits))
        unknown = [i for i, c in enumerate(batch.target["target_item"].tolist()) if c == UNKNOWN]
        why = self.explanation(str(user_id), trace, history, n) if explain else None
        return ScoreResult(scores.tolist(), logits.tolist(), unknown, n == 0, n, t, why)

    def explanation(self, user_id: str, trace: dict[str, object] | None, history: UserHistory, n: int) -> dict:
        """Per candidate, the picked behaviors (raw item id, epoch seconds, weight), highest weight first.

        The weight is the ESU's attention on that behavior (softmax, head-averaged, for TWIN/ETA/DARE and
        multi-head SIM; DIN's unnormalised score for SIM's DIN unit and MUSE; sparsemax for QIN).
        """
        name = self.package.manifest["model"]
        sel = (trace or {}).get("gsu")
        if sel is None:
            reason = ("sdim selects no behaviors: it sums SimHash buckets over the whole history" if name == "sdim"
                      else f"{name} has no search unit: it reads the last {self.package.short_len} behaviors")
            return {"supported": False, "reason": reason}
        weights = (trace or {}).get("esu_weights")
        vocab = self.package.vocabs["item"].raw
        rows = [sel.positions[b, : sel.lengths[b]].tolist() for b in range(len(sel.lengths))]  # type: ignore[attr-defined]
        unknown = sorted({p for r in rows for p in r if history.item[p] == UNKNOWN})
        raw = dict(zip(unknown, self.store.raw_ids(user_id, [history.start + p for p in unknown])))
        out = []
        for b, pos in enumerate(rows):
            w = weights[b, : len(pos)].tolist() if weights is not None else [None] * len(pos)  # type: ignore[index]
            picks = [{"item_id": vocab[int(history.item[p])] if p not in raw else raw[p],
                      "timestamp": int(history.time[p]) / 1000, "weight": wt} for p, wt in zip(pos, w)]
            if weights is not None:
                picks.sort(key=lambda d: -d["weight"])
            out.append(picks)
        return {"supported": True, "model": name, "picked": out}

    def batch(self, user_id: str, candidates: Sequence[object], t: int, history: UserHistory,
              context: dict[str, object], state: HistoryState | None = None) -> tuple[Batch, int]:
        """The request as a batch: one row per candidate, all sharing the user's history before ``t``.

        ``state``: the user's GSU state (kept across requests); None scans the history afresh.
        """
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
        when = np.full(b, t, dtype=np.int64)
        if "target_count" in self.fields:
            target["target_count"] = torch.from_numpy(self.item_times.before(item, when))
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
            if "long_category" in self.fields:  # over the whole stored history: searches are bounded by [lo, hi)
                index = (state.category_index(history.category) if state is not None
                         else CategoryIndex(np.asarray(timeline["category"])))
            lo = np.full(b, max(0, n - pkg.long_len), dtype=np.int64)
            long = LongHistory(timeline, lo, np.full(b, n, dtype=np.int64), pkg.item_category,
                               category_index=index, content=pkg.content if "long_content" in self.fields else None,
                               state=state)
        ctx = {c: torch.full((b,), pkg.vocabs[f"ctx_{c}"].code(context.get(c, "")), dtype=torch.int64)
               for c in pkg.manifest.get("context_columns", [])}
        counts = {}
        if COUNTS_FIELD in self.fields:  # the offline loader's function, over this user's window [lo, n)
            users = UserIndexes(timeline["item"], timeline["category"], timeline["time"])
            raw = count_features(self.item_times, users, item, pkg.item_category[item],
                                 np.full(b, max(0, n - pkg.long_len), dtype=np.int64), np.full(b, n, dtype=np.int64),
                                 when)
            counts = {k: torch.from_numpy(v) for k, v in raw.items()}
        return Batch(target, short, None, ctx, long, counts), n


__all__ = ("ScoreResult", "Scorer", "history_fingerprint")
