"""Serving fixtures: small prepared logs, a throwaway redis-server (AOF, fsync always), a fresh store per test."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from userlens.data.prepare import prepare, sources_from_files
from userlens.data.prepared import PreparedData
from userlens.serving.store import BehaviorStore, LMDBStore, RedisStore
from userlens.serving.store.local_redis import LocalRedis

NO_REDIS = "redis-server is not on PATH (CI installs it: `bash .ci/run`; locally: apt-get install redis-server)"

RedisServer = LocalRedis  # the fixtures' name for it


@pytest.fixture(scope="session")
def make_prepared(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., PreparedData]:
    """``make_prepared(seed=…, n_users=…, …)``: a generated lifelong log (behaviors, impressions, items), prepared."""
    from userlens.synthetic import lifelong_interest_log

    def make(seed: int, n_users: int, n_items: int, n_categories: int, behaviors_per_user: int, recent: int,
             impressions_per_user: int) -> PreparedData:
        d = tmp_path_factory.mktemp("prepared")
        p = lifelong_interest_log(n_users=n_users, n_items=n_items, n_categories=n_categories,
                                  behaviors_per_user=behaviors_per_user, recent=recent,
                                  impressions_per_user=impressions_per_user, seed=seed).write(d / "raw")
        prepare(sources_from_files(p["behaviors"], p["impressions"], p["items"]), d / "data", log=lambda s: None)
        return PreparedData(d / "data")

    return make


def train_package(data: PreparedData, model: str, out: Path, **config: object) -> Path:
    """A package of ``model`` trained one epoch on ``data`` (``config`` overrides), exported to ``out/pkg``."""
    from userlens.serving.package import export_package
    from userlens.training.config import resolve_config
    from userlens.training.trainer import fit

    fit(data, resolve_config(model, {"epochs": 1, "compile": False, **config}), out / "run", show_progress=False,
        log=lambda s: None)
    export_package(out / "run", out / "pkg")
    return out / "pkg"


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
