"""Behavior stores: a user's recent behaviors as arrays, durable on append (see ``base.py`` for the contract).

Backends: :class:`LMDBStore` (embedded, one directory) and :class:`RedisStore` (shared by several
scorers); both keep one packed value per user (:mod:`userlens.serving.store.record`).

Example:
    >>> from userlens.serving.store import open_store, bulk_load_prepared  # doctest: +SKIP
    >>> store = open_store("lmdb://runs/store", cap=100_000)  # doctest: +SKIP
    >>> bulk_load_prepared(store, PreparedData("data/taobao"))  # doctest: +SKIP
"""

from __future__ import annotations

from urllib.parse import urlsplit

import numpy as np

from userlens.data.prepared import PreparedData
from userlens.errors import InputError
from userlens.serving.store.base import UNKNOWN, AppendResult, BehaviorStore, Event, UserHistory
from userlens.serving.store.lmdb_store import LMDBStore
from userlens.serving.store.redis_store import RedisStore


def open_store(url: str, cap: int) -> BehaviorStore:
    """``lmdb://PATH`` (relative, or ``lmdb:///abs/path``) or ``redis://HOST:PORT[/db]``."""
    scheme = urlsplit(url).scheme
    if scheme == "lmdb":
        path = url[len("lmdb://"):]
        if not path:
            raise InputError(f"{url!r}: no path. Fix: lmdb://PATH, e.g. lmdb://runs/store or lmdb:///srv/store.")
        return LMDBStore(path, cap)
    if scheme in ("redis", "rediss"):
        return RedisStore(url, cap)
    raise InputError(f"{url!r}: unknown store scheme {scheme!r}; expected lmdb://PATH or redis://HOST:PORT[/db].")


def bulk_load_prepared(store: BehaviorStore, data: PreparedData) -> int:
    """Load every user's timeline of a prepared directory (raw user ids from ``data.vocab("user")``).

    Returns the behaviors stored (at most ``store.cap`` per user).
    """
    vocab = data.vocab("user")
    offsets = np.asarray(data.offsets)
    ids: list[str | None] = [None] * (len(offsets) - 1)
    for raw, index in zip(vocab["raw"].to_list(), vocab["index"].to_list()):
        ids[index] = str(raw)
    first = next((i for i, u in enumerate(ids) if u is not None), len(ids))  # indices 0, 1: padding, unknown
    if any(u is None for u in ids[first:]) or np.diff(offsets[:first + 1]).any():
        raise InputError(f"{data.path}: the user vocabulary does not cover the timeline's users. Fix: run "
                         "`userlens prepare --force` again.")
    tl = data.timeline
    return store.bulk_load(ids[first:], offsets[first:], tl["item"], tl["category"], tl["time"], tl["behavior"])


__all__ = ("UNKNOWN", "AppendResult", "BehaviorStore", "Event", "LMDBStore", "RedisStore", "UserHistory",
           "bulk_load_prepared", "open_store")
