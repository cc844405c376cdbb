"""An API that only answers what it should: auth on reads, strict bodies, 4xx for the client's mistakes,
503 for a store that is gone, a counted 500 for a bug, bounded metric labels; over a real LMDB / Redis store."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from userlens.data.prepared import PreparedData
from userlens.serving.app import create_app
from userlens.serving.package import ModelPackage, load_package
from userlens.serving.scorer import Scorer
from userlens.serving.store import BehaviorStore, bulk_load_prepared, open_store
from userlens.serving.store.local_redis import LocalRedis, LocalRedisCluster

from .conftest import train_package

TOKEN, READ = "w-token", "r-token"
WRITE_AUTH, READ_AUTH = {"Authorization": f"Bearer {TOKEN}"}, {"Authorization": f"Bearer {READ}"}
JSON = {"content-type": "application/json"}
Served = tuple[ModelPackage, PreparedData]
MakeClient = Callable[..., TestClient]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, make_prepared: Callable[..., PreparedData]) -> Served:
    d = tmp_path_factory.mktemp("strict")
    data = make_prepared(seed=5, n_users=20, n_items=100, n_categories=8, behaviors_per_user=40, recent=10,
                         impressions_per_user=4)
    return load_package(train_package(data, "sim_hard", d)), data


@pytest.fixture
def make_client(served: Served, tmp_path: Path) -> Iterator[MakeClient]:
    """``make_client(store=None, **create_app_options)``: the package over the test's loaded LMDB store (one
    for every client of a test) or over ``store``."""
    pkg, data = served
    stores: list[BehaviorStore] = []

    def make(store: BehaviorStore | None = None, **kw: object) -> TestClient:
        if store is None:
            if not stores:
                stores.append(open_store(f"lmdb://{tmp_path}/store", cap=pkg.long_len))
                bulk_load_prepared(stores[0], data)
            store = stores[0]
        options = {"token": TOKEN, "read_token": READ, **kw}
        app = create_app(Scorer(pkg, store), **options)  # type: ignore[arg-type]
        return TestClient(app, raise_server_exceptions=False)  # a 500 is answered, as a real server does

    yield make
    for s in stores:
        s.close()


def _user(served: Served) -> str:
    return str(served[1].vocab("user")["raw"][0])


# --------------------------------------------------------------------------- auth on reads, no CDN docs

def test_reads_need_the_read_or_the_write_token(make_client: MakeClient, served: Served) -> None:
    c = make_client()
    score = {"user_id": _user(served), "candidates": [1, 2]}
    emb = {"user_id": _user(served)}
    for path, body in (("/v1/score", score), ("/v1/embedding", emb)):
        assert c.post(path, json=body).status_code == 401
        assert c.post(path, json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.post(path, json=body, headers=READ_AUTH).status_code == 200
        assert c.post(path, json=body, headers=WRITE_AUTH).status_code == 200
    ev = {"events": [{"user_id": "u", "item_id": 1, "timestamp": 1_600_000_000}]}
    assert c.post("/v1/events", json=ev, headers=READ_AUTH).status_code == 401  # the read token cannot write


def test_without_any_token_reads_are_refused_unless_opened(make_client: MakeClient, served: Served,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("USERLENS_TOKEN", raising=False)
    monkeypatch.delenv("USERLENS_READ_TOKEN", raising=False)
    body = {"user_id": _user(served), "candidates": [1]}
    r = make_client(token=None, read_token=None).post("/v1/score", json=body)
    assert r.status_code == 503 and "USERLENS_READ_TOKEN" in r.json()["detail"] and "--open-reads" in r.text
    assert make_client(token=None, read_token=None, open_reads=True).post("/v1/score", json=body).status_code == 200


def test_a_non_ascii_authorization_header_is_a_401_not_a_500(make_client: MakeClient, served: Served) -> None:
    c = make_client()
    r = c.post("/v1/score", json={"user_id": "u", "candidates": [1]}, headers={"Authorization": "Bearer é".encode()})
    assert r.status_code == 401
    ev = {"events": [{"user_id": "u", "item_id": 1, "timestamp": 1_600_000_000}]}
    assert c.post("/v1/events", json=ev, headers={"Authorization": "Bearer ü€".encode()}).status_code == 401


def test_no_swagger_page_unless_asked_the_schema_always(make_client: MakeClient) -> None:
    c = make_client()
    assert c.get("/docs").status_code == 404 and c.get("/redoc").status_code == 404
    assert "/v1/embedding" in c.get("/openapi.json").json()["paths"]
    assert make_client(docs=True).get("/docs").status_code == 200


# --------------------------------------------------------------------------- user ids in the body

def test_embedding_takes_the_user_id_in_the_body_slashes_included(make_client: MakeClient) -> None:
    c = make_client()
    events = [{"user_id": "team/a b?", "item_id": i, "timestamp": 1_600_000_000 + i} for i in range(3, 8)]
    assert c.post("/v1/events", json={"events": events}, headers=WRITE_AUTH).status_code == 200
    r = c.post("/v1/embedding", json={"user_id": "team/a b?"}, headers=READ_AUTH)
    assert r.status_code == 200 and r.json()["user_id"] == "team/a b?" and r.json()["history_length"] == 5
    assert c.get("/v1/users/team/embedding", headers=READ_AUTH).status_code == 404  # the old path is gone


# --------------------------------------------------------------------------- strict bodies

@pytest.mark.parametrize("path, body, field", [
    ("/v1/score", {"user_id": "u", "candidates": [1], "timestmp": 1_600_000_000},
     "unknown field 'timestmp' (did you mean 'timestamp'?)"),
    ("/v1/events", {"events": [{"user_id": "u", "item_id": 1, "timestamp": 1_600_000_000, "catgory": "x"}]},
     "body.events.0: Value error, unknown field 'catgory' (did you mean 'category'?)"),
    ("/v1/embedding", {"user_id": "u", "user": "v"}, "unknown field 'user'"),
    ("/v1/score", {"user_id": True, "candidates": [1]}, "body.user_id: Value error, expected a string or an integer, "
                                                        "got a boolean"),
    ("/v1/score", {"user_id": "u", "candidates": [1, False]}, "body.candidates.1: Value error, expected a string"),
    ("/v1/events", {"events": [{"user_id": "u", "item_id": True, "timestamp": 1_600_000_000}]},
     "body.events.0.item_id"),
    ("/v1/score", {"user_id": "u", "candidates": [1], "explain": "yes"}, "body.explain"),
    ("/v1/score", {"user_id": "u", "candidates": [1], "timestamp": True}, "got a boolean"),
    ("/v1/events", {"events": [{"user_id": "u", "item_id": 1, "timestamp": 600_000_000}]},
     "timestamp must be epoch seconds from 1990-01-01"),  # 1989: `userlens prepare` calls it absurd
    ("/v1/events", {"events": [{"user_id": "u", "item_id": 1, "timestamp": 4_000_000_000}]}, "one day after now"),
])
def test_bodies_are_strict(make_client: MakeClient, path: str, body: dict, field: str) -> None:
    r = make_client().post(path, json=body, headers=WRITE_AUTH)
    assert r.status_code == 422 and field in r.json()["detail"], r.text


def test_the_timestamp_window_is_prepares() -> None:
    from userlens.data.tables import DEFAULT_MIN_TIME
    from userlens.serving import routes

    assert routes.MIN_TIMESTAMP == DEFAULT_MIN_TIME.timestamp()


# --------------------------------------------------------------------------- client mistakes are 4xx, never 500

@pytest.mark.parametrize("path, raw", [
    ("/v1/score", b'{"user_id": "", "candidates": [1]}'),  # an empty LMDB key
    ("/v1/embedding", b'{"user_id": ""}'),
    ("/v1/events", b'{"events": [{"user_id": "", "item_id": 1, "timestamp": 1600000000}]}'),
    ("/v1/score", b'{"user_id": "u", "candidates": [1], "timestamp": NaN}'),  # Python's JSON parser takes these
    ("/v1/score", b'{"user_id": "u", "candidates": [1], "timestamp": Infinity}'),
    ("/v1/score", b'{"user_id": "u", "candidates": [1], "timestamp": 1e400}'),
    ("/v1/events", b'{"events": [{"user_id": "u", "item_id": 1, "timestamp": NaN}]}'),
    ("/v1/events", b'{"events": [{"user_id": "u", "item_id": 1, "timestamp": -Infinity}]}'),
    ("/v1/score", b'{"user_id": "\\ud800", "candidates": [1]}'),  # a lone surrogate
    ("/v1/embedding", b'{"user_id": "\\udfff"}'),
    ("/v1/events", b'{"events": [{"user_id": "u", "item_id": "\\ud800", "timestamp": 1600000000}]}'),
])
def test_client_mistakes_are_a_4xx_with_a_message(make_client: MakeClient, path: str, raw: bytes) -> None:
    r = make_client().post(path, content=raw, headers={**JSON, **WRITE_AUTH})
    assert r.status_code == 422, r.text
    assert r.json()["detail"]


def test_an_input_error_from_the_store_is_a_422_not_a_503(make_client: MakeClient) -> None:
    long_id = "u" * 600  # over LMDB's 511-byte key: the store raises InputError
    ev = {"events": [{"user_id": long_id, "item_id": 1, "timestamp": 1_600_000_000}]}
    c = make_client()
    r = c.post("/v1/events", json=ev, headers=WRITE_AUTH)
    assert r.status_code == 422 and "LMDB keys hold at most" in r.json()["detail"]
    r = c.post("/v1/score", json={"user_id": long_id, "candidates": [1]}, headers=READ_AUTH)
    assert r.status_code == 422 and "shorter user ids" in r.json()["detail"]


@pytest.mark.redis
def test_a_redis_cluster_store_loaded_by_the_cli_serves_as_lmdb_does(make_client: MakeClient, served: Served,
                                                                      redis_cluster: LocalRedisCluster) -> None:
    """``load-store --store redis-cluster://…``, then scores, events and ``/healthz`` over the cluster."""
    from typer.testing import CliRunner

    from userlens.cli import app

    pkg, data = served
    url = redis_cluster.url + "?replicas=1"
    r = CliRunner().invoke(app, ["load-store", str(data.path), "--store", url, "--package", str(pkg.path)])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["users"] == len(data.vocab("user"))
    store = open_store(url, cap=pkg.long_len)
    cluster, lmdb = make_client(store), make_client()
    body = {"user_id": _user(served), "candidates": [1, 2, 3]}
    scores = cluster.post("/v1/score", json=body, headers=READ_AUTH).json()["scores"]
    assert scores == pytest.approx(lmdb.post("/v1/score", json=body, headers=READ_AUTH).json()["scores"], abs=1e-6)
    ev = {"events": [{"user_id": _user(served), "item_id": 1, "timestamp": 1_700_000_000, "event_id": "c1"}]}
    assert cluster.post("/v1/events", json=ev, headers=WRITE_AUTH).json()["appended"] == 1
    assert cluster.post("/v1/score", json=body, headers=READ_AUTH).json()["scores"] != scores
    health = cluster.get("/healthz").json()
    assert (health["status"], health["store"]) == ("ok", "RedisClusterStore")
    store.close()


@pytest.mark.redis
def test_an_unreachable_redis_is_a_503_everywhere(make_client: MakeClient, served: Served,
                                                  redis_factory: Callable[[], LocalRedis]) -> None:
    pkg, data = served
    server = redis_factory()
    store = open_store(server.url, cap=pkg.long_len)
    bulk_load_prepared(store, data)
    c = make_client(store)
    body = {"user_id": _user(served), "candidates": [1, 2]}
    assert c.post("/v1/score", json=body, headers=READ_AUTH).status_code == 200
    assert c.get("/healthz").status_code == 200
    server.kill()
    r = c.post("/v1/score", json=body, headers=READ_AUTH)
    assert r.status_code == 503 and "Redis not reachable" in r.json()["detail"]
    ev = {"events": [{"user_id": "u", "item_id": 1, "timestamp": 1_600_000_000}]}
    assert c.post("/v1/events", json=ev, headers=WRITE_AUTH).status_code == 503
    assert c.post("/v1/embedding", json={"user_id": "u"}, headers=READ_AUTH).status_code == 503
    h = c.get("/healthz")
    assert h.status_code == 503 and h.json()["status"] == "unavailable" and "Redis not reachable" in h.json()["detail"]
    assert 'userlens_requests_total{endpoint="/v1/score",status="503"} 1.0' in c.get("/metrics").text
    store.close()


def test_healthz_is_a_503_naming_the_cause_when_the_store_cannot_be_written(make_client: MakeClient,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from userlens.errors import UserlensError

    c = make_client()
    assert c.get("/healthz").json()["status"] == "ok"
    store = c.app.state.reloader.scorer.store  # type: ignore[attr-defined]

    def broken() -> None:
        raise UserlensError("/srv/store: the LMDB store cannot be read or written (No space left on device)")

    monkeypatch.setattr(store, "check", broken)
    r = c.get("/healthz")
    assert r.status_code == 503 and "No space left on device" in r.json()["detail"]


def test_a_bug_is_a_json_500_counted_in_metrics(make_client: MakeClient, served: Served,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    c = make_client()
    scorer = c.app.state.reloader.scorer  # type: ignore[attr-defined]
    monkeypatch.setattr(scorer, "score", lambda *a, **k: [][1])  # an IndexError, as a wrong item code once gave
    r = c.post("/v1/score", json={"user_id": _user(served), "candidates": [1]}, headers=READ_AUTH)
    assert r.status_code == 500 and "internal server error" in r.json()["detail"]
    assert 'userlens_requests_total{endpoint="/v1/score",status="500"} 1.0' in c.get("/metrics").text


# --------------------------------------------------------------------------- metrics

def test_metrics_label_route_templates_and_one_label_for_unknown_paths(make_client: MakeClient) -> None:
    c = make_client()
    for i in range(300):
        assert c.get(f"/probe/{i}/x").status_code == 404
    c.post("/v1/embedding", json={"user_id": "a/b"}, headers=READ_AUTH)
    c.get("/healthz")
    text = c.get("/metrics").text
    series = [line for line in text.splitlines() if line.startswith("userlens_requests_total{")]
    assert 'userlens_requests_total{endpoint="unmatched",status="404"} 300.0' in series
    assert {s.split('"')[1] for s in series} == {"unmatched", "/v1/embedding", "/healthz"}
    assert 'userlens_request_seconds_count{endpoint="unmatched"} 300.0' in text


def test_threads_sets_how_many_requests_a_worker_runs_at_once(make_client: MakeClient) -> None:
    import anyio.to_thread

    with make_client(threads=3) as c:  # the lifespan runs
        limiter = c.portal.call(anyio.to_thread.current_default_thread_limiter)  # type: ignore[union-attr]
        assert limiter.total_tokens == 3


def test_validation_errors_render_even_with_inputs_json_cannot_hold(make_client: MakeClient) -> None:
    r = make_client().post("/v1/score", content=b'{"user_id": "u", "candidates": [], "context": {"\\ud800": NaN}}',
                           headers={**JSON, **READ_AUTH})
    assert r.status_code == 422
    body = json.loads(r.content)
    assert body["errors"] and all("input" not in e for e in body["errors"])
