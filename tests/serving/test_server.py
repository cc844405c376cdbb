"""`userlens serve`: options refused before anything starts; a real multi-worker server's metrics and logs."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from typer.testing import CliRunner

from userlens.cli import app as cli
from userlens.errors import ConfigError
from userlens.serving.package import export_package
from userlens.serving.server import check_serve_options, serve
from userlens.serving.store.local_redis import free_port
from userlens.training.config import resolve_config
from userlens.training.trainer import fit


def test_defaults_pass() -> None:
    check_serve_options(8000, 1, 1000, 2.0)
    check_serve_options(8000, 1, 1000, 0.0)  # 0 = never reload
    check_serve_options(8000, 4, 1000, 2.0, threads=1, log_level="warning")


@pytest.mark.parametrize(("opts", "match"), [
    ({"reload_seconds": float("nan")}, r"--reload-seconds must be a finite number in \[0, 86400\]"),
    ({"reload_seconds": float("inf")}, r"--reload-seconds must be a finite number"),
    ({"reload_seconds": -1.0}, r"--reload-seconds must be a finite number in \[0,"),
    ({"max_candidates": -1}, r"--max-candidates must be in \[1, 100,000\]"),
    ({"max_candidates": 0}, r"--max-candidates must be in \[1,"),
    ({"workers": 100_000}, r"--workers must be in \[1, 256\]"),
    ({"workers": 0}, r"--workers must be in \[1, 256\]"),
    ({"port": 70_000}, r"--port must be in \[1, 65,535\]"),
    ({"threads": 0}, r"--threads must be in \[1, 1,024\] \(requests one worker scores at once\)"),
    ({"log_level": "loud"}, r"--log-level 'loud': expected one of critical, error, warning, info, debug"),
])
def test_serve_refuses_options_it_would_misbehave_with(opts: dict, match: str) -> None:
    kw = {"port": 8000, "workers": 1, "max_candidates": 1000, "reload_seconds": 2.0, "threads": 40,
          "log_level": "info", **opts}
    with pytest.raises(ConfigError, match=match):
        check_serve_options(**kw)
    with pytest.raises(ConfigError, match=match):  # the library entry checks too, before loading the package
        serve("no-such-package", "lmdb:///nowhere", **kw)


def test_the_serving_line_comes_only_after_the_package_and_store_are_checked(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["serve", str(tmp_path / "no-package"), "--store", f"lmdb://{tmp_path}/s"])
    assert r.exit_code == 1 and "not a model package" in r.output
    assert "on http://" not in r.output  # printed before loading anything, it claimed a server that never ran


def _get(url: str, body: dict | None = None, token: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:  # a new connection each time: any worker answers
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _per_worker(metrics_dir: Path, scratch: Path) -> list[float]:
    """Score requests each worker counted, read from its own file (one ``counter_<pid>.db`` per process)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    counts = []
    for f in sorted(metrics_dir.glob("counter_*.db")):
        one = scratch / f"{f.stem}-{time.monotonic_ns()}"
        one.mkdir(parents=True)
        shutil.copy(f, one)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(one))
        counts.append(registry.get_sample_value("userlens_requests_total",
                                                {"endpoint": "/v1/score", "status": "200"}) or 0.0)
    return counts


def test_two_workers_metrics_are_summed_and_requests_logged(make_prepared, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = make_prepared(seed=11, n_users=10, n_items=60, n_categories=5, behaviors_per_user=30, recent=10,
                         impressions_per_user=3)
    fit(data, resolve_config("sim_hard", {"epochs": 1, "compile": False}), tmp_path / "run", show_progress=False,
        log=lambda s: None)
    export_package(tmp_path / "run", tmp_path / "pkg")
    url = f"lmdb://{tmp_path}/store"
    r = CliRunner().invoke(cli, ["load-store", str(data.path), "--store", url, "--package", str(tmp_path / "pkg")])
    assert r.exit_code == 0, r.output
    port = free_port()
    exe = Path(sys.executable).with_name("userlens")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "userlens.cli"]
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "USERLENS_TOKEN": "t", "TMPDIR": str(tmp_path / "tmp"), "OMP_NUM_THREADS": "1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd + ["serve", str(tmp_path / "pkg"), "--store", url, "--port", str(port),
                                       "--workers", "2", "--reload-seconds", "0"],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if _get(f"{base}/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        while log.read_text().count("Application startup complete") < 2:  # both workers up
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        [metrics_dir] = list((tmp_path / "tmp").glob("userlens-metrics-*"))
        user = str(data.vocab("user")["raw"][0])
        sent = 0
        while sent < 200 and not all(_per_worker(metrics_dir, tmp_path / "copy")):  # until both have answered
            with ThreadPoolExecutor(8) as pool:
                codes = list(pool.map(lambda _: _get(f"{base}/v1/score", {"user_id": user, "candidates": [1, 2]},
                                                     "t")[0], range(20)))
            assert codes == [200] * 20
            sent += 20
        counts = _per_worker(metrics_dir, tmp_path / "copy")
        assert len(counts) == 2 and sum(counts) == sent
        for _ in range(6):  # whichever worker answers the scrape sums both
            status, text = _get(f"{base}/metrics")
            assert status == 200
            assert f'userlens_requests_total{{endpoint="/v1/score",status="200"}} {sent:.1f}' in text, (counts, text)
        lines = log.read_text()
        assert re.search(r"serving .* on http://127\.0\.0\.1:\d+ .*2 worker\(s\)", lines)
        assert lines.count('"POST /v1/score HTTP/1.1" 200') == sent  # the access log
    finally:
        os.kill(proc.pid, signal.SIGTERM)  # the supervisor stops its workers, then removes the metrics folder
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not list((tmp_path / "tmp").glob("userlens-metrics-*"))
