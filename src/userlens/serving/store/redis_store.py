"""The shared behavior store: one Redis server that several scorers append to and read from.

Keys (``ns`` = the namespace, ``u`` = the user id) hold the log of :mod:`userlens.serving.store.record`:
``ns:{u}:m`` → the 40-byte meta, ``ns:{u}:b:N`` → block ``N``'s rows, ``ns:{u}:e`` → a hash of the
window's event hashes, ``ns:{u}:r`` → a hash sequence number → raw item id; ``ns:stats`` → the
counters (``users``, ``behaviors``, ``dropped_over_cap``, ``duplicates``, ``unknown_items``), ``ns:info``
→ what the store was loaded for. A Redis Cluster store (:mod:`~userlens.serving.store.redis_cluster`) is
this class with one rule changed: the counters live in one hash per slot, so that every script touches
keys of one slot only. An in-order append ``APPEND`` s its rows to the tail block, so the
AOF grows by the few commands of that append (~0.5 KB for one event at the cap), not by the history.

Durability: the server must run with ``appendonly yes`` and ``appendfsync always`` (checked when the
store opens): Redis then fsyncs the AOF before it replies to a write, so an acknowledged append
survives a crash of the server or the machine. Start one with
``redis-server --appendonly yes --appendfsync always --dir DIR``.

Replication: with ``replicas=N`` every write is followed, on the same connection, by ``WAIT N
wait_ms``; fewer acknowledgements raise :class:`~userlens.errors.UserlensError` (an HTTP 503): the
write is on the primary, but a failover now could lose it.

Concurrency: an append reads the users' metas and what its plan needs (pipelined), plans in
Python, then applies every user's plan with one Lua script per stats key (one call on one server)
that, per user, compares the stored meta (which holds the write tag and the end) with the one it
read and writes only when they are equal; the users whose meta changed in between are read and
planned again. Scripts run atomically, so
concurrent appenders never lose each other's events, and only the contended users are retried.
A read takes the meta and the blocks it names in one ``MULTI`` and checks the meta again.

Example:
    >>> with RedisStore("redis://localhost:6379/0", cap=100_000) as s:  # doctest: +SKIP
    ...     s.history("u1").time
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import random
import struct
import time as _time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
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
T = TypeVar("T")
MAX_ROUNDS = 64  # compare-and-set rounds before an append gives up on a user written continuously by others
CHUNK_BYTES = 64 << 20  # values per script call (bulk loads)

# KEYS[1] = the stats hash, then every key the writes touch. ARGV: number of users, then per user: index of its
# meta key, the meta it was planned on ("" = absent), number of ops, ops as (code, key index, a, b), its 5
# counter deltas. Codes: A = APPEND, S = SET, D = DEL, H = HSET, X = HDEL. A user whose meta changed writes
# nothing and counts nothing: it is returned, to be read and planned again.
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
  if tot[j] ~= 0 then redis.call('HINCRBY', KEYS[1], names[j], string.format('%.0f', tot[j])) end
end
return conflicts
"""

# One atomic read of the namespace on one server (DUMP: any key type): no write can interleave with a script.
# ARGV[1] = scan pattern, ARGV[2] = the stats hash ("" = none here); per-slot stats hashes (``}:s``, a cluster's)
# are returned as counters, not as keys.
_DUMP = """
local stats, out = {}, {}
if ARGV[2] ~= '' then stats = redis.call('HGETALL', ARGV[2]) end
local cursor = '0'
repeat
  local r = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
  cursor = r[1]
  for _, k in ipairs(r[2]) do
    if string.sub(k, -3) == '}:s' then
      for _, x in ipairs(redis.call('HGETALL', k)) do stats[#stats + 1] = x end
    else
      out[#out + 1] = k; out[#out + 1] = redis.call('DUMP', k)
    end
  end
until cursor == '0'
return {stats, out}
"""

# The namespace on one server replaced. ARGV[1] = scan pattern, ARGV[2] = the stats hash to delete and fill
# ("" = none here), ARGV[3] = number of stats field/value pairs, the pairs, then the number of (key, DUMP
# payload) pairs, the pairs, then (meta key, new tag) pairs.
_RESTORE = """
local old = {}
local cursor = '0'
repeat
  local r = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
  cursor = r[1]
  for _, k in ipairs(r[2]) do old[#old + 1] = k end
until cursor == '0'
for _, k in ipairs(old) do redis.call('DEL', k) end
local ns = tonumber(ARGV[3])
if ARGV[2] ~= '' then
  redis.call('DEL', ARGV[2])
  for i = 4, 3 + 2 * ns, 2 do redis.call('HSET', ARGV[2], ARGV[i], ARGV[i + 1]) end
end
local at = 4 + 2 * ns
local nk = tonumber(ARGV[at])
for i = at + 1, at + 2 * nk, 2 do redis.call('RESTORE', ARGV[i], 0, ARGV[i + 1]) end
for i = at + 1 + 2 * nk, #ARGV, 2 do redis.call('SETRANGE', ARGV[i], 24, ARGV[i + 1]) end
return nk
"""
# The counters hashes ARGV summed, on one server (a cluster has 16,384 of them: one call, not 16,384 reads).
_SUM = """
local tot, names, out = {}, {}, {}
for _, k in ipairs(ARGV) do
  local kv = redis.call('HGETALL', k)
  for i = 1, #kv, 2 do
    if tot[kv[i]] == nil then tot[kv[i]] = 0; names[#names + 1] = kv[i] end
    tot[kv[i]] = tot[kv[i]] + tonumber(kv[i + 1])
  end
end
for _, n in ipairs(names) do out[#out + 1] = n; out[#out + 1] = string.format('%.0f', tot[n]) end
return out
"""
_SHA = {src: hashlib.sha1(src.encode()).hexdigest() for src in (_APPLY, _DUMP, _RESTORE, _SUM)}
#: answers that mean "this call did not run here": the slot moved (cluster) or the server lost its scripts
_NOT_RUN = (redis.exceptions.AskError, redis.exceptions.TryAgainError, redis.exceptions.NoScriptError)

Op = tuple[str, bytes, "bytes | str", "bytes | str"]


@dataclass
class Write:
    """One user's compare-and-set: ``ops`` apply (and ``deltas`` count) only if its meta is still ``expected``."""

    user: str
    expected: bytes  # the meta it was planned on (b"" = absent)
    ops: list[Op]  # empty: nothing to write, only counters (duplicates, events dropped at once)
    deltas: list[int]  # users, behaviors, dropped_over_cap, duplicates, unknown_items


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
        replicas: after every write, ``WAIT`` until this many replicas have it (0: no wait).
        wait_ms: how long that wait may take before the write is reported as not acknowledged.
    """

    def __init__(self, url: str, cap: int, namespace: str = "userlens", require_fsync: bool = True,
                 replicas: int = 0, wait_ms: int = 1000) -> None:
        if not isinstance(cap, int) or cap < 1:
            raise InputError(f"cap={cap!r}: expected a positive integer (behaviors kept per user).")
        if not namespace or ":" in namespace:
            raise InputError(f"namespace={namespace!r}: expected a non-empty name without ':'.")
        self.url, self.cap, self.namespace = url, cap, namespace
        self.replicas, self.wait_ms = replicas, wait_ms
        self._prefix = f"{namespace}:{{".encode()
        self._stats_key = f"{namespace}:stats".encode()
        self._info_key = f"{namespace}:info"
        self._pattern = _glob_escape(namespace) + ":{*"  # every user's keys
        # writes that span several servers (a cluster); threads start only when used
        self._threads = ThreadPoolExecutor(max_workers=16, thread_name_prefix="userlens-redis")
        self.client = self._connect(url)
        with self._errors():
            self.client.ping()
            for name, node in self._primaries():
                if require_fsync:
                    self._check_fsync(name, node)
                for src in _SHA:
                    node.script_load(src)

    # ------------------------------------------------------------------ what a cluster store changes

    def _connect(self, url: str) -> redis.Redis:
        check_url(url)
        try:
            return redis.Redis.from_url(url, socket_connect_timeout=5)
        except ValueError as e:
            raise InputError(f"{url}: not a Redis URL ({e}). Fix: use redis://HOST:PORT[/db].") from None

    def _primaries(self) -> list[tuple[str, redis.Redis]]:
        """``(name, client)`` of every server that holds a part of the store."""
        return [(self.url, self.client)]

    def _node(self, key: bytes | str) -> tuple[str, redis.Redis]:
        """The server that holds ``key``."""
        return self.url, self.client

    def _stats_of(self, user: str) -> bytes:
        """The counters a write of ``user`` updates (in one script with the user's keys)."""
        return self._stats_key

    def _stats_by_node(self) -> list[tuple[str, redis.Redis, list[bytes]]]:
        """Every counters hash, by server (``(name, client, keys)``); :meth:`stats` sums them."""
        return [(self.url, self.client, [self._stats_key])]

    def _probes(self) -> list[tuple[str, redis.Redis, str]]:
        """A key per server for :meth:`check` to write."""
        return [(self.url, self.client, f"{self.namespace}:probe")]

    def _refresh(self) -> None:
        """Re-read where keys live (a cluster's slots moved); nothing to do on one server."""

    # ------------------------------------------------------------------ shared machinery

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
            raise UserlensError(f"{self.url}: Redis not reachable ({e}). Fix: start it (redis-server --appendonly "
                                "yes --appendfsync always) or correct the URL.") from None
        except (redis.exceptions.ClusterError, redis.exceptions.RedisClusterException) as e:
            raise UserlensError(f"{self.url}: the Redis Cluster cannot serve the request ({e}). Fix: check that "
                                "every slot has a live primary (redis-cli --cluster check HOST:PORT).") from None
        except redis.exceptions.ResponseError as e:
            raise UserlensError(f"{self.url}: Redis refused a command ({e}). Fix: check the server's "
                                "configuration (memory limit, ACL, read-only replica).") from None

    def _check_fsync(self, name: str, node: redis.Redis) -> None:
        try:
            cfg = node.config_get("append*")
        except redis.exceptions.ResponseError:
            raise UserlensError(f"{name}: cannot read the server's CONFIG to check that appends are durable. "
                                "Fix: allow CONFIG GET, or pass require_fsync=False if the server runs with "
                                "appendonly yes and appendfsync always.") from None
        if cfg.get("appendonly") != "yes" or cfg.get("appendfsync") != "always":
            raise UserlensError(f"{name}: appendonly={cfg.get('appendonly')}, appendfsync="
                                f"{cfg.get('appendfsync')}: acknowledged appends would not be durable. Fix: run "
                                "redis-server --appendonly yes --appendfsync always (or CONFIG SET both).")

    def _acked(self, name: str, node: redis.Redis, commands: list[tuple], wait: bool = True) -> list:
        """Run ``commands`` on one connection of ``node`` (answers or exceptions, in order), then, with ``replicas``,
        ``WAIT`` on that same connection: it counts the replicas that have this connection's writes."""
        pipe = node.pipeline(transaction=False)
        for c in commands:
            pipe.execute_command(*c)
        wait = wait and self.replicas > 0
        if wait:
            pipe.execute_command("WAIT", self.replicas, self.wait_ms)
        got = pipe.execute(raise_on_error=False)
        if wait:
            acked = got.pop()
            if isinstance(acked, Exception):
                raise acked
            if acked < self.replicas:
                raise UserlensError(f"{self.url}: the write is on the primary {name} (AOF fsynced) but only {acked} "
                                    f"of replicas={self.replicas} acknowledged it within wait_ms={self.wait_ms}: a "
                                    "failover now could lose it. Fix: bring the primary's replicas back (redis-cli "
                                    "--cluster check), then retry (appends with event ids are idempotent); or lower "
                                    "replicas=.")
        return got

    def _scripted(self, name: str, node: redis.Redis, src: str, calls: list[list], wait: bool = True) -> list:
        """``EVALSHA`` of ``src`` per call (``numkeys, keys…, args…``) via :meth:`_acked`; a server that lost its
        scripts (a restart) is given them again and runs the calls that had failed."""
        got = self._acked(name, node, [("EVALSHA", _SHA[src], *c) for c in calls], wait)
        missing = [i for i, r in enumerate(got) if isinstance(r, redis.exceptions.NoScriptError)]
        if missing:
            node.script_load(src)
            for i, r in zip(missing, self._acked(name, node, [("EVALSHA", _SHA[src], *calls[i]) for i in missing],
                                                 wait)):
                got[i] = r
        return got

    def _key(self, user_id: str, part: str) -> bytes:
        """``ns:{user}:part``: every key of one user shares the prefix (and, for Redis Cluster, its hash slot)."""
        return self._prefix + user_id.encode() + b"}:" + part.encode()

    def _block_key(self, user_id: str, n: int) -> bytes:
        return self._key(user_id, f"b:{n}")

    def _run(self, writes: list[Write]) -> set[int]:
        """Apply ``writes``, one script call per stats key, pipelined per server; the indices to read and plan again
        (their meta had changed, or the call did not run there: a moved slot)."""
        retry: set[int] = set()
        with self._errors():
            by_stats: dict[bytes, list[int]] = {}
            for i, w in enumerate(writes):
                by_stats.setdefault(self._stats_of(w.user), []).append(i)
            by_node: dict[str, tuple[redis.Redis, list[list[int]], list[list]]] = {}
            for stats_key, idx in by_stats.items():
                name, node = self._node(stats_key)
                _, groups, calls = by_node.setdefault(name, (node, [], []))
                groups.append(idx)
                calls.append(self._apply_args(stats_key, [writes[i] for i in idx]))
            answers = self._each_node({name: functools.partial(self._scripted, name, node, _APPLY, calls)
                                       for name, (node, _, calls) in by_node.items()})
            for name, (_, groups, _) in by_node.items():
                for idx, got in zip(groups, answers[name]):
                    if isinstance(got, _NOT_RUN):
                        retry.update(idx)
                    elif isinstance(got, Exception):
                        raise got
                    else:
                        retry.update(idx[int(j) - 1] for j in got)
            if any(isinstance(got, _NOT_RUN) for a in answers.values() for got in a):
                self._refresh()
        return retry

    def _each_node(self, work: dict[str, Callable[[], T]]) -> dict[str, T]:
        """``work``'s calls, one per server, at once: each server fsyncs (and waits for its replicas) in parallel."""
        if len(work) == 1:
            return {name: call() for name, call in work.items()}
        futures = {name: self._threads.submit(call) for name, call in work.items()}
        return {name: f.result() for name, f in futures.items()}

    def _apply_args(self, stats_key: bytes, writes: list[Write]) -> list:
        """``numkeys, keys…, args…`` of one :data:`_APPLY` call."""
        keys: dict[bytes, int] = {stats_key: 1}

        def index(key: bytes) -> int:
            return keys.setdefault(key, len(keys) + 1)

        args: list[bytes | str | int] = [len(writes)]
        for w in writes:
            args += [index(self._key(w.user, "m")), w.expected, len(w.ops)]
            for code, key, a, b in w.ops:
                args += [code, index(key), a, b]
            args += w.deltas
        return [len(keys), *keys, *args]

    def _ops(self, user: str, plan: record.Plan) -> list[Op]:
        assert plan.meta is not None
        ids, raw = self._key(user, "e"), self._key(user, "r")
        ops: list[Op] = []
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

    # ------------------------------------------------------------------ the store

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
            writes, order = [], []
            for user in pending:
                plan, meta = record.plan_append(stored[user], groups[user], self.cap), stored[user].meta
                if plan.meta is None:  # only duplicates / events dropped at once: counters only
                    writes.append(Write(user, raw_meta[user], [], [0, 0, plan.dropped, plan.duplicates, plan.unknown]))
                else:
                    deltas = [int(meta is None), plan.n_after - plan.n_before, plan.dropped, plan.duplicates,
                              plan.unknown]
                    writes.append(Write(user, raw_meta[user], self._ops(user, plan), deltas))
                order.append((user, plan, meta))
            retry = self._run(writes)
            pending = []
            for i, (user, plan, meta) in enumerate(order):
                if i in retry:
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
                pipe = self.client.pipeline(transaction=False)
                for c in chunk:
                    pipe.get(self._key(c[0], "m"))
                heads = pipe.execute()
            writes = []
            for (user, built, n, dropped, unknown), head in zip(chunk, heads):
                old = record.Meta.unpack(head) if head else None
                ops: list[Op] = [("D", self._block_key(user, b), "", "") for b in (old.blocks() if old else ())]
                ops += [("D", self._key(user, "e"), "", ""), ("D", self._key(user, "r"), "", "")]
                if built is None:
                    ops.append(("D", self._key(user, "m"), "", ""))
                else:
                    ops += [("S", self._block_key(user, b), rows, "") for b, rows in built[1]]
                    ops.append(("S", self._key(user, "m"), built[0].pack(), ""))
                deltas = [(built is not None) - (old is not None), n - (old.n if old else 0), dropped, 0, unknown]
                writes.append(Write(user, head or b"", ops, deltas))
            retry = self._run(writes)
            chunk = [c for i, c in enumerate(chunk) if i in retry]
            if not chunk:
                return
        raise UserlensError(f"{self.url}: bulk_load kept conflicting with concurrent appenders. Fix: bulk-load "
                            "before the scorers start appending.")

    def snapshot(self, path: str | Path) -> Path:
        """All histories and counters, read by one Lua script per server (atomic there), written to the file
        ``path`` atomically.

        File format (little-endian): ``b"ULRSNAP2"``; u32 length + JSON ``{"format", "namespace", "cap",
        "keys", "stats"}``; per key of the namespace: u32 length + the key after ``ns:{``, u64 length + its
        ``DUMP`` payload (Redis's own serialisation, any key type); then the 16-byte BLAKE2b of everything
        before it. The counters are stored summed, so a snapshot of one server restores into a cluster and
        back. The script blocks its server while it copies the namespace (~1 s per GB); for very large stores
        prefer Redis's own RDB snapshots. On a cluster each server is read at its own instant: a user (one slot)
        is always whole, but for one instant of the whole store stop the appenders first.
        """
        target = Path(path)
        if target.exists():
            raise InputError(f"{target}: exists. Fix: snapshot to a new path, or delete the old snapshot first.")
        stats: dict[str, int] = {}
        flat: list[bytes] = []
        with self._errors():
            for name, node in self._primaries():
                (got,) = self._scripted(name, node, _DUMP, [[0, self._pattern, self._stats_key]], wait=False)
                if isinstance(got, Exception):
                    raise got
                for k, v in zip(got[0][::2], got[0][1::2]):
                    stats[k.decode()] = stats.get(k.decode(), 0) + int(v)
                flat += got[1]
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
        """Replace the namespace by a :meth:`snapshot` file, one Lua script per server (atomic there; on a cluster
        a failed restore leaves some servers restored: run it again)."""
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
        with self._errors():  # on a cluster: where each key lives
            parts = {name: (node, [], []) for name, node in self._primaries()}  # every server: its old keys go
            pos, users = 12 + meta_len, 0
            while pos < len(body):
                (klen,) = struct.unpack_from("<I", body, pos)
                key = self._prefix + body[pos + 4:pos + 4 + klen]
                (vlen,) = struct.unpack_from("<Q", body, pos + 4 + klen)
                start = pos + 12 + klen
                _, pairs, retag = parts[self._node(key)[0]]
                pairs += [key, body[start:start + vlen]]
                if key.endswith(b"}:m"):  # new write tags: no scorer state survives a restore (same lengths included)
                    retag += [key, record.new_tag().to_bytes(8, "little")]
                    users += 1
                pos = start + vlen
            totals_at, _, (totals, *_) = self._stats_by_node()[0]  # the summed counters go to one hash
            stats = [x for k, v in meta["stats"].items() for x in (k, v)]
            for name, (node, pairs, retag) in parts.items():
                here = name == totals_at
                args = [self._pattern, totals if here else b"", *([len(stats) // 2, *stats] if here else [0]),
                        len(pairs) // 2, *pairs, *retag]
                (got,) = self._scripted(name, node, _RESTORE, [[0, *args]])
                if isinstance(got, Exception):
                    raise got
        return users

    def read_info(self) -> dict | None:
        with self._errors():
            raw = self.client.get(self._info_key)
        return None if raw is None else json.loads(raw)

    def write_info(self, info: dict) -> None:
        self._write_each([(*self._node(self._info_key), self._info_key)], json.dumps(info, sort_keys=True))

    def check(self) -> None:
        self._write_each(self._probes(), str(_time.time_ns()))
        self.read_info()

    def _write_each(self, where: list[tuple[str, redis.Redis, str]], value: str) -> None:
        """``SET key value`` on each ``(name, server, key)``, acknowledged as appends are."""
        with self._errors():
            for name, node, key in where:
                (got,) = self._acked(name, node, [("SET", key, value)])
                if isinstance(got, Exception):
                    raise got

    def stats(self) -> dict[str, int]:
        have: dict[str, int] = {}
        with self._errors():
            for name, node, keys in self._stats_by_node():
                (got,) = self._scripted(name, node, _SUM, [[0, *keys]], wait=False)
                if isinstance(got, Exception):
                    raise got
                for k, v in zip(got[::2], got[1::2]):
                    have[k.decode()] = have.get(k.decode(), 0) + int(v)
        out = {name: have.get(name, 0) for name in STAT_NAMES}
        out["bytes"] = record.META.size * out["users"] + record.ROW_BYTES * out["behaviors"]  # the windows' bytes
        return out

    def close(self) -> None:
        self._threads.shutdown()
        self.client.close()
