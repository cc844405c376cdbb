"""The HTTP API: contract, auth, limits, bad requests, cold start; with a real package over a small run."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from userlens.serving.app import create_app
from userlens.serving.package import load_package
from userlens.serving.scorer import Scorer
from userlens.serving.store.base import AppendResult, UserHistory

from .conftest import train_package

TOKEN = "s3cret"


class DictStore:
    """A minimal in-memory store for API tests (the real backends have their own suite)."""

    cap = 1000

    def __init__(self) -> None:
        self.rows: dict[str, list[tuple]] = {}
        self.seen: set[tuple[str, str]] = set()
        self.info: dict | None = None

    def read_info(self) -> dict | None:
        return self.info

    def write_info(self, info: dict) -> None:
        self.info = info

    def check(self) -> None:
        pass

    def append(self, events):  # type: ignore[no-untyped-def]
        res = AppendResult()
        for e in events:
            if e.event_id is not None and (e.user_id, e.event_id) in self.seen:
                res.duplicates += 1
                continue
            if e.event_id is not None:
                self.seen.add((e.user_id, e.event_id))
            self.rows.setdefault(e.user_id, []).append((e.timestamp_ms, e.item, e.category, e.behavior))
            res.appended += 1
            res.unknown_items += e.item == 1
        return res

    def history(self, user_id: str) -> UserHistory:
        rows = sorted(self.rows.get(user_id, []), key=lambda r: r[0])
        if not rows:
            return UserHistory.empty()
        t, i, c, b = (np.array(x) for x in zip(*rows))
        return UserHistory(i.astype(np.int32), c.astype(np.int32), t.astype(np.int64), b.astype(np.int16))


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, make_prepared) -> TestClient:  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("app")
    data = make_prepared(seed=1, n_users=40, n_items=200, n_categories=10, behaviors_per_user=80, recent=20,
                         impressions_per_user=6)
    app = create_app(Scorer(load_package(train_package(data, "sim_hard", d)), DictStore()), token=TOKEN, max_candidates=50)  # type: ignore[arg-type]
    return TestClient(app, headers=AUTH)  # reads need a token too: the write token opens them


AUTH = {"Authorization": f"Bearer {TOKEN}"}
NO_AUTH = {"Authorization": ""}


def test_events_then_scores_in_candidate_order(client: TestClient) -> None:
    events = [{"user_id": "u1", "item_id": i, "timestamp": 1_600_000_000 + 60 * i, "event_id": f"e{i}"}
              for i in range(30)]
    r = client.post("/v1/events", json={"events": events}, headers=AUTH)
    assert r.status_code == 200 and r.json()["appended"] == 30
    again = client.post("/v1/events", json={"events": events[:5]}, headers=AUTH)
    assert again.json() == {**again.json(), "appended": 0, "duplicates": 5}
    r = client.post("/v1/score", json={"user_id": "u1", "candidates": [3, "4", 5], "timestamp": 1_700_000_000})
    body = r.json()
    assert r.status_code == 200 and len(body["scores"]) == 3 and body["history_length"] == 30
    assert not body["cold_user"] and body["unknown_candidates"] == []
    single = [client.post("/v1/score", json={"user_id": "u1", "candidates": [c], "timestamp": 1_700_000_000})
              .json()["scores"][0] for c in (3, "4", 5)]
    np.testing.assert_allclose(body["scores"], single, atol=1e-6)  # order kept, rows independent
    past = client.post("/v1/score", json={"user_id": "u1", "candidates": [3], "timestamp": 1_600_000_000 + 600})
    assert past.json()["history_length"] == 10  # the history cut at the request's time: strictly before it


def test_cold_user_and_unknown_item_are_flagged(client: TestClient) -> None:
    r = client.post("/v1/score", json={"user_id": "ghost", "candidates": [1, "no-such-item"]})
    assert r.status_code == 200
    body = r.json()
    assert body["cold_user"] and body["unknown_candidates"] == [1] and len(body["scores"]) == 2


def test_writes_need_the_token(client: TestClient) -> None:
    ev = {"events": [{"user_id": "u", "item_id": 1, "timestamp": 1_600_000_000}]}
    assert client.post("/v1/events", json=ev, headers=NO_AUTH).status_code == 401
    assert client.post("/v1/events", json=ev, headers={"Authorization": "Bearer nope"}).status_code == 401


@pytest.mark.parametrize("payload, status, text", [
    ({"user_id": "u", "candidates": []}, 422, "candidates"),
    ({"user_id": "u"}, 422, "candidates"),
    ({"user_id": "u", "candidates": [1], "timestamp": "soon"}, 422, "timestamp"),
    ({"user_id": "u", "candidates": list(range(51))}, 413, "limit is 50"),
    ({"user_id": ["a"], "candidates": [1]}, 422, "user_id"),
    ({"user_id": "u", "candidates": [1], "timestamp": 1e300}, 422, "timestamp must be epoch seconds"),
    ({"user_id": "u", "candidates": [1], "timestamp": -5}, 422, "timestamp must be epoch seconds"),
    ({"user_id": "u", "candidates": [1], "timestamp": 1_700_000_000, "contxt": {}}, 422, "unknown field 'contxt'"),
])
def test_bad_score_requests_get_a_clear_4xx(client: TestClient, payload: dict, status: int, text: str) -> None:
    r = client.post("/v1/score", json=payload)
    assert r.status_code == status and text in r.text


def test_bad_json_and_oversized_bodies(client: TestClient) -> None:
    r = client.post("/v1/score", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    big = b'{"user_id": "u", "candidates": [' + b"1," * 3_000_000 + b"1]}"
    r = client.post("/v1/score", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "exceeds the limit" in r.text

    def chunked(body: bytes):  # no Content-Length: the limit is enforced while reading
        for i in range(0, len(body), 1 << 16):
            yield body[i:i + (1 << 16)]

    r = client.post("/v1/score", content=chunked(big), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "exceeds the limit" in r.text
    small = b'{"user_id": "u1", "candidates": [1, 2]}'
    r = client.post("/v1/score", content=chunked(small), headers={"content-type": "application/json"})
    assert r.status_code == 200 and len(r.json()["scores"]) == 2


def test_event_timestamps_out_of_range_are_a_422(client: TestClient) -> None:
    ev = {"events": [{"user_id": "u", "item_id": 1, "timestamp": 1e300}]}
    r = client.post("/v1/events", json=ev)
    assert r.status_code == 422 and "timestamp must be epoch seconds" in r.text


def test_health_metrics_embedding_and_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    emb = client.post("/v1/embedding", json={"user_id": "u1"}).json()
    assert emb["history_length"] == 30 and len(emb["embedding"]) == 32
    assert client.post("/v1/embedding", json={"user_id": "ghost"}).json()["cold_user"] is True
    m = client.get("/metrics").text
    assert "userlens_requests_total" in m and 'endpoint="/v1/score"' in m
    assert "/v1/score" in client.get("/openapi.json").json()["paths"]


def test_every_endpoint_comes_from_one_router(client: TestClient) -> None:
    """create_app only assembles: each API path is declared once, by the router of its concern."""
    from userlens.serving.routes import ROUTERS

    declared = [r.path for router in ROUTERS for r in router.routes]  # type: ignore[attr-defined]
    assert len(set(declared)) == len(declared)
    assert set(client.get("/openapi.json").json()["paths"]) == set(declared) == {
        "/v1/events", "/v1/score", "/v1/embedding", "/healthz", "/metrics"}
