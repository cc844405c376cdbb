"""Run the HTTP API with Uvicorn: ``userlens serve PKG --store URL`` (one or several worker processes).

Workers are separate processes, so each builds its own app from the environment
(:func:`app_from_env`): the package path and store URL travel as
``USERLENS_PACKAGE`` / ``USERLENS_STORE``; the write token as ``USERLENS_TOKEN``. Every worker
watches the package directory (``USERLENS_RELOAD_SECONDS``, 0 = off) and swaps in a re-exported
package without dropping requests (:class:`~userlens.serving.reload.PackageReloader`).
LMDB and Redis both take several processes (LMDB through its own file locks).
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from userlens.errors import ConfigError
from userlens.limits import MAX_CANDIDATES, MAX_RELOAD_SECONDS, MAX_WORKERS, check_float, check_int
from userlens.serving.app import create_app
from userlens.serving.package import load_package
from userlens.serving.scorer import Scorer


def app_from_env() -> FastAPI:
    """The app for ``$USERLENS_PACKAGE`` over the store ``$USERLENS_STORE`` (a Uvicorn factory)."""
    from userlens.serving.store import open_store

    package = load_package(os.environ["USERLENS_PACKAGE"])
    store = open_store(os.environ["USERLENS_STORE"], cap=package.long_len)
    limit = int(os.environ.get("USERLENS_MAX_CANDIDATES", "1000"))
    reload = float(os.environ.get("USERLENS_RELOAD_SECONDS", "0")) or None
    return create_app(Scorer(package, store), max_candidates=limit, reload_seconds=reload)


def check_serve_options(port: int, workers: int, max_candidates: int, reload_seconds: float) -> None:
    """Refuse options the server would accept and then misbehave with (a busy-looping reload, refusing all)."""
    check_int("--port", port, 1, 65535, "a TCP port", ConfigError)
    check_int("--workers", workers, 1, MAX_WORKERS, "worker processes", ConfigError)
    check_int("--max-candidates", max_candidates, 1, MAX_CANDIDATES, "candidates of one score request", ConfigError)
    check_float("--reload-seconds", reload_seconds, 0.0, MAX_RELOAD_SECONDS, "0 = never reload", ConfigError)


def serve(package: str, store: str, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          max_candidates: int = 1000, reload_seconds: float = 2.0) -> None:
    """Load once here (so a bad package or store fails before the server starts), then run Uvicorn."""
    import uvicorn

    from userlens.serving.store import open_store

    check_serve_options(port, workers, max_candidates, reload_seconds)
    pkg = load_package(package)
    open_store(store, cap=pkg.long_len).close()
    os.environ.update(USERLENS_PACKAGE=str(package), USERLENS_STORE=store, USERLENS_MAX_CANDIDATES=str(max_candidates),
                      USERLENS_RELOAD_SECONDS=str(reload_seconds))
    uvicorn.run("userlens.serving.server:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level="warning")


__all__ = ("app_from_env", "check_serve_options", "serve")
