"""Serving fixtures: small prepared logs, a throwaway redis-server and Redis Cluster (AOF, fsync always), a fresh
store per test."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from userlens.data.prepare import prepare, sources_from_files
from userlens.data.prepared import PreparedData
from userlens.serving.store import (
    BehaviorStore,
    LMDBStore,
    RedisClusterStore,
    RedisStore,
)
from userlens.serving.store.local_redis import LocalRedis, LocalRedisCluster

NO_REDIS = "redis-server is not on PATH (CI installs it: `bash .ci/run`; locally: apt-get install redis-server)"
NO_REDIS_CLI = "redis-cli is not on PATH (it ships with redis-server: `bash .ci/run`; apt-get install redis-server)"

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


def _need_redis_cluster() -> None:
    _need_redis()
    if shutil.which("redis-cli") is None:
        pytest.skip(NO_REDIS_CLI)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    """3 primaries with a replica each (~2 s to start), shared by the session: tests use namespaces of their own
    and leave every node running (tests that stop nodes start their own with ``cluster_factory``)."""
    _need_redis_cluster()
    cluster = LocalRedisCluster(tmp_path_factory.mktemp("cluster"), primaries=3, replicas=1).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[..., LocalRedisCluster]]:
    """``cluster_factory(replicas=0)``: a cluster of one's own (3 primaries), stopped at teardown."""
    _need_redis_cluster()
    clusters: list[LocalRedisCluster] = []

    def make(replicas: int = 0) -> LocalRedisCluster:
        clusters.append(LocalRedisCluster(tmp_path / f"cluster{len(clusters)}", primaries=3, replicas=replicas)
                        .start())
        return clusters[-1]

    yield make
    for c in clusters:
        c.stop()


@pytest.fixture(params=["lmdb", pytest.param("redis", marks=pytest.mark.redis),
                        pytest.param("cluster", marks=pytest.mark.redis)])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_store(backend: str, request: pytest.FixtureRequest, tmp_path: Path
               ) -> Iterator[Callable[..., BehaviorStore]]:
    """``make_store(cap)`` opens the test's own store (LMDB: ``tmp_path/store``; Redis, Redis Cluster: a namespace
    of its own on the session's server / cluster); every call opens the same one (close an LMDB store before
    opening it again)."""
    opened: list[BehaviorStore] = []
    server = {"redis": "redis_server", "cluster": "redis_cluster"}.get(backend)
    location = request.getfixturevalue(server).url if server else str(tmp_path / "store")
    namespace = f"t{uuid.uuid4().hex[:12]}"

    def make(cap: int = 1000) -> BehaviorStore:
        if backend == "lmdb":
            store: BehaviorStore = LMDBStore(location, cap)
        elif backend == "redis":
            store = RedisStore(location, cap, namespace=namespace)
        else:
            store = RedisClusterStore(location, cap, namespace=namespace)
        opened.append(store)
        return store

    make.location = location  # type: ignore[attr-defined]
    make.namespace = namespace  # type: ignore[attr-defined]
    yield make
    for s in opened:
        s.close()
