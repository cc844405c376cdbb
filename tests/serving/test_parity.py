"""Offline/online parity: replaying a prepared test split through the package + store + scorer gives the
offline ``evaluate`` logits (1e-5), for every registered model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from userlens.data.loader import BatchLoader
from userlens.data.prepared import PreparedData
from userlens.models.registry import list_models
from userlens.serving.package import export_package, load_package
from userlens.serving.scorer import Scorer
from userlens.serving.store.base import UserHistory
from userlens.training.checkpoint import load_run
from userlens.training.config import resolve_config
from userlens.training.trainer import fit, predict

MODELS = [e.name for e in list_models()]


class TimelineStore:
    """The prepared timeline as a read-only store: every user's whole history (the scorer cuts it at t)."""

    def __init__(self, data: PreparedData) -> None:
        self.data = data
        self.users = {str(r): i for r, i in data.vocab("user").select("raw", "index").rows()}

    def history(self, user_id: str) -> UserHistory:
        u = self.users.get(user_id)
        if u is None:
            return UserHistory.empty()
        a, b = self.data.offsets[u], self.data.offsets[u + 1]
        tl = self.data.timeline
        return UserHistory(np.asarray(tl["item"][a:b]), np.asarray(tl["category"][a:b]), np.asarray(tl["time"][a:b]),
                           np.asarray(tl["behavior"][a:b]), int(b - a))


@pytest.fixture(scope="module")
def data(make_prepared) -> PreparedData:  # type: ignore[no-untyped-def]
    return make_prepared(seed=2, n_users=60, n_items=300, n_categories=20, behaviors_per_user=150, recent=40,
                         impressions_per_user=8)


@pytest.mark.parametrize("name", MODELS)
def test_online_scores_equal_offline_evaluate(name: str, data: PreparedData, tmp_path: Path) -> None:
    _replay_equals_offline(name, data, tmp_path)


@pytest.mark.parametrize("name", ["din", "sim_hard"])
def test_counting_features_online_equal_offline(name: str, data: PreparedData, tmp_path: Path) -> None:
    """The scorer computes the counting features from the store's window as the loader did from the timeline
    (long_len 100 < the 150-behavior histories, so the window's lower end matters)."""
    model = _replay_equals_offline(name, data, tmp_path, count_features="all")
    assert "counts" in model.fields


def _replay_equals_offline(name: str, data: PreparedData, tmp_path: Path, **settings: object) -> torch.nn.Module:
    cfg = resolve_config(name, {"epochs": 1, "batch_size": 64, "compile": False, "long_len": 100, "short_len": 20,
                                **settings})
    fit(data, cfg, tmp_path / "run", show_progress=False, log=lambda s: None)
    model, cfg, _ = load_run(tmp_path / "run")
    loader = BatchLoader(data, "test", model.fields, 4096, cfg.train.short_len, long_len=cfg.train.long_len)
    offline, _, _ = predict(model, loader)

    export_package(tmp_path / "run", tmp_path / "pkg")
    scorer = Scorer(load_package(tmp_path / "pkg"), TimelineStore(data))  # type: ignore[arg-type]
    s = data.samples("test")
    users = data.vocab("user")["raw"].cast(str).to_list()
    items = data.vocab("item")["raw"].cast(str).to_list()
    user, item, t = np.asarray(s.user), np.asarray(s.item), np.asarray(s.time)
    online = np.zeros(len(user))
    keys = user.astype(np.int64) * (t.max() + 1) + t  # one request per (user, time): its candidates together
    for key in np.unique(keys):
        rows = np.flatnonzero(keys == key)
        res = scorer.score(users[user[rows[0]] - 2], [items[i - 2] for i in item[rows]], int(t[rows[0]]))
        online[rows] = res.logits
        assert not res.unknown_candidates
    np.testing.assert_allclose(online, offline, rtol=0, atol=1e-5)
    cold = scorer.score("nobody-ever", [items[0], "never-seen-item"], int(t.max()))  # explicit cold start
    assert cold.cold_user and cold.unknown_candidates == [1] and np.isfinite(cold.logits).all()
    return model


def test_cold_users_and_unknown_items_are_flagged_not_errors(data: PreparedData, tmp_path: Path) -> None:
    fit(data, resolve_config("sim_hard", {"epochs": 1, "compile": False}), tmp_path / "run", show_progress=False,
        log=lambda s: None)
    export_package(tmp_path / "run", tmp_path / "pkg")
    scorer = Scorer(load_package(tmp_path / "pkg"), TimelineStore(data))  # type: ignore[arg-type]
    known = data.vocab("item")["raw"].cast(str).to_list()[0]
    res = scorer.score("nobody-ever", [known, "never-seen-item"], 1_700_000_000_000)
    assert res.cold_user and res.history_length == 0 and res.unknown_candidates == [1]
    assert len(res.scores) == 2 and all(0 < x < 1 for x in res.scores)
