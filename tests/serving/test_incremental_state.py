"""Per-user GSU state (SDIM bucket sums, SIM hard's category index) is extended on append, never stale.

A scorer that keeps state across requests must score exactly as a fresh scorer
that scans the stored history, after appends at the end (state extended in place),
an out-of-order insert and a history capped at ``long_len`` (state rebuilt).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from userlens.data.prepared import PreparedData
from userlens.serving.package import export_package, load_package
from userlens.serving.scorer import Scorer, history_fingerprint
from userlens.serving.store import open_store
from userlens.serving.store.base import UserHistory
from userlens.training.config import resolve_config
from userlens.training.trainer import fit

LONG_LEN = 120


@pytest.fixture(scope="module")
def data(make_prepared) -> PreparedData:  # type: ignore[no-untyped-def]
    return make_prepared(seed=5, n_users=20, n_items=200, n_categories=12, behaviors_per_user=80, recent=20,
                         impressions_per_user=4)


def _package(name: str, data: PreparedData, tmp: Path) -> Path:
    cfg = resolve_config(name, {"epochs": 1, "batch_size": 64, "compile": False, "long_len": LONG_LEN,
                                "short_len": 10})
    fit(data, cfg, tmp / "run", show_progress=False, log=lambda s: None)
    export_package(tmp / "run", tmp / "pkg")
    return tmp / "pkg"


# part kept per user; extended in place (True) or rebuilt when the history grew (False)
PARTS = {"sdim": ("bucket_sum", True), "sim_hard": ("category_index", True), "sim_soft": ("item_groups", False),
         "twin": ("item_groups", False), "eta": ("item_groups", False)}


@pytest.mark.parametrize("name", list(PARTS))
def test_state_kept_across_appends_scores_as_a_fresh_scan(name: str, data: PreparedData, tmp_path: Path) -> None:
    pkg = load_package(_package(name, data, tmp_path))
    store = open_store(f"lmdb://{tmp_path}/store", cap=LONG_LEN)
    kept = Scorer(pkg, store)
    items = data.vocab("item")["raw"].cast(str).to_list()
    rng = np.random.default_rng(0)
    candidates = [items[i] for i in rng.integers(0, len(items), 30)]
    t0 = 1_700_000_000_000
    part, in_place = PARTS[name]

    def check(now: int) -> None:
        fresh = Scorer(pkg, store)  # no state: scans the stored history
        got, want = kept.score("u", candidates, now).logits, fresh.score("u", candidates, now).logits
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)

    def append(times: list[int]) -> None:
        store.append([kept.encode_event("u", items[int(rng.integers(len(items)))], t, event_id=f"e{t}")
                      for t in times])

    append([t0 + i for i in range(40)])
    check(t0 + 10_000)
    first = kept._states["u"].state.parts[part][1]
    for step in range(3):  # appends at the end: the same state object, extended
        append([t0 + 100 + 10 * step + i for i in range(7)])
        check(t0 + 10_000)
        assert (kept._states["u"].state.parts[part][1] is first) == in_place
        assert kept._states["u"].state.parts[part][0] == len(store.history("u"))
    check(t0 + 50)  # a request before the latest behaviors: SDIM scans, SIM searches a bounded range
    store.append([kept.encode_event("u", items[0], t0 + 5, event_id="late")])  # out of order: state rebuilt
    first = kept._states["u"].state.parts[part][1]
    check(t0 + 10_000)
    assert kept._states["u"].state.parts[part][1] is not first
    append([t0 + 1_000 + i for i in range(LONG_LEN)])  # over the cap: the oldest dropped, rebuilt again
    assert len(store.history("u")) == LONG_LEN
    check(t0 + 100_000)
    store.close()


def test_fingerprint_is_additive_and_order_dependent() -> None:
    rng = np.random.default_rng(1)
    n = 50
    h = UserHistory(rng.integers(2, 99, n).astype(np.int32), rng.integers(2, 9, n).astype(np.int32),
                    np.sort(rng.integers(0, 10**12, n)).astype(np.int64), np.zeros(n, np.int16), n)
    full = history_fingerprint(h, 0, n)
    assert (history_fingerprint(h, 0, 20) + history_fingerprint(h, 20, n)) % (1 << 64) == full
    swapped = UserHistory(h.item.copy(), h.category, h.time, h.behavior, n)
    swapped.item[[3, 4]] = swapped.item[[4, 3]]
    assert swapped.item[3] == swapped.item[4] or history_fingerprint(swapped, 0, n) != full


def test_state_memory_is_bounded_least_recently_used_first(data: PreparedData, tmp_path: Path) -> None:
    """States beyond ``state_bytes`` are dropped oldest-used first; scores do not change."""
    pkg = load_package(_package("sim_hard", data, tmp_path))
    store = open_store(f"lmdb://{tmp_path}/store", cap=LONG_LEN)
    items = data.vocab("item")["raw"].cast(str).to_list()
    for u in range(6):
        store.append([Scorer(pkg, store).encode_event(f"u{u}", items[i], 1_700_000_000_000 + i, event_id=str(i))
                      for i in range(100)])
    unbounded = Scorer(pkg, store)
    one = unbounded.score("u0", items[:4]).logits
    per_user = unbounded._states["u0"].nbytes
    assert per_user > 0 and unbounded._state_total == per_user
    small = Scorer(pkg, store, state_bytes=3 * per_user)
    for u in range(6):
        small.score(f"u{u}", items[:4])
    assert list(small._states) == ["u3", "u4", "u5"] and small._state_total == 3 * per_user
    assert small.score("u0", items[:4]).logits == one  # rebuilt on demand, same scores
    assert list(small._states) == ["u4", "u5", "u0"]
    store.close()
