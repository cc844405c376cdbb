"""The HTTP API (DESIGN §7): FastAPI over a :class:`~userlens.serving.scorer.Scorer`; OpenAPI at ``/docs``.

* ``POST /v1/events`` — append behaviors (bearer token); durable before it answers, idempotent by
  ``event_id``.
* ``POST /v1/score`` — one user, candidates in order → one score each; ``timestamp`` (epoch
  seconds, default now) is the moment scored at, so a replayed log scores as offline.
* ``GET /v1/users/{user_id}/embedding`` — the user's recent-interest vector (mean of the item ⊕
  category embeddings of the last ``short_len`` behaviors; for retrieval).
* ``GET /healthz``, ``GET /metrics`` (Prometheus text).

Hot reload (``reload_seconds``): a thread polls the package's manifest; when the directory was
replaced (``userlens export ... --force`` swaps it in atomically) the new package is loaded and
verified beside the old one, then swapped in for the next request. Requests in flight finish on
the package they started with; none is dropped. A package with other vocabularies or item
categories (the store holds codes of the current ones) or another ``long_len`` is refused and the
old one kept (:class:`~userlens.serving.reload.PackageReloader`).

Every input is validated: bodies over ``max_body_bytes``, more than ``max_candidates`` candidates
or events, bad JSON and wrong types get a 4xx with a message naming the field and the limit.

Layout: the endpoints are routers in :mod:`userlens.serving.routes` (sharing a
``ServingContext`` dependency), hot reload is :mod:`userlens.serving.reload`; this module
assembles them with the body-size limit and request metrics (a middleware).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from userlens.errors import UserlensError
from userlens.serving.reload import PackageReloader
from userlens.serving.routes import ROUTERS, Metrics, ServingContext
from userlens.serving.scorer import Scorer


def create_app(scorer: Scorer, token: str | None = None, max_candidates: int = 1000, max_events: int = 10_000,
               max_body_bytes: int = 4 << 20, reload_seconds: float | None = None) -> FastAPI:
    """The ASGI app over ``scorer``; ``token`` (else ``$USERLENS_TOKEN``) guards the write endpoints."""
    token = token if token is not None else os.environ.get("USERLENS_TOKEN")
    metrics = Metrics()
    holder = PackageReloader(scorer, metrics.reloads)
    stop = threading.Event()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        if reload_seconds:
            threading.Thread(target=holder.watch, args=(reload_seconds, stop), daemon=True,
                             name="userlens-package-reload").start()
        yield
        stop.set()

    pkg = scorer.package
    app = FastAPI(title="userlens", version=pkg.version, lifespan=lifespan,
                  description=f"Lifelong user-interest scoring with {pkg.manifest['model']} (package {pkg.version}).")
    app.state.reloader = holder
    app.state.serving = ServingContext(holder, token, max_candidates, max_events, max_body_bytes, metrics)
    app.middleware("http")(limits_and_metrics)
    for router in ROUTERS:
        app.include_router(router)
    app.add_exception_handler(UserlensError, userlens_error)  # type: ignore[arg-type]
    return app


async def limits_and_metrics(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Refuse bodies over ``max_body_bytes`` (declared or, when chunked, counted while reading) with a 413;
    count every request and time it, by route (``/v1/users/…`` as one)."""
    ctx: ServingContext = request.app.state.serving
    limit, m = ctx.max_body_bytes, ctx.metrics
    size = request.headers.get("content-length")
    endpoint = request.url.path if not request.url.path.startswith("/v1/users/") else "/v1/users/embedding"
    too_big = JSONResponse({"detail": f"request body exceeds the limit of {limit} bytes"}, status_code=413)
    if size is not None and size.isdigit() and int(size) > limit:
        m.requests.labels(endpoint, "413").inc()
        return too_big
    if size is None and request.method in ("POST", "PUT", "PATCH"):  # chunked upload: count while reading
        body, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                m.requests.labels(endpoint, "413").inc()
                return too_big
            body.append(chunk)
        request._body = b"".join(body)  # replayed to the endpoint by Starlette's cached request
    t0 = time.perf_counter()
    response = await call_next(request)
    m.latency.labels(endpoint).observe(time.perf_counter() - t0)
    m.requests.labels(endpoint, str(response.status_code)).inc()
    return response


def userlens_error(request: Request, exc: UserlensError) -> JSONResponse:
    """A :class:`UserlensError` raised while serving is the client's mistake: a 400 with its message."""
    return JSONResponse({"detail": str(exc)}, status_code=400)


__all__ = ("PackageReloader", "create_app")
