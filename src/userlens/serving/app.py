"""The HTTP API (DESIGN §7): FastAPI over a :class:`~userlens.serving.scorer.Scorer`; its schema at ``/openapi.json``.

* ``POST /v1/events`` — append behaviors (write token); durable before it answers, idempotent by
  ``event_id``.
* ``POST /v1/score`` — one user, candidates in order → one score each; ``timestamp`` (epoch
  seconds, default now) is the moment scored at, so a replayed log scores as offline (read token).
* ``POST /v1/embedding`` — the user's recent-interest vector (mean of the item ⊕ category
  embeddings of the last ``short_len`` behaviors; for retrieval) (read token).
* ``GET /healthz`` (503 when the store cannot be read or written), ``GET /metrics`` (Prometheus text).

Auth: writes need ``token`` (``$USERLENS_TOKEN``); reads need ``read_token``
(``$USERLENS_READ_TOKEN``) or the write token, since scores with ``explain`` return raw item ids
and timestamps and embeddings the interest vector. With no token at all reads answer 503 saying
what to set, unless ``open_reads``. No Swagger page by default (``docs``: it loads its script
from a CDN in the viewer's browser); the schema is served either way.

Status codes: a client mistake is a 4xx with a message naming the field and the fix (422 for a
body that does not validate or an :class:`~userlens.errors.InputError`, 413 over a limit, 401
without the token); a store that cannot be reached or written is a 503; anything unexpected a 500
(logged with its traceback). Every response, 500s included, is counted in
``userlens_requests_total{endpoint, status}`` by route template (an unknown path is ``unmatched``),
so clients probing paths cannot grow the series.

Hot reload (``reload_seconds``): a thread polls the package's manifest; when the directory was
replaced (``userlens export ... --force`` swaps it in atomically) the new package is loaded and
verified beside the old one, then swapped in for the next request. Requests in flight finish on
the package they started with; none is dropped. A package the store was not loaded for is refused
(:class:`~userlens.serving.reload.PackageReloader`).

Layout: the endpoints are routers in :mod:`userlens.serving.routes` (sharing a
``ServingContext`` dependency), hot reload is :mod:`userlens.serving.reload`; this module
assembles them with the body-size limit, request metrics (a middleware) and the error mapping.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from userlens.errors import ConfigError, InputError
from userlens.serving.reload import PackageReloader
from userlens.serving.routes import ROUTERS, STORE_ERRORS, Metrics, ServingContext
from userlens.serving.scorer import Scorer

log = logging.getLogger("userlens.serving")


def create_app(scorer: Scorer, token: str | None = None, max_candidates: int = 1000, max_events: int = 10_000,
               max_body_bytes: int = 4 << 20, reload_seconds: float | None = None, read_token: str | None = None,
               open_reads: bool = False, threads: int | None = None, docs: bool = False) -> FastAPI:
    """The ASGI app over ``scorer``.

    Args:
        token: guards writes (else ``$USERLENS_TOKEN``; none: writes answer 503).
        read_token: guards scores and embeddings, as the write token does (else ``$USERLENS_READ_TOKEN``).
        open_reads: serve reads without a token.
        threads: requests scored at once (AnyIO's thread pool, where FastAPI runs sync endpoints; None: its 40).
        docs: serve the Swagger page at ``/docs`` (its script comes from a CDN).
    """
    token = token if token is not None else os.environ.get("USERLENS_TOKEN")
    read_token = read_token if read_token is not None else os.environ.get("USERLENS_READ_TOKEN")
    metrics = Metrics()
    holder = PackageReloader(scorer, metrics.reloads)
    stop = threading.Event()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        if threads is not None:
            anyio.to_thread.current_default_thread_limiter().total_tokens = threads
        if reload_seconds:
            threading.Thread(target=holder.watch, args=(reload_seconds, stop), daemon=True,
                             name="userlens-package-reload").start()
        yield
        stop.set()

    pkg = scorer.package
    app = FastAPI(title="userlens", version=pkg.version, lifespan=lifespan, docs_url="/docs" if docs else None,
                  redoc_url=None,
                  description=f"Lifelong user-interest scoring with {pkg.manifest['model']} (package {pkg.version}).")
    app.state.reloader = holder
    app.state.serving = ServingContext(holder, token, max_candidates, max_events, max_body_bytes, metrics,
                                       read_token, open_reads)
    app.add_middleware(LimitsAndMetrics)
    for router in ROUTERS:
        app.include_router(router)
    # what route_template matches against: the app's own routes (/openapi.json, /docs) and the routers' (FastAPI
    # keeps an included router as one opaque entry of app.router.routes)
    app.state.route_table = [r for r in app.router.routes if isinstance(r, Route)] + [
        r for router in ROUTERS for r in router.routes]
    app.add_exception_handler(RequestValidationError, invalid_request)  # type: ignore[arg-type]
    for client_mistake in (InputError, ConfigError):
        app.add_exception_handler(client_mistake, unprocessable)  # type: ignore[arg-type]
    for outage in STORE_ERRORS:  # InputError keeps its own: the handler of the closest class is chosen
        app.add_exception_handler(outage, store_unavailable)  # type: ignore[arg-type]
    return app


def route_template(request: Request) -> str:
    """The matched route's path template (``/v1/score``), ``unmatched`` for any other path: the metrics'
    label, so 300 random paths are one series, not 300."""
    for route in request.app.state.route_table:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            return route.path  # type: ignore[no-any-return]
    return "unmatched"


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` for an app after the body was read: the body once, then the client's own messages."""
    done = False

    async def again() -> Message:
        nonlocal done
        if done:
            return await receive()
        done = True
        return {"type": "http.request", "body": body, "more_body": False}

    return again


class LimitsAndMetrics:
    """Pure ASGI middleware (no task or stream per request, as Starlette's ``BaseHTTPMiddleware`` costs): refuse
    bodies over ``max_body_bytes`` (declared or, when chunked, counted while reading) with a 413; turn an
    unexpected exception into a logged 500; count every request and time it, by route template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        ctx: ServingContext = scope["app"].state.serving
        limit, m = ctx.max_body_bytes, ctx.metrics
        endpoint = route_template(request)
        size = request.headers.get("content-length")
        too_big = JSONResponse({"detail": f"request body exceeds the limit of {limit} bytes"}, status_code=413)
        if size is not None and size.isdigit() and int(size) > limit:
            m.requests.labels(endpoint, "413").inc()
            await too_big(scope, receive, send)
            return
        sent = {"status": 0}
        if size is None and request.method in ("POST", "PUT", "PATCH"):  # chunked upload: counted while read
            chunks, total, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    break
                chunks.append(message.get("body", b""))
                total += len(chunks[-1])
                more = message.get("more_body", False)
                if total > limit:
                    m.requests.labels(endpoint, "413").inc()
                    await too_big(scope, receive, send)
                    return
            receive = _replay(b"".join(chunks), receive)

        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
            await send(message)

        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, watched)
        except Exception:  # a bug, not the client's mistake: logged with its traceback, answered as JSON, counted
            log.exception("%s %s failed", request.method, endpoint)
            if sent["status"]:
                raise
            await JSONResponse({"detail": "internal server error (logged by the server with its traceback); "
                                          "report it if it persists"}, status_code=500)(scope, receive, watched)
        m.latency.labels(endpoint).observe(time.perf_counter() - t0)
        m.requests.labels(endpoint, str(sent["status"] or 500)).inc()


def _printable(x: object) -> str:
    """Text safe to send as JSON: a lone surrogate (from a ``"\\ud800"`` escape) becomes its escape again."""
    return str(x).encode("utf-8", "backslashreplace").decode()


def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each bad field (``body.events.0.timestamp: ...``), without echoing the input: FastAPI's
    default echoed it, and a NaN or a lone surrogate then failed to render as JSON (a 500)."""
    errors = [{"loc": [_printable(x) for x in e["loc"]], "msg": _printable(e["msg"]), "type": e["type"]}
              for e in exc.errors()]
    detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors)
    return JSONResponse({"detail": detail, "errors": errors}, status_code=422)


def unprocessable(request: Request, exc: Exception) -> JSONResponse:
    """An :class:`~userlens.errors.InputError` while serving (an id the store cannot key, ...): the client's."""
    return JSONResponse({"detail": _printable(exc)}, status_code=422)


def store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """Any other :class:`~userlens.errors.UserlensError` comes from the store (unreachable, full, refusing
    writes): a 503, so clients retry and load balancers look elsewhere; never the client's 4xx."""
    log.error("%s %s: behavior store failed: %s", request.method, route_template(request), exc)
    return JSONResponse({"detail": f"behavior store unavailable: {_printable(exc)}"}, status_code=503)


__all__ = ("PackageReloader", "create_app", "route_template")
