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

Per-user state is kept between requests, not recomputed: the user's window of
the store's log and the GSU parts over it (SIM hard's category index, SDIM's
bucket sums, the history grouped by item, the counting features' indexes) live
in a :class:`~userlens.serving.state.HistoryState` per user (least recently used
first out beyond ``state_bytes``, 1 GiB by default; ~50 bytes per behavior, 5 MB
for a 100K window). A request reads from the store only the rows appended since
the state's end (``history(user, since=end, tag=tag)``) and slides every part
with them (appended rows added, evicted rows removed); a new write tag (an
out-of-order insert, a bulk load, a restore) rebuilds them. The read, the slide
and the scoring run under the user's state lock, so concurrent requests for one
user cannot interleave them.

Cold start is explicit, never an error: an unknown user is scored with an empty
history, an unknown candidate with the "unknown" item row (code 1); both are
flagged in the result.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
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
        self._states: OrderedDict[str, HistoryState] = OrderedDict()
        self._sizes: dict[str, int] = {}  # bytes of each user's state when last accounted
        self._state_total = 0  # bytes held by all users' states, as last measured
        self._states_lock = threading.Lock()

    def clear_state(self) -> None:
        """Forget every user's state (not needed after a restore or bulk load: new write tags rebuild it)."""
        with self._states_lock:
            self._states.clear()
            self._sizes.clear()
            self._state_total = 0

    @property
    def state_stats(self) -> dict[str, int]:
        """Users with state, their bytes, and how many syncs slid the state / rebuilt it (all users held)."""
        with self._states_lock:
            states = list(self._states.values())
            return {"users": len(states), "bytes": self._state_total, "slides": sum(s.slides for s in states),
                    "rebuilds": sum(s.rebuilds for s in states)}

    def _state(self, user_id: str) -> HistoryState:
        with self._states_lock:
            state = self._states.get(user_id)
            if state is None:
                state = self._states[user_id] = HistoryState(self.package.long_len)
            self._states.move_to_end(user_id)
        return state

    @contextlib.contextmanager
    def _synced(self, user_id: str) -> Iterator[HistoryState]:
        """The user's state, synced with the store and held under its lock (the read, the slide and whatever the
        caller scores: no other request for the user interleaves); its size is accounted after."""
        state = self._state(user_id)
        with state.lock:
            rows = (self.store.history(user_id, since=state.end, tag=state.tag) if state.tag
                    else self.store.history(user_id))  # the rows since the state's end, or the whole window
            state.sync(rows)
            yield state
            size = state.nbytes()
        self._account(user_id, state, size)

    def _account(self, user_id: str, state: HistoryState, size: int) -> None:
        """Record the state's new size; evict least recently used users beyond ``state_bytes``."""
        with self._states_lock:
            if self._states.get(user_id) is not state:
                return  # evicted or cleared meanwhile
            self._state_total += size - self._sizes.get(user_id, 0)
            self._sizes[user_id] = size
            while self._state_total > self.state_bytes and len(self._states) > 1:
                gone, _ = self._states.popitem(last=False)
                self._state_total -= self._sizes.pop(gone, 0)

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
        user = str(user_id)
        with self._synced(user) as state:
            history = state.history()
            batch, n = self.batch(user, candidates, t, history, context or {}, state)
            with torch.inference_mode(), tracing() if explain else contextlib.nullcontext() as trace:
                logits = self.model(batch).detach().cpu().double().numpy()
            why = self.explanation(user, trace, history, n) if explain else None
        scores = 1.0 / (1.0 + np.exp(-logits))
        unknown = [i for i, c in enumerate(batch.target["target_item"].tolist()) if c == UNKNOWN]
        return ScoreResult(scores.tolist(), logits.tolist(), unknown, n == 0, n, t, why)

    def recent(self, user_id: str, k: int) -> tuple[UserHistory, int]:
        """The user's ``k`` most recent behaviors (a copy) and the window's length, read through the user's state
        (like a score request: only the rows appended since are read from the store)."""
        with self._synced(str(user_id)) as state:
            h = state.history()
            a = max(0, len(h) - k)
            out = UserHistory(h.item[a:].copy(), h.category[a:].copy(), h.time[a:].copy(), h.behavior[a:].copy(),
                              start=h.start + a, tag=h.tag)
        return out, len(h)

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
        positions, lengths = sel.positions, sel.lengths  # type: ignore[attr-defined]
        rows = [positions[b, : lengths[b]].tolist() for b in range(len(lengths))]
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

        ``state``: the user's state over ``history`` (kept across requests); None scans the history afresh.
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
            if "long_category" in self.fields:  # over the whole window: searches are bounded by [lo, hi)
                index = state.category_index() if state is not None else CategoryIndex(np.asarray(timeline["category"]))
            lo = np.full(b, max(0, n - pkg.long_len), dtype=np.int64)
            long = LongHistory(timeline, lo, np.full(b, n, dtype=np.int64), pkg.item_category,
                               category_index=index, content=pkg.content if "long_content" in self.fields else None,
                               state=state)
        ctx = {c: torch.full((b,), pkg.vocabs[f"ctx_{c}"].code(context.get(c, "")), dtype=torch.int64)
               for c in pkg.manifest.get("context_columns", [])}
        counts = {}
        if COUNTS_FIELD in self.fields:  # the offline loader's function, over this user's window [lo, n)
            users = (UserIndexes.of(state.index("item"), state.index("category"), history.time) if state is not None
                     else UserIndexes(timeline["item"], timeline["category"], timeline["time"]))
            raw = count_features(self.item_times, users, item, pkg.item_category[item],
                                 np.full(b, max(0, n - pkg.long_len), dtype=np.int64), np.full(b, n, dtype=np.int64),
                                 when)
            counts = {k: torch.from_numpy(v) for k, v in raw.items()}
        return Batch(target, short, None, ctx, long, counts), n


__all__ = ("ScoreResult", "Scorer")
