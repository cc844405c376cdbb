"""Samples from behaviors, a chunk of users at a time: positives, split, negatives, cutoffs (DESIGN §3).

Both prepare engines end here, so one code path decides every sample: the polars engine hands the
timeline over in memory, the DuckDB engine as ``.npy`` files read a chunk at a time
(:class:`~userlens.data.npyio.NpyColumn`). Users are independent once the item-level facts are global
(:class:`~userlens.data.sampling.ItemPast`: what was seen before ``t``), so memory is one chunk of
users plus the per-item tables and, for the time split, one int64 per positive.

Two passes over the timeline:

1. positives (a behavior with at least ``min_history`` strictly earlier behaviors of its user), the
   split (global time quantiles or leave-last-out) and each item's first time;
2. after the caller has decided the item categories (they need the split's cutoff), negatives and
   cutoffs per chunk, written split by split in (user, time, label desc) order.

The result does not depend on the chunk size (negatives are counter-based per sample; a test prepares
with one-user chunks and with one chunk and compares the files).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from userlens.data.npyio import NpyColumn, NpyWriter
from userlens.data.sampling import ItemPast, NegativeReport, NegativeSampler, first_times
from userlens.data.tables import SPLITS
from userlens.errors import InputError

T = TypeVar("T")
R = TypeVar("R")
CHUNK_ROWS = 1 << 22  # behaviors per chunk of users (a user is never split; one user may exceed it)

Column = np.ndarray | NpyColumn


@dataclass
class Timeline:
    """A CSR timeline (sorted by user, time, input order), its columns in memory or in ``.npy`` files."""

    offsets: np.ndarray
    columns: dict[str, Column]

    @property
    def n_users(self) -> int:
        return len(self.offsets) - 1

    def read(self, name: str, lo: int, hi: int) -> np.ndarray:
        col = self.columns[name]
        return col.read(lo, hi) if isinstance(col, NpyColumn) else np.asarray(col[lo:hi])

    def chunks(self, max_rows: int) -> Iterator[tuple[int, int]]:
        """User ranges ``[u0, u1)`` of at most ``max_rows`` behaviors (at least one user each)."""
        u0, n = 0, self.n_users
        while u0 < n:
            u1 = int(np.searchsorted(self.offsets, self.offsets[u0] + max_rows, side="right")) - 1
            u1 = min(max(u1, u0 + 1), n)
            yield u0, u1
            u0 = u1


def earlier_counts(offsets: np.ndarray, tl_time: np.ndarray) -> np.ndarray:
    """Per timeline position: how many of the user's behaviors are **strictly** earlier in time.

    Behaviors sharing a timestamp (day-resolution data) do not count for one another.
    """
    n = len(tl_time)
    tl_user = np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))
    new_run = np.ones(n, dtype=bool)
    new_run[1:] = (tl_user[1:] != tl_user[:-1]) | (tl_time[1:] != tl_time[:-1])
    run_start = np.maximum.accumulate(np.where(new_run, np.arange(n), 0)) if n else np.zeros(0, dtype=np.int64)
    return run_start - (offsets[tl_user] - offsets[0])


def cutoffs(offsets: np.ndarray, tl_time: np.ndarray, user: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per sample: the timeline index of the user's first behavior with time >= t (history = [start, cutoff)).

    ``offsets`` may be a slice of the global ones (its users numbered from 0, its rows from ``offsets[0]``).
    """
    base = int(offsets[0])
    if len(tl_time) == 0:
        return offsets[user].astype(np.int64)
    tl_user = np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))
    lo = int(min(tl_time.min(), t.min()))
    span = int(max(tl_time.max(), t.max())) - lo + 1
    if (len(offsets) + 1) * span < 2**62:
        tl_key = tl_user * span + (tl_time - lo)
        s_key = user.astype(np.int64) * span + (t - lo)
    else:  # very long spans: compress times to dense ranks so the key cannot overflow
        uniq, inv = np.unique(np.concatenate([tl_time, t]), return_inverse=True)
        span = len(uniq)
        tl_key = tl_user * span + inv[: len(tl_time)]
        s_key = user.astype(np.int64) * span + inv[len(tl_time):]
    return base + np.searchsorted(tl_key, s_key, side="left").astype(np.int64)


def time_thresholds(t: np.ndarray, valid_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Start times of the validation and test periods: global time quantiles of the samples."""
    t1, t2 = np.quantile(t, [1 - valid_fraction - test_fraction, 1 - test_fraction], method="lower")
    return int(t1), int(t2)


def assign_split(t: np.ndarray, t1: int, t2: int, valid_fraction: float) -> np.ndarray:
    """0/1/2 = train/valid/test, so train < valid < test in time."""
    split = np.zeros(len(t), dtype=np.int8)
    split[t >= t1] = 1
    split[t >= t2] = 2
    if valid_fraction == 0:
        split[split == 1] = 0
    return split


@dataclass
class SampleOptions:
    """The options of ``prepare`` that decide samples from behaviors."""

    min_history: int
    split: str  # time | leave-last-out
    valid_fraction: float
    test_fraction: float
    negatives: int
    negative_sampler: str
    negative_alpha: float
    seed: int


@dataclass
class SampleResult:
    """What pass 2 wrote: counts per split and the negative-sampling report."""

    split_counts: dict[str, dict[str, int]]
    negatives: NegativeReport | None
    notes: list[str] = field(default_factory=list)


class BehaviorSamples:
    """The two passes over a :class:`Timeline` (see the module docstring)."""

    def __init__(self, tl: Timeline, opt: SampleOptions, n_items: int, chunk_rows: int = CHUNK_ROWS,
                 workers: int | None = None) -> None:
        self.tl, self.opt, self.chunk_rows = tl, opt, chunk_rows
        self.workers = workers or min(os.cpu_count() or 1, 4)
        self.first = np.full(n_items, np.iinfo(np.int64).max, dtype=np.int64)
        self.thresholds: tuple[int, int] | None = None
        self.cutoff_ms: int | None = None

    def _positives(self, u0: int, u1: int) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
        """(chunk's offsets, its positives keyed user (global) / item / time / rank, most earlier behaviors)."""
        off = self.tl.offsets[u0:u1 + 1]
        a, b = int(off[0]), int(off[-1])
        time = self.tl.read("time", a, b).astype(np.int64)
        item = self.tl.read("item", a, b)
        earlier = earlier_counts(off, time)
        pos = np.flatnonzero(earlier >= self.opt.min_history)
        local_user = np.repeat(np.arange(u1 - u0, dtype=np.int64), np.diff(off))[pos]
        p = {"user": (local_user + u0).astype(np.int32), "item": item[pos], "time": time[pos],
             "rank": pos - (off[local_user] - a), "local": local_user, "tl_item": item, "tl_time": time}
        return off, p, int(earlier.max()) if len(earlier) else 0

    def _split(self, off: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
        if self.opt.split == "leave-last-out":
            from_end = np.diff(off)[p["local"]] - 1 - p["rank"]  # 0 = the user's last behavior
            return np.where(from_end == 0, 2, np.where(from_end == 1, 1, 0)).astype(np.int8)
        assert self.thresholds is not None
        return assign_split(p["time"], *self.thresholds, self.opt.valid_fraction)

    def plan(self) -> int | None:
        """Pass 1: the split and each item's first time; returns the attribute cutoff (earliest valid/test sample).

        Raises:
            InputError: no behavior has ``min_history`` strictly earlier ones (nothing to sample).
        """
        def scan(chunk: tuple[int, int]) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
            """(positive times, most earlier behaviors, the chunk's item first times, held-out times)"""
            off, p, m = self._positives(*chunk)
            first = first_times(p["tl_item"], p["tl_time"], len(self.first))
            held = (p["time"][self._split(off, p) != 0] if self.opt.split == "leave-last-out"
                    else np.zeros(0, dtype=np.int64))
            return p["time"], m, first, held

        times, most, held_min, n_pos = [], 0, None, 0
        for t_pos, m, first, held in in_order(scan, self.tl.chunks(self.chunk_rows), self.workers):
            most = max(most, m)
            np.minimum(self.first, first, out=self.first)
            n_pos += len(t_pos)
            if len(held):
                held_min = int(held.min()) if held_min is None else min(held_min, int(held.min()))
            if self.opt.split != "leave-last-out":
                times.append(t_pos)
        if n_pos == 0:
            raise InputError(
                f"no samples: no behavior has --min-history {self.opt.min_history} strictly earlier behaviors of "
                f"its user (most: {most}). Fix: lower --min-history or provide impressions.")
        if self.opt.split != "leave-last-out":
            t = np.concatenate(times)
            del times
            self.thresholds = time_thresholds(t, self.opt.valid_fraction, self.opt.test_fraction)
            held = t[assign_split(t, *self.thresholds, self.opt.valid_fraction) != 0]
            held_min = int(held.min()) if len(held) else None
        self.cutoff_ms = held_min
        return held_min

    def _chunk(self, u0: int, u1: int, item_category: np.ndarray, user_hash: np.ndarray, past: ItemPast | None
               ) -> tuple[np.ndarray, dict[str, dict[str, np.ndarray]], NegativeReport | None]:
        """One chunk of users: (its timeline categories, its samples per split in write order, its sampling report)."""
        o = self.opt
        off, p, _ = self._positives(u0, u1)
        s = {"user": p["user"], "item": p["item"].astype(np.int32), "time": p["time"],
             "label": np.ones(len(p["user"]), dtype=np.int8), "split": self._split(off, p),
             "key": _group_keys(p["user"], p["time"])}
        rep = None
        if past is not None and len(p["user"]):
            sampler = NegativeSampler(off - off[0], p["tl_item"], p["tl_time"], None, user_hash[u0:u1], o.seed,
                                      past=past)
            neg, rep = sampler.draw(p["local"], p["rank"], p["time"], p["item"], o.negatives, o.negative_sampler,
                                    o.negative_alpha)  # type: ignore[arg-type]
            got = neg >= 0
            src = np.repeat(np.arange(len(s["user"])), o.negatives)[got.ravel()]
            s = {k: np.concatenate([v, v[src]]) for k, v in s.items()}
            s["item"][len(p["user"]):] = neg.ravel()[got.ravel()]
            s["label"][len(p["user"]):] = 0
            s["key"][len(p["user"]):] += 1  # a negative follows the positives of its (user, time)
        local = s["user"].astype(np.int64) - u0
        s["cutoff"] = cutoffs(off, p["tl_time"], local, s["time"])
        # (user, time, label desc), ties in input order: one stable sort of two sorted runs
        order = np.argsort(s["key"], kind="stable")
        split = s["split"][order]
        parts = {}
        for k, name in enumerate(SPLITS):
            idx = order[split == k]
            parts[name] = {key: s[key][idx] for key in ("user", "item", "label", "time", "cutoff")}
        return item_category[p["tl_item"]], parts, rep

    def write(self, out: Path, item_category: np.ndarray, user_hash: np.ndarray,
              category_writer: NpyWriter | None = None) -> SampleResult:
        """Pass 2: samples of every split into ``out/samples/<split>/``; ``category_writer`` gets the timeline's
        category column (the item categories are only known now)."""
        o = self.opt
        writers = {name: {"user": NpyWriter(out / "samples" / name / "user.npy", np.int32),
                          "item": NpyWriter(out / "samples" / name / "item.npy", np.int32),
                          "label": NpyWriter(out / "samples" / name / "label.npy", np.int8),
                          "time": NpyWriter(out / "samples" / name / "time.npy", np.int64),
                          "cutoff": NpyWriter(out / "samples" / name / "cutoff.npy", np.int64)} for name in SPLITS}
        counts = {name: {"samples": 0, "positives": 0} for name in SPLITS}
        report = NegativeReport(o.negative_sampler, o.negative_alpha) if o.negatives > 0 else None
        past = None
        if report is not None:
            tl = self.tl
            past = ItemPast(self.first, item_category,
                            lambda: (tl.read("item", 0, int(tl.offsets[-1])), tl.read("time", 0, int(tl.offsets[-1]))))
        if past is not None and o.negative_sampler == "popularity":
            past.popular()  # built once here, not raced for by the workers

        def work(chunk: tuple[int, int]) -> tuple[np.ndarray, dict[str, dict[str, np.ndarray]], NegativeReport | None]:
            return self._chunk(*chunk, item_category, user_hash, past)

        try:
            for categories, parts, rep in in_order(work, self.tl.chunks(self.chunk_rows), self.workers):
                if category_writer is not None:
                    category_writer.append(categories)
                if rep is not None:
                    _add(report, rep)  # type: ignore[arg-type]
                for name, arrays in parts.items():
                    for key, w in writers[name].items():
                        w.append(arrays[key])
                    counts[name]["samples"] += len(arrays["label"])
                    counts[name]["positives"] += int(arrays["label"].sum())
        finally:
            for ws in writers.values():
                for w in ws.values():
                    w.close()
        notes = []
        if report is not None and report.positives_without_negative:
            notes.append(f"{report.positives_without_negative} positives have fewer than {o.negatives} negatives: "
                         "every item seen before them was already the user's")
        if report is not None and report.category_fallbacks:
            notes.append(f"{report.category_fallbacks} category negatives fell back to uniform: no other item of "
                         "the positive's category had been seen before it")
        return SampleResult(counts, report, notes)


def in_order(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``map(fn, items)`` on ``workers`` threads (NumPy releases the GIL), results in input order, at most
    ``workers + 1`` computed ahead (each is a chunk's worth of arrays)."""
    if workers <= 1:
        yield from map(fn, items)
        return
    from concurrent.futures import ThreadPoolExecutor

    pending: deque = deque()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _group_keys(user: np.ndarray, time: np.ndarray) -> np.ndarray:
    """``2 · g`` per positive, ``g`` = rank of its (user, time) among the chunk's positives (in timeline order, so
    already sorted); a negative's key is its positive's plus one, so sorting by key orders label 1 before 0."""
    new = np.ones(len(user), dtype=bool)
    new[1:] = (user[1:] != user[:-1]) | (time[1:] != time[:-1])
    return (np.cumsum(new) - 1) * 2


def _add(total: NegativeReport, part: NegativeReport) -> None:
    for name in ("drawn", "positives_without_negative", "category_fallbacks", "draws_enumerated_after_rejections"):
        setattr(total, name, getattr(total, name) + getattr(part, name))


def split_warnings(split_counts: dict[str, dict[str, int]]) -> list[str]:
    """Notes for splits that make results meaningless or fragile: empty, or one class only."""
    notes = []
    for name in SPLITS:
        n, pos = split_counts[name]["samples"], split_counts[name]["positives"]
        if n == 0:
            notes.append(f"warning: the {name} split is empty" + (
                "; training is impossible" if name == "train" else f"; `evaluate --split {name}` will refuse it"))
        elif pos in (0, n):
            notes.append(f"warning: the {name} split has only label {int(pos == n)}: AUC is undefined there")
    return notes


__all__ = ("BehaviorSamples", "SampleOptions", "SampleResult", "Timeline", "assign_split", "cutoffs",
           "earlier_counts", "split_warnings", "time_thresholds")
