"""The behavior store interface: what the scorer and the HTTP API need from any backend.

A store keeps, per user, the most recent ``cap`` behaviors (``cap`` = the model
package's ``long_len``) as an append-only log sorted by time: item code, category
code, timestamp (epoch ms) and behavior code, exactly the timeline fields a prepared
directory holds, so a scorer reads a user's history in one call and feeds the
same GSU code that training used.

Contract (tested on every backend by ``tests/serving/test_store.py``):

* :meth:`BehaviorStore.append` is acknowledged only when durable (LMDB: the
  transaction is synced; Redis: the server's AOF is fsynced per write);
* appends are idempotent by ``event_id`` (an event whose id the user's window
  holds is counted as a duplicate and changes nothing); events without an id are
  always appended;
* out-of-order events are placed by timestamp (ties keep arrival order);
* a history is capped at ``cap``: the oldest behaviors are dropped and counted;
* items unknown to the package vocabulary arrive with code 1 (UNK) and their raw
  id; the store keeps them (:meth:`BehaviorStore.raw_ids`) and counts them (``unknown_items``);
* behaviors carry absolute sequence numbers (the window is ``[start, end)``) and
  every user a write ``tag`` that changes whenever numbered rows change other than
  by appending in time order (out-of-order inserts, bulk loads, restores): a scorer
  holding per-user state for ``(tag, end)`` reads only the rows after ``end``
  (``history(user, since=end, tag=tag)``) and extends its state with them.

The layout (blocks, ids, raw ids) and what an append writes are in :mod:`userlens.serving.store.record`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: item / category code of an id the package vocabulary does not know
UNKNOWN = 1


@dataclass(frozen=True)
class Event:
    """One behavior to append, already encoded with the package's vocabularies.

    Attributes:
        user_id: raw user id (the store's key; users need not be in any vocabulary).
        item_id: raw item id, kept for unknown items.
        timestamp_ms: epoch milliseconds.
        item: item code (``UNKNOWN`` when the vocabulary does not know ``item_id``).
        category: category code of the item (``UNKNOWN`` when none).
        behavior: behavior-type code (0 when the package has none).
        event_id: optional unique id; makes the append idempotent.
    """

    user_id: str
    item_id: str
    timestamp_ms: int
    item: int
    category: int
    behavior: int = 0
    event_id: str | None = None


@dataclass
class UserHistory:
    """Behaviors numbered ``start, start + 1, …`` (``(n,)`` arrays, oldest first, ``n <= cap``).

    A full read is the user's window; a read ``since`` a number with an unchanged ``tag``
    holds only the rows from there on (see :meth:`BehaviorStore.history`).
    """

    item: np.ndarray  # int32
    category: np.ndarray  # int32
    time: np.ndarray  # int64 epoch ms
    behavior: np.ndarray  # int16
    start: int = 0  # absolute sequence number of the first row
    tag: int = 0  # the user's write tag when read (0: no history)

    def __len__(self) -> int:
        return len(self.item)

    @property
    def end(self) -> int:
        """Sequence number after the last row: behaviors ever kept for the user (not decreased by capping)."""
        return self.start + len(self.item)

    version = end

    @classmethod
    def empty(cls) -> UserHistory:
        return cls(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int16))


@dataclass
class AppendResult:
    """What one :meth:`BehaviorStore.append` call did, summed over its events."""

    appended: int = 0
    duplicates: int = 0  # event_id already stored for that user: ignored
    dropped_over_cap: int = 0  # oldest behaviors removed to keep ``cap``
    unknown_items: int = 0  # appended events whose item the vocabulary does not know
    users: int = 0  # distinct users touched
    versions: dict[str, int] = field(default_factory=dict)  # user → end (behaviors ever kept) after the call


class BehaviorStore(ABC):
    """A durable per-user behavior log, capped at ``cap`` behaviors per user."""

    cap: int

    @abstractmethod
    def append(self, events: Sequence[Event]) -> AppendResult:
        """Append a batch (any users, any order); returns only once the batch is durable."""

    @abstractmethod
    def history(self, user_id: str, since: int | None = None, tag: int | None = None) -> UserHistory:
        """The user's behaviors, oldest first; an empty history for an unknown user.

        With ``since`` and ``tag``: when the stored tag is ``tag`` and ``since`` is inside the window,
        only the rows numbered ``since`` onwards (possibly none); otherwise the whole window. The
        caller tells the two apart by ``result.start == since and result.tag == tag``.
        """

    @abstractmethod
    def raw_ids(self, user_id: str, numbers: Sequence[int]) -> list[str]:
        """The raw item ids appended for the behaviors ``numbers`` whose item is UNKNOWN ("" when not recorded)."""

    @abstractmethod
    def bulk_load(self, user_ids: Sequence[str], offsets: np.ndarray, item: np.ndarray, category: np.ndarray,
                  time: np.ndarray, behavior: np.ndarray) -> int:
        """Replace the histories of ``user_ids`` with CSR arrays (a prepared timeline); returns behaviors stored."""

    @abstractmethod
    def snapshot(self, path: str | Path) -> Path:
        """A consistent copy of the whole store at ``path`` (atomic: complete or absent); returns it."""

    @abstractmethod
    def restore(self, path: str | Path) -> int:
        """Replace the whole store by the snapshot at ``path`` (stop appenders first); returns users restored."""

    @abstractmethod
    def read_info(self) -> dict | None:
        """What the store was loaded for (``write_info``): e.g. the vocabulary fingerprint; None if never written."""

    @abstractmethod
    def write_info(self, info: dict) -> None:
        """Record a JSON-serialisable ``info`` beside the histories (durable; replaces the previous one)."""

    @abstractmethod
    def check(self) -> None:
        """Read and write a probe (``/healthz``); raises :class:`~userlens.errors.UserlensError` naming the cause."""

    @abstractmethod
    def stats(self) -> dict[str, int]:
        """Counters: users, behaviors, dropped_over_cap, duplicates, unknown_items, bytes on disk / in memory."""

    @abstractmethod
    def close(self) -> None:
        """Release the backend (files, connections)."""

    def __enter__(self) -> BehaviorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
