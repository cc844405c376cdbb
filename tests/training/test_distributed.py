"""Training under torchrun (DDP, gloo): real launches of `torchrun -m userlens train` on a tiny prepared dir.

The default suite keeps three launches (~32 s on 2 cores): parity against one process, replicas, exact
gathered metrics, evaluate and export of the run and evaluate under torchrun; two "nodes" on loopback; every
registered model for a few DDP steps. The launches that kill or freeze a rank (and resume) are marked slow.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from userlens.data.prepared import PreparedData
from userlens.errors import ConfigError
from userlens.training.checkpoint import STATE_META, partial_dir
from userlens.training.config import resolve_config
from userlens.training.distributed import SINGLE, World, state_digest
from userlens.training.evaluate import evaluate_run
from userlens.training.trainer import fit

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
# a DIN whose output for a sample does not depend on the rest of its batch (no Dice / batch-norm statistics):
# then 2 ranks × half a batch must give one process's weights, up to float summation order
PER_SAMPLE = {"activation": "prelu", "attention_activation": "prelu", "batch_norm": "false"}
FAST = {"epochs": "2", "batch_size": "128", "compile": "false", "threads": "1", "lr": "0.003", **PER_SAMPLE}


def _sets(settings: dict[str, str]) -> list[str]:
    return [x for k, v in settings.items() for x in ("--set", f"{k}={v}")]


def _torchrun(*args: str, nproc: int = 2) -> list[str]:
    return [TORCHRUN, "--nproc-per-node", str(nproc), "--standalone", "-m", "userlens", *args]


def _train(data: Path, out: Path, settings: dict[str, str] = FAST, *extra: str) -> list[str]:
    return ["train", str(data), "--model", "din", "--out", str(out), "--no-progress", *_sets(settings), *extra]


def _run(cmd: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout, check=False)


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_world_comes_from_torchruns_environment() -> None:
    assert World.from_env({}) is SINGLE and World.from_env({"WORLD_SIZE": "1", "RANK": "0"}) is SINGLE
    w = World.from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert (w.rank, w.size, w.local_rank, w.is_main, w.distributed) == (3, 4, 1, False, True)
    with pytest.raises(ConfigError, match="RANK=4 does not fit WORLD_SIZE=4. Fix: launch with torchrun"):
        World.from_env({"WORLD_SIZE": "4", "RANK": "4"})
    with pytest.raises(ConfigError, match="not integers"):
        World.from_env({"WORLD_SIZE": "two"})


def test_two_ranks_train_like_one_process_and_the_run_reads_like_any_other(small_data: PreparedData,
                                                                          tmp_path: Path) -> None:
    """One launch: replicas bitwise equal, weights = one process's (global batch), validation metrics from every
    sample once (= single-process evaluation of the saved weights), evaluate / export of the run, and evaluate
    under torchrun."""
    run = tmp_path / "ddp"
    done = _run(_torchrun(*_train(small_data.path, run)))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("best epoch") == 1  # rank 0 alone speaks
    doc = json.loads((run / "config.json").read_text())
    digests = doc["distributed"]["replica_digests"]
    assert doc["distributed"]["world_size"] == 2 and len(digests) == 2 and digests[0] == digests[1]

    one = tmp_path / "one"
    cfg = resolve_config("din", FAST)
    fit(small_data, cfg, one, show_progress=False, log=lambda s: None)
    a, b = load_file(str(one / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert a.keys() == b.keys()
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-5  # summation order only
    ddp_rows, one_rows = _rows(run), _rows(one)
    assert [r["train_samples"] for r in ddp_rows] == [r["train_samples"] for r in one_rows]
    assert all(r["valid_n"] == len(small_data.samples("valid")) for r in ddp_rows)  # no padded duplicates

    best = ddp_rows[doc["best_epoch"] - 1]
    single = evaluate_run(run, split="valid")  # one process, the saved weights
    for k in ("auc", "gauc", "logloss"):
        assert abs(single[k] - best[f"valid_{k}"]) < 1e-6
    test = _run(_torchrun("evaluate", str(run)))
    assert test.returncode == 0, test.stderr[-3000:]
    got = json.loads(test.stdout.strip().splitlines()[-1])
    want = evaluate_run(run)
    assert got["n"] == want["n"] == len(small_data.samples("test")) and abs(got["auc"] - want["auc"]) < 1e-6

    from userlens.serving.package import export_package, load_package

    export_package(run, tmp_path / "pkg")
    packaged = load_package(tmp_path / "pkg").model.state_dict()
    assert state_digest(packaged) == state_digest({k: torch.from_numpy(v) for k, v in b.items()})


def _workers(launcher: subprocess.Popen) -> dict[int, int]:
    """rank → pid of the worker processes a torchrun started (read from their environment)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(launcher.pid)], capture_output=True, text=True,
                         check=False).stdout.split()
    ranks = {}
    for pid in map(int, out):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        rank = [e[5:] for e in env if e.startswith(b"RANK=")]
        if rank:
            ranks[int(rank[0])] = pid
    return ranks


def _epoch(run: Path) -> int:
    try:
        return int(json.loads((partial_dir(run) / STATE_META).read_text())["progress"]["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def _start_and_hit_rank_1(cmd: list[str], run: Path, sig: int, timeout: float) -> tuple[subprocess.CompletedProcess,
                                                                                        float]:
    """Start ``cmd`` (a torchrun), send ``sig`` to rank 1 once epoch 1's checkpoint exists; (result, seconds from
    the signal to the launcher's exit)."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while _epoch(run) < 1:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no checkpoint after 240 s"
        time.sleep(0.05)
    workers = _workers(proc)
    os.kill(workers[1], sig)
    t0 = time.time()
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if sig == signal.SIGSTOP:
            os.kill(workers[1], signal.SIGKILL) if Path(f"/proc/{workers[1]}").exists() else None
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr), time.time() - t0


@pytest.mark.slow
def test_a_killed_rank_ends_the_job_and_resume_gives_the_uninterrupted_weights(small_data: PreparedData,
                                                                               tmp_path: Path) -> None:
    settings = {**FAST, "epochs": "4", "patience": "10", "batch_size": "32"}
    ref = tmp_path / "ref"
    done = _run(_torchrun(*_train(small_data.path, ref, settings)))
    assert done.returncode == 0, done.stderr[-3000:]

    run = tmp_path / "run"
    killed, secs = _start_and_hit_rank_1(_torchrun(*_train(small_data.path, run, settings)), run, signal.SIGKILL, 120)
    assert killed.returncode != 0 and secs < 60
    assert "rank      : 1" in killed.stderr and "Signal 9 (SIGKILL)" in killed.stderr  # torchrun names the rank
    assert not run.exists() and _epoch(run) >= 1  # rank 0's checkpoint is kept

    resumed = _run(_torchrun(*_train(small_data.path, run, settings, "--resume")))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming after epoch" in resumed.stderr
    a, b = load_file(str(ref / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_frozen_rank_ends_the_job_after_the_timeout_with_a_clear_error(small_data: PreparedData,
                                                                         tmp_path: Path) -> None:
    run = tmp_path / "run"
    settings = {**FAST, "epochs": "6", "patience": "10", "batch_size": "32"}
    cmd = _torchrun(*_train(small_data.path, run, settings, "--dist-timeout", "10"))
    frozen, secs = _start_and_hit_rank_1(cmd, run, signal.SIGSTOP, 120)
    assert frozen.returncode != 0 and secs < 90
    assert "rank 0 of 2: lost the other ranks" in frozen.stderr and "--resume" in frozen.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_nodes_on_loopback(small_data: PreparedData, tmp_path: Path) -> None:
    """`--nnodes 2` with a c10d rendezvous on 127.0.0.1: two launchers of one process each train one model."""
    port, run = _free_port(), tmp_path / "run"
    node = [TORCHRUN, "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-id", "t",
            "--rdzv-endpoint", f"127.0.0.1:{port}"]
    procs = [subprocess.Popen([*node, "--node-rank", str(i), "-m", "userlens", *_train(small_data.path, run)],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    digests = json.loads((run / "config.json").read_text())["distributed"]["replica_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]


def test_every_registered_model_trains_under_ddp_with_equal_replicas(small_data: PreparedData,
                                                                     tmp_path: Path) -> None:
    script = Path(__file__).with_name("ddp_every_model.py")
    done = _run([TORCHRUN, "--nproc-per-node", "2", "--standalone", str(script), str(small_data.path),
                 str(tmp_path)], timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    from userlens.models.registry import list_models

    assert [r["model"] for r in rows] == [e.name for e in list_models()]
    bad = [r for r in rows if "error" in r]
    assert not bad, bad
    learned = [r for r in rows if r["digests"] is not None]  # the zero-parameter baselines train nothing
    assert learned and all(len(r["digests"]) == 2 and r["digests"][0] == r["digests"][1] for r in learned)
