"""Lifelong known answers: the signal sits hundreds of behaviors back, the recent window is noise."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from userlens.data.prepare import prepare, sources_from_files
from userlens.data.prepared import PreparedData
from userlens.models.registry import list_models
from userlens.synthetic import lifelong_interest_log
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


# Measured on this log (benchmarks/RESULTS.md): sim_soft, muse ~0.97, qin ~0.91, twin ~0.81, eta ~0.77.
# twin and eta attend with softmax multi-head attention, which learns the "how many matches" signal
# more slowly than DIN's unnormalised unit on 10k samples; their bar is lower, not absent.
SLOW_BARS = {"sim_soft": 0.85, "muse": 0.85, "qin": 0.85, "twin": 0.7, "eta": 0.7}


def test_every_lifelong_model_is_covered() -> None:
    lifelong_names = {e.name for e in list_models()} - {"avgpool", "din", "dien", "bst", "tin"}
    assert lifelong_names == {"sim_hard", "sdim", "dare"} | set(SLOW_BARS)


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
