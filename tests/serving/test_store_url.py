"""Store URLs are read strictly: what would open another directory or database than written is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from userlens.errors import InputError
from userlens.serving.store import LMDBStore, open_store


def test_lmdb_relative_and_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with open_store("lmdb://runs/store", cap=5) as store:
        assert isinstance(store, LMDBStore) and (tmp_path / "runs/store/data.mdb").is_file()
    with open_store(f"lmdb://{tmp_path}/abs", cap=5):  # lmdb:// + /tmp/... = lmdb:///tmp/...
        assert (tmp_path / "abs/data.mdb").is_file()


@pytest.mark.parametrize("url, match", [
    ("lmdb:relative", "an LMDB URL starts with lmdb://"),  # once: a folder "lative"
    ("lmdb:/abs/path", "an LMDB URL starts with lmdb://"),
    ("lmdb://", "no path"),
    ("lmdb://store?map_size=1", "no query string or fragment"),
    ("lmdb://store#x", "no query string or fragment"),
    ("lmdb://host:5000/store", "'host:5000' reads as a network location"),
    ("lmdb://user@host/store", "reads as a network location"),
    ("lmdb://~/store", "'~' is not expanded"),
    ("redis://localhost:6379/x", "the path '/x' is not a database number"),  # redis-py: silently db 0
    ("redis://localhost:6379/2/3", "the path '/2/3' is not a database number"),  # redis-py: db 23
    ("redis://localhost:6379/2?db=3", r"give the database once, as the path \(no \?db="),
    ("redis://localhost:6379?db=3", "give the database once"),
    ("redis-cluster://h:7000/2", "a Redis Cluster has database 0 only"),
    ("redis-cluster://h:7000#x", "a Redis Cluster has database 0 only"),
    ("redis-cluster://h:7000?replica=1", r"unknown parameter 'replica' \(known: replicas, wait_ms\)"),
    ("redis-cluster://h:7000?replicas=one", "replicas='one': expected one non-negative integer"),
    ("redis-cluster://h:7000?replicas=-1", "replicas='-1': expected one non-negative integer"),
    ("redis-cluster://h:7000?replicas=1&replicas=2", "replicas='1&2': expected one non-negative integer"),
    ("redis-cluster://h:7000?replicas=", "replicas='': expected one non-negative integer"),
    ("redis-cluster://h:7000?wait_ms=0", "wait_ms=0 would make WAIT block forever"),
    ("redis-cluster://h?replicas=1", "'h' is not HOST:PORT"),
    ("redis-cluster://h:7000,", "'' is not HOST:PORT"),
    ("redis-cluster://h:99999", "'h:99999' is not HOST:PORT"),
    ("redis-cluster://", "'' is not HOST:PORT"),
])
def test_ambiguous_store_urls_are_refused_with_the_fix(url: str, match: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=match) as e:
        open_store(url, cap=5)
    assert "Fix: " in str(e.value)
    assert not any(tmp_path.iterdir()), "nothing may be created for a refused URL"


def test_a_cluster_url_names_seeds_credentials_and_acknowledgement() -> None:
    from userlens.serving.store.redis_cluster import ClusterURL, parse_cluster_url

    got = parse_cluster_url("redis-cluster://app:p%40ss@10.0.0.1:7000,[::1]:7001?replicas=2&wait_ms=50")
    assert got == ClusterURL((("10.0.0.1", 7000), ("::1", 7001)), "app", "p@ss", replicas=2, wait_ms=50)
    assert parse_cluster_url("redis-cluster://h:1/") == ClusterURL((("h", 1),))


@pytest.mark.redis
def test_the_redis_db_in_the_path_is_the_one_written(redis_server) -> None:  # type: ignore[no-untyped-def]
    import redis

    from userlens.serving.store import Event

    base = redis_server.url.rsplit("/", 1)[0]
    with open_store(f"{base}/3", cap=5) as store:
        store.append([Event("db-test-user", "i", 1_600_000_000_000, item=2, category=2)])
    assert any(b"db-test-user" in k for k in redis.Redis.from_url(f"{base}/3").keys())
    assert not any(b"db-test-user" in k for k in redis.Redis.from_url(f"{base}/0").keys())
