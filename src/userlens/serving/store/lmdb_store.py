"""The embedded behavior store: one LMDB environment in one directory.

Layout: ``PATH/data.mdb`` + ``PATH/lock.mdb`` with named databases holding the log of
:mod:`userlens.serving.store.record`: ``users`` (user id, UTF-8 → its 40-byte meta), ``blocks``
(user id + NUL + block number, big-endian u64 → rows), ``ids`` (user id + NUL + event hash → empty),
``raw`` (user id + NUL + sequence number → raw item id) and ``meta`` (``format``, ``info`` and the
``stats`` counters, five little-endian i64). Keys of one user sort together, blocks in order. A
single-event append at the cap writes the meta, one block (at most 6.6 KB) and the ids it adds and
drops, not the whole history. A whole :meth:`LMDBStore.append` call is one write
transaction, committed with ``fdatasync`` (``sync=True``, ``metasync=True``) before it returns:
an acknowledged append survives ``kill -9`` and power loss. LMDB serialises write transactions
across processes and threads (a robust mutex in ``lock.mdb``), so several processes may append to
one directory; readers never block and see whole transactions.

Example:
    >>> with LMDBStore("store", cap=100_000) as s:  # doctest: +SKIP
    ...     s.append([Event("u1", "i9", 1_700_000_000_000, item=9, category=3, event_id="e1")])
    ...     s.history("u1").item
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lmdb
import numpy as np

from userlens.artifacts import DirLock, not_writable, refuse_file_parent
from userlens.errors import InputError, UserlensError
from userlens.serving.store import record
from userlens.serving.store.base import AppendResult, BehaviorStore, Event, UserHistory
from userlens.serving.store.csr import segments

FORMAT = b"userlens-history-2"
STATS = struct.Struct("<5q")  # users, behaviors, dropped_over_cap, duplicates, unknown_items
STAT_NAMES = ("users", "behaviors", "dropped_over_cap", "duplicates", "unknown_items")
DEFAULT_MAP_SIZE = 1 << 40  # 1 TiB of address space; the file grows only as data is written
BULK_TXN_BYTES = 256 << 20  # bulk loads commit every ~256 MiB, so dirty pages stay bounded in RAM


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class _Call:
    """One caller's append waiting in a group commit."""

    groups: dict[str, record.Batch]
    done: threading.Event = field(default_factory=threading.Event)
    result: AppendResult | None = None
    error: BaseException | None = None


class LMDBStore(BehaviorStore):
    """Histories in an LMDB directory; see the module docstring.

    Args:
        path: the store's directory (created when absent).
        cap: behaviors kept per user (the model package's ``long_len``).
        map_size: the most bytes the store may hold (address space, not disk): when it is full,
            appends fail with an error saying to reopen with a larger ``map_size``.
    """

    def __init__(self, path: str | Path, cap: int, map_size: int = DEFAULT_MAP_SIZE) -> None:
        if not isinstance(cap, int) or cap < 1:
            raise InputError(f"cap={cap!r}: expected a positive integer (behaviors kept per user).")
        self.path, self.cap, self.map_size = Path(path), cap, map_size
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"{self.path}: exists and is a file, expected an LMDB store directory. Fix: choose "
                             "another path.")
        if self.path.is_dir() and any(self.path.iterdir()) and not (self.path / "data.mdb").is_file():
            raise InputError(f"{self.path}: a non-empty directory that is not an LMDB store (no data.mdb). Fix: "
                             "choose an empty or new directory.")
        refuse_file_parent(self.path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except PermissionError as e:
            raise not_writable(self.path, e) from None
        try:
            self.env = lmdb.open(str(self.path), map_size=map_size, max_dbs=5, subdir=True, sync=True,
                                 metasync=True, readahead=False, max_readers=512)
            self._users = self.env.open_db(b"users")
            self._blocks = self.env.open_db(b"blocks")
            self._ids = self.env.open_db(b"ids")
            self._raw = self.env.open_db(b"raw")
            self._meta = self.env.open_db(b"meta")
            with self.env.begin(write=True) as txn:
                have = txn.get(b"format", db=self._meta)
                if have is None:
                    txn.put(b"format", FORMAT, db=self._meta)
                elif have != FORMAT:
                    raise InputError(f"{self.path}: a store of format {have!r}, this userlens reads {FORMAT!r}. "
                                     f"Fix: delete {self.path} and load it again (`userlens load-store DATA_DIR "
                                     f"--store lmdb://{self.path}`), or use the userlens that wrote it.")
        except lmdb.Error as e:
            raise UserlensError(f"{self.path}: cannot open the LMDB store ({e}). Fix: check the path and its "
                                "permissions.") from None
        self._max_key = self.env.max_key_size()
        self._queue: list[_Call] = []  # appends waiting for the next group commit
        self._queue_lock, self._write_lock = threading.Lock(), threading.Lock()

    def _key(self, user_id: str) -> bytes:
        key = user_id.encode()
        if len(key) > self._max_key:
            raise InputError(f"user_id {user_id[:40]!r}...: {len(key)} bytes, LMDB keys hold at most "
                             f"{self._max_key}. Fix: use shorter user ids (or a hash of them).")
        return key

    def _map_full(self) -> UserlensError:
        return UserlensError(f"{self.path}: the LMDB map is full (map_size={self.map_size} bytes); nothing of "
                             f"this call was written. Fix: reopen with a larger map_size, e.g. "
                             f"LMDBStore({str(self.path)!r}, cap={self.cap}, map_size={self.map_size * 4}).")

    def _counters(self, txn: lmdb.Transaction) -> list[int]:
        raw = txn.get(b"stats", db=self._meta)
        return list(STATS.unpack(raw)) if raw is not None else [0] * 5

    def append(self, events: Sequence[Event]) -> AppendResult:
        """Group commit: concurrent calls (threads of one process) share one transaction and one fsync.

        A caller queues its validated events; whoever then holds the write lock writes every queued
        call in one transaction (each call's plans applied in turn, so calls for one user see each
        other) and acknowledges them all on commit. Single-event appends from many request threads thus
        cost one fsync per group instead of one each.
        """
        call = _Call(record.group(events))  # validation errors stay the caller's own
        if not call.groups:
            return AppendResult()
        for user in call.groups:
            self._key(user)  # a user id too long for a key: the caller's own error, before queueing
        with self._queue_lock:
            self._queue.append(call)
        with self._write_lock:
            if not call.done.is_set():
                with self._queue_lock:
                    calls, self._queue = self._queue, []
                self._write(calls)
        if call.error is not None:
            raise call.error
        assert call.result is not None
        return call.result

    def _write(self, calls: list[_Call]) -> None:
        """Every call of the group in one write transaction (commit = fdatasync); each gets its result or error."""
        try:
            with self.env.begin(write=True, db=self._users) as txn:
                c = self._counters(txn)
                results = [self._append_in(txn, call.groups, c) for call in calls]
                txn.put(b"stats", STATS.pack(*c), db=self._meta)
            for call, res in zip(calls, results):
                call.result = res
        except lmdb.MapFullError:
            for call in calls:
                call.error = self._map_full()
        except BaseException as e:  # noqa: BLE001 - every waiter learns the group failed, then the writer raises
            for call in calls:
                call.error = e
        finally:
            for call in calls:
                call.done.set()

    def _append_in(self, txn: lmdb.Transaction, groups: dict[str, record.Batch], c: list[int]) -> AppendResult:
        res = AppendResult(users=len(groups))
        for user, batch in groups.items():
            key = self._key(user)
            meta = self._meta_of(txn, key)
            known = np.array([bool(h) and meta is not None and
                              txn.get(key + b"\0" + record.hash_key(h), db=self._ids) is not None
                              for h in batch.rows["hash"].tolist()], dtype=bool)
            stored = record.Stored(meta, known)
            need = record.needs(meta, batch, known, self.cap)
            if need is not None:
                a, b, with_raw = need
                stored.rows, stored.rows_start = self._rows(txn, key, meta, a, b), a
                if with_raw:
                    stored.raws = self._raws(txn, key, a, b)
            plan = record.plan_append(stored, batch, self.cap)
            self._apply(txn, key, plan)
            c[0] += meta is None and plan.meta is not None
            c[1] += plan.n_after - plan.n_before
            c[2] += plan.dropped
            c[3] += plan.duplicates
            c[4] += plan.unknown
            res.appended += plan.appended
            res.duplicates += plan.duplicates
            res.dropped_over_cap += plan.dropped
            res.unknown_items += plan.unknown
            res.versions[user] = plan.version if plan.meta is not None else (meta.end if meta else 0)
        return res

    @staticmethod
    def _sub(key: bytes, number: int) -> bytes:
        return key + b"\0" + number.to_bytes(8, "big")

    def _meta_of(self, txn: lmdb.Transaction, key: bytes) -> record.Meta | None:
        raw = txn.get(key, db=self._users)
        return None if raw is None else record.Meta.unpack(raw)

    def _rows(self, txn: lmdb.Transaction, key: bytes, meta: record.Meta, a: int, b: int) -> np.ndarray:
        blocks = [txn.get(self._sub(key, n), db=self._blocks) for n in range(a // record.BLOCK,
                                                                           -(-b // record.BLOCK))] if b > a else []
        return record.window_rows(meta, blocks, a, b)

    def _raws(self, txn: lmdb.Transaction, key: bytes, a: int, b: int) -> dict[int, str]:
        out, cur, lo = {}, txn.cursor(db=self._raw), self._sub(key, a)
        if cur.set_range(lo):
            for k, v in cur:
                if not k.startswith(key + b"\0") or int.from_bytes(k[-8:], "big") >= b:
                    break
                out[int.from_bytes(k[-8:], "big")] = bytes(v).decode()
        return out

    def _apply(self, txn: lmdb.Transaction, key: bytes, plan: record.Plan) -> None:
        """Write ``plan`` (deletions first: a rewrite deletes raw ids it puts back renumbered)."""
        if plan.meta is None:
            return
        for n in plan.deletes:
            txn.delete(self._sub(key, n), db=self._blocks)
        for n, value in plan.puts.items():
            txn.put(self._sub(key, n), value, db=self._blocks)
        for n, rows in plan.appends:
            k = self._sub(key, n)
            old = txn.get(k, db=self._blocks)
            txn.put(k, old + rows if old else rows, db=self._blocks)
        for h in plan.ids_del:
            txn.delete(key + b"\0" + h, db=self._ids)
        for h in plan.ids_add:
            txn.put(key + b"\0" + h, b"", db=self._ids)
        for n in plan.raw_del:
            txn.delete(self._sub(key, n), db=self._raw)
        for n, raw in plan.raw_put.items():
            txn.put(self._sub(key, n), raw.encode(), db=self._raw)
        txn.put(key, plan.meta.pack(), db=self._users)

    def _drop_user(self, txn: lmdb.Transaction, key: bytes) -> None:
        """Delete every key of one user (bulk loads replace histories)."""
        txn.delete(key, db=self._users)
        for db in (self._blocks, self._ids, self._raw):
            cur = txn.cursor(db=db)
            if cur.set_range(key + b"\0"):
                while cur.key().startswith(key + b"\0") and cur.delete():
                    pass

    def history(self, user_id: str, since: int | None = None, tag: int | None = None) -> UserHistory:
        key = self._key(user_id)
        with self.env.begin(db=self._users) as txn:
            meta = self._meta_of(txn, key)
            if meta is None:
                return UserHistory.empty()
            a = record.read_from(meta, self.cap, since, tag)
            return record.to_history(self._rows(txn, key, meta, a, meta.end), a, meta.tag)

    def raw_ids(self, user_id: str, numbers: Sequence[int]) -> list[str]:
        key = self._key(user_id)
        with self.env.begin(db=self._raw) as txn:
            got = [txn.get(self._sub(key, int(n))) for n in numbers]
        return [bytes(v).decode() if v is not None else "" for v in got]

    def bulk_load(self, user_ids: Sequence[str], offsets: np.ndarray, item: np.ndarray, category: np.ndarray,
                  time: np.ndarray, behavior: np.ndarray) -> int:
        stored = 0
        txn = None
        try:
            pending = 0
            for user, built, n, dropped, unknown in segments(user_ids, offsets, item, category, time, behavior,
                                                             self.cap):
                if txn is None:
                    txn = self.env.begin(write=True, db=self._users)
                    c = self._counters(txn)
                key = self._key(user)
                old = self._meta_of(txn, key)
                self._drop_user(txn, key)
                if built is not None:
                    meta, blocks = built
                    for b, rows in blocks:
                        txn.put(self._sub(key, b), rows, db=self._blocks)
                        pending += len(rows)
                    txn.put(key, meta.pack(), db=self._users)
                c[0] += (built is not None) - (old is not None)
                c[1] += n - (old.n if old is not None else 0)
                c[2] += dropped
                c[4] += unknown
                stored += n
                if pending >= BULK_TXN_BYTES:
                    txn.put(b"stats", STATS.pack(*c), db=self._meta)
                    txn.commit()
                    txn, pending = None, 0
            if txn is not None:
                txn.put(b"stats", STATS.pack(*c), db=self._meta)
                txn.commit()
                txn = None
        except lmdb.MapFullError:
            raise self._map_full() from None
        finally:
            if txn is not None:
                txn.abort()
        return stored

    def snapshot(self, path: str | Path) -> Path:
        """A compacted copy of the environment (``env.copy``, one read transaction) as the directory ``path``."""
        target = Path(path)
        if target.exists():
            raise InputError(f"{target}: exists. Fix: snapshot to a new path, or delete the old snapshot first.")
        with DirLock(target):
            tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            try:
                self.env.copy(str(tmp), compact=True)
                with open(tmp / "data.mdb", "rb+") as fh:
                    os.fsync(fh.fileno())
                _fsync_dir(tmp)
                os.rename(tmp, target)
                _fsync_dir(target.parent)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return target

    def restore(self, path: str | Path) -> int:
        """Replace every history and counter by those of an :meth:`snapshot` directory, in one transaction."""
        src_path = Path(path)
        if not (src_path / "data.mdb").is_file():
            raise InputError(f"{src_path}: not an LMDB snapshot (no data.mdb). Fix: pass a directory written by "
                             "LMDBStore.snapshot.")
        src = lmdb.open(str(src_path), readonly=True, lock=False, max_dbs=5, subdir=True)
        names = (b"users", b"blocks", b"ids", b"raw")
        try:
            try:
                s_dbs = [src.open_db(name, create=False) for name in names]
                s_meta = src.open_db(b"meta", create=False)
            except lmdb.NotFoundError:
                raise InputError(f"{src_path}: an LMDB environment but not a userlens store snapshot of this "
                                 "version. Fix: pass a directory written by LMDBStore.snapshot.") from None
            with src.begin() as stxn, self.env.begin(write=True, db=self._users) as txn:
                if stxn.get(b"format", db=s_meta) != FORMAT:
                    raise InputError(f"{src_path}: snapshot format {stxn.get(b'format', db=s_meta)!r}, expected "
                                     f"{FORMAT!r}. Fix: restore it with the userlens that wrote it.")
                for db, s_db in zip((self._users, self._blocks, self._ids, self._raw), s_dbs):
                    txn.drop(db, delete=False)
                    txn.cursor(db=db).putmulti(stxn.cursor(db=s_db).iternext(), append=True)
                # new write tags: a scorer's state for a user cannot outlive the restore (same lengths included)
                retag = [(k, record.Meta.unpack(v)) for k, v in txn.cursor(db=self._users).iternext()]
                for k, m in retag:
                    txn.put(k, record.Meta(m.base, m.end, record.new_tag(), m.last).pack(), db=self._users)
                added = len(retag)
                txn.put(b"stats", stxn.get(b"stats", db=s_meta) or STATS.pack(0, 0, 0, 0, 0), db=self._meta)
        except lmdb.MapFullError:
            raise self._map_full() from None
        finally:
            src.close()
        return int(added)

    def read_info(self) -> dict | None:
        with self.env.begin() as txn:
            raw = txn.get(b"info", db=self._meta)
        return None if raw is None else json.loads(raw)

    def write_info(self, info: dict) -> None:
        try:
            with self.env.begin(write=True) as txn:
                txn.put(b"info", json.dumps(info, sort_keys=True).encode(), db=self._meta)
        except lmdb.MapFullError:
            raise self._map_full() from None

    def check(self) -> None:
        try:
            with self.env.begin(write=True) as txn:
                txn.get(b"format", db=self._meta)
                txn.put(b"probe", struct.pack("<q", time.time_ns()), db=self._meta)
        except lmdb.Error as e:
            raise UserlensError(f"{self.path}: the LMDB store cannot be read or written ({e}). Fix: check the "
                                "disk (space, permissions) and the map size.") from None

    def stats(self) -> dict[str, int]:
        with self.env.begin() as txn:
            c = self._counters(txn)
        out = dict(zip(STAT_NAMES, c))
        out["bytes"] = os.stat(self.path / "data.mdb").st_blocks * 512  # on disk (the file is sparse)
        return out

    def close(self) -> None:
        self.env.close()
