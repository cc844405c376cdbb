"""The behavior store on a Redis Cluster: :class:`RedisStore` with the cluster's client and one key rule changed.

Every key of a user carries the hash tag ``{user}`` (``ns:{u}:m``, ``ns:{u}:b:N`` …), so a user lives in
one hash slot, on one primary, and each per-user script stays there. The one store-wide key a single
server has, the counters ``ns:stats``, would put every append's script on two slots; the cluster keeps
one counters hash per slot instead (``ns:{T}:s``, ``T`` a short tag of that slot), updated by the same
script as the user's keys, so the counters stay exact through kill -9 and failovers as the histories do.
:meth:`~RedisStore.stats` sums the 16,384 hashes (one pipelined read per primary). ``ns:info`` and
the health probes are single keys, written on their own.

Durability, per acknowledged write (an append, a bulk load, ``write_info``):

* ``replicas=0`` (default): on the primary's AOF, fsynced before the reply (``appendfsync always``,
  checked on every primary when the store opens), so a primary killed with -9 and restarted loses
  nothing. Replication is asynchronous: if the primary dies for good and the cluster promotes its replica
  before the write reached it, the write is lost.
* ``replicas=N``: also in the memory of N of the primary's replicas (``WAIT N wait_ms`` on the connection
  that wrote), so a failover to one of them keeps it; it is on their disk only as their own
  ``appendfsync`` says. Fewer acknowledgements within ``wait_ms`` raise an error (HTTP 503): the write
  is on the primary, but was not acknowledged; retry it (event ids make appends idempotent).

Example:
    >>> store = RedisClusterStore("redis-cluster://10.0.0.1:7000,10.0.0.2:7000?replicas=1", cap=100_000)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from userlens.errors import InputError, UserlensError
from userlens.serving.store.redis_store import RedisStore

URL_FIX = ("Fix: redis-cluster://HOST:PORT[,HOST:PORT...][?replicas=N&wait_ms=MS], e.g. "
           "redis-cluster://10.0.0.1:7000,10.0.0.2:7000?replicas=1.")
#: query parameters of a ``redis-cluster://`` URL and their defaults
URL_PARAMS = {"replicas": 0, "wait_ms": 1000}


@dataclass(frozen=True)
class ClusterURL:
    """A parsed ``redis-cluster://`` URL: the seed nodes (any of the cluster's), credentials, acknowledgement."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    replicas: int = 0
    wait_ms: int = 1000


def parse_cluster_url(url: str) -> ClusterURL:
    """``redis-cluster://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT…][?replicas=N&wait_ms=MS]``, read strictly: no path
    (a cluster has database 0 only), no fragment, only the known parameters, each once, as integers."""
    parts = urlsplit(url)
    if parts.scheme != "redis-cluster":
        raise InputError(f"{url!r}: a Redis Cluster URL starts with redis-cluster://. {URL_FIX}")
    if parts.path not in ("", "/") or parts.fragment:
        raise InputError(f"{url!r}: a Redis Cluster has database 0 only: no /DB path or '#'. {URL_FIX}")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    nodes = []
    for hp in hosts.split(","):
        host, _, port = hp.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host  # [::1]:7000
        if not host or not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
            raise InputError(f"{url!r}: {hp!r} is not HOST:PORT. {URL_FIX}")
        nodes.append((host, int(port)))
    query = parse_qs(parts.query, keep_blank_values=True)
    values = dict(URL_PARAMS)
    for name, given in query.items():
        if name not in URL_PARAMS:
            raise InputError(f"{url!r}: unknown parameter {name!r} (known: {', '.join(URL_PARAMS)}). {URL_FIX}")
        if len(given) != 1 or not (given[0].isascii() and given[0].isdigit()):
            raise InputError(f"{url!r}: {name}={'&'.join(given)!r}: expected one non-negative integer. {URL_FIX}")
        values[name] = int(given[0])
    if values["wait_ms"] < 1:
        raise InputError(f"{url!r}: wait_ms=0 would make WAIT block forever when a replica is down; expected at "
                         f"least 1 (milliseconds). {URL_FIX}")
    return ClusterURL(tuple(nodes), unquote(user) or None, unquote(password) or None, values["replicas"],
                      values["wait_ms"])


@functools.cache
def slot_tags() -> tuple[bytes, ...]:
    """For each hash slot the first decimal number that hashes to it (at most 6 digits): ``…{tag}…`` lands there."""
    tags: dict[int, bytes] = {}
    n = 0
    while len(tags) < REDIS_CLUSTER_HASH_SLOTS:
        tag = str(n).encode()
        tags.setdefault(key_slot(tag), tag)
        n += 1
    return tuple(tags[s] for s in range(REDIS_CLUSTER_HASH_SLOTS))


class RedisClusterStore(RedisStore):
    """Histories on a Redis Cluster under ``namespace``; see the module docstring.

    Args:
        url: ``redis-cluster://HOST:PORT[,HOST:PORT…][?replicas=N&wait_ms=MS]`` (any of the cluster's nodes).
        cap, namespace, require_fsync: as :class:`RedisStore` (the fsync check runs on every primary).
    """

    def __init__(self, url: str, cap: int, namespace: str = "userlens", require_fsync: bool = True) -> None:
        if "{" in namespace or "}" in namespace:
            raise InputError(f"namespace={namespace!r}: braces would change the keys' hash slot. Fix: a name "
                             "without '{' or '}'.")
        self._parsed = parse_cluster_url(url)
        super().__init__(url, cap, namespace, require_fsync, self._parsed.replicas, self._parsed.wait_ms)
        self._stats_key = b""  # no store-wide counters: one hash per slot (the module docstring)

    def _connect(self, url: str) -> redis.Redis:
        p = self._parsed
        try:
            return RedisCluster(startup_nodes=[ClusterNode(h, port) for h, port in p.nodes], username=p.username,
                                password=p.password, socket_connect_timeout=5)
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as e:
            raise UserlensError(f"{url}: Redis Cluster not reachable ({e}). Fix: start it (redis-server "
                                "--cluster-enabled yes --appendonly yes --appendfsync always on each node, then "
                                "redis-cli --cluster create) or correct the URL.") from None

    def _primaries(self) -> list[tuple[str, redis.Redis]]:
        return [(n.name, self.client.get_redis_connection(n)) for n in self.client.get_primaries()]

    def _node(self, key: bytes | str) -> tuple[str, redis.Redis]:
        node = self.client.get_node_from_key(key)
        return node.name, self.client.get_redis_connection(node)

    def _key(self, user_id: str, part: str) -> bytes:
        if user_id.startswith("}"):  # ns:{}x}:m: an empty hash tag, each key of the user in another slot
            raise InputError(f"user_id {user_id!r} starts with '}}': a Redis Cluster would spread its keys over "
                             "several hash slots. Fix: map such ids to another form (e.g. prefix them) before "
                             "they reach the store.")
        return super()._key(user_id, part)

    def _stats_of(self, user: str) -> bytes:
        return self._slot_stats(key_slot(self._key(user, "m")))

    def _slot_stats(self, slot: int) -> bytes:
        return self._prefix + slot_tags()[slot] + b"}:s"

    def _slots_by_node(self) -> dict[str, list[int]]:
        """The slots each primary serves (as the client last read them)."""
        owned: dict[str, list[int]] = {}
        for slot, nodes in sorted(self.client.nodes_manager.slots_cache.items()):
            owned.setdefault(nodes[0].name, []).append(slot)
        return owned

    def _stats_by_node(self) -> list[tuple[str, redis.Redis, list[bytes]]]:
        owned = self._slots_by_node()
        return [(name, node, [self._slot_stats(s) for s in owned[name]]) for name, node in self._primaries()
                if name in owned]

    def _probes(self) -> list[tuple[str, redis.Redis, str]]:
        """One key on each primary (in a slot it serves), so that ``/healthz`` fails when any of them cannot write."""
        owned = self._slots_by_node()
        return [(name, node, f"{self.namespace}:probe:{{{slot_tags()[owned[name][0]].decode()}}}")
                for name, node in self._primaries() if name in owned]

    def _refresh(self) -> None:
        self.client.nodes_manager.initialize()


__all__ = ("ClusterURL", "RedisClusterStore", "parse_cluster_url", "slot_tags")
