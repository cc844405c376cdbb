"""The HTTP endpoints, one :class:`~fastapi.APIRouter` per concern, and what they share.

Routers: :data:`events` (``POST /v1/events``), :data:`scoring` (``POST /v1/score``),
:data:`embedding` (``POST /v1/embedding``), :data:`health` (``GET /healthz``, ``GET /metrics``).
Each endpoint reads the app's :class:`ServingContext` (the current scorer, tokens, limits,
metrics) through the :func:`serving_context` dependency; writes depend on :func:`require_writer`,
reads (scores, embeddings: they return raw item ids, timestamps and interest vectors) on
:func:`require_reader`. :func:`userlens.serving.app.create_app` builds the context and mounts the routers.

Request bodies are strict (:class:`StrictBody`): an unknown field is refused by name (a typo
``"timestmp"`` was once scored at "now"), ids are non-empty strings or integers (``true`` is not
an id), timestamps are epoch seconds in the window ``userlens prepare`` accepts.
"""

from __future__ import annotations

import hmac
import os
import time
from dataclasses import dataclass
from typing import Annotated, Any

import lmdb
import numpy as np
import redis
import torch
from fastapi import APIRouter, Depends, Header, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictStr, WithJsonSchema,
                      model_validator)

from userlens.data.tables import DEFAULT_MIN_TIME, FUTURE_SLACK_MS
from userlens.errors import UserlensError, did_you_mean
from userlens.serving.reload import PackageReloader

#: what a failing behavior store raises: the backends' own errors are wrapped in UserlensError, these are not
STORE_ERRORS: tuple[type[Exception], ...] = (UserlensError, lmdb.Error, redis.RedisError,
                                              redis.exceptions.RedisClusterException)  # not a RedisError

#: the earliest event / score time accepted: `userlens prepare`'s bound for "absurd" timestamps
MIN_TIMESTAMP = DEFAULT_MIN_TIME.timestamp()


_JSON_TYPES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
               dict: "an object", type(None): "null"}


def _json_type(v: object) -> str:
    return _JSON_TYPES.get(type(v), type(v).__name__)


def _text(v: object) -> str:
    """An id or label as text (42 and "42" are one id). Refused: anything but a string or an integer (JSON's
    ``true`` is no id), text that is not valid Unicode (it failed as a 500 when the store encoded it)."""
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise ValueError(f"expected a string or an integer, got {_json_type(v)}")
    s = str(v)
    try:
        s.encode()
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode text (a lone surrogate such as \\ud800); send UTF-8 text") from None
    if "\x00" in s:  # the store refuses it in user and raw item ids: refused here for every id
        raise ValueError("contains NUL (\\u0000); send text without it")
    return s


def _id(v: object) -> str:
    s = _text(v)
    if not s:
        raise ValueError("an id must not be empty; send a non-empty string or an integer")
    return s


def _epoch_seconds(v: object) -> float:
    """Epoch seconds in the window `userlens prepare` accepts: NaN, 1e400 (inf), ``true`` and "soon" refused."""
    hi = time.time() + FUTURE_SLACK_MS / 1000  # as `prepare` allows
    number = isinstance(v, (int, float)) and not isinstance(v, bool)
    if not (number and MIN_TIMESTAMP <= v <= hi):  # type: ignore[operator]  # NaN fails it; no float(): 10**400
        raise ValueError(f"timestamp must be epoch seconds from {DEFAULT_MIN_TIME.date()} ({MIN_TIMESTAMP:.0f}) to "
                         f"one day after now ({hi:.0f}), as `userlens prepare` accepts; got "
                         f"{v if number else _json_type(v)}")
    return float(v)


# before-validators: the value reaches them as sent, one message for every wrong type (no per-member list);
# they return text, which the schema documents as sent: a string or an integer
_STRING_OR_INTEGER = WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "integer"}]})
Id = Annotated[str, BeforeValidator(_id), _STRING_OR_INTEGER]
Text = Annotated[str, BeforeValidator(_text), _STRING_OR_INTEGER]
Timestamp = Annotated[float, BeforeValidator(_epoch_seconds), Field(description="epoch seconds")]


class StrictBody(BaseModel):
    """A request body: unknown fields are refused, naming the field and the closest known one."""

    model_config = ConfigDict(extra="forbid")  # also states additionalProperties: false in the OpenAPI schema

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if key not in cls.model_fields:
                    raise ValueError(f"unknown field {str(key)!r}{did_you_mean(str(key), cls.model_fields)}; "
                                     f"the fields are {', '.join(cls.model_fields)}")
        return data


class EventIn(StrictBody):
    user_id: Id
    item_id: Id
    timestamp: Timestamp
    event_id: Id | None = None
    behavior: Text | None = None
    category: Text | None = None


class EventsIn(StrictBody):
    events: list[EventIn]


class ScoreIn(StrictBody):
    user_id: Id
    candidates: list[Id] = Field(min_length=1)
    timestamp: Timestamp | None = Field(default=None, description="epoch seconds; default now")
    context: dict[StrictStr, Text] | None = None
    explain: StrictBool = False


class EmbeddingIn(StrictBody):
    user_id: Id


class Metrics:
    """The app's Prometheus series, in one registry (``GET /metrics`` renders it, see :meth:`render`)."""

    def __init__(self) -> None:
        self.registry = reg = CollectorRegistry()
        self.reloads = Counter("userlens_package_reloads_total", "package reloads by result", ["result"], registry=reg)
        self.requests = Counter("userlens_requests_total", "HTTP requests by route template and status",
                                ["endpoint", "status"], registry=reg)
        self.latency = Histogram("userlens_request_seconds", "request latency", ["endpoint"], registry=reg,
                                 buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 1.0))
        self.appended = Counter("userlens_events_appended_total", "behaviors appended", registry=reg)
        self.duplicates = Counter("userlens_events_duplicate_total", "events ignored: event_id already stored",
                                  registry=reg)
        self.unknown = Counter("userlens_unknown_items_total",
                               "events / candidates with an item the package does not know", ["where"], registry=reg)
        self.cold = Counter("userlens_cold_users_total", "score requests for a user with no history", registry=reg)

    def render(self) -> bytes:
        """Prometheus text. Under ``serve --workers N`` (``PROMETHEUS_MULTIPROC_DIR`` set before the workers
        started) every worker writes its values to files there and a scrape, answered by any one worker,
        sums them all; otherwise this process's registry."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


@dataclass
class ServingContext:
    """What every endpoint reads: the reloader holding the current scorer, the tokens, limits, metrics.

    ``read_token`` and ``token`` (the write token) both open reads; ``open_reads`` opens them without one.
    """

    reloader: PackageReloader
    token: str | None
    max_candidates: int
    max_events: int
    max_body_bytes: int
    metrics: Metrics
    read_token: str | None = None
    open_reads: bool = False


async def serving_context(request: Request) -> ServingContext:
    """Dependency: the :class:`ServingContext` :func:`~userlens.serving.app.create_app` stored on the app.

    The dependencies are ``async`` (none blocks): FastAPI would run a sync one in the thread pool, a hop per
    dependency per request, and ``--threads`` would count them beside the scoring."""
    return request.app.state.serving  # type: ignore[no-any-return]


Context = Annotated[ServingContext, Depends(serving_context)]
Authorization = Annotated[str | None, Header()]


def _bearer(authorization: str | None, tokens: list[str]) -> None:
    """401 unless the header is ``Bearer <one of tokens>``; compared as bytes, in constant time (the header
    arrives decoded as Latin-1: any byte is valid, where comparing a non-ASCII str raised a 500)."""
    sent = authorization.encode("latin-1") if authorization is not None else b""
    if not any(hmac.compare_digest(sent, f"Bearer {t}".encode("utf-8", "surrogateescape")) for t in tokens):
        raise HTTPException(401, "missing or wrong bearer token (header `Authorization: Bearer <token>`)",
                            headers={"WWW-Authenticate": "Bearer"})


async def require_writer(ctx: Context, authorization: Authorization = None) -> None:
    """Dependency of the write endpoints: ``Authorization: Bearer <token>`` must match the server's token."""
    if not ctx.token:
        raise HTTPException(503, "writes are disabled: the server has no token. Fix: start it with "
                                 "USERLENS_TOKEN set.")
    _bearer(authorization, [ctx.token])


async def require_reader(ctx: Context, authorization: Authorization = None) -> None:
    """Dependency of the read endpoints: the read token or the write token, unless reads were opened."""
    if ctx.open_reads:
        return
    tokens = [t for t in (ctx.read_token, ctx.token) if t]
    if not tokens:
        raise HTTPException(503, "reads are disabled: the server has no token. Fix: start it with "
                                 "USERLENS_READ_TOKEN (or USERLENS_TOKEN) set, or with --open-reads to serve "
                                 "scores and embeddings to anyone who can reach it.")
    _bearer(authorization, tokens)


def _within(count: int, limit: int, what: str) -> None:
    if count > limit:
        raise HTTPException(413, f"{count} {what}; the limit is {limit}")


events = APIRouter(tags=["events"])
scoring = APIRouter(tags=["scoring"], dependencies=[Depends(require_reader)])
embedding = APIRouter(tags=["embedding"], dependencies=[Depends(require_reader)])
health = APIRouter(tags=["health"])


@events.post("/v1/events", dependencies=[Depends(require_writer)])
def post_events(body: EventsIn, ctx: Context) -> dict[str, Any]:
    scorer = ctx.reloader.scorer
    _within(len(body.events), ctx.max_events, "events in one request")
    evs = [scorer.encode_event(e.user_id, e.item_id, round(e.timestamp * 1000), e.behavior, e.category, e.event_id)
           for e in body.events]
    res = scorer.store.append(evs)  # a store failure: 503 (create_app's handlers), bad input: 422
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
    res = scorer.score(body.user_id, body.candidates, t, dict(body.context or {}), explain=body.explain)
    ctx.metrics.unknown.labels("candidates").inc(len(res.unknown_candidates))
    ctx.metrics.cold.inc(res.cold_user)
    out: dict[str, Any] = {"scores": res.scores, "model": pkg.manifest["model"], "package": pkg.version,
                           "timestamp": res.timestamp_ms / 1000, "cold_user": res.cold_user,
                           "history_length": res.history_length, "unknown_candidates": res.unknown_candidates}
    if body.explain:
        out["explain"] = res.explain
    return out


@embedding.post("/v1/embedding")
def user_embedding(body: EmbeddingIn, ctx: Context) -> dict[str, Any]:
    """The id travels in the body, never the path: ids may hold ``/`` and stay out of access logs."""
    scorer = ctx.reloader.scorer
    pkg = scorer.package
    emb = getattr(scorer.model, "embedding", None)
    if emb is None:
        raise HTTPException(409, f"model {pkg.manifest['model']!r} has no item embeddings to build a user "
                                 "vector from")
    user_id = body.user_id
    h, n = scorer.recent(user_id, pkg.short_len)  # through the user's state: only new rows are read
    if len(h) == 0:
        return {"user_id": user_id, "embedding": None, "history_length": 0, "cold_user": True}
    with torch.inference_mode():
        items = torch.from_numpy(np.asarray(h.item, dtype=np.int64))
        cats = torch.from_numpy(np.asarray(h.category, dtype=np.int64))
        vec = emb.items(items, cats).mean(0)
    return {"user_id": user_id, "embedding": vec.tolist(), "history_length": n, "cold_user": False}


@health.get("/healthz", response_model=None)
def healthz(ctx: Context) -> dict[str, Any] | JSONResponse:
    """200 only when the store answers a read and a write (``BehaviorStore.check``): a load balancer then
    stops sending traffic to a server whose store is gone, instead of to a 500 on every request."""
    scorer = ctx.reloader.scorer
    pkg = scorer.package
    about = {"model": pkg.manifest["model"], "package": pkg.version,
             "weights": pkg.manifest["files"]["model.safetensors"]["checksum"][:19],
             "store": type(scorer.store).__name__}
    try:
        scorer.store.check()
    except STORE_ERRORS as e:
        return JSONResponse({"status": "unavailable", **about, "detail": f"behavior store: {e}"}, status_code=503)
    return {"status": "ok", **about}


@health.get("/metrics")
def metrics(ctx: Context) -> PlainTextResponse:
    return PlainTextResponse(ctx.metrics.render().decode(), media_type=CONTENT_TYPE_LATEST)


ROUTERS = (events, scoring, embedding, health)

__all__ = ("ROUTERS", "STORE_ERRORS", "EmbeddingIn", "EventIn", "EventsIn", "Metrics", "ScoreIn", "ServingContext",
           "StrictBody", "require_reader", "require_writer", "serving_context")
