"""What the Redis Cluster store adds to the store contract (run on every backend by ``test_store.py``): one user
in one hash slot, users spread over the primaries, fsync checked on every primary, ``WAIT``-acknowledged writes."""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest
from redis.crc import key_slot

from userlens.errors import InputError, UserlensError
from userlens.serving.store import UNKNOWN, Event, RedisClusterStore, open_store
from userlens.serving.store.local_redis import LocalRedis, LocalRedisCluster

pytestmark = pytest.mark.redis


def _store(cluster: LocalRedisCluster, query: str = "", cap: int = 10) -> RedisClusterStore:
    return RedisClusterStore(cluster.url + query, cap, namespace=f"c{uuid.uuid4().hex[:12]}")


def _events(users: list[str], start: int = 0) -> list[Event]:
    """Per user an unknown item (a raw-id key) and a known one, with event ids (an ids key)."""
    return [e for u in users for e in (Event(u, f"raw-{u}", 1000 + start, item=UNKNOWN, category=UNKNOWN,
                                             event_id=f"{u}-{start}"),
                                       Event(u, "x", 1001 + start, item=7, category=2, event_id=f"{u}-{start + 1}"))]


def test_a_users_keys_share_one_slot_and_users_spread_over_the_primaries(redis_cluster: LocalRedisCluster) -> None:
    users = [f"user-{k}" for k in range(30)] + ["a}b", "{x}"]  # braces inside an id: still one slot
    with _store(redis_cluster) as store:
        store.append(_events(users))
        keys = list(store.client.scan_iter(match=f"{store.namespace}:*"))
        for u in users:
            slots = {key_slot(k) for k in keys if k.startswith(store._key(u, ""))}
            assert slots == {key_slot(store._stats_of(u))}, u  # m, b:0, e, r and the slot's counters
            assert len(store.history(u)) == 2 and store.raw_ids(u, [store.history(u).start]) == [f"raw-{u}"]
        assert len({store._node(k)[0] for k in keys}) == 3  # every primary holds some of the users
        assert store.stats()["users"] == len(users)
        with pytest.raises(InputError, match=r"starts with '\}'.*Fix: map such ids"):
            store.append([Event("}x", "i", 1, item=2, category=2)])  # ns:{}x}:m: an empty hash tag


def test_every_primary_must_fsync_every_write(redis_cluster: LocalRedisCluster) -> None:
    primary = next(n for n in redis_cluster.nodes if redis_cluster.roles()[n.port] == "primary")
    redis_cluster.cli(primary, "config", "set", "appendfsync", "everysec")
    try:
        with pytest.raises(UserlensError, match=rf"127.0.0.1:{primary.port}: appendonly=yes, appendfsync=everysec: "
                                                "acknowledged appends would not be durable"):
            _store(redis_cluster)
    finally:
        redis_cluster.cli(primary, "config", "set", "appendfsync", "always")


def _replica_of(cluster: LocalRedisCluster) -> tuple[LocalRedis, int]:
    """A replica and its primary's port."""
    replica = next(n for n in cluster.nodes if cluster.roles()[n.port] == "replica")
    info = dict(line.split(":", 1) for line in cluster.cli(replica, "info", "replication").split() if ":" in line)
    return replica, int(info["master_port"])


def test_replicas_acknowledge_each_write_and_a_missing_replica_fails_it_clearly(
        redis_cluster: LocalRedisCluster) -> None:
    store = _store(redis_cluster, "?replicas=1&wait_ms=300")
    users = [f"r-{k}" for k in range(12)]
    assert store.append(_events(users)).appended == 24
    store.check()
    replica, port = _replica_of(redis_cluster)
    orphan = next(u for u in users if store._node(store._key(u, "m"))[0] == f"127.0.0.1:{port}")
    other = next(u for u in users if store._node(store._key(u, "m"))[0] != f"127.0.0.1:{port}")
    replica.stop()
    try:
        t0 = time.monotonic()
        with pytest.raises(UserlensError, match=rf"on the primary 127.0.0.1:{port} \(AOF fsynced\) but only 0 of "
                                                r"replicas=1 acknowledged it within wait_ms=300.*Fix: bring the "
                                                r"primary's replicas back"):
            store.append(_events([orphan], start=10))
        assert 0.25 < time.monotonic() - t0 < 3  # WAIT's timeout, not a hang
        assert store.append(_events([other], start=10)).appended == 2  # the other primaries keep acknowledging
        with pytest.raises(UserlensError, match="only 0 of replicas=1"):
            store.check()  # /healthz says so (a 503)
    finally:
        replica.start()
        redis_cluster.wait_ready()
    retry = store.append(_events([orphan], start=10))  # not acknowledged, yet on the primary: ids make it a no-op
    assert (retry.appended, retry.duplicates) == (0, 2) and len(store.history(orphan)) == 4
    store.close()


def test_a_cluster_that_answers_nowhere_is_one_clear_line() -> None:
    from userlens.serving.store.local_redis import free_port

    url = f"redis-cluster://127.0.0.1:{free_port()}"
    with pytest.raises(UserlensError, match=r"Redis Cluster not reachable .*Fix: start it"):
        open_store(url, cap=5)


def test_the_cluster_scripts_survive_a_flushed_script_cache(redis_cluster: LocalRedisCluster) -> None:
    """A restarted server has no scripts: the store loads them again instead of failing the write."""
    with _store(redis_cluster) as store:
        for n in redis_cluster.nodes:
            subprocess.run(["redis-cli", "-p", str(n.port), "script", "flush"], check=True, capture_output=True)
        assert store.append(_events(["s-1", "s-2", "s-3"])).appended == 6
        assert store.stats()["users"] == 3


def test_a_snapshot_of_one_server_restores_into_a_cluster_and_back(redis_server: LocalRedis,
                                                                   redis_cluster: LocalRedisCluster,
                                                                   tmp_path) -> None:  # type: ignore[no-untyped-def]
    from userlens.serving.store import RedisStore

    users = [f"m-{k}" for k in range(20)]
    single = RedisStore(redis_server.url, 10, namespace=f"s{uuid.uuid4().hex[:12]}")
    single.append(_events(users) + _events(users[:5]))  # 5 users' events twice: duplicates counted
    cluster = _store(redis_cluster)
    cluster.append(_events(["stale"]))
    assert cluster.restore(single.snapshot(tmp_path / "one")) == 20
    assert cluster.stats() == single.stats() and len(cluster.history("stale")) == 0
    for u in users:
        assert cluster.history(u).item.tolist() == single.history(u).item.tolist()
        assert cluster.raw_ids(u, [cluster.history(u).start]) == [f"raw-{u}"]
    back = RedisStore(redis_server.url, 10, namespace=f"s{uuid.uuid4().hex[:12]}")
    assert back.restore(cluster.snapshot(tmp_path / "many")) == 20
    assert back.stats() == single.stats() and back.history(users[0]).item.tolist() == [UNKNOWN, 7]
    for s in (single, cluster, back):
        s.close()
