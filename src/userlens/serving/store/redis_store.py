"""The shared behavior store: one Redis server that several scorers append to and read from.

Keys (``ns`` = the namespace, ``u`` = the user id) hold the log of :mod:`userlens.serving.store.record`:
``ns:{u}:m`` → the 40-byte meta, ``ns:{u}:b:N`` → block ``N``'s rows, ``ns:{u}:e`` → a hash of the
window's event hashes, ``ns:{u}:r`` → a hash sequence number → raw item id; ``ns:stats`` → the
counters (``users``, ``behaviors``, ``dropped_over_cap``, ``duplicates``, ``unknown_items``), ``ns:info``
→ what the store was loaded for. An in-order append ``APPEND`` s its rows to the tail block, so the
AOF grows by the few commands of that append (~0.5 KB for one event at the cap), not by the history.

Durability: the server must run with ``appendonly yes`` and ``appendfsync always`` (checked when the
store opens): Redis then fsyncs the AOF before it replies to a write, so an acknowledged append
survives a crash of the server or the machine. Start one with
``redis-server --appendonly yes --appendfsync always --dir DIR``.

Concurrency: an append reads the users' metas and what its plan needs (pipelined), plans in
Python, then applies every user's plan with one Lua script that, per user, compares the stored meta
(which holds the write tag and the end) with the one it read and writes only when they are equal;
the users whose meta changed in between are read and planned again. Scripts run atomically, so
concurrent appenders never lose each other's events, and only the contended users are retried.
A read takes the meta and the blocks it names in one ``MULTI`` and checks the meta again.

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
from urllib.parse import parse_qs, urlsplit

import numpy as np
import redis

from userlens.artifacts import DirLock
from userlens.errors import InputError, UserlensError
from userlens.serving.store import record
from userlens.serving.store.base import AppendResult, BehaviorStore, Event, UserHistory
from userlens.serving.store.csr import segments

STAT_NAMES = ("users", "behaviors", "dropped_over_cap", "duplicates", "unknown_items")
SNAPSHOT_MAGIC = b"ULRSNAP2"
MAX_ROUNDS = 64  # compare-and-set rounds before an append gives up on a user written continuously by others
CHUNK_BYTES = 64 << 20  # values per script call (bulk loads)

# KEYS[1] = stats hash, then every key the plans touch. ARGV: number of users, then per user: index of its
# meta key, the meta it was planned on ("" = absent), number of ops, ops as (code, key index, a, b), its 5
# counter deltas; then 5 deltas always applied. Codes: A = APPEND, S = SET, D = DEL, H = HSET, X = HDEL.
_APPLY = """
local i = 2
local tot = {0, 0, 0, 0, 0}
local conflicts = {}
for u = 1, tonumber(ARGV[1]) do
  local cur = redis.call('GET', KEYS[tonumber(ARGV[i])]) or ''
  local ok = cur == ARGV[i + 1]
  local nops = tonumber(ARGV[i + 2])
  i = i + 3
  for o = 1, nops do
    if ok then
      local code, key, a, b = ARGV[i], KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2], ARGV[i + 3]
      if code == 'A' then redis.call('APPEND', key, a)
      elseif code == 'S' then redis.call('SET', key, a)
      elseif code == 'D' then redis.call('DEL', key)
      elseif code == 'H' then redis.call('HSET', key, a, b)
      else redis.call('HDEL', key, a) end
    end
    i = i + 4
  end
  if ok then
    for j = 1, 5 do tot[j] = tot[j] + tonumber(ARGV[i + j - 1]) end
  else
    conflicts[#conflicts + 1] = u
  end
  i = i + 5
end
local names = {'users', 'behaviors', 'dropped_over_cap', 'duplicates', 'unknown_items'}
for j = 1, 5 do
  tot[j] = tot[j] + tonumber(ARGV[i + j - 1])
  if tot[j] ~= 0 then redis.call('HINCRBY', KEYS[1], names[j], string.format('%.0f', tot[j])) end
end
return conflicts
"""

# One atomic read of the namespace (DUMP: any key type): no write can interleave with a script.
_DUMP = """
local out = {}
local cursor = '0'
repeat
  local r = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
  cursor = r[1]
  for _, k in ipairs(r[2]) do out[#out + 1] = k; out[#out + 1] = redis.call('DUMP', k) end
until cursor == '0'
return {redis.call('HGETALL', KEYS[1]), out}
"""

# KEYS[1] = stats hash; ARGV[1] = scan pattern, ARGV[2] = number of stats field/value pairs, the pairs,
# then the number of (key, DUMP payload) pairs, the pairs, then (meta key, new tag) pairs.
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
local ns = tonumber(ARGV[2])
for i = 3, 2 + 2 * ns, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
local at = 3 + 2 * ns
local nk = tonumber(ARGV[at])
for i = at + 1, at + 2 * nk, 2 do redis.call('RESTORE', ARGV[i], 0, ARGV[i + 1]) end
for i = at + 1 + 2 * nk, #ARGV, 2 do redis.call('SETRANGE', ARGV[i], 24, ARGV[i + 1]) end
return nk
"""


def check_url(url: str) -> None:
    """Refuse what redis-py would read as another database than written (or silently as db 0)."""
    parts = urlsplit(url)
    fix = "Fix: redis://HOST:PORT/DB with DB a number (default 0), e.g. redis://localhost:6379/2."
    db = parts.path[1:]
    if db and not (db.isascii() and db.isdigit()):
        raise InputError(f"{url!r}: the path {parts.path!r} is not a database number. {fix}")
    if "db" in parse_qs(parts.query, keep_blank_values=True) or parts.fragment:
        raise InputError(f"{url!r}: give the database once, as the path (no ?db=, no '#'). {fix}")


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
        check_url(url)
        self.url, self.cap, self.namespace = url, cap, namespace
        self._prefix = f"{namespace}:{{".encode()
        self._stats_key = f"{namespace}:stats"
        self._info_key = f"{namespace}:info"
        self._pattern = _glob_escape(namespace) + ":{*"  # every user's keys
        try:
            self.client = redis.Redis.from_url(url, socket_connect_timeout=5)
        except ValueError as e:
            raise InputError(f"{url}: not a Redis URL ({e}). Fix: use redis://HOST:PORT[/db].") from None
        with self._errors():
            self.client.ping()
            if require_fsync:
                self._check_fsync()
        self._apply = self.client.register_script(_APPLY)
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

    def _key(self, user_id: str, part: str) -> bytes:
        """``ns:{user}:part``: every key of one user shares the prefix (and, for Redis Cluster, its hash slot)."""
        return self._prefix + user_id.encode() + b"}:" + part.encode()

    def _block_key(self, user_id: str, n: int) -> bytes:
        return self._key(user_id, f"b:{n}")

    def _run(self, plans: list[tuple[str, bytes, list[tuple[str, bytes, bytes | str, bytes | str]], list[int]]],
             always: list[int]) -> set[int]:
        """Apply ``(user, expected meta, ops, deltas)`` in one script call; the indices whose meta had changed."""
        keys: dict[bytes, int] = {self._stats_key.encode(): 1}

        def index(key: bytes) -> int:
            return keys.setdefault(key, len(keys) + 1)

        args: list[bytes | str | int] = [len(plans)]
        for user, expected, ops, deltas in plans:
            args += [index(self._key(user, "m")), expected, len(ops)]
            for code, key, a, b in ops:
                args += [code, index(key), a, b]
            args += deltas
        args += always
        with self._errors():
            return {int(i) - 1 for i in self._apply(keys=list(keys), args=args)}

    def _ops(self, user: str, plan: record.Plan) -> list[tuple[str, bytes, bytes | str, bytes | str]]:
        assert plan.meta is not None
        ids, raw = self._key(user, "e"), self._key(user, "r")
        ops: list[tuple[str, bytes, bytes | str, bytes | str]] = []
        ops += [("D", self._block_key(user, n), "", "") for n in plan.deletes]
        ops += [("S", self._block_key(user, n), v, "") for n, v in plan.puts.items()]
        ops += [("A", self._block_key(user, n), v, "") for n, v in plan.appends]
        ops += [("X", ids, h, "") for h in plan.ids_del] + [("H", ids, h, "1") for h in plan.ids_add]
        ops += [("X", raw, str(n), "") for n in plan.raw_del] + [("H", raw, str(n), r) for n, r in plan.raw_put.items()]
        ops.append(("S", self._key(user, "m"), plan.meta.pack(), ""))
        return ops

    def _read_blocks(self, pipe: redis.client.Pipeline, user: str, a: int, b: int) -> int:
        """Queue the blocks holding rows ``[a, b)``; how many were queued."""
        blocks = range(a // record.BLOCK, -(-b // record.BLOCK)) if b > a else range(0)
        for n in blocks:
            pipe.get(self._block_key(user, n))
        return len(blocks)

    def append(self, events: Sequence[Event]) -> AppendResult:
        groups = record.group(events)
        res = AppendResult(users=len(groups))
        pending = list(groups)
        for attempt in range(MAX_ROUNDS):
            if not pending:
                return res
            with self._errors():  # round trip 1: metas and which event ids the windows hold
                pipe = self.client.pipeline(transaction=False)
                for user in pending:
                    pipe.get(self._key(user, "m"))
                    hashes = [record.hash_key(h) for h in groups[user].rows["hash"].tolist() if h]
                    if hashes:
                        pipe.hmget(self._key(user, "e"), hashes)
                got = iter(pipe.execute())
            stored: dict[str, record.Stored] = {}
            raw_meta: dict[str, bytes] = {}
            for user in pending:
                raw_meta[user] = next(got) or b""
                meta = record.Meta.unpack(raw_meta[user]) if raw_meta[user] else None
                hashes = groups[user].rows["hash"]
                known = np.zeros(len(hashes), dtype=bool)
                if hashes.any():
                    known[hashes != 0] = [v is not None for v in next(got)]
                stored[user] = record.Stored(meta, known if meta is not None else np.zeros(len(hashes), bool))
            need = {u: record.needs(st.meta, groups[u], st.known, self.cap) for u, st in stored.items()}
            if any(need.values()):  # round trip 2: rows to evict, or the window of an out-of-order user
                with self._errors():
                    pipe = self.client.pipeline(transaction=False)
                    counts = {}
                    for u, nd in need.items():
                        if nd is not None:
                            counts[u] = self._read_blocks(pipe, u, nd[0], nd[1])
                            if nd[2]:
                                pipe.hgetall(self._key(u, "r"))
                    got = iter(pipe.execute())
                for u, nd in need.items():
                    if nd is None:
                        continue
                    a, b, with_raw = nd
                    st = stored[u]
                    st.rows = record.window_rows(st.meta, [next(got) for _ in range(counts[u])], a, b)
                    st.rows_start = a
                    if with_raw:
                        st.raws = {int(k): v.decode() for k, v in next(got).items() if a <= int(k) < b}
            plans, order, always = [], [], [0] * 5
            for user in pending:
                plan = record.plan_append(stored[user], groups[user], self.cap)
                if plan.meta is None:  # only duplicates / events dropped at once: nothing to write
                    always[2] += plan.dropped
                    always[3] += plan.duplicates
                    always[4] += plan.unknown
                    self._count(res, user, plan, stored[user].meta)
                    continue
                meta = stored[user].meta
                deltas = [int(meta is None), plan.n_after - plan.n_before, plan.dropped, plan.duplicates, plan.unknown]
                plans.append((user, raw_meta[user], self._ops(user, plan), deltas))
                order.append((user, plan, meta))
            conflicts = self._run(plans, always) if plans or any(always) else set()
            pending = []
            for i, (user, plan, meta) in enumerate(order):
                if i in conflicts:
                    pending.append(user)
                else:
                    self._count(res, user, plan, meta)
            if pending:
                _time.sleep(random.uniform(0, 0.001 * (attempt + 1)))
        if pending:
            raise UserlensError(f"{self.url}: {len(pending)} users (e.g. {pending[0]!r}) changed under every one of "
                                f"{MAX_ROUNDS} attempts; their events were not appended (the others were). Fix: "
                                "retry the call (appends are idempotent with event ids).")
        return res

    @staticmethod
    def _count(res: AppendResult, user: str, plan: record.Plan, meta: record.Meta | None) -> None:
        res.appended += plan.appended
        res.duplicates += plan.duplicates
        res.dropped_over_cap += plan.dropped
        res.unknown_items += plan.unknown
        res.versions[user] = plan.version if plan.meta is not None else (meta.end if meta else 0)

    def history(self, user_id: str, since: int | None = None, tag: int | None = None) -> UserHistory:
        meta_key = self._key(user_id, "m")
        for _ in range(MAX_ROUNDS):
            with self._errors():
                raw = self.client.get(meta_key)
                if raw is None:
                    return UserHistory.empty()
                meta = record.Meta.unpack(raw)
                a = record.read_from(meta, self.cap, since, tag)
                pipe = self.client.pipeline(transaction=True)  # the blocks and the meta, read at one instant
                count = self._read_blocks(pipe, user_id, a, meta.end)
                pipe.get(meta_key)
                got = pipe.execute()
            if got[count] == raw:
                return record.to_history(record.window_rows(meta, got[:count], a, meta.end), a, meta.tag)
        raise UserlensError(f"{self.url}: user {user_id!r} changed under every one of {MAX_ROUNDS} reads. Fix: "
                            "retry the request.")

    def raw_ids(self, user_id: str, numbers: Sequence[int]) -> list[str]:
        if not len(numbers):
            return []
        with self._errors():
            got = self.client.hmget(self._key(user_id, "r"), [str(int(n)) for n in numbers])
        return [v.decode() if v is not None else "" for v in got]

    def bulk_load(self, user_ids: Sequence[str], offsets: np.ndarray, item: np.ndarray, category: np.ndarray,
                  time: np.ndarray, behavior: np.ndarray) -> int:
        stored, chunk, size = 0, [], 0
        for seg in segments(user_ids, offsets, item, category, time, behavior, self.cap):
            chunk.append(seg)
            size += sum(len(v) for _, v in seg[1][1]) if seg[1] is not None else 0
            stored += seg[2]
            if size >= CHUNK_BYTES or len(chunk) >= 10_000:
                self._load_chunk(chunk)
                chunk, size = [], 0
        if chunk:
            self._load_chunk(chunk)
        return stored

    def _load_chunk(self, chunk: list[tuple[str, tuple[record.Meta, list[tuple[int, bytes]]] | None, int, int, int]]
                    ) -> None:
        for _ in range(MAX_ROUNDS):
            with self._errors():
                heads = self.client.mget([self._key(c[0], "m") for c in chunk])
            plans = []
            for (user, built, n, dropped, unknown), head in zip(chunk, heads):
                old = record.Meta.unpack(head) if head else None
                ops: list[tuple[str, bytes, bytes | str, bytes | str]] = [
                    ("D", self._block_key(user, b), "", "") for b in (old.blocks() if old else ())]
                ops += [("D", self._key(user, "e"), "", ""), ("D", self._key(user, "r"), "", "")]
                if built is None:
                    ops.append(("D", self._key(user, "m"), "", ""))
                else:
                    ops += [("S", self._block_key(user, b), rows, "") for b, rows in built[1]]
                    ops.append(("S", self._key(user, "m"), built[0].pack(), ""))
                deltas = [(built is not None) - (old is not None), n - (old.n if old else 0), dropped, 0, unknown]
                plans.append((user, head or b"", ops, deltas))
            conflicts = self._run(plans, [0] * 5)
            chunk = [c for i, c in enumerate(chunk) if i in conflicts]
            if not chunk:
                return
        raise UserlensError(f"{self.url}: bulk_load kept conflicting with concurrent appenders. Fix: bulk-load "
                            "before the scorers start appending.")

    def snapshot(self, path: str | Path) -> Path:
        """All histories and counters, read by one Lua script (atomic), written to the file ``path`` atomically.

        File format (little-endian): ``b"ULRSNAP2"``; u32 length + JSON ``{"format", "namespace", "cap",
        "keys", "stats"}``; per key of the namespace: u32 length + the key after ``ns:{``, u64 length + its
        ``DUMP`` payload (Redis's own serialisation, any key type); then the
        16-byte BLAKE2b of everything before it. The script blocks the server while it copies the
        namespace (~1 s per GB); for very large stores prefer Redis's own RDB snapshots.
        """
        target = Path(path)
        if target.exists():
            raise InputError(f"{target}: exists. Fix: snapshot to a new path, or delete the old snapshot first.")
        with self._errors():
            stats_raw, flat = self._dump(keys=[self._stats_key], args=[self._pattern])
        stats = {k.decode(): int(v) for k, v in zip(stats_raw[::2], stats_raw[1::2])}
        meta = json.dumps({"format": 2, "namespace": self.namespace, "cap": self.cap, "keys": len(flat) // 2,
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
                        rest = key[len(self._prefix):]
                        put(struct.pack("<I", len(rest)) + rest + struct.pack("<Q", len(value)))
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
        pos, pairs, retag = 12 + meta_len, [], []
        while pos < len(body):
            (klen,) = struct.unpack_from("<I", body, pos)
            key = self._prefix + body[pos + 4:pos + 4 + klen]
            (vlen,) = struct.unpack_from("<Q", body, pos + 4 + klen)
            start = pos + 12 + klen
            pairs += [key, body[start:start + vlen]]
            if key.endswith(b"}:m"):  # new write tags: no scorer state survives a restore (same lengths included)
                retag += [key, record.new_tag().to_bytes(8, "little")]
            pos = start + vlen
        stats = [x for k, v in meta["stats"].items() for x in (k, v)]
        with self._errors():
            self._restore(keys=[self._stats_key], args=[self._pattern, len(stats) // 2, *stats, len(pairs) // 2,
                                                         *pairs, *retag])
        return len(retag) // 2

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
        out = {name: have.get(name, 0) for name in STAT_NAMES}
        out["bytes"] = record.META.size * out["users"] + record.ROW_BYTES * out["behaviors"]  # the windows' bytes
        return out

    def close(self) -> None:
        self.client.close()
