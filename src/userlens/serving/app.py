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
the package they started with; none is dropped. A package with other vocabularies (the store
holds codes of the current ones) or another ``long_len`` is refused and the old one kept.

Every input is validated: bodies over ``max_body_bytes``, more than ``max_candidates`` candidates
or events, bad JSON and wrong types get a 4xx with a message naming the field and the limit.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import math
import os
import threading
import time
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field, field_validator

from userlens.errors import UserlensError
from userlens.serving.package import MANIFEST, load_package
from userlens.serving.scorer import Scorer

log = logging.getLogger("userlens.serving")

ItemId = str | int


#: the latest epoch second accepted (year 5138): beyond it epoch milliseconds stop being exact integers in JSON
MAX_TIMESTAMP = 1e11


def _epoch_seconds(v: float | None) -> float | None:
    if v is not None and (not math.isfinite(v) or not 0 <= v <= MAX_TIMESTAMP):
        raise ValueError(f"timestamp must be epoch seconds in [0, {MAX_TIMESTAMP:.0e}], got {v}")
    return v


class EventIn(BaseModel):
    user_id: ItemId
    item_id: ItemId
    timestamp: float = Field(description="epoch seconds")
    event_id: str | int | None = None
    behavior: str | None = None
    category: str | int | None = None

    _check_timestamp = field_validator("timestamp")(_epoch_seconds)


class EventsIn(BaseModel):
    events: list[EventIn]


class ScoreIn(BaseModel):
    user_id: ItemId
    candidates: list[ItemId] = Field(min_length=1)
    timestamp: float | None = Field(default=None, description="epoch seconds; default now")
    context: dict[str, str | int] | None = None
    explain: bool = False

    _check_timestamp = field_validator("timestamp")(_epoch_seconds)


class PackageReloader:
    """Holds the current :class:`Scorer`; :meth:`check` swaps in a replaced package (see the module docstring)."""

    def __init__(self, scorer: Scorer, reloads: Counter | None = None) -> None:
        self.scorer = scorer
        self.reloads = reloads
        self._seen = self._stamp()

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = (self.scorer.package.path / MANIFEST).stat()
        except OSError:
            return None  # mid-swap: look again next time
        return st.st_ino, st.st_mtime_ns

    def check(self) -> bool:
        """Load the package again if its directory changed; True when a new one was swapped in."""
        stamp = self._stamp()
        if stamp is None or stamp == self._seen:
            return False
        old = self.scorer.package
        try:
            new = load_package(old.path)
        except UserlensError as e:
            self._count("failed")
            log.warning("package reload failed, keeping %s: %s", old.version, e)
            return False
        self._seen = stamp
        if new.manifest["vocab_hash"] != old.manifest["vocab_hash"] or new.long_len != old.long_len:
            self._count("refused")
            log.warning("package reload refused, keeping %s: other vocabularies or long_len than the store "
                        "was loaded with; restart with the new package after `userlens load-store`", old.version)
            return False
        self.scorer = Scorer(new, self.scorer.store, self.scorer.state_bytes)
        self._count("ok")
        return True

    def _count(self, result: str) -> None:
        if self.reloads is not None:
            self.reloads.labels(result).inc()

    def watch(self, every: float, stop: threading.Event) -> None:
        while not stop.wait(every):
            self.check()


def create_app(scorer: Scorer, token: str | None = None, max_candidates: int = 1000, max_events: int = 10_000,
               max_body_bytes: int = 4 << 20, reload_seconds: float | None = None) -> FastAPI:
    """The ASGI app over ``scorer``; ``token`` (else ``$USERLENS_TOKEN``) guards the write endpoints."""
    token = token if token is not None else os.environ.get("USERLENS_TOKEN")
    reg = CollectorRegistry()
    reloads = Counter("userlens_package_reloads_total", "package reloads by result", ["result"], registry=reg)
    holder = PackageReloader(scorer, reloads)
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
    requests = Counter("userlens_requests_total", "HTTP requests", ["endpoint", "status"], registry=reg)
    latency = Histogram("userlens_request_seconds", "request latency", ["endpoint"], registry=reg,
                        buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 1.0))
    appended = Counter("userlens_events_appended_total", "behaviors appended", registry=reg)
    duplicates = Counter("userlens_events_duplicate_total", "events ignored: event_id already stored", registry=reg)
    unknown = Counter("userlens_unknown_items_total", "events / candidates with an item the package does not know",
                      ["where"], registry=reg)
    cold = Counter("userlens_cold_users_total", "score requests for a user with no history", registry=reg)

    @app.middleware("http")
    async def limits_and_metrics(request: Request, call_next):  # type: ignore[no-untyped-def]
        size = request.headers.get("content-length")
        endpoint = request.url.path if not request.url.path.startswith("/v1/users/") else "/v1/users/embedding"
        too_big = JSONResponse({"detail": f"request body exceeds the limit of {max_body_bytes} bytes"},
                               status_code=413)
        if size is not None and size.isdigit() and int(size) > max_body_bytes:
            requests.labels(endpoint, "413").inc()
            return too_big
        if size is None and request.method in ("POST", "PUT", "PATCH"):  # chunked upload: count while reading
            body, total = [], 0
            async for chunk in request.stream():
                total += len(chunk)
                if total > max_body_bytes:
                    requests.labels(endpoint, "413").inc()
                    return too_big
                body.append(chunk)
            request._body = b"".join(body)  # replayed to the endpoint by Starlette's cached request
        t0 = time.perf_counter()
        response = await call_next(request)
        latency.labels(endpoint).observe(time.perf_counter() - t0)
        requests.labels(endpoint, str(response.status_code)).inc()
        return response

    def writer(authorization: Annotated[str | None, Header()] = None) -> None:
        if not token:
            raise HTTPException(503, "writes are disabled: the server has no token. Fix: start it with "
                                     "USERLENS_TOKEN set.")
        if authorization is None or not hmac.compare_digest(authorization, f"Bearer {token}"):
            raise HTTPException(401, "missing or wrong bearer token (header `Authorization: Bearer <token>`)",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.post("/v1/events", dependencies=[Depends(writer)])
    def post_events(body: EventsIn) -> dict[str, Any]:
        scorer = holder.scorer
        if len(body.events) > max_events:
            raise HTTPException(413, f"{len(body.events)} events in one request; the limit is {max_events}")
        events = [scorer.encode_event(str(e.user_id), str(e.item_id), round(e.timestamp * 1000), e.behavior,
                                      None if e.category is None else str(e.category),
                                      None if e.event_id is None else str(e.event_id)) for e in body.events]
        try:
            res = scorer.store.append(events)
        except UserlensError as e:
            raise HTTPException(503, str(e)) from None
        appended.inc(res.appended)
        duplicates.inc(res.duplicates)
        unknown.labels("events").inc(res.unknown_items)
        return {"appended": res.appended, "duplicates": res.duplicates, "dropped_over_cap": res.dropped_over_cap,
                "unknown_items": res.unknown_items, "users": res.users}

    @app.post("/v1/score")
    def post_score(body: ScoreIn) -> dict[str, Any]:
        scorer = holder.scorer
        pkg = scorer.package
        if len(body.candidates) > max_candidates:
            raise HTTPException(413, f"{len(body.candidates)} candidates; the limit is {max_candidates}")
        t = None if body.timestamp is None else round(body.timestamp * 1000)
        res = scorer.score(str(body.user_id), body.candidates, t, body.context, explain=body.explain)
        unknown.labels("candidates").inc(len(res.unknown_candidates))
        cold.inc(res.cold_user)
        out: dict[str, Any] = {"scores": res.scores, "model": pkg.manifest["model"], "package": pkg.version,
                               "timestamp": res.timestamp_ms / 1000, "cold_user": res.cold_user,
                               "history_length": res.history_length, "unknown_candidates": res.unknown_candidates}
        if body.explain:
            out["explain"] = res.explain
        return out

    @app.get("/v1/users/{user_id}/embedding")
    def user_embedding(user_id: str) -> dict[str, Any]:
        scorer = holder.scorer
        pkg = scorer.package
        emb = getattr(scorer.model, "embedding", None)
        if emb is None:
            raise HTTPException(409, f"model {pkg.manifest['model']!r} has no item embeddings to build a user "
                                     "vector from")
        h = scorer.store.history(user_id)
        k = min(len(h), pkg.short_len)
        if k == 0:
            return {"user_id": user_id, "embedding": None, "history_length": 0, "cold_user": True}
        with torch.inference_mode():
            items = torch.from_numpy(np.asarray(h.item[-k:], dtype=np.int64))
            cats = torch.from_numpy(np.asarray(h.category[-k:], dtype=np.int64))
            vec = emb.items(items, cats).mean(0)
        return {"user_id": user_id, "embedding": vec.tolist(), "history_length": int(len(h)), "cold_user": False}

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        pkg = holder.scorer.package
        return {"status": "ok", "model": pkg.manifest["model"], "package": pkg.version,
                "weights": pkg.manifest["files"]["model.safetensors"]["checksum"][:19], "store": type(holder.scorer.store).__name__}

    @app.get("/metrics")
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(reg).decode(), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(UserlensError)
    def userlens_error(request: Request, exc: UserlensError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    return app


__all__ = ("create_app",)
