"""One user's history as an append-only log of small blocks, and the append plan every backend shares.

A user's behaviors carry **absolute sequence numbers**: the ``s``-th behavior ever kept for the
user (in time order) is number ``s``. The store keeps the window ``[base, end)`` (``end - base <=
cap``); appending in time order gives the new behaviors ``end, end + 1, …`` and raises ``base``
when the window is full, so nothing stored moves. Layout (the same bytes in LMDB, Redis and
snapshots; integers little-endian)::

    meta   (per user, 40 bytes)  magic b"ULH2" | block u32 | base u64 | end u64 | tag u64 | last time i64
    block b (per user)           rows of sequence numbers [b * BLOCK, b * BLOCK + len), 26 bytes each:
                                 time i64 | event hash u64 | item i32 | category i32 | behavior i16
    ids    (per user)            the event hashes of the window (idempotency)
    raw    (per user)            sequence number → raw item id, for behaviors whose item is UNKNOWN

An in-order append writes only the tail block (appending its new rows), the meta, the new event
hashes and raw ids; eviction deletes blocks that fell wholly below ``base`` (rows below ``base``
inside a kept block stay as dead bytes until the block goes). An out-of-order event (older than
the last stored one) is inserted by time, which renumbers every later behavior: the blocks from
the first changed one on are rewritten and the **tag** is renewed. The tag (random, 64 bits) thus
says "rows numbered the same are the same rows": it is renewed by every write other than an
in-order append (out-of-order inserts, bulk loads, restores), so a reader holding state for
``(tag, end)`` extends it with ``[end, new end)`` when the tag is unchanged and rebuilds it otherwise.

Idempotency: an event whose ``event_id`` hash is in the window's ids is a duplicate (counted,
nothing written). Events older than every kept behavior of a full window are dropped without a
write (they would be evicted at once; counted in ``dropped``). Two different event ids of one user
collide with probability ~ n / 2**64 per new event (n = 100,000: 5e-15).

The backends hold the I/O; this module decides what to write (:func:`plan_append`), from what a
backend read (:class:`Stored`), so LMDB and Redis cannot differ in what an append means.
"""

from __future__ import annotations

import hashlib
import random
import struct
from dataclasses import dataclass, field

import numpy as np

from userlens.errors import InputError
from userlens.serving.store.base import UNKNOWN, Event, UserHistory

MAGIC = b"ULH2"
META = struct.Struct("<4sIQQQq")  # magic, block, base, end, tag, last time
BLOCK = 256  # rows per block: an append rewrites at most 6.6 KB (LMDB) / appends its rows (Redis)
ROW = np.dtype([("time", "<i8"), ("hash", "<u8"), ("item", "<i4"), ("category", "<i4"), ("behavior", "<i2")])
ROW_BYTES = ROW.itemsize  # 26
_rng = random.SystemRandom()


def new_tag() -> int:
    return _rng.getrandbits(64) or 1


@dataclass(frozen=True)
class Meta:
    """A user's window ``[base, end)``, its write tag and its last behavior's time."""

    base: int
    end: int
    tag: int
    last: int

    def pack(self) -> bytes:
        return META.pack(MAGIC, BLOCK, self.base, self.end, self.tag, self.last)

    @classmethod
    def unpack(cls, value: bytes | memoryview) -> Meta:
        if len(value) != META.size:
            raise InputError(f"stored user record of {len(value)} bytes is not a userlens history. Fix: point "
                             "the store at its own directory / namespace, or rebuild it with `userlens load-store`.")
        magic, block, base, end, tag, last = META.unpack(value)
        if magic != MAGIC or block != BLOCK or not base <= end:
            raise InputError(f"stored user record (magic {magic!r}, block {block}) is not a userlens history of "
                             f"this version. Fix: rebuild the store with `userlens load-store`.")
        return cls(base, end, tag, last)

    @property
    def n(self) -> int:
        return self.end - self.base

    def blocks(self) -> range:
        """Block numbers holding the window's rows."""
        return range(self.base // BLOCK, -(-self.end // BLOCK)) if self.end > self.base else range(0)

    def dead_blocks(self, base: int) -> range:
        """Blocks of the window that lie wholly below ``base`` (deleted when the window moves there): no scan of
        the window's blocks, an append at the cap touches one."""
        if self.end <= self.base:
            return range(0)
        return range(self.base // BLOCK, min(base // BLOCK, -(-self.end // BLOCK)))


def hash_event_id(event_id: str) -> int:
    """64-bit BLAKE2b of ``event_id`` (never 0: 0 marks a behavior without id)."""
    h = int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")
    return h or 1


def hash_key(h: int) -> bytes:
    """An event hash as the 8 bytes stored in a row (the ids index's key)."""
    return int(h).to_bytes(8, "little")


def read_from(meta: Meta, cap: int, since: int | None, tag: int | None) -> int:
    """The first number a read returns: ``since`` while ``tag`` holds and ``since`` is inside the window, else the
    window's start (its last ``cap`` rows: fewer than stored only when the store is opened with a lower cap)."""
    lo = max(meta.base, meta.end - cap)
    return since if since is not None and tag == meta.tag and lo <= since <= meta.end else lo


def window_rows(meta: Meta, blocks: list[bytes | None], a: int | None = None, b: int | None = None) -> np.ndarray:
    """Rows ``[a, b)`` (default: the window) out of the values of blocks ``a // BLOCK …`` in order."""
    a = meta.base if a is None else a
    b = meta.end if b is None else b
    if b <= a:
        return np.zeros(0, ROW)
    raw = b"".join(v or b"" for v in blocks)
    first = a // BLOCK * BLOCK
    need = b - first
    if len(raw) < need * ROW_BYTES:
        raise InputError(f"a stored history is missing rows ({len(raw) // ROW_BYTES} of {need} from sequence "
                         f"{first}). Fix: restore the store from a snapshot, or reload it with `userlens load-store`.")
    return np.frombuffer(raw, ROW, need)[a - first:]


def to_history(rows: np.ndarray, start: int, tag: int) -> UserHistory:
    """Contiguous columns of ``rows`` (numbers ``start, start + 1, …``)."""
    return UserHistory(item=np.ascontiguousarray(rows["item"]), category=np.ascontiguousarray(rows["category"]),
                       time=np.ascontiguousarray(rows["time"]), behavior=np.ascontiguousarray(rows["behavior"]),
                       start=start, tag=tag)


@dataclass
class Batch:
    """New events of one user: rows in arrival order, within-batch duplicates removed (built by :func:`group`)."""

    rows: np.ndarray  # ROW
    raw: list[str | None]  # raw item id of UNKNOWN items, else None
    duplicates: int = 0  # repeated event ids inside the batch


def _int_column(values: list[int], dtype: str, what: str) -> np.ndarray:
    """``values`` as ``dtype``; anything but an int in its range is refused, naming it."""
    info = np.iinfo(dtype)
    try:
        out = np.array(values, dtype=np.int64)  # bool, float, str and out-of-int64 values fail below or here
        ok = all(type(v) is int for v in values) and (out.min() >= info.min) and (out.max() <= info.max)
    except (OverflowError, TypeError, ValueError):
        ok = False
    if not ok:
        bad = next(v for v in values if type(v) is not int or not info.min <= v <= info.max)
        raise InputError(f"an event's {what} is {bad!r}, not an integer in [{info.min}, {info.max}]. Fix: send "
                         "encoded codes and epoch-ms timestamps.")
    return out.astype(dtype)


def group(events: list[Event] | tuple[Event, ...]) -> dict[str, Batch]:
    """Events by user (first-seen order), validated, within-batch duplicates removed: one Python pass over the
    events, the columns built once for the whole call and cut per user."""
    users: dict[str, int] = {}
    owner, keep, raw = [], [], []
    hashes: list[int] = []
    seen: set[tuple[int, int]] = set()
    duplicates: dict[int, int] = {}
    for e in events:
        u = users.get(e.user_id)
        if u is None:
            if not isinstance(e.user_id, str) or not e.user_id or "\0" in e.user_id:
                raise InputError(f"event {e!r}: user_id must be a non-empty string without NUL. Fix: send the "
                                 "raw user id as text.")
            u = users[e.user_id] = len(users)
        if e.item == UNKNOWN and "\0" in e.item_id:
            raise InputError(f"event {e!r}: item_id contains NUL. Fix: strip it from the raw id.")
        h = hash_event_id(e.event_id) if e.event_id is not None else 0
        if h:
            if (u, h) in seen:
                duplicates[u] = duplicates.get(u, 0) + 1
                continue
            seen.add((u, h))
        owner.append(u)
        keep.append(e)
        hashes.append(h)
        raw.append(e.item_id if e.item == UNKNOWN else None)
    rows = np.zeros(len(keep), ROW)
    rows["time"] = _int_column([e.timestamp_ms for e in keep], "<i8", "timestamp_ms")
    rows["hash"] = np.array(hashes, dtype=np.uint64)
    rows["item"] = _int_column([e.item for e in keep], "<i4", "item")
    rows["category"] = _int_column([e.category for e in keep], "<i4", "category")
    rows["behavior"] = _int_column([e.behavior for e in keep], "<i2", "behavior")
    who = np.array(owner, dtype=np.int64)
    order = np.argsort(who, kind="stable")  # each user's events together, in arrival order
    cuts = np.searchsorted(who[order], np.arange(len(users) + 1))
    out = {}
    for user, u in users.items():
        idx = order[cuts[u]:cuts[u + 1]]
        out[user] = Batch(rows[idx], [raw[i] for i in idx.tolist()], duplicates.get(u, 0))
    return out


@dataclass
class Stored:
    """What a backend read of one user before planning an append (see :func:`needs`)."""

    meta: Meta | None
    known: np.ndarray  # bool per batch row: its event hash is in the window's ids
    rows: np.ndarray | None = None  # ROW, numbers [rows_start, …): the rows :func:`needs` asked for
    rows_start: int = 0
    raws: dict[int, str] = field(default_factory=dict)  # number → raw id, over the rows read (rewrite only)


@dataclass
class Plan:
    """What one append does to one user; a backend applies it in one transaction / one script."""

    meta: Meta | None  # None: nothing to write (only duplicates, or only events dropped at once)
    appends: list[tuple[int, bytes]] = field(default_factory=list)  # (block, rows) appended to the block
    puts: dict[int, bytes] = field(default_factory=dict)  # block replaced whole
    deletes: list[int] = field(default_factory=list)  # blocks removed
    ids_add: list[bytes] = field(default_factory=list)
    ids_del: list[bytes] = field(default_factory=list)
    raw_put: dict[int, str] = field(default_factory=dict)
    raw_del: list[int] = field(default_factory=list)
    appended: int = 0
    duplicates: int = 0
    dropped: int = 0
    unknown: int = 0
    n_before: int = 0
    n_after: int = 0

    @property
    def version(self) -> int:
        return self.meta.end if self.meta is not None else 0


def _fresh(batch: Batch, known: np.ndarray) -> tuple[np.ndarray, list[str | None], int]:
    """The batch without events already stored, sorted by time (stable: ties keep arrival order)."""
    duplicates = int(known.sum()) + batch.duplicates
    rows, raw = batch.rows, batch.raw
    if duplicates > batch.duplicates:
        keep = ~known
        rows = rows[keep]
        raw = [r for r, k in zip(raw, keep.tolist()) if k]
    if len(rows) > 1 and (np.diff(rows["time"]) < 0).any():
        order = np.argsort(rows["time"], kind="stable")
        rows, raw = rows[order], [raw[i] for i in order.tolist()]
    return rows, raw, duplicates


def needs(meta: Meta | None, batch: Batch, known: np.ndarray, cap: int) -> tuple[int, int, bool] | None:
    """The stored rows ``(a, b, with raw ids)`` :func:`plan_append` will need, or None.

    In order: the rows evicted by the append (their hashes and raw ids leave the indexes).
    Out of order: the whole window and its raw ids (later rows are renumbered).
    """
    if meta is None or meta.n == 0:
        return None
    times = batch.rows["time"][~known] if known.any() else batch.rows["time"]
    if not len(times):
        return None
    if int(times.min()) >= meta.last:
        new_base = max(meta.base, meta.end + len(times) - cap)
        return (meta.base, min(new_base, meta.end), False) if new_base > meta.base else None
    return meta.base, meta.end, True


def _blocks_of(rows: np.ndarray, start: int, pad_from: int) -> list[tuple[int, bytes]]:
    """``rows`` (numbers from ``start``) cut at block boundaries; a block's first chunk is preceded by zero
    rows from ``pad_from`` (the block's current physical end) so every block's value starts at its first number."""
    out = []
    s, i = start, 0
    while i < len(rows):
        b = s // BLOCK
        take = min(len(rows) - i, (b + 1) * BLOCK - s)
        lead = s - max(pad_from, b * BLOCK)
        chunk = rows[i:i + take].tobytes()
        out.append((b, bytes(lead * ROW_BYTES) + chunk if lead > 0 else chunk))
        s, i, pad_from = s + take, i + take, s + take
    return out


def plan_append(stored: Stored, batch: Batch, cap: int) -> Plan:
    """What appending ``batch`` to the user read in ``stored`` writes (see the module docstring)."""
    meta = stored.meta or Meta(0, 0, new_tag(), 0)
    rows, raw, duplicates = _fresh(batch, stored.known)
    plan = Plan(None, duplicates=duplicates, n_before=meta.n, n_after=meta.n)
    if not len(rows):
        return plan
    if meta.n and int(rows["time"][0]) < meta.last:
        return _rewrite(stored, meta, rows, raw, cap, plan)
    k = len(rows)
    end = meta.end + k
    base = max(meta.base, end - cap)
    skip = max(0, base - meta.end)  # new rows evicted at once (a batch longer than the room left)
    kept, kept_raw = rows[skip:], raw[skip:]
    start = meta.end + skip
    plan.appends = _blocks_of(kept, start, meta.end)
    _evict(plan, stored, meta, base)
    plan.ids_add = [hash_key(h) for h in kept["hash"].tolist() if h]
    plan.raw_put = {start + i: r for i, r in enumerate(kept_raw) if r}
    plan.meta = Meta(base, end, meta.tag, int(rows["time"][-1]))
    plan.appended, plan.dropped = k, (base - meta.base)
    plan.unknown = sum(r is not None for r in raw)
    plan.n_after = end - base
    return plan


def _evict(plan: Plan, stored: Stored, meta: Meta, base: int) -> None:
    """Drop stored rows ``[meta.base, base)`` from the ids and raw indexes, and blocks wholly below ``base``."""
    gone_to = min(base, meta.end)
    if gone_to > meta.base:
        assert stored.rows is not None and stored.rows_start <= meta.base, "evicted rows were not read"
        gone = stored.rows[meta.base - stored.rows_start:gone_to - stored.rows_start]
        plan.ids_del += [hash_key(h) for h in gone["hash"].tolist() if h]
        plan.raw_del += [meta.base + int(i) for i in np.flatnonzero(gone["item"] == UNKNOWN)]
    plan.deletes = list(meta.dead_blocks(base))


def _rewrite(stored: Stored, meta: Meta, rows: np.ndarray, raw: list[str | None], cap: int, plan: Plan) -> Plan:
    """Out-of-order events: merge by time (after equal stored times), renumber, rewrite from the first change."""
    assert stored.rows is not None and stored.rows_start == meta.base, "the window was not read"
    old = stored.rows
    n = len(old)
    plan.unknown = sum(r is not None for r in raw)
    plan.appended = len(rows)
    older = int(np.count_nonzero(rows["time"] < int(old["time"][0])))  # would go before every kept behavior
    if older and n + len(rows) - cap >= older:  # ... and be evicted at once: dropped without a write
        rows, raw = rows[older:], raw[older:]
        plan.dropped = older
        if not len(rows):
            return plan
    k = len(rows)
    at = np.searchsorted(old["time"], rows["time"], side="right")
    merged = np.insert(old, at, rows)
    is_new = np.insert(np.zeros(n, bool), at, True)
    merged_raw: list[str | None] = [stored.raws.get(meta.base + i, "") if it == UNKNOWN else None
                                    for i, it in enumerate(old["item"].tolist())]
    for j, (pos, r) in enumerate(zip(at.tolist(), raw)):
        merged_raw.insert(pos + j, r)
    end = meta.end + k
    d = max(0, n + k - cap)
    base = meta.base + d
    frm = max(meta.base + int(at[0]), base)  # the first renumbered position still kept
    b0 = frm // BLOCK
    write_from = max(b0 * BLOCK, base)  # rows below base in the first rewritten block are padded with zeros
    plan.puts = dict(_blocks_of(merged[write_from - meta.base:], write_from, b0 * BLOCK))
    plan.deletes = list(meta.dead_blocks(base))
    plan.ids_del = [hash_key(h) for h, nw in zip(merged["hash"][:d].tolist(), is_new[:d].tolist()) if h and not nw]
    plan.ids_add = [hash_key(h) for h, nw in zip(merged["hash"][d:].tolist(), is_new[d:].tolist()) if h and nw]
    plan.raw_del = [s for s in stored.raws if s >= frm or s < base]
    plan.raw_put = {meta.base + i: r for i, r in enumerate(merged_raw) if r and meta.base + i >= frm}
    plan.meta = Meta(base, end, new_tag(), int(merged["time"][-1]))
    plan.dropped += d
    plan.n_after = end - base
    return plan


def build(time: np.ndarray, item: np.ndarray, category: np.ndarray, behavior: np.ndarray, cap: int
          ) -> tuple[Meta, list[tuple[int, bytes]], int, int]:
    """A bulk-loaded history (sorted by time, no event ids, raw ids of UNKNOWN items not known).

    Returns ``(meta, blocks, dropped over cap, unknown items)``; numbers start at 0 with the first row.
    """
    n = len(time)
    d = max(0, n - cap)
    rows = np.zeros(n - d, ROW)
    rows["time"], rows["item"], rows["category"], rows["behavior"] = time[d:], item[d:], category[d:], behavior[d:]
    unknown = int(np.count_nonzero(np.asarray(item) == UNKNOWN))
    meta = Meta(d, n, new_tag(), int(time[-1]) if n else 0)
    return meta, _blocks_of(rows, d, d // BLOCK * BLOCK), d, unknown
