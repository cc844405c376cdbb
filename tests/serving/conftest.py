"""Behavior-store fixtures: a throwaway redis-server (AOF, fsync always) and a fresh store per test."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from userlens.serving.store import BehaviorStore, LMDBStore, RedisStore

NO_REDIS = "redis-server is not on PATH (CI installs it: `bash .ci/run`; locally: apt-get install redis-server)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """``redis-server`` on a free loopback port, AOF fsynced on every write, data in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.dir, self.port = directory, free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within 10 s")

    def kill(self) -> None:
        """SIGKILL: no shutdown save, only what the AOF already holds survives."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


def _need_redis() -> None:
    if shutil.which("redis-server") is None:
        pytest.skip(NO_REDIS)


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[[], RedisServer]]:
    """Start servers of one's own (tests that kill the server); all stopped at teardown."""
    _need_redis()
    servers: list[RedisServer] = []

    def make() -> RedisServer:
        servers.append(RedisServer(tmp_path / f"redis{len(servers)}").start())
        return servers[-1]

    yield make
    for s in servers:
        s.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    _need_redis()
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(params=["lmdb", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_store(backend: str, request: pytest.FixtureRequest, tmp_path: Path
               ) -> Iterator[Callable[..., BehaviorStore]]:
    """``make_store(cap)`` opens the test's own store (LMDB: ``tmp_path/store``; Redis: a namespace of its own
    on the session's server); every call opens the same one (close an LMDB store before opening it again)."""
    opened: list[BehaviorStore] = []
    server = request.getfixturevalue("redis_server") if backend == "redis" else None
    namespace = f"t{uuid.uuid4().hex[:12]}"

    def make(cap: int = 1000) -> BehaviorStore:
        if backend == "lmdb":
            store: BehaviorStore = LMDBStore(tmp_path / "store", cap)
        else:
            store = RedisStore(server.url, cap, namespace=namespace)
        opened.append(store)
        return store

    make.location = str(tmp_path / "store") if backend == "lmdb" else server.url  # type: ignore[attr-defined]
    make.namespace = namespace  # type: ignore[attr-defined]
    yield make
    for s in opened:
        s.close()
