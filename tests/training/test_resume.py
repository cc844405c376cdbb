"""Kill a training run mid-epoch, resume it, and get the weights of a run that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from userlens.data.prepare import prepare, sources_from_files
from userlens.data.prepared import PreparedData
from userlens.errors import InputError
from userlens.synthetic import planted_interest_log
from userlens.training.checkpoint import STATE_META, partial_dir
from userlens.training.config import resolve_config
from userlens.training.trainer import fit

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SETTINGS = ["--set", "epochs=4", "--set", "patience=10", "--set", "threads=1", "--set", "compile=false",
            "--set", "batch_size=32", "--set", "lr=0.003"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("resume")
    p = planted_interest_log(n_users=300, n_items=300, n_categories=20, behaviors_per_user=60,
                             impressions_per_user=30, seed=4).write(d / "raw")
    prepare(sources_from_files(p["behaviors"], p["impressions"], p["items"]), d / "data", log=lambda s: None)
    return d / "data"


def _train(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "userlens.cli", "train", str(data), "--model", "din", "--out", str(out),
            "--no-progress", *SETTINGS, *extra]


def _checkpoint_epoch(out: Path) -> int:
    try:
        return int(json.loads((partial_dir(out) / STATE_META).read_text())["progress"]["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def _start_and_stop_after_first_epoch(cmd: list[str], out: Path, sig: int) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while _checkpoint_epoch(out) < 1:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no checkpoint after 300 s"
        time.sleep(0.02)
    proc.send_signal(sig)  # during epoch 2 (of 4)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def _rows(run: Path) -> list[dict]:
    timing = {"train_seconds", "train_samples_per_s"}
    return [{k: v for k, v in json.loads(x).items() if k not in timing}
            for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_kill_9_then_resume_gives_the_uninterrupted_weights(data_dir: Path, tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    done = subprocess.run(_train(data_dir, ref), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

    run = tmp_path / "run"
    killed = _start_and_stop_after_first_epoch(_train(data_dir, run), run, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert not run.exists() and _checkpoint_epoch(run) >= 1  # nothing half-made at the run's path
    ev = subprocess.run([sys.executable, "-m", "userlens.cli", "evaluate", str(run)], env=ENV, capture_output=True,
                        text=True)
    assert ev.returncode == 1 and "interrupted" in ev.stderr and "--resume" in ev.stderr

    again = subprocess.run(_train(data_dir, run), env=ENV, capture_output=True, text=True)
    assert again.returncode == 1 and "--resume to continue it" in again.stderr  # never restarted silently

    resumed = subprocess.run(_train(data_dir, run, "--resume"), env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch" in resumed.stderr
    a, b = load_file(str(ref / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert _rows(run) == _rows(ref)
    assert not partial_dir(run).exists()


def test_sigint_keeps_the_checkpoint_and_says_how_to_resume(data_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    stopped = _start_and_stop_after_first_epoch(_train(data_dir, run), run, signal.SIGINT)
    assert stopped.returncode == 130
    lines = [x for x in stopped.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "kept the checkpoint after epoch" in lines[0] and "--resume" in lines[0]
    assert "Traceback" not in stopped.stderr
    resumed = subprocess.run([sys.executable, "-m", "userlens.cli", "train", str(data_dir), "--out", str(run),
                              "--resume", "--no-progress"], env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr  # --model may be omitted: the checkpoint has the config


def test_resume_refuses_another_config(data_dir: Path, tmp_path: Path) -> None:
    data = PreparedData(data_dir)
    cfg = resolve_config("avgpool", {"epochs": 1, "compile": False, "threads": 1})
    work = partial_dir(tmp_path / "r")
    from userlens.training import trainer

    calls = {"n": 0}
    real = trainer.save_checkpoint

    def stop_after_checkpoint(*a, **k):  # type: ignore[no-untyped-def]
        real(*a, **k)
        calls["n"] += 1
        raise KeyboardInterrupt

    trainer.save_checkpoint = stop_after_checkpoint
    try:
        with pytest.raises(Exception, match="kept the checkpoint after epoch 1"):
            fit(data, cfg, tmp_path / "r", show_progress=False, log=lambda s: None)
    finally:
        trainer.save_checkpoint = real
    assert (work / STATE_META).is_file()
    other = resolve_config("avgpool", {"epochs": 1, "compile": False, "threads": 1, "lr": 0.01})
    with pytest.raises(InputError, match="another config or other data"):
        fit(data, other, tmp_path / "r", resume=True, show_progress=False, log=lambda s: None)


def test_a_crashed_forced_retrain_leaves_the_old_run_intact(data_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = subprocess.run(_train(data_dir, run), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    killed = _start_and_stop_after_first_epoch(_train(data_dir, run, "--force", "--set", "lr=0.01"), run,
                                               signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # config.json never rewritten early


def test_a_second_writer_is_refused(data_dir: Path, tmp_path: Path) -> None:
    from userlens.artifacts import DirLock

    with DirLock(tmp_path / "run"):
        cfg = resolve_config("avgpool", {"epochs": 1, "compile": False})
        with pytest.raises(InputError, match=r"another userlens process \(pid \d+\) is writing it"):
            fit(PreparedData(data_dir), cfg, tmp_path / "run", show_progress=False, log=lambda s: None)
    assert not (tmp_path / "run").exists() and not partial_dir(tmp_path / "run").exists()


def test_a_failed_train_leaves_no_directory(data_dir: Path, tmp_path: Path) -> None:
    cfg = resolve_config("avgpool", {"epochs": 1, "compile": False, "lr": 1e30})
    with pytest.raises(Exception, match="diverged|non-finite"):
        fit(PreparedData(data_dir), cfg, tmp_path / "run", show_progress=False, log=lambda s: None)
    assert not (tmp_path / "run").exists() and not partial_dir(tmp_path / "run").exists()
