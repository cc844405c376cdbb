"""Batches gathered from the timeline: vectorised, never a Python loop per sample, prefetched in a thread.

Each sample's history is the ``short_len`` most recent behaviors of
``timeline[offsets[user] : cutoff]``, gathered with one fancy-index per field
for the whole batch into the left-aligned :class:`~userlens.batch.History`.
``target_count`` (the target item's behaviors by anyone strictly before the
sample's time) comes from :attr:`PreparedData.item_counts`: two binary searches
per batch, never a scan.
"""

from __future__ import annotations

import itertools
import mmap
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
        rank, world_size: this process's part of the split under ``torchrun`` (see :meth:`_shard_bounds`).
            A shuffled (training) loader gives each rank its part of every *global* batch of ``batch_size``
            samples, all ranks drawing the same order from the seed: one step of all ranks covers the samples
            one process's step would. A trailing global batch with fewer samples than ranks is dropped (at
            most ``world_size - 1`` samples an epoch) so that no rank steps on an empty batch. An unshuffled
            (evaluation) loader gives each rank a contiguous block of the split, batches of ``batch_size``
            within it; the blocks in rank order are the split in order (:attr:`indices`).
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
        rank: int = 0,
        world_size: int = 1,
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
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self._hist_fields = [f[len("hist_"):] for f in sorted(self.fields) if f.startswith("hist_")]
        # Per-sample arrays stay memory-mapped in their stored types (a batch widens its own rows), like the
        # timeline: 150M train samples would be 5.4 GB as int64 copies. Mapped pages are dropped from the process
        # after every batch when the data is large (RELEASE_ABOVE; they stay in the page cache), so RSS does not grow
        # to the data size.
        self._user, self._item, self._cutoff = self.samples.user, self.samples.item, self.samples.cutoff
        self._time, self._label = self.samples.time, self.samples.label
        self._mapped = [self._user, self._item, self._cutoff, self._time, self._label,
                        *self.samples.context.values(), *data.timeline.values()]
        self._release = sum(a.nbytes for a in self._mapped) > RELEASE_ABOVE
        # frozen content vectors (``userlens embed-items``), read once per dataset, only for models that ask
        self._content = data.content() if "long_content" in self.fields else None

    def __len__(self) -> int:
        """Batches per epoch: the same on every rank (each steps together under DDP)."""
        n = len(self.samples)
        if self.world_size > 1 and not self.shuffle:
            n = len(self.indices)
        batches = -(-n // self.batch_size)
        if self.world_size > 1 and self.shuffle and batches and n - (batches - 1) * self.batch_size < self.world_size:
            batches -= 1  # a last global batch too small to give every rank a sample
        return min(batches, self.limit_batches) if self.limit_batches else batches

    @property
    def indices(self) -> np.ndarray:
        """The sample indices an unshuffled loader yields, in order: this rank's contiguous block of the split."""
        n = len(self.samples)
        return np.arange(n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size)

    def global_batch_size(self, step: int) -> int:
        """Samples in the global batch of ``step`` (all ranks' parts together) of a shuffled loader."""
        return min(self.batch_size, len(self.samples) - step * self.batch_size)

    def make_batch(self, idx: np.ndarray) -> Batch:
        """Build the batch of the given sample indices."""
        user, cutoff = self._user[idx].astype(np.int64), self._cutoff[idx].astype(np.int64)
        hist, lengths = gather_history(
            self.data.offsets, self.data.timeline, user, cutoff, self.short_len, self._hist_fields
        )
        target: dict[str, torch.Tensor] = {}
        if "user" in self.fields:
            target["user"] = torch.from_numpy(user)
        if self.fields & {"target_item", "target_category", "target_count"}:
            item = self._item[idx].astype(np.int64)
            if "target_item" in self.fields:
                target["target_item"] = torch.from_numpy(item)
            if "target_category" in self.fields:
                target["target_category"] = torch.from_numpy(self.data.item_category[item].astype(np.int64))
            if "target_count" in self.fields:  # item index built once per dataset, on demand
                target["target_count"] = torch.from_numpy(self.data.item_counts.before(item, self._time[idx]))
        if "time" in self.fields:
            target["time"] = torch.from_numpy(self._time[idx].astype(np.int64))
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
            item = self._item[idx].astype(np.int64)
            raw = count_features(self.data.item_counts, self.data.user_indexes, item,
                                 self.data.item_category[item], lo, cutoff, self._time[idx])
            counts = {k: torch.from_numpy(v) for k, v in raw.items()}
        return Batch(
            target=target,
            history=History({f: torch.from_numpy(v) for f, v in hist.items()}, torch.from_numpy(lengths)),
            label=torch.from_numpy(self._label[idx].astype(np.float32)),
            context=context,
            long=long,
            counts=counts,
        )

    def _order(self) -> np.ndarray:
        return self._order_and_runs()[0]

    def _order_and_runs(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(sample order of this epoch, run id of each position or None when every sample is its own run)."""
        n = len(self.samples)
        if not self.shuffle:
            return (np.arange(n) if self.world_size == 1 else self.indices), None
        rng = np.random.default_rng(self.seed + self.epoch)
        if self.user_group <= 1:
            # the same order as rng.permutation(n), shuffled in place in half the memory when int32 holds it
            return rng.permutation(np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)), None
        by = np.lexsort((np.arange(n), np.asarray(self._time), np.asarray(self._user)))  # each user's samples in time order
        user = np.asarray(self._user)[by]
        start = np.r_[True, user[1:] != user[:-1]] if n else np.zeros(0, dtype=bool)
        rank = np.arange(n) - np.maximum.accumulate(np.where(start, np.arange(n), 0))
        run = np.cumsum(start | (rank % self.user_group == 0)) - 1  # run id of each sample
        place = rng.permutation(int(run[-1]) + 1 if n else 0)  # where each run goes
        moved = np.argsort(place[run], kind="stable")
        return by[moved], place[run][moved]

    def _batches(self) -> Iterator[Batch]:
        order, runs = self._order_and_runs()
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            if self.world_size > 1 and self.shuffle:
                lo, hi = self._shard_bounds(len(idx), None if runs is None else
                                            runs[b * self.batch_size : (b + 1) * self.batch_size])
                idx = idx[lo:hi]
            yield self.make_batch(idx)
            if self._release:
                release_pages(self._mapped)

    def _shard_bounds(self, n: int, runs: np.ndarray | None) -> tuple[int, int]:
        """[lo, hi) of this rank's part of a global batch of ``n`` samples.

        Even contiguous parts; with ``user_group`` runs (``runs``: run id per position) each cut moves to the
        nearest run start, so a user's run stays on one rank and its GSU slab is scanned once, unless that
        would leave a rank without samples (then the even cut stands).
        """
        even = [n * k // self.world_size for k in range(self.world_size + 1)]
        if runs is None or n == 0:
            return even[self.rank], even[self.rank + 1]
        starts = np.flatnonzero(np.r_[True, runs[1:] != runs[:-1]])  # positions where a run begins
        cuts = [0] + [int(starts[np.abs(starts - c).argmin()]) for c in even[1:-1]] + [n]
        if any(b <= a for a, b in itertools.pairwise(cuts)):
            cuts = even
        return cuts[self.rank], cuts[self.rank + 1]

    def __iter__(self) -> Iterator[Batch]:
        it = self._batches() if self.prefetch <= 0 else _prefetched(self._batches(), self.prefetch)
        yield from it
        self.epoch += 1


# Mapped data above which a loader drops the pages it touched after every batch. The kernel maps whole cached
# folios around a fault, so 64 batches of random samples (even 4) kept 3 GB of a 150M-sample split mapped;
# after every batch, 0.1-0.6 GB. It costs ~8 ms a batch (refaulting), so smaller data keeps its pages.
RELEASE_ABOVE = 2 << 30


def release_pages(arrays: list) -> None:
    """Unmap the pages of memory-mapped arrays from this process (``MADV_DONTNEED``): the kernel keeps them in its
    page cache, the next read maps them again. Arrays that are not memory-mapped are left alone."""
    for a in arrays:
        m = getattr(a, "_mmap", None)
        if m is not None and hasattr(m, "madvise"):
            m.madvise(mmap.MADV_DONTNEED)


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
