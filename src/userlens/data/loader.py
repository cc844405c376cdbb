"""Batches gathered from the timeline: vectorised, never a Python loop per sample, prefetched in a thread.

Each sample's history is the ``short_len`` most recent behaviors of
``timeline[offsets[user] : cutoff]``, gathered with one fancy-index per field
for the whole batch into the left-aligned :class:`~userlens.batch.History`.
``target_count`` (the target item's behaviors by anyone strictly before the
sample's time) comes from :attr:`PreparedData.item_counts`: two binary searches
per batch, never a scan.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Collection, Iterator

import numpy as np
import torch

from userlens.batch import ALL_FIELDS, COUNTS_FIELD, LONG_FIELD, Batch, History, LongHistory
from userlens.data.counts import count_features
from userlens.data.prepared import PreparedData, Samples


def gather_history(
    offsets: np.ndarray,
    timeline: dict[str, np.ndarray],
    user: np.ndarray,
    cutoff: np.ndarray,
    max_len: int,
    fields: Collection[str],
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The ``max_len`` most recent behaviors before each cutoff, left-aligned, oldest first, 0-padded.

    Args:
        offsets: (n_users + 1,) CSR offsets.
        timeline: field → per-behavior array.
        user, cutoff: (B,) sample user index and exclusive end of its history.
        max_len: L, the window length.
        fields: timeline fields to gather (``item``, ``category``, ``behavior``, ``time``).

    Returns:
        (field → (B, L) int64 array, lengths (B,) int64).
    """
    start = offsets[user]
    lengths = np.minimum(cutoff - start, max_len).astype(np.int64)
    ar = np.arange(max_len, dtype=np.int64)
    mask = ar[None, :] < lengths[:, None]  # (B, L)
    pos = np.where(mask, (cutoff - lengths)[:, None] + ar[None, :], 0)
    out = {}
    for f in fields:
        vals = np.asarray(timeline[f][pos.ravel()], dtype=np.int64).reshape(pos.shape)
        vals[~mask] = 0
        out[f] = vals
    return out, lengths


class BatchLoader:
    """Iterates batches of one split; builds only the fields the model declared.

    Args:
        data: the prepared directory.
        split: ``train`` / ``valid`` / ``test``.
        fields: subset of :data:`userlens.batch.ALL_FIELDS` the model needs.
        batch_size: samples per batch.
        short_len: history window L.
        shuffle: reshuffle every epoch with ``seed + epoch`` (reproducible).
        limit_batches: stop after this many batches (debug switch).
        prefetch: batches prepared ahead in a background thread (0 = none).
        long_len: with the ``long`` field, each sample's whole-history range is its
            ``long_len`` most recent behaviors before the cutoff (a :class:`LongHistory`).
        user_group: with ``shuffle``, shuffle runs of this many time-consecutive samples of one
            user instead of single samples (0 = plain shuffle). A batch then holds a few users'
            runs, whose histories the lifelong GSUs read once per batch (slabs, ``layers/gsu/slab.py``);
            the price is less varied batches.
    """

    def __init__(
        self,
        data: PreparedData,
        split: str,
        fields: Collection[str],
        batch_size: int = 1024,
        short_len: int = 50,
        shuffle: bool = False,
        seed: int = 0,
        limit_batches: int | None = None,
        prefetch: int = 2,
        long_len: int = 100_000,
        user_group: int = 0,
    ) -> None:
        unknown = set(fields) - ALL_FIELDS
        if unknown:
            raise ValueError(f"unknown batch fields {sorted(unknown)}; known: {sorted(ALL_FIELDS)}")
        self.data, self.split, self.fields = data, split, frozenset(fields)
        self.samples: Samples = data.samples(split)
        self.batch_size, self.short_len, self.shuffle, self.seed = batch_size, short_len, shuffle, seed
        self.limit_batches, self.prefetch, self.long_len = limit_batches, prefetch, long_len
        if user_group < 0:
            raise ValueError(f"user_group must be >= 0, got {user_group}")
        self.user_group = user_group
        self.epoch = 0
        self._hist_fields = [f[len("hist_"):] for f in sorted(self.fields) if f.startswith("hist_")]
        # Small per-sample arrays are copied into RAM once; the timeline stays memory-mapped.
        self._user = np.asarray(self.samples.user, dtype=np.int64)
        self._item = np.asarray(self.samples.item, dtype=np.int64)
        self._cutoff = np.asarray(self.samples.cutoff, dtype=np.int64)
        self._time = np.asarray(self.samples.time, dtype=np.int64)
        self._label = np.asarray(self.samples.label, dtype=np.float32)
        # frozen content vectors (``userlens embed-items``), read once per dataset, only for models that ask
        self._content = data.content() if "long_content" in self.fields else None

    def __len__(self) -> int:
        n = -(-len(self.samples) // self.batch_size)
        return min(n, self.limit_batches) if self.limit_batches else n

    def make_batch(self, idx: np.ndarray) -> Batch:
        """Build the batch of the given sample indices."""
        user, cutoff = self._user[idx], self._cutoff[idx]
        hist, lengths = gather_history(
            self.data.offsets, self.data.timeline, user, cutoff, self.short_len, self._hist_fields
        )
        target: dict[str, torch.Tensor] = {}
        if "user" in self.fields:
            target["user"] = torch.from_numpy(user)
        if self.fields & {"target_item", "target_category", "target_count"}:
            item = self._item[idx]
            if "target_item" in self.fields:
                target["target_item"] = torch.from_numpy(item)
            if "target_category" in self.fields:
                target["target_category"] = torch.from_numpy(self.data.item_category[item].astype(np.int64))
            if "target_count" in self.fields:  # item index built once per dataset, on demand
                target["target_count"] = torch.from_numpy(self.data.item_counts.before(item, self._time[idx]))
        if "time" in self.fields:
            target["time"] = torch.from_numpy(self._time[idx])
        context = {
            c: torch.from_numpy(np.asarray(a[idx], dtype=np.int64)) for c, a in self.samples.context.items()
        }
        long = None
        lo = np.maximum(self.data.offsets[user], cutoff - self.long_len)  # the whole-history window
        if LONG_FIELD in self.fields:
            index = self.data.category_index if "long_category" in self.fields else None  # built once, on demand
            long = LongHistory(self.data.timeline, lo, cutoff, self.data.item_category,
                               category_index=index, content=self._content)
        counts = {}
        if COUNTS_FIELD in self.fields:  # indexes built once per dataset, on demand
            item = self._item[idx]
            raw = count_features(self.data.item_counts, self.data.user_indexes, item,
                                 self.data.item_category[item], lo, cutoff, self._time[idx])
            counts = {k: torch.from_numpy(v) for k, v in raw.items()}
        return Batch(
            target=target,
            history=History({f: torch.from_numpy(v) for f, v in hist.items()}, torch.from_numpy(lengths)),
            label=torch.from_numpy(self._label[idx]),
            context=context,
            long=long,
            counts=counts,
        )

    def _order(self) -> np.ndarray:
        n = len(self.samples)
        if not self.shuffle:
            return np.arange(n)
        rng = np.random.default_rng(self.seed + self.epoch)
        if self.user_group <= 1:
            return rng.permutation(n)
        by = np.lexsort((np.arange(n), self._time, self._user))  # each user's samples in time order
        user = self._user[by]
        start = np.r_[True, user[1:] != user[:-1]] if n else np.zeros(0, dtype=bool)
        rank = np.arange(n) - np.maximum.accumulate(np.where(start, np.arange(n), 0))
        run = np.cumsum(start | (rank % self.user_group == 0)) - 1  # run id of each sample
        place = rng.permutation(int(run[-1]) + 1 if n else 0)  # where each run goes
        return by[np.argsort(place[run], kind="stable")]

    def _batches(self) -> Iterator[Batch]:
        order = self._order()
        for b in range(len(self)):
            yield self.make_batch(order[b * self.batch_size : (b + 1) * self.batch_size])

    def __iter__(self) -> Iterator[Batch]:
        it = self._batches() if self.prefetch <= 0 else _prefetched(self._batches(), self.prefetch)
        yield from it
        self.epoch += 1


def _prefetched(source: Iterator[Batch], depth: int) -> Iterator[Batch]:
    """Run ``source`` in a daemon thread, ``depth`` batches ahead (NumPy gathers release the GIL)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in source:
                if not put(item):
                    return
            put(done)
        except BaseException as exc:  # surfaced in the consumer, never swallowed
            put(exc)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:  # the consumer stopped early (or finished): let the worker end before anything exits under it
        stop.set()
        t.join()
