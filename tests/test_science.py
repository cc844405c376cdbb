"""Known-answer tests: the pipeline finds a planted signal and cannot see the future."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from userlens.data.prepare import prepare, sources_from_files
from userlens.data.prepared import PreparedData
from userlens.synthetic import leakage_log, planted_interest_log
from userlens.training.config import resolve_config
from userlens.training.evaluate import evaluate_run
from userlens.training.trainer import fit

QUIET = {"show_progress": False, "log": lambda s: None}


def _prepared(log, d: Path) -> PreparedData:  # type: ignore[no-untyped-def]
    p = log.write(d / "raw")
    prepare(sources_from_files(p["behaviors"], p["impressions"], p["items"]), d / "data", log=lambda s: None)
    return PreparedData(d / "data")


def test_din_finds_the_planted_recent_interest_avgpool_misses_it(tmp_path: Path) -> None:
    data = _prepared(planted_interest_log(n_users=600, n_items=600, n_categories=40, impressions_per_user=50,
                                          seed=11), tmp_path)
    auc = {}
    for name in ("avgpool", "din"):
        cfg = resolve_config(name, {"epochs": 4, "batch_size": 256, "compile": False})
        fit(data, cfg, tmp_path / name, **QUIET)
        auc[name] = evaluate_run(tmp_path / name)["auc"]
    assert auc["din"] > 0.8, auc
    assert auc["din"] - auc["avgpool"] > 0.1, auc


def _leaky_copy(data: PreparedData, dest: Path) -> PreparedData:
    """The same prepared data, but each history also holds the behaviors at the sample's own time (<= t)."""
    import shutil

    shutil.copytree(data.path, dest)
    tl = np.asarray(data.timeline["time"])
    for split in ("train", "valid", "test"):
        s = data.samples(split)
        cut, t = np.asarray(s.cutoff).copy(), np.asarray(s.time)
        end = data.offsets[np.asarray(s.user) + 1]
        while True:
            step = (cut < end) & (tl[np.minimum(cut, len(tl) - 1)] <= t)
            if not step.any():
                break
            cut[step] += 1
        np.save(dest / "samples" / split / "cutoff.npy", cut)
    # the edit is deliberate here: re-describe the changed files, or the integrity check refuses them
    import json

    from userlens.artifacts import describe, seal

    meta = json.loads((dest / "meta.json").read_text())
    meta["files"].update(describe(dest, [f"samples/{s}/cutoff.npy" for s in ("train", "valid", "test")]))
    (dest / "meta.json").write_text(json.dumps(seal(meta)))
    return PreparedData(dest)


def test_no_label_leakage(tmp_path: Path) -> None:
    """Labels are coin flips; each click is also a behavior at the impression's own time.

    A correct pipeline stays near AUC 0.5. The control run, whose histories include the
    behaviors at the impression's own timestamp (``<=`` instead of ``<``), scores far
    above: so this test can fail.
    """
    log = leakage_log(n_users=200, n_items=100, behaviors_per_user=10, impressions_per_user=40, seed=5)
    data = _prepared(log, tmp_path)
    cfg = resolve_config("din", {"epochs": 5, "batch_size": 128, "lr": 0.01, "compile": False})
    fit(data, cfg, tmp_path / "run", **QUIET)
    honest = evaluate_run(tmp_path / "run")["auc"]
    assert abs(honest - 0.5) < 0.07, honest

    leaky = _leaky_copy(data, tmp_path / "leaky")
    fit(leaky, cfg, tmp_path / "leaky_run", **QUIET)
    assert evaluate_run(tmp_path / "leaky_run")["auc"] > 0.75


def test_no_label_leakage_into_the_zero_parameter_baselines(tmp_path: Path) -> None:
    """The same coin-flip labels: `popularity` counts only behaviors strictly before the sample and
    `history_match` reads only the history range, so both stay near 0.5. Controls: counting the
    behaviors *at* the sample's time, or histories that include them, scores far above."""
    from userlens.metrics import auc

    log = leakage_log(n_users=200, n_items=100, behaviors_per_user=10, impressions_per_user=40, seed=5)
    data = _prepared(log, tmp_path)
    for name in ("popularity", "history_match"):
        fit(data, resolve_config(name), tmp_path / name, **QUIET)
        assert abs(evaluate_run(tmp_path / name)["auc"] - 0.5) < 0.05, name

    s = data.samples("test")
    item, t, y = np.asarray(s.item), np.asarray(s.time), np.asarray(s.label)
    tl_item, tl_time = np.asarray(data.timeline["item"]), np.asarray(data.timeline["time"])
    at_or_before = np.array([((tl_item == i) & (tl_time <= u)).sum() for i, u in zip(item, t)])  # `<=`
    leak = at_or_before - data.item_counts.before(item, t)  # what counting `<=` would add: the click itself
    assert auc(y, leak) > 0.9
    leaky = _leaky_copy(data, tmp_path / "leaky")
    fit(leaky, resolve_config("history_match"), tmp_path / "leaky_match", **QUIET)
    assert evaluate_run(tmp_path / "leaky_match")["auc"] > 0.75
