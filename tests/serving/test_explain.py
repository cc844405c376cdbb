"""``explain``: the behaviors the GSU picked for each candidate and the ESU's weights on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from userlens.data.prepared import PreparedData
from userlens.serving.package import export_package, load_package
from userlens.serving.scorer import Scorer
from userlens.serving.store import bulk_load_prepared, open_store
from userlens.training.config import resolve_config
from userlens.training.trainer import fit


@pytest.fixture(scope="module")
def data(make_prepared) -> PreparedData:  # type: ignore[no-untyped-def]
    return make_prepared(seed=9, n_users=15, n_items=150, n_categories=10, behaviors_per_user=90, recent=20,
                         impressions_per_user=4)


@pytest.mark.parametrize("name, normalised", [("twin", True), ("dare", True), ("sim_hard", False), ("qin", True)])
def test_picks_come_from_the_history_before_t_with_their_weights(name: str, normalised: bool, data: PreparedData,
                                                                 tmp_path: Path) -> None:
    k = 8
    cfg = resolve_config(name, {"epochs": 1, "compile": False, "long_len": 200, "short_len": 10, "k": k})
    fit(data, cfg, tmp_path / "run", show_progress=False, log=lambda s: None)
    export_package(tmp_path / "run", tmp_path / "pkg")
    pkg = load_package(tmp_path / "pkg")
    store = open_store(f"lmdb://{tmp_path}/store", cap=pkg.long_len)
    bulk_load_prepared(store, data)
    scorer = Scorer(pkg, store)
    user = data.vocab("user")["raw"].cast(str).to_list()[3]
    items = data.vocab("item")["raw"].cast(str).to_list()
    h = store.history(user)
    t = int(h.time[len(h) // 2])  # halfway: later behaviors must not be picked
    plain = scorer.score(user, items[:5], t)
    res = scorer.score(user, items[:5], t, explain=True)
    assert res.logits == plain.logits  # explaining changes no score
    why = res.explain
    assert why is not None and why["supported"] and len(why["picked"]) == 5
    before = {(items[int(c) - 2], int(s)) for c, s in zip(h.item, h.time) if s < t}
    for picks in why["picked"]:
        assert 0 < len(picks) <= k
        assert all((p["item_id"], round(p["timestamp"] * 1000)) in before for p in picks)
        w = [p["weight"] for p in picks]
        assert w == sorted(w, reverse=True)
        if normalised:
            assert sum(w) == pytest.approx(1.0, abs=1e-4)
    store.close()


def test_models_without_a_top_k_say_why(data: PreparedData, tmp_path: Path) -> None:
    fit(data, resolve_config("sdim", {"epochs": 1, "compile": False}), tmp_path / "run", show_progress=False,
        log=lambda s: None)
    export_package(tmp_path / "run", tmp_path / "pkg")
    pkg = load_package(tmp_path / "pkg")
    store = open_store(f"lmdb://{tmp_path}/store", cap=pkg.long_len)
    bulk_load_prepared(store, data)
    user = data.vocab("user")["raw"].cast(str).to_list()[0]
    res = Scorer(pkg, store).score(user, ["x"], explain=True)
    assert res.explain == {"supported": False, "reason": res.explain["reason"]} and "bucket" in res.explain["reason"]
    assert np.isfinite(res.logits).all()
    store.close()
