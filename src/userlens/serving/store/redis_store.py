"""The shared behavior store: one Redis server that several scorers append to and read from.

Keys (``ns`` = the namespace): ``{ns}:h:{user_id}`` → the packed history of
:mod:`userlens.serving.store.record` (the same bytes as in LMDB), ``{ns}:stats`` → a hash of the
counters (``users``, ``behaviors``, ``dropped_over_cap``, ``duplicates``, ``unknown_items``, ``bytes``
= sum of the stored values' lengths; Redis adds ~70 bytes per key on top).

Durability: the server must run with ``appendonly yes`` and ``appendfsync always`` (checked when the
store opens): Redis then fsyncs the AOF before it replies to a write, so an acknowledged append
survives a crash of the server or the machine. Start one with
``redis-server --appendonly yes --appendfsync always --dir DIR``.

Concurrency: an append reads the users' values (one ``MGET``), merges in Python, then writes them
with one Lua script that, per user, compares the stored 32-byte header (which holds a random tag
renewed on every write) with the one it read and writes only when they are equal; the users whose
value changed in between are read and merged again. Scripts run atomically, so concurrent appenders
never lose each other's events, and only the contended users are retried.

Example:
    >>> with RedisStore("redis://localhost:6379/0", cap=100_000) as s:  # doctest: +SKIP
    ...     s.history("u1").time
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import struct
import time as _time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import redis

from userlens.artifacts import DirLock
from userlens.errors import InputError, UserlensError
from userlens.serving.store import record
from userlens.serving.store.base import AppendResult, BehaviorStore, Event, UserHistory
from userlens.serving.store.csr import segments

STAT_NAMES = ("users", "behaviors", "dropped_over_cap", "duplicates", "unknown_items", "bytes")
SNAPSHOT_MAGIC = b"ULRSNAP1"
MAX_ROUNDS = 64  # compare-and-set rounds before an append gives up on a user written continuously by others
CHUNK_BYTES = 64 << 20  # values per script call (bulk loads)

# KEYS[1] = stats hash, KEYS[2..m+1] = history keys; ARGV[1..m] = expected headers ("" = absent),
# ARGV[m+1..2m] = new values ("" = delete), then 6 counter deltas per key, then 6 deltas always applied.
_CAS = """
local m = #KEYS - 1
local tot = {0, 0, 0, 0, 0, 0}
local conflicts = {}
for i = 1, m do
  if redis.call('GETRANGE', KEYS[i + 1], 0, 31) == ARGV[i] then
    if ARGV[m + i] == '' then redis.call('DEL', KEYS[i + 1]) else redis.call('SET', KEYS[i + 1], ARGV[m + i]) end
    for j = 1, 6 do tot[j] = tot[j] + tonumber(ARGV[2 * m + 6 * (i - 1) + j]) end
  else
    conflicts[#conflicts + 1] = i
  end
end
local names = {'users', 'behaviors', 'dropped_over_cap', 'duplicates', 'unknown_items', 'bytes'}
for j = 1, 6 do
  tot[j] = tot[j] + tonumber(ARGV[8 * m + j])
  if tot[j] ~= 0 then redis.call('HINCRBY', KEYS[1], names[j], string.format('%.0f', tot[j])) end
end
return conflicts
"""

# One atomic read of the namespace: no write can interleave with a script.
_DUMP = """
local out = {}
local cursor = '0'
repeat
  local r = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
  cursor = r[1]
  for _, k in ipairs(r[2]) do out[#out + 1] = k; out[#out + 1] = redis.call('GET', k) end
until cursor == '0'
return {redis.call('HGETALL', KEYS[1]), out}
"""

# KEYS[1] = stats hash; ARGV[1] = scan pattern, ARGV[2] = key prefix, then stats field/value pairs count,
# the pairs, then user/value pairs.
_RESTORE = """
local old = {}
local cursor = '0'
repeat
  local r = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
  cursor = r[1]
  for _, k in ipairs(r[2]) do old[#old + 1] = k end
until cursor == '0'
for _, k in ipairs(old) do redis.call('DEL', k) end
redis.call('DEL', KEYS[1])
local ns = tonumber(ARGV[3])
for i = 4, 3 + 2 * ns, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
local n = 0
for i = 4 + 2 * ns, #ARGV, 2 do redis.call('SET', ARGV[2] .. ARGV[i], ARGV[i + 1]); n = n + 1 end
return n
"""


def _glob_escape(s: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in s)


class RedisStore(BehaviorStore):
    """Histories in Redis under ``namespace``; see the module docstring.

    Args:
        url: ``redis://HOST:PORT[/db]``.
        cap: behaviors kept per user.
        namespace: key prefix, so several stores (packages) share one server.
        require_fsync: refuse a server whose AOF is not fsynced on every write (acknowledged appends
            would not be durable); pass False only when the server's durability is managed elsewhere.
    """

    def __init__(self, url: str, cap: int, namespace: str = "userlens", require_fsync: bool = True) -> None:
        if not isinstance(cap, int) or cap < 1:
            raise InputError(f"cap={cap!r}: expected a positive integer (behaviors kept per user).")
        if not namespace or ":" in namespace:
            raise InputError(f"namespace={namespace!r}: expected a non-empty name without ':'.")
        self.url, self.cap, self.namespace = url, cap, namespace
        self._prefix = f"{namespace}:h:".encode()
        self._stats_key = f"{namespace}:stats"
        self._info_key = f"{namespace}:info"
        try:
            self.client = redis.Redis.from_url(url, socket_connect_timeout=5)
        except ValueError as e:
            raise InputError(f"{url}: not a Redis URL ({e}). Fix: use redis://HOST:PORT[/db].") from None
        with self._errors():
            self.client.ping()
            if require_fsync:
                self._check_fsync()
        self._cas = self.client.register_script(_CAS)
        self._dump = self.client.register_script(_DUMP)
        self._restore = self.client.register_script(_RESTORE)

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
            raise UserlensError(f"{self.url}: Redis not reachable ({e}). Fix: start it (redis-server --appendonly "
                                "yes --appendfsync always) or correct the URL.") from None
        except redis.exceptions.ResponseError as e:
            raise UserlensError(f"{self.url}: Redis refused a command ({e}). Fix: check the server's "
                                "configuration (memory limit, ACL, read-only replica).") from None

    def _check_fsync(self) -> None:
        try:
            cfg = self.client.config_get("append*")
        except redis.exceptions.ResponseError:
            raise UserlensError(f"{self.url}: cannot read the server's CONFIG to check that appends are durable. "
                                "Fix: allow CONFIG GET, or pass require_fsync=False if the server runs with "
                                "appendonly yes and appendfsync always.") from None
        if cfg.get("appendonly") != "yes" or cfg.get("appendfsync") != "always":
            raise UserlensError(f"{self.url}: appendonly={cfg.get('appendonly')}, appendfsync="
                                f"{cfg.get('appendfsync')}: acknowledged appends would not be durable. Fix: run "
                                "redis-server --appendonly yes --appendfsync always (or CONFIG SET both).")

    def _key(self, user_id: str) -> bytes:
        return self._prefix + user_id.encode()

    def _commit(self, writes: list[tuple[bytes, bytes, bytes, list[int]]], always: list[int]) -> set[int]:
        """Compare-and-set ``(key, expected header, value, deltas)`` in one script call; indices that conflicted."""
        keys = [self._stats_key] + [w[0] for w in writes]
        args = [w[1] for w in writes] + [w[2] for w in writes] + [d for w in writes for d in w[3]] + always
        with self._errors():
            return {int(i) - 1 for i in self._cas(keys=keys, args=args)}

    def append(self, events: Sequence[Event]) -> AppendResult:
        groups = record.group(events)
        res = AppendResult(users=len(groups))
        pending = list(groups)
        for attempt in range(MAX_ROUNDS):
            if not pending:
                return res
            keys = [self._key(u) for u in pending]
            with self._errors():
                olds = self.client.mget(keys)
            writes, merges, always = [], [], [0] * 6
            for user, key, old in zip(pending, keys, olds):
                m = record.merge(old, groups[user], self.cap)
                if m.value is None:  # only duplicates: nothing to write
                    always[3] += m.duplicates
                    res.duplicates += m.duplicates
                    res.versions[user] = m.version
                    continue
                deltas = [int(old is None), m.n_after - m.n_before, m.dropped, m.duplicates, m.unknown,
                          len(m.value) - len(old or b"")]
                writes.append((key, (old or b"")[:record.HEADER_SIZE], m.value, deltas))
                merges.append((user, m))
            conflicts = self._commit(writes, always)
            pending = []
            for i, (user, m) in enumerate(merges):
                if i in conflicts:
                    pending.append(user)
                    continue
                res.appended += m.appended
                res.duplicates += m.duplicates
                res.dropped_over_cap += m.dropped
                res.unknown_items += m.unknown
                res.versions[user] = m.version
            if pending:
                _time.sleep(random.uniform(0, 0.001 * (attempt + 1)))
        if pending:
            raise UserlensError(f"{self.url}: {len(pending)} users (e.g. {pending[0]!r}) changed under every one of "
                                f"{MAX_ROUNDS} attempts; their events were not appended (the others were). Fix: "
                                "retry the call (appends are idempotent with event ids).")
        return res

    def history(self, user_id: str) -> UserHistory:
        with self._errors():
            value = self.client.get(self._key(user_id))
        return UserHistory.empty() if value is None else record.decode(value, self.cap)

    def bulk_load(self, user_ids: Sequence[str], offsets: np.ndarray, item: np.ndarray, category: np.ndarray,
                  time: np.ndarray, behavior: np.ndarray) -> int:
        stored, chunk, size = 0, [], 0
        for seg in segments(user_ids, offsets, item, category, time, behavior, self.cap):
            chunk.append(seg)
            size += len(seg[1] or b"")
            stored += seg[2]
            if size >= CHUNK_BYTES or len(chunk) >= 10_000:
                self._load_chunk(chunk)
                chunk, size = [], 0
        if chunk:
            self._load_chunk(chunk)
        return stored

    def _load_chunk(self, chunk: list[tuple[str, bytes | None, int, int, int]]) -> None:
        for _ in range(MAX_ROUNDS):
            keys = [self._key(c[0]) for c in chunk]
            with self._errors():
                pipe = self.client.pipeline(transaction=False)
                for k in keys:
                    pipe.getrange(k, 0, record.HEADER_SIZE - 1)
                heads = pipe.execute()
            writes = []
            for (user, value, n, dropped, unknown), key, head in zip(chunk, keys, heads):
                n_old = old_len = 0
                if head:
                    _, n_old, _, blob_old, _, _ = record.HEADER.unpack(head)
                    old_len = record.HEADER_SIZE + record.ROW * n_old + blob_old
                deltas = [(value is not None) - bool(head), n - n_old, dropped, 0, unknown,
                          len(value or b"") - old_len]
                writes.append((key, head, value or b"", deltas))
            conflicts = self._commit(writes, [0] * 6)
            chunk = [c for i, c in enumerate(chunk) if i in conflicts]
            if not chunk:
                return
        raise UserlensError(f"{self.url}: bulk_load kept conflicting with concurrent appenders. Fix: bulk-load "
                            "before the scorers start appending.")

    def snapshot(self, path: str | Path) -> Path:
        """All histories and counters, read by one Lua script (atomic), written to the file ``path`` atomically.

        File format (little-endian): ``b"ULRSNAP1"``; u32 length + JSON ``{"format", "namespace", "cap",
        "users", "stats"}``; per user: u32 length + user id (UTF-8), u64 length + packed history; then the
        16-byte BLAKE2b of everything before it. The script blocks the server while it copies the
        namespace (~1 s per GB); for very large stores prefer Redis's own RDB snapshots.
        """
        target = Path(path)
        if target.exists():
            raise InputError(f"{target}: exists. Fix: snapshot to a new path, or delete the old snapshot first.")
        with self._errors():
            stats_raw, flat = self._dump(keys=[self._stats_key], args=[_glob_escape(self.namespace) + ":h:*"])
        stats = {k.decode(): int(v) for k, v in zip(stats_raw[::2], stats_raw[1::2])}
        meta = json.dumps({"format": 1, "namespace": self.namespace, "cap": self.cap, "users": len(flat) // 2,
                           "stats": stats}).encode()
        h = hashlib.blake2b(digest_size=16)
        target.parent.mkdir(parents=True, exist_ok=True)
        with DirLock(target):
            tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
            try:
                with open(tmp, "wb") as fh:  # streamed: artifacts.write_atomic would need the file twice in RAM
                    def put(b: bytes) -> None:
                        h.update(b)
                        fh.write(b)
                    put(SNAPSHOT_MAGIC + struct.pack("<I", len(meta)) + meta)
                    for key, value in zip(flat[::2], flat[1::2]):
                        user = key[len(self._prefix):]
                        put(struct.pack("<I", len(user)) + user + struct.pack("<Q", len(value)))
                        put(value)
                    fh.write(h.digest())
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, target)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
        return target

    def restore(self, path: str | Path) -> int:
        """Replace the namespace by a :meth:`snapshot` file in one Lua script (atomic)."""
        src = Path(path)
        if not src.is_file():
            raise InputError(f"{src}: no such snapshot file. Fix: pass a file written by RedisStore.snapshot.")
        data = src.read_bytes()
        body, digest = data[:-16], data[-16:]
        if not data.startswith(SNAPSHOT_MAGIC):
            raise InputError(f"{src}: not a Redis store snapshot (magic {data[:8]!r}). Fix: pass a file written "
                             "by RedisStore.snapshot.")
        if hashlib.blake2b(body, digest_size=16).digest() != digest:
            raise InputError(f"{src}: checksum mismatch (truncated or corrupted). Fix: restore another snapshot.")
        (meta_len,) = struct.unpack_from("<I", body, 8)
        meta = json.loads(body[12:12 + meta_len])
        pos, pairs = 12 + meta_len, []
        while pos < len(body):
            (ulen,) = struct.unpack_from("<I", body, pos)
            user = body[pos + 4:pos + 4 + ulen]
            (vlen,) = struct.unpack_from("<Q", body, pos + 4 + ulen)
            start = pos + 12 + ulen
            pairs += [user, body[start:start + vlen]]
            pos = start + vlen
        stats = [x for k, v in meta["stats"].items() for x in (k, v)]
        with self._errors():
            n = self._restore(keys=[self._stats_key],
                              args=[_glob_escape(self.namespace) + ":h:*", self._prefix, len(stats) // 2,
                                    *stats, *pairs])
        return int(n)

    def read_info(self) -> dict | None:
        with self._errors():
            raw = self.client.get(self._info_key)
        return None if raw is None else json.loads(raw)

    def write_info(self, info: dict) -> None:
        with self._errors():
            self.client.set(self._info_key, json.dumps(info, sort_keys=True))

    def check(self) -> None:
        with self._errors():
            self.client.set(f"{self.namespace}:probe", _time.time_ns())
            self.client.get(self._info_key)

    def stats(self) -> dict[str, int]:
        with self._errors():
            raw = self.client.hgetall(self._stats_key)
        have = {k.decode(): int(v) for k, v in raw.items()}
        return {name: have.get(name, 0) for name in STAT_NAMES}

    def close(self) -> None:
        self.client.close()
