"""The HTTP endpoints, one :class:`~fastapi.APIRouter` per concern, and what they share.

Routers: :data:`events` (``POST /v1/events``), :data:`scoring` (``POST /v1/score``),
:data:`embedding` (``GET /v1/users/{user_id}/embedding``), :data:`health`
(``GET /healthz``, ``GET /metrics``). Each endpoint reads the app's
:class:`ServingContext` (the current scorer, token, limits, metrics) through the
:func:`serving_context` dependency; writes also depend on :func:`require_writer`.
:func:`userlens.serving.app.create_app` builds the context and mounts the routers.
"""

from __future__ import annotations

import hmac
import math
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import APIRouter, Depends, Header, HTTPException, Request
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field, field_validator

from userlens.errors import UserlensError
from userlens.serving.reload import PackageReloader

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


class Metrics:
    """The app's Prometheus series, in one registry (``GET /metrics`` renders it)."""

    def __init__(self) -> None:
        self.registry = reg = CollectorRegistry()
        self.reloads = Counter("userlens_package_reloads_total", "package reloads by result", ["result"], registry=reg)
        self.requests = Counter("userlens_requests_total", "HTTP requests", ["endpoint", "status"], registry=reg)
        self.latency = Histogram("userlens_request_seconds", "request latency", ["endpoint"], registry=reg,
                                 buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 1.0))
        self.appended = Counter("userlens_events_appended_total", "behaviors appended", registry=reg)
        self.duplicates = Counter("userlens_events_duplicate_total", "events ignored: event_id already stored",
                                  registry=reg)
        self.unknown = Counter("userlens_unknown_items_total",
                               "events / candidates with an item the package does not know", ["where"], registry=reg)
        self.cold = Counter("userlens_cold_users_total", "score requests for a user with no history", registry=reg)


@dataclass
class ServingContext:
    """What every endpoint reads: the reloader holding the current scorer, the write token, limits, metrics."""

    reloader: PackageReloader
    token: str | None
    max_candidates: int
    max_events: int
    max_body_bytes: int
    metrics: Metrics


def serving_context(request: Request) -> ServingContext:
    """Dependency: the :class:`ServingContext` :func:`~userlens.serving.app.create_app` stored on the app."""
    return request.app.state.serving  # type: ignore[no-any-return]


Context = Annotated[ServingContext, Depends(serving_context)]


def require_writer(ctx: Context, authorization: Annotated[str | None, Header()] = None) -> None:
    """Dependency of the write endpoints: ``Authorization: Bearer <token>`` must match the server's token."""
    if not ctx.token:
        raise HTTPException(503, "writes are disabled: the server has no token. Fix: start it with "
                                 "USERLENS_TOKEN set.")
    if authorization is None or not hmac.compare_digest(authorization, f"Bearer {ctx.token}"):
        raise HTTPException(401, "missing or wrong bearer token (header `Authorization: Bearer <token>`)",
                            headers={"WWW-Authenticate": "Bearer"})


def _within(count: int, limit: int, what: str) -> None:
    if count > limit:
        raise HTTPException(413, f"{count} {what}; the limit is {limit}")


events = APIRouter(tags=["events"])
scoring = APIRouter(tags=["scoring"])
embedding = APIRouter(tags=["embedding"])
health = APIRouter(tags=["health"])


@events.post("/v1/events", dependencies=[Depends(require_writer)])
def post_events(body: EventsIn, ctx: Context) -> dict[str, Any]:
    scorer = ctx.reloader.scorer
    _within(len(body.events), ctx.max_events, "events in one request")
    evs = [scorer.encode_event(str(e.user_id), str(e.item_id), round(e.timestamp * 1000), e.behavior,
                               None if e.category is None else str(e.category),
                               None if e.event_id is None else str(e.event_id)) for e in body.events]
    try:
        res = scorer.store.append(evs)
    except UserlensError as e:
        raise HTTPException(503, str(e)) from None
    m = ctx.metrics
    m.appended.inc(res.appended)
    m.duplicates.inc(res.duplicates)
    m.unknown.labels("events").inc(res.unknown_items)
    return {"appended": res.appended, "duplicates": res.duplicates, "dropped_over_cap": res.dropped_over_cap,
            "unknown_items": res.unknown_items, "users": res.users}


@scoring.post("/v1/score")
def post_score(body: ScoreIn, ctx: Context) -> dict[str, Any]:
    scorer = ctx.reloader.scorer
    pkg = scorer.package
    _within(len(body.candidates), ctx.max_candidates, "candidates")
    t = None if body.timestamp is None else round(body.timestamp * 1000)
    res = scorer.score(str(body.user_id), body.candidates, t, body.context, explain=body.explain)
    ctx.metrics.unknown.labels("candidates").inc(len(res.unknown_candidates))
    ctx.metrics.cold.inc(res.cold_user)
    out: dict[str, Any] = {"scores": res.scores, "model": pkg.manifest["model"], "package": pkg.version,
                           "timestamp": res.timestamp_ms / 1000, "cold_user": res.cold_user,
                           "history_length": res.history_length, "unknown_candidates": res.unknown_candidates}
    if body.explain:
        out["explain"] = res.explain
    return out


@embedding.get("/v1/users/{user_id}/embedding")
def user_embedding(user_id: str, ctx: Context) -> dict[str, Any]:
    scorer = ctx.reloader.scorer
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


@health.get("/healthz")
def healthz(ctx: Context) -> dict[str, Any]:
    scorer = ctx.reloader.scorer
    pkg = scorer.package
    return {"status": "ok", "model": pkg.manifest["model"], "package": pkg.version,
            "weights": pkg.manifest["files"]["model.safetensors"]["checksum"][:19], "store": type(scorer.store).__name__}


@health.get("/metrics")
def metrics(ctx: Context) -> PlainTextResponse:
    return PlainTextResponse(generate_latest(ctx.metrics.registry).decode(), media_type=CONTENT_TYPE_LATEST)


ROUTERS = (events, scoring, embedding, health)

__all__ = ("ROUTERS", "EventIn", "EventsIn", "Metrics", "ScoreIn", "ServingContext", "require_writer",
           "serving_context")
