"""Lifelong known answers: the signal sits hundreds of behaviors back, the recent window is noise.

Two generators: ``lifelong_interest_log`` (the first known answer, tuned settings below) and the
independently built family ``FAMILY`` (different catalogue, category shape, noise structure, how many
and how early the interest clicks are), on which every lifelong model must find the signal with its
**default** config and the **default** training settings.
"""

from __future__ import annotations

import dataclasses
import resource
from collections.abc import Callable
from pathlib import Path

import pytest

from userlens.data.prepare import prepare, sources_from_files
from userlens.data.prepared import PreparedData
from userlens.models.registry import list_models
from userlens.metrics import auc
from userlens.synthetic import FAMILY, HELD_OUT, interest_family_log, lifelong_interest_log
from userlens.training.config import resolve_config
from userlens.training.evaluate import evaluate_run
from userlens.training.trainer import fit

QUIET = {"show_progress": False, "log": lambda s: None}
SETTINGS = {"epochs": 5, "batch_size": 256, "lr": 3e-3, "compile": False, "patience": 1}


@pytest.fixture(scope="module")
def lifelong(tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    d = tmp_path_factory.mktemp("lifelong")
    p = lifelong_interest_log(n_users=300, seed=3).write(d / "raw")
    prepare(sources_from_files(p["behaviors"], p["impressions"], p["items"]), d / "data", log=lambda s: None)
    return PreparedData(d / "data")


def _auc(data: PreparedData, name: str, out: Path) -> float:
    fit(data, resolve_config(name, SETTINGS), out / name, **QUIET)
    return evaluate_run(out / name)["auc"]


def test_din_on_the_recent_window_stays_near_chance(lifelong: PreparedData, tmp_path: Path) -> None:
    assert abs(_auc(lifelong, "din", tmp_path) - 0.5) < 0.08


@pytest.mark.parametrize("name", ["sim_hard", "sdim", "dare"])  # category, hashing and embedding-top-k GSUs
def test_lifelong_models_find_the_far_interest(lifelong: PreparedData, name: str, tmp_path: Path) -> None:
    assert _auc(lifelong, name, tmp_path) >= 0.85


# Measured on this log (seed 3; model docstrings, benchmarks/bench_variants.py): sim_soft, muse ~0.97, qin ~0.91,
# twin ~0.82, eta ~0.81.
# twin and eta attend with softmax multi-head attention, which learns the "how many matches" signal
# more slowly than DIN's unnormalised unit on 10k samples; their bar is lower, not absent.
SLOW_BARS = {"sim_soft": 0.85, "muse": 0.85, "qin": 0.85, "twin": 0.7, "eta": 0.7}


def test_every_lifelong_model_is_covered() -> None:
    short_window = {"avgpool", "din", "dien", "bst", "tin"}
    heuristics = {"popularity", "history_match"}  # no training; tested in tests/models/test_baselines.py
    lifelong_names = {e.name for e in list_models()} - short_window - heuristics
    assert lifelong_names == {"sim_hard", "sdim", "dare"} | set(SLOW_BARS)
    assert lifelong_names == set(LIFELONG)  # the family tests below cover every one


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW_BARS))
def test_every_lifelong_model_beats_the_short_window(lifelong: PreparedData, name: str, tmp_path: Path) -> None:
    assert _auc(lifelong, name, tmp_path) >= SLOW_BARS[name]


@pytest.mark.parametrize("name", ["sim_soft", "sdim"])
def test_one_epoch_over_100k_behavior_histories_fits_in_memory(name: str, tmp_path: Path) -> None:
    """3 users × 100,000 behaviors, long_len 100,000: every sample's GSU scans its whole history."""
    p = lifelong_interest_log(n_users=3, n_items=5000, behaviors_per_user=100_000, impressions_per_user=60,
                              split=(0.2, 0.2), seed=1).write(tmp_path / "raw")
    prepare(sources_from_files(p["behaviors"], p["impressions"], p["items"]), tmp_path / "data", log=lambda s: None)
    data = PreparedData(tmp_path / "data")
    assert (data.samples("train").cutoff - data.offsets[data.samples("train").user]).min() >= 99_900
    res = fit(data, resolve_config(name, {"epochs": 1, "batch_size": 64, "long_len": 100_000, "compile": False}),
              tmp_path / "run", **QUIET)
    assert res.epochs_run == 1
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # whole test process, KiB → GiB
    assert peak_gib < 6, f"peak RSS {peak_gib:.1f} GiB"


# ---- the family (userlens.synthetic.FAMILY): default model configs, default training settings ----

LIFELONG = ("sim_hard", "sim_soft", "eta", "sdim", "twin", "dare", "muse", "qin")
#: members whose oracle reaches test AUC >= 0.9 (``noisy-labels`` is below on purpose and is benchmarked only)
SIGNAL_MEMBERS = ("few-early-clicks", "small-catalogue", "long-noise", "sparse-items", "very-long-noise")
#: members no default was tuned on (userlens.synthetic.HELD_OUT): the slow family test asserts the same bar there
HELD_OUT_MEMBERS = tuple(m.name for m in HELD_OUT)
#: TrainConfig defaults (epochs 10, batch 512, Adam lr 1e-3, patience 3); compile off and one thread change
#: speed only (two threads on a shared 2-core machine made one run 13x slower: 246 s vs 18 s)
DEFAULTS = {"compile": False, "threads": 1}


def _family_data(root: Path, member: str, seed: int = 1, **changes: object) -> tuple[PreparedData, float]:
    """The prepared member log and the oracle's test AUC (``changes``: InterestFamily fields to override)."""
    m = dataclasses.replace(next(f for f in FAMILY + HELD_OUT if f.name == member), **changes)
    log = interest_family_log(m, seed=seed)
    d = root / m.name
    p = log.write(d / "raw")
    prepare(sources_from_files(p["behaviors"], p["impressions"], p["items"]), d / "data", log=lambda s: None)
    test = (log.impressions["split"] == "test").to_numpy()
    return PreparedData(d / "data"), auc(log.impressions["label"].to_numpy()[test], log.oracle[test])


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[PreparedData, float]]:
    cache: dict[str, tuple[PreparedData, float]] = {}

    def get(member: str) -> tuple[PreparedData, float]:
        if member not in cache:
            cache[member] = _family_data(tmp_path_factory.mktemp("family"), member)
        return cache[member]

    return get


def _default_auc(data: PreparedData, name: str, out: Path, **train: object) -> float:
    fit(data, resolve_config(name, {**DEFAULTS, **train}), out / name, **QUIET)
    return evaluate_run(out / name)["auc"]


def test_the_family_is_diverse_and_its_oracle_is_strong_where_intended(tmp_path: Path) -> None:
    shapes = {(m.n_items, m.n_categories, m.interest_clicks, m.noise_len) for m in FAMILY}
    assert len(shapes) == len(FAMILY)
    for m in FAMILY:
        _, oracle = _family_data(tmp_path, m.name)
        assert (oracle >= 0.9) == (m.name in SIGNAL_MEMBERS), (m.name, oracle)


#: a small catalogue member at half its users (~14k training samples): the cheap default-suite check
SMALL = {"n_users": 600}


@pytest.mark.parametrize("name", ["sim_hard", "qin"])  # the cheapest to train: category GSU, no scan
def test_cheap_lifelong_models_find_the_signal_with_default_settings(name: str, tmp_path: Path,
                                                                     record_property: Callable) -> None:
    data, oracle = _family_data(tmp_path, "small-catalogue", **SMALL)
    got = _default_auc(data, name, tmp_path)
    record_property("auc", got)
    assert oracle >= 0.9 and got >= 0.85, (got, oracle)


#: (model, member) pairs measured below the bar (test AUC, seed 1, defaults of 2026-12-02): kept visible as non-strict
#: xfails so the gap stays on record. SDIM's bucket sums hold no time; on very-long-noise only the timing of a
#: user's same-category behaviors tells interest from noise (the exact same-category count over the whole history
#: reaches 0.78 there), and the models whose exact unit reads time gaps reach 0.87-0.93 (models/sdim.py).
SHORT_OF_BAR = {("sdim", "very-long-noise"): 0.772}
FAMILY_CASES = [pytest.param(name, member, marks=pytest.mark.xfail(
    strict=False, reason=f"measured {SHORT_OF_BAR[name, member]:.3f}")) if (name, member) in SHORT_OF_BAR
    else pytest.param(name, member) for name in LIFELONG for member in SIGNAL_MEMBERS + HELD_OUT_MEMBERS]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "member"), FAMILY_CASES)
def test_every_lifelong_model_finds_the_signal_on_the_family(family: Callable, name: str, member: str,
                                                             tmp_path: Path, record_property: Callable) -> None:
    data, oracle = family(member)
    got = _default_auc(data, name, tmp_path)
    record_property("auc", got)
    record_property("oracle", oracle)
    assert oracle >= 0.9 and got >= 0.85, (got, oracle)


@pytest.mark.slow
@pytest.mark.parametrize("member", SIGNAL_MEMBERS)
def test_din_stays_well_below_the_oracle_on_the_family(family: Callable, member: str, tmp_path: Path,
                                                       record_property: Callable) -> None:
    data, oracle = family(member)
    got = _default_auc(data, "din", tmp_path)
    record_property("auc", got)
    record_property("oracle", oracle)
    assert got <= oracle - 0.25, (got, oracle)  # the recent window holds no signal
