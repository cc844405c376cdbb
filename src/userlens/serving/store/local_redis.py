"""A throwaway ``redis-server`` (or Redis Cluster) on free loopback ports, for tests and benchmarks (never for
production).

Configured as :class:`~userlens.serving.store.RedisStore` requires: AOF on, ``appendfsync always``,
no RDB snapshots, data in ``directory``. Each server runs in a session of its own, so a Ctrl-C reaches
only the owning process, which stops the servers itself (``stop`` / the context manager).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Self


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRedis:
    """``LocalRedis(dir).start()`` … ``.stop()``, or ``with LocalRedis(dir) as server: server.url``."""

    def __init__(self, directory: Path, extra: Sequence[str] = ()) -> None:
        self.dir, self.port, self.extra = Path(directory), free_port(), list(extra)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> LocalRedis:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--dir", str(self.dir), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.proc.poll() is None:
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

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LocalRedisCluster:
    """``primaries`` servers with ``replicas`` replicas each, joined by ``redis-cli --cluster create``.

    ``with LocalRedisCluster(dir, primaries=3, replicas=1) as c: c.url`` (``redis-cluster://…``); ``c.nodes``
    are the :class:`LocalRedis` servers, ``c.roles()`` maps each port to ``primary`` / ``replica``. Every
    node has its own cluster bus port (``cluster-port``), so no port + 10000 has to be free.
    """

    def __init__(self, directory: Path, primaries: int = 3, replicas: int = 0) -> None:
        self.dir, self.primaries, self.replicas = Path(directory), primaries, replicas
        self.nodes = [LocalRedis(self.dir / f"node{i}", ["--cluster-enabled", "yes", "--cluster-port", str(free_port()),
                                                         "--cluster-config-file", str(self.dir / f"node{i}/nodes.conf"),
                                                         "--cluster-node-timeout", "5000", "--repl-diskless-sync-delay", "0"])
                      for i in range(primaries * (1 + replicas))]

    @property
    def url(self) -> str:
        return "redis-cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> Self:
        if shutil.which("redis-cli") is None:
            raise RuntimeError("redis-cli is not on PATH (it ships with redis-server: apt-get install redis-server)")
        try:
            for n in self.nodes:
                n.start()
            subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                            "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def cli(self, node: LocalRedis, *args: str) -> str:
        return subprocess.run(["redis-cli", "-p", str(node.port), *args], check=True, capture_output=True,
                              text=True, timeout=10).stdout

    def roles(self) -> dict[int, str]:
        """Port → ``primary`` / ``replica`` of each running node, as it sees itself (roles move on a failover)."""
        return {n.port: "replica" if "role:slave" in self.cli(n, "info", "replication") else "primary"
                for n in self.nodes if n.proc is not None}

    def wait_ready(self, timeout: float = 30) -> None:
        """Until every node says ``cluster_state:ok`` and every replica is attached to its primary."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all("cluster_state:ok" in self.cli(n, "cluster", "info") for n in self.nodes):
                infos = [self.cli(n, "info", "replication") for n in self.nodes]
                attached = sum(int(i.split("connected_slaves:")[1].split()[0]) for i in infos if "role:master" in i)
                if attached == self.primaries * self.replicas and all(
                        "master_link_status:up" in i for i in infos if "role:slave" in i):
                    return
            time.sleep(0.1)
        raise RuntimeError(f"the Redis Cluster in {self.dir} was not ready within {timeout:.0f} s")

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ("LocalRedis", "LocalRedisCluster", "free_port")
