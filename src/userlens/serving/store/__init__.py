"""Behavior stores: a user's recent behaviors as arrays, durable on append (see ``base.py`` for the contract).

Backends: :class:`LMDBStore` (embedded, one directory), :class:`RedisStore` (shared by several
scorers) and :class:`RedisClusterStore` (the same, over a Redis Cluster); all keep each user's history
as the log of :mod:`userlens.serving.store.record`.

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
from userlens.serving.store.redis_cluster import RedisClusterStore
from userlens.serving.store.redis_store import RedisStore


def open_store(url: str, cap: int) -> BehaviorStore:
    """``lmdb://relative/path``, ``lmdb:///abs/path``, ``redis[s]://[:PASSWORD@]HOST:PORT[/DB]`` or
    ``redis-cluster://HOST:PORT[,HOST:PORT…][?replicas=N&wait_ms=MS]``, read strictly.

    Anything else is refused with the fix, never guessed: ``lmdb:relative`` once opened a folder
    ``lative``, ``redis://host/2/3`` reached db 23 and ``redis://host/x`` db 0 (redis-py's own parsing).
    """
    scheme = urlsplit(url).scheme
    if scheme == "lmdb":
        return LMDBStore(_lmdb_path(url), cap)
    if scheme in ("redis", "rediss"):
        return RedisStore(url, cap)
    if scheme == "redis-cluster":
        return RedisClusterStore(url, cap)
    raise InputError(f"{url!r}: unknown store scheme {scheme!r}; expected lmdb://PATH, redis://HOST:PORT[/db] or "
                     "redis-cluster://HOST:PORT[,HOST:PORT...].")


def _lmdb_path(url: str) -> str:
    """The directory of an ``lmdb://`` URL: everything after ``//``, taken literally (no host, query or fragment)."""
    fix = "Fix: lmdb://relative/path or lmdb:///absolute/path, e.g. lmdb://runs/store or lmdb:///srv/store."
    if url[:7].lower() != "lmdb://":
        raise InputError(f"{url!r}: an LMDB URL starts with lmdb:// (then the directory). {fix}")
    path = url[7:]
    if not path:
        raise InputError(f"{url!r}: no path. {fix}")
    if "?" in path or "#" in path:
        raise InputError(f"{url!r}: LMDB URLs take no query string or fragment ('?', '#'). {fix}")
    first = path.split("/", 1)[0]
    if ":" in first or "@" in first:  # host:port or user@host: an LMDB store is a local directory
        raise InputError(f"{url!r}: {first!r} reads as a network location, but an LMDB store is a local "
                         f"directory. {fix}")
    if first.startswith("~"):
        raise InputError(f"{url!r}: '~' is not expanded (it would be a folder named {first!r}). {fix}")
    return path


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


__all__ = ("UNKNOWN", "AppendResult", "BehaviorStore", "Event", "LMDBStore", "RedisClusterStore", "RedisStore",
           "UserHistory", "bulk_load_prepared", "open_store")
