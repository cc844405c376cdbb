"""One user's history as one packed value, and the read-modify-write every backend shares.

Format (version 1; all integers little-endian; the same bytes in LMDB, in Redis and in snapshots)::

    offset        size        field
    0             4           magic b"ULH1"
    4             4           n            u32  behaviors stored, oldest first
    8             4           n_unknown    u32  raw ids stored (= behaviors whose item is UNKNOWN)
    12            4           blob_len     u32  bytes of the raw-id blob
    16            8           version      u64  events ever appended for the user
    24            8           tag          u64  random, new on every write (Redis compare-and-set token)
    32            8n          time         i64  epoch ms, non-decreasing
    32 + 8n       8n          event hash   u64  64-bit BLAKE2b of event_id, 0 = no id
    32 + 16n      4n          item         i32
    32 + 20n      4n          category     i32
    32 + 24n      2n          behavior     i16
    32 + 26n      blob_len    raw ids      UTF-8, "\\0"-joined, one per UNKNOWN item, in history order

26 bytes per behavior; reading is one lookup plus ``np.frombuffer`` per column (zero-copy views of
the value, read-only), no per-behavior Python.

Idempotency uses the event hashes of the behaviors kept (the last ``cap``): a retry of an event
that was already dropped by capping is older than everything kept, so it is appended and dropped
again (counted once more in ``version`` and ``dropped_over_cap``, the history is unchanged).
Two different event ids of one user collide with probability ~ n / 2**64 per new event
(n = 100,000: 5e-15; across 10**12 events ever appended: < 0.01): such an event would be
taken for a duplicate and ignored.
"""

from __future__ import annotations

import hashlib
import random
import struct
from dataclasses import dataclass, field

import numpy as np

from userlens.errors import InputError
from userlens.serving.store.base import UNKNOWN, Event, UserHistory

MAGIC = b"ULH1"
HEADER = struct.Struct("<4sIIIQQ")  # magic, n, n_unknown, blob_len, version, tag
HEADER_SIZE = HEADER.size  # 32
ROW = 26  # bytes per behavior
# (name, dtype, bytes per element) in storage order; offsets are HEADER_SIZE + n * (sum of sizes before)
COLUMNS = (("time", "<i8", 8), ("hash", "<u8", 8), ("item", "<i4", 4), ("category", "<i4", 4),
           ("behavior", "<i2", 2))
_START = {name: sum(s for _, _, s in COLUMNS[:i]) for i, (name, _, _) in enumerate(COLUMNS)}
_rng = random.SystemRandom()


def hash_event_id(event_id: str) -> int:
    """64-bit BLAKE2b of ``event_id`` (never 0: 0 marks a behavior without id)."""
    h = int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")
    return h or 1


def header(value: bytes | memoryview) -> tuple[int, int, int, int]:
    """``(n, n_unknown, blob_len, version)`` of a stored value; an error names a foreign value."""
    magic, n, n_unknown, blob_len, version, _ = HEADER.unpack_from(value)
    if magic != MAGIC or len(value) != HEADER_SIZE + ROW * n + blob_len:
        raise InputError(f"stored value of {len(value)} bytes is not a userlens history (magic {magic!r}). "
                         "Fix: point the store at its own directory / namespace.")
    return n, n_unknown, blob_len, version


def column(value: bytes | memoryview, name: str, n: int, start: int = 0, count: int | None = None) -> np.ndarray:
    """Rows ``[start, start + count)`` of one column as a zero-copy read-only view."""
    dtype, size = next((d, s) for c, d, s in COLUMNS if c == name)
    count = n - start if count is None else count
    return np.frombuffer(value, dtype, count, HEADER_SIZE + _START[name] * n + start * size)


def _raw_ids(value: bytes | memoryview, n: int, n_unknown: int, blob_len: int) -> list[str]:
    if n_unknown == 0:
        return []
    return bytes(value[HEADER_SIZE + ROW * n:HEADER_SIZE + ROW * n + blob_len]).decode().split("\0")


def decode(value: bytes, cap: int) -> UserHistory:
    """The history in ``value``, its last ``cap`` behaviors (fewer only when ``cap`` was lowered since)."""
    n, n_unknown, blob_len, version = header(value)
    start = max(0, n - cap)
    raw = _raw_ids(value, n, n_unknown, blob_len)
    item = column(value, "item", n, start)
    if raw and start:
        raw = raw[int(np.count_nonzero(column(value, "item", n, 0, start) == UNKNOWN)):]
    return UserHistory(item=item, category=column(value, "category", n, start), time=column(value, "time", n, start),
                       behavior=column(value, "behavior", n, start), version=version, unknown_item_ids=raw)


def encode(time: np.ndarray, hashes: np.ndarray, item: np.ndarray, category: np.ndarray, behavior: np.ndarray,
           raw: list[str], version: int) -> bytes:
    """Pack columns (any integer dtype, cast to the stored one) into one value."""
    blob = "\0".join(raw).encode() if raw else b""
    head = HEADER.pack(MAGIC, len(time), len(raw), len(blob), version, _rng.getrandbits(64))
    cols = [np.ascontiguousarray(a, dtype=d).tobytes() for a, (_, d, _) in zip((time, hashes, item, category, behavior),
                                                                              COLUMNS)]
    return b"".join([head, *cols, blob])


@dataclass
class Batch:
    """New events of one user, in arrival order (built by :func:`group`)."""

    time: list[int] = field(default_factory=list)
    hash: list[int] = field(default_factory=list)
    item: list[int] = field(default_factory=list)
    category: list[int] = field(default_factory=list)
    behavior: list[int] = field(default_factory=list)
    raw: list[str | None] = field(default_factory=list)  # raw item id of UNKNOWN items, else None


def group(events: list[Event] | tuple[Event, ...]) -> dict[str, Batch]:
    """Events by user (first-seen order), validated; the one per-event Python loop of an append."""
    out: dict[str, Batch] = {}
    for e in events:
        b = out.get(e.user_id)
        if b is None:
            if not isinstance(e.user_id, str) or not e.user_id or "\0" in e.user_id:
                raise InputError(f"event {e!r}: user_id must be a non-empty string without NUL. Fix: send the "
                                 "raw user id as text.")
            b = out[e.user_id] = Batch()
        b.time.append(e.timestamp_ms)
        b.hash.append(hash_event_id(e.event_id) if e.event_id is not None else 0)
        b.item.append(e.item)
        b.category.append(e.category)
        b.behavior.append(e.behavior)
        if e.item == UNKNOWN:
            if "\0" in e.item_id:
                raise InputError(f"event {e!r}: item_id contains NUL. Fix: strip it from the raw id.")
            b.raw.append(e.item_id)
        else:
            b.raw.append(None)
    return out


@dataclass
class Merged:
    """What :func:`merge` did to one user."""

    value: bytes | None  # the new stored value; None = nothing to write (every event a duplicate)
    appended: int
    duplicates: int
    dropped: int
    unknown: int  # appended events with an UNKNOWN item
    version: int
    n_before: int
    n_after: int


def _packed(values: list[int], code: str, what: str) -> bytes:
    try:
        return struct.pack(f"<{len(values)}{code}", *values)
    except struct.error:
        raise InputError(f"an event's {what} is not an integer in the stored range ({code!r}): "
                         f"{values[:5]}... Fix: send encoded codes and epoch-ms timestamps.") from None


def merge(old: bytes | None, new: Batch, cap: int) -> Merged:
    """Append ``new`` to the history in ``old``: deduplicate by event hash, place by time, keep the last ``cap``.

    Ties in time keep arrival order (stored behaviors first, then the batch in order). In the usual
    case (the batch is in time order and not older than the last stored behavior) the columns are
    joined as bytes; otherwise they are merged with ``np.searchsorted`` + ``np.insert``.
    """
    n, n_unk, blob_len, version = header(old) if old is not None else (0, 0, 0, 0)
    # ---- idempotency: drop events whose hash the user has (stored, or earlier in this batch)
    keep = list(range(len(new.time)))
    with_id = [i for i in keep if new.hash[i]]
    duplicates = 0
    if with_id:
        seen: set[int] = set()
        if n:
            stored = column(old, "hash", n)
            hashes = np.array([new.hash[i] for i in with_id], dtype=np.uint64)
            hit = np.isin(hashes, stored) if len(with_id) > 8 else [bool((stored == h).any()) for h in hashes]
            seen = {new.hash[i] for i, dup in zip(with_id, hit) if dup}
        drop = set()
        for i in with_id:
            h = new.hash[i]
            if h in seen:
                drop.add(i)
            seen.add(h)
        if drop:
            duplicates = len(drop)
            keep = [i for i in keep if i not in drop]
    k = len(keep)
    if k == 0:
        return Merged(None, 0, duplicates, 0, 0, version, n, n)
    pick = (lambda xs: xs) if k == len(new.time) else (lambda xs: [xs[i] for i in keep])
    t_new, h_new, i_new, c_new, b_new = (pick(x) for x in (new.time, new.hash, new.item, new.category, new.behavior))
    raw_new = pick(new.raw)
    unknown = sum(r is not None for r in raw_new)
    total = n + k
    d = max(0, total - cap)  # oldest behaviors dropped
    last = int(column(old, "time", n, n - 1, 1)[0]) if n else None
    in_order = all(t_new[j] <= t_new[j + 1] for j in range(k - 1)) and (last is None or t_new[0] >= last)
    if in_order:
        value = _append_bytes(old, n, n_unk, blob_len, t_new, h_new, i_new, c_new, b_new, raw_new, d,
                              version + k)
    else:
        value = _merge_arrays(old, n, n_unk, blob_len, t_new, h_new, i_new, c_new, b_new, raw_new, d, version + k)
    return Merged(value, k, duplicates, d, unknown, version + k, n, total - d)


def _append_bytes(old, n, n_unk, blob_len, t, h, i, c, b, raw, d, version) -> bytes:
    """Fast path: new events go after the stored ones; columns are joined as byte slices."""
    k = len(t)
    mv = memoryview(old) if old is not None else memoryview(b"")
    news = (_packed(t, "q", "timestamp_ms"), _packed(h, "Q", "event hash"), _packed(i, "i", "item"),
            _packed(c, "i", "category"), _packed(b, "h", "behavior"))
    parts = [b""]
    for (name, _, size), nb in zip(COLUMNS, news):
        start = HEADER_SIZE + _START[name] * n
        if d < n:
            parts.append(mv[start + d * size:start + n * size])
            parts.append(nb)
        else:
            parts.append(memoryview(nb)[(d - n) * size:])
    raw_old = _raw_ids(mv, n, n_unk, blob_len) if n_unk else []
    if raw_old and d:  # behaviors dropped from the front take their raw ids with them
        raw_old = raw_old[int(np.count_nonzero(column(old, "item", n, 0, min(d, n)) == UNKNOWN)):]
    raw_add = [r for r in raw[max(0, d - n):] if r is not None]
    raws = raw_old + raw_add
    blob = "\0".join(raws).encode() if raws else b""
    parts[0] = HEADER.pack(MAGIC, n + k - d, len(raws), len(blob), version, _rng.getrandbits(64))
    parts.append(blob)
    return b"".join(parts)


def _merge_arrays(old, n, n_unk, blob_len, t, h, i, c, b, raw, d, version) -> bytes:
    """Out-of-order path: insert the batch (sorted stably by time) after equal stored times."""
    new = [np.frombuffer(_packed(x, code, what), dt) for x, (_, dt, _), code, what in
           zip((t, h, i, c, b), COLUMNS, "qQiih", ("timestamp_ms", "event hash", "item", "category", "behavior"))]
    order = np.argsort(new[0], kind="stable")
    stored = [column(old, name, n) if n else np.zeros(0, dt) for name, dt, _ in COLUMNS]
    pos = np.searchsorted(stored[0], new[0][order], side="right")
    merged = [np.insert(s, pos, x[order]) for s, x in zip(stored, new)]
    raws: list[str] = []
    raw_old = _raw_ids(old, n, n_unk, blob_len) if n_unk else []
    raw_idx = [j for j, r in enumerate(raw) if r is not None]
    if raw_old or raw_idx:  # follow each UNKNOWN behavior through the insert to keep its raw id beside it
        tag_old = np.full(n, -1, np.int64)
        if n_unk:
            tag_old[stored[2] == UNKNOWN] = np.arange(n_unk)
        tag_new = np.full(len(t), -1, np.int64)
        tag_new[raw_idx] = len(raw_old) + np.arange(len(raw_idx))
        tags = np.insert(tag_old, pos, tag_new[order])[d:]
        every = raw_old + [raw[j] for j in raw_idx]
        raws = [every[x] for x in tags[tags >= 0].tolist()]
    return encode(*(m[d:] for m in merged), raws, version)


def build(time: np.ndarray, item: np.ndarray, category: np.ndarray, behavior: np.ndarray, cap: int
          ) -> tuple[bytes, int, int]:
    """A value for a bulk-loaded history (sorted by time, no event ids, raw ids of UNKNOWN items unknown: "").

    Returns ``(value, dropped over cap, unknown items)``.
    """
    n = len(time)
    d = max(0, n - cap)
    unknown = int(np.count_nonzero(np.asarray(item) == UNKNOWN))
    kept_unknown = int(np.count_nonzero(np.asarray(item[d:]) == UNKNOWN)) if unknown else 0
    value = encode(time[d:], np.zeros(n - d, np.uint64), item[d:], category[d:], behavior[d:],
                   [""] * kept_unknown, n)
    return value, d, unknown
