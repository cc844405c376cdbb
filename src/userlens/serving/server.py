"""Run the HTTP API with Uvicorn: ``userlens serve PKG --store URL`` (one or several worker processes).

Workers are separate processes, so each builds its own app from the environment
(:func:`app_from_env`): the package path and store URL travel as ``USERLENS_PACKAGE`` /
``USERLENS_STORE``, the options as ``USERLENS_MAX_CANDIDATES``, ``USERLENS_RELOAD_SECONDS``
(0 = off), ``USERLENS_THREADS``, ``USERLENS_OPEN_READS`` and ``USERLENS_DOCS`` (``1`` = on); the
tokens as ``USERLENS_TOKEN`` (writes; reads too) and ``USERLENS_READ_TOKEN`` (reads). Every worker
checks that the store was loaded for the package (:func:`~userlens.serving.reload.claim_store`)
and watches the package directory (:class:`~userlens.serving.reload.PackageReloader`).
LMDB and Redis both take several processes (LMDB through its own file locks).

Metrics under ``--workers N``: ``serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh temporary
directory before the workers start (prometheus-client reads it when imported, in each worker),
each worker writes its counters there, and a scrape answered by any worker sums them all; the
directory is removed when the server stops. One worker keeps its counters in memory.

Logs: Uvicorn's access log (one line per request) and userlens' own messages (package reloads,
store errors, 500s with their traceback) at ``--log-level`` (default ``info``; ``warning`` drops
the access log).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging.config
import os
import shutil
import socket
import tempfile
from collections.abc import Callable

from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from userlens.errors import ConfigError
from userlens.limits import MAX_CANDIDATES, MAX_RELOAD_SECONDS, MAX_THREADS, MAX_WORKERS, check_float, check_int
from userlens.serving.app import create_app
from userlens.serving.package import ModelPackage, load_package
from userlens.serving.reload import claim_store
from userlens.serving.scorer import Scorer
from userlens.serving.store.base import BehaviorStore

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
#: AnyIO's default thread pool: requests one worker scores at once
DEFAULT_THREADS = 40


def open_checked(package: str, store_url: str) -> tuple[ModelPackage, BehaviorStore]:
    """The package and its store, verified: the store answers a read and a write, was loaded for this package
    (or records it now, see :func:`~userlens.serving.reload.claim_store`)."""
    from userlens.serving.store import open_store

    pkg = load_package(package)
    store = open_store(store_url, cap=pkg.long_len)
    try:
        store.check()
        claim_store(pkg, store, store_url)
    except BaseException:
        store.close()
        raise
    return pkg, store


class NoDelayHTTP(HttpToolsProtocol):
    """uvicorn's httptools protocol with ``TCP_NODELAY`` on every connection.

    With ``--workers N > 1`` uvicorn binds the listening socket without ``IPPROTO_TCP``, so asyncio
    never sets ``TCP_NODELAY`` on accepted connections and each keep-alive response waits ~40 ms on
    Nagle's algorithm against the client's delayed ACK (uvicorn issue #3149: 44 ms for ``/healthz``
    with 2 workers, 0.8 ms with 1).
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


def app_from_env() -> FastAPI:
    """The app for ``$USERLENS_PACKAGE`` over the store ``$USERLENS_STORE`` (a Uvicorn factory)."""
    env = os.environ
    package, store = open_checked(env["USERLENS_PACKAGE"], env["USERLENS_STORE"])
    return create_app(Scorer(package, store), max_candidates=int(env.get("USERLENS_MAX_CANDIDATES", "1000")),
                      reload_seconds=float(env.get("USERLENS_RELOAD_SECONDS", "0")) or None,
                      threads=int(env.get("USERLENS_THREADS", str(DEFAULT_THREADS))),
                      open_reads=env.get("USERLENS_OPEN_READS") == "1", docs=env.get("USERLENS_DOCS") == "1")


def check_serve_options(port: int, workers: int, max_candidates: int, reload_seconds: float,
                        threads: int = DEFAULT_THREADS, log_level: str = "info") -> None:
    """Refuse options the server would accept and then misbehave with (a busy-looping reload, refusing all)."""
    check_int("--port", port, 1, 65535, "a TCP port", ConfigError)
    check_int("--workers", workers, 1, MAX_WORKERS, "worker processes", ConfigError)
    check_int("--max-candidates", max_candidates, 1, MAX_CANDIDATES, "candidates of one score request", ConfigError)
    check_float("--reload-seconds", reload_seconds, 0.0, MAX_RELOAD_SECONDS, "0 = never reload", ConfigError)
    check_int("--threads", threads, 1, MAX_THREADS, "requests one worker scores at once", ConfigError)
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"--log-level {log_level!r}: expected one of {', '.join(LOG_LEVELS)}.")


def log_config(level: str) -> dict:
    """Uvicorn's logging config with userlens' logger on its handler, so reloads and errors reach the log."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["userlens"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


def serve(package: str, store: str, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          max_candidates: int = 1000, reload_seconds: float = 2.0, threads: int = DEFAULT_THREADS,
          log_level: str = "info", open_reads: bool = False, docs: bool = False,
          on_ready: Callable[[], None] | None = None) -> None:
    """Check here (options, package, store: a bad one fails before the server starts), call ``on_ready``,
    then run Uvicorn until it stops."""
    import uvicorn

    check_serve_options(port, workers, max_candidates, reload_seconds, threads, log_level)
    logging.config.dictConfig(log_config(log_level))  # claim_store's warning, here and in the workers alike
    _, opened = open_checked(package, store)
    opened.close()
    os.environ.update(USERLENS_PACKAGE=str(package), USERLENS_STORE=store, USERLENS_MAX_CANDIDATES=str(max_candidates),
                      USERLENS_RELOAD_SECONDS=str(reload_seconds), USERLENS_THREADS=str(threads),
                      USERLENS_OPEN_READS="1" if open_reads else "0", USERLENS_DOCS="1" if docs else "0")
    metrics_dir = None
    if workers > 1:  # a fresh one: files a previous server left would be summed in
        metrics_dir = tempfile.mkdtemp(prefix="userlens-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        if on_ready is not None:
            on_ready()
        uvicorn.run("userlens.serving.server:app_from_env", factory=True, host=host, port=port, workers=workers,
                    log_level=log_level, access_log=True, log_config=log_config(log_level),
                    http="userlens.serving.server:NoDelayHTTP")
    finally:
        if metrics_dir is not None:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
            shutil.rmtree(metrics_dir, ignore_errors=True)


__all__ = ("DEFAULT_THREADS", "LOG_LEVELS", "app_from_env", "check_serve_options", "log_config", "open_checked",
           "serve")
