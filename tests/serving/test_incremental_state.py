"""Per-user serving state slides with the stream and never goes stale: every score equals a stateless scan.

The lifelong user is a stream: events arrive between requests and, at the cap, every append
evicts the oldest behavior. For every model with state (SDIM's bucket sums, SIM hard's and QIN's
category index, the item groups of SIM soft / TWIN / ETA / DARE / MUSE, the counting features'
indexes) a scorer that keeps state must score exactly as one that scans the stored window afresh,
after appends, evictions at the cap, out-of-order events, bulk loads, restores and two requests for
one user interleaved with an append; and the common path (in-order appends) must slide the state,
not rebuild it.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from userlens.data.prepared import PreparedData
from userlens.serving.package import load_package
from userlens.serving.scorer import Scorer
from userlens.serving.store import RedisStore, open_store

from .conftest import train_package

LONG_LEN = 40
T0 = 1_700_000_000_000
CONFIG = {"batch_size": 64, "long_len": LONG_LEN, "short_len": 10}


@pytest.fixture(scope="module")
def data(make_prepared) -> PreparedData:  # type: ignore[no-untyped-def]
    return make_prepared(seed=5, n_users=20, n_items=200, n_categories=12, behaviors_per_user=80, recent=20,
                         impressions_per_user=4)


def stateless(scorer: Scorer, user: str, candidates: list[str], t: int) -> list[float]:
    """The scan: the stored window read afresh, no state at all."""
    history = scorer.store.history(user)
    batch, _ = scorer.batch(user, candidates, t, history, {}, None)
    with torch.inference_mode():
        return scorer.model(batch).double().tolist()


# model → the state part its requests build (beside the window itself)
STATEFUL = {"sdim": "totals", "sim_hard": "category_index", "qin": "category_index", "sim_soft": "item_index",
            "twin": "item_index", "eta": "item_index", "dare": "item_index", "muse": "item_index",
            "din+counts": "item_index", "sim_soft@redis": "item_index"}


class Gate:
    """A store whose next ``history`` read, once armed, waits after reading until released."""

    def __init__(self, store) -> None:  # type: ignore[no-untyped-def]
        self.store, self.armed, self.inside, self.release = store, False, threading.Event(), threading.Event()

    def history(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        out = self.store.history(*args, **kwargs)
        if self.armed:
            self.armed = False
            self.inside.set()
            assert self.release.wait(30)
        return out

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.store, name)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.redis) if n.endswith("@redis") else n
                                  for n in STATEFUL])
def test_sliding_state_scores_as_a_stateless_scan(name: str, data: PreparedData, tmp_path: Path,
                                                  request: pytest.FixtureRequest) -> None:
    model, _, extra = name.partition("@")[0].partition("+")
    pkg = load_package(train_package(data, model, tmp_path, **CONFIG, **({"count_features": "all"} if extra else {})))
    store = (RedisStore(request.getfixturevalue("redis_server").url, LONG_LEN, namespace=f"inc{uuid.uuid4().hex[:12]}")
             if name.endswith("@redis") else open_store(f"lmdb://{tmp_path}/store", cap=LONG_LEN))
    gate = Gate(store)
    kept = Scorer(pkg, gate)  # type: ignore[arg-type]
    items = data.vocab("item")["raw"].cast(str).to_list()
    rng = np.random.default_rng(0)
    candidates = [items[i] for i in rng.integers(0, len(items), 30)]
    clock = iter(range(T0, T0 + 10**9, 1000))

    def append(n: int, t: int | None = None) -> None:
        store.append([kept.encode_event("u", items[int(rng.integers(len(items)))], t or next(clock),
                                        event_id=f"e{rng.integers(1 << 60)}") for _ in range(n)])

    def check(now: int | None = None) -> None:
        now = now or next(clock)
        np.testing.assert_allclose(kept.score("u", candidates, now).logits, stateless(kept, "u", candidates, now),
                                   rtol=0, atol=1e-5)

    state = lambda: kept._states["u"]  # noqa: E731
    append(40)
    check()
    assert (state().rebuilds, state().slides) == (1, 0)
    part = STATEFUL[name]
    assert bool(state().totals) if part == "totals" else part in state().indexes
    for _ in range(2 * LONG_LEN + 10):  # one event between requests, past the cap: evictions slide the state
        append(1)
        check()
    assert len(store.history("u")) == LONG_LEN and state().start == 40 + 2 * LONG_LEN + 10 - LONG_LEN
    assert state().rebuilds == 1 and state().slides == 2 * LONG_LEN + 10  # nothing was rebuilt on the way
    assert all(len(index.keys) == LONG_LEN for index in state().indexes.values())  # evicted rows left them
    append(7)  # a batch, then a request cut before the newest behaviors (a replay): scanned, same scores
    check(int(store.history("u").time[-5]))
    check()
    late = next(clock)
    append(3)
    append(1, t=late)  # out of order: renumbers, new tag, rebuilt
    check()
    assert state().rebuilds == 2
    h = store.history("u")  # a bulk load of the same length: new tag, rebuilt (the length is no version)
    store.bulk_load(["u"], np.array([0, len(h)]), h.item[::-1].copy(), h.category[::-1].copy(), h.time.copy(),
                    h.behavior.copy())
    check()
    assert state().rebuilds == 3
    snap = store.snapshot(tmp_path / "snap")
    append(2)
    check()
    store.restore(snap)  # back to the snapshot: new tags, rebuilt
    check()
    assert state().rebuilds == 4

    # two requests for one user with an append between them: A reads, the event lands, B asks; A finishes
    now = next(clock) + 10_000
    before = stateless(kept, "u", candidates, now)
    gate.armed = True
    results: dict[str, list[float]] = {}
    a = threading.Thread(target=lambda: results.update(a=kept.score("u", candidates, now).logits))
    a.start()
    assert gate.inside.wait(30)
    append(1, t=now - 5_000)
    b = threading.Thread(target=lambda: results.update(b=kept.score("u", candidates, now).logits))
    b.start()
    b.join(0.2)
    gate.release.set()
    a.join(30)
    b.join(30)
    after = stateless(kept, "u", candidates, now)
    np.testing.assert_allclose(results["a"], before, rtol=0, atol=1e-5)
    np.testing.assert_allclose(results["b"], after, rtol=0, atol=1e-5)
    for _ in range(3):
        append(1)
        check()
        recent, n = kept.recent("u", 5)  # what the embedding endpoint reads, through the same state
        assert recent.item.tolist() == store.history("u").item[-5:].tolist() and n == LONG_LEN
    store.close()


def test_state_memory_is_bounded_least_recently_used_first(data: PreparedData, tmp_path: Path) -> None:
    """States beyond ``state_bytes`` are dropped oldest-used first; scores do not change."""
    pkg = load_package(train_package(data, "sim_hard", tmp_path, **CONFIG))
    store = open_store(f"lmdb://{tmp_path}/store", cap=LONG_LEN)
    items = data.vocab("item")["raw"].cast(str).to_list()
    for u in range(6):
        store.append([Scorer(pkg, store).encode_event(f"u{u}", items[i], T0 + i, event_id=str(i))
                      for i in range(100)])
    unbounded = Scorer(pkg, store)
    one = unbounded.score("u0", items[:4]).logits
    per_user = unbounded._sizes["u0"]
    assert per_user > 0 and unbounded._state_total == per_user
    small = Scorer(pkg, store, state_bytes=3 * per_user)
    for u in range(6):
        small.score(f"u{u}", items[:4])
    assert list(small._states) == ["u3", "u4", "u5"] and small._state_total == 3 * per_user
    assert small.score("u0", items[:4]).logits == one  # rebuilt on demand, same scores
    assert list(small._states) == ["u4", "u5", "u0"]
    store.close()
