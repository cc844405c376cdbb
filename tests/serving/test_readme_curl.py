"""The README's "Serving" section works as written.

Its ``userlens`` commands are run from a scratch folder (the demo itself with training cut to two
batches: same generated log, same ids, same folders), its ``serve`` command as a real server
process on a free port, and each ``curl`` example through bash, only ``127.0.0.1:8000`` rewritten.
An example ending in ``# → CODE`` must get that status, every other one 200; bodies must be JSON
(``/metrics``: Prometheus text).
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from userlens import demo
from userlens.cli import app
from userlens.data.prepare import prepare, sources_from_files
from userlens.serving.store.local_redis import free_port
from userlens.synthetic import planted_interest_log
from userlens.training.config import TrainConfig, resolve_config

README = Path(__file__).resolve().parents[2] / "README.md"
ADDRESS = "127.0.0.1:8000"  # what the README's examples call; the only text rewritten
runner = CliRunner()


def serving_commands() -> list[str]:
    """Every command of the ```bash blocks of README's "## Serving" section, continuation lines kept."""
    text = README.read_text()
    start = text.index("\n## Serving\n")
    section = text[start: text.index("\n## ", start + 1)]
    commands: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        continued = False
        for line in block.splitlines():
            if continued:
                commands[-1] += "\n" + line
            elif line.strip() and not line.lstrip().startswith("#"):
                commands.append(line)
            continued = line.rstrip().endswith("\\")
    return commands


def words(command: str) -> list[str]:
    return shlex.split(command.replace("\\\n", " "), comments=True)


def split_env(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """``A=1 B=2 cmd args`` → ({A: 1, B: 2}, [cmd, args])."""
    env: dict[str, str] = {}
    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):
        name, _, value = argv.pop(0).partition("=")
        env[name] = value
    return env, argv


def userlens_commands(verb: str) -> list[tuple[dict[str, str], list[str]]]:
    """The section's ``userlens VERB`` commands, but those that need a Redis Cluster (the cluster tests run those)."""
    found = [split_env(words(c)) for c in serving_commands() if not c.startswith("curl") and "redis-cluster://" not in c]
    return [(env, argv) for env, argv in found if argv[:2] == ["userlens", verb]]


def fast_demo(out: Path) -> None:
    """``userlens demo --out OUT`` with training cut to 2 batches of din (the same log, data and run layout)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(demo, "resolve_config", lambda name, overrides: resolve_config(
            name, {**overrides, "limit_batches": 2, "compile": False, "threads": 1}))
        demo.run_demo(out, epochs=1, models=("din",), console=Console(file=io.StringIO()))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder where the README's demo, export and load-store commands have run, as written."""
    d = tmp_path_factory.mktemp("readme")
    [(_, demo_cmd)] = userlens_commands("demo")
    assert demo_cmd[2] == "--out", demo_cmd
    fast_demo(d / demo_cmd[3])
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(d)
        for verb in ("export", "load-store"):
            [(env, argv)] = userlens_commands(verb)
            for name, value in env.items():
                mp.setenv(name, value)
            r = runner.invoke(app, argv[1:])
            assert r.exit_code == 0, f"{' '.join(argv)}: {r.output}"
            if verb == "load-store":
                summary = json.loads(r.stdout.strip().splitlines()[-1])
                assert summary["users"] == 1000 and summary["loaded_behaviors"] == summary["behaviors"] == 200_000
    return d


@pytest.fixture(scope="module")
def server(workdir: Path) -> Iterator[int]:
    """The README's ``serve`` command on a free port; yields the port, always stopped afterwards."""
    [(env, argv)] = userlens_commands("serve")
    assert argv[argv.index("--port") + 1] == ADDRESS.split(":")[1], argv
    port = free_port()
    argv[argv.index("--port") + 1] = str(port)
    exe = Path(sys.executable).with_name("userlens")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "userlens.cli"]
    with open(workdir / "serve.log", "wb") as log:
        proc = subprocess.Popen(cmd + argv[1:], cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **env},
                                start_new_session=True)  # its own process group: nothing it starts outlives the test
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"userlens serve exited with {proc.returncode}: {(workdir / 'serve.log').read_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"userlens serve did not answer /healthz in 60 s: {(workdir / 'serve.log').read_text()}")
            time.sleep(0.2)
        yield port
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def run_curl(command: str, port: int, tmp: Path) -> tuple[int, str]:
    """Run one README example through bash; a ``curl`` wrapper first on PATH records the status and body."""
    real = shutil.which("curl")
    wrapper = tmp / "bin" / "curl"
    wrapper.parent.mkdir(exist_ok=True)
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(real)} "$@" --max-time 30 -o "$BODY" -w "%{{http_code}}"\n')
    wrapper.chmod(0o755)
    body = tmp / "body"
    body.unlink(missing_ok=True)
    r = subprocess.run(["bash", "-c", command.replace(ADDRESS, f"127.0.0.1:{port}")], capture_output=True,
                       text=True, timeout=60, env={**os.environ, "PATH": f"{wrapper.parent}:{os.environ['PATH']}",
                                                   "BODY": str(body)})
    assert r.returncode == 0 and r.stdout.isdigit(), f"{command}\n-> exit {r.returncode}: {r.stdout} {r.stderr}"
    return int(r.stdout), body.read_text()


def test_readme_curl_examples_answer_as_documented(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not on PATH: the README's examples cannot be run (apt-get install curl)")
    examples = [c for c in serving_commands() if c.startswith("curl")]
    assert examples and all(c.count(ADDRESS) == 1 for c in examples), examples
    port = request.getfixturevalue("server")
    seen: dict[str, set[int]] = {}
    warm_known = cold_unknown = False
    for command in examples:
        documented = re.search(r"#\s*→\s*(\d{3})", command.splitlines()[-1])
        expected = int(documented.group(1)) if documented else 200
        status, body = run_curl(command, port, tmp_path)
        assert status == expected, f"{command}\n-> HTTP {status} (README: {expected}): {body}"
        path = re.search(rf"{ADDRESS}(/\S*)", command).group(1)
        seen.setdefault(path, set()).add(status)
        if path == "/metrics":
            assert "userlens_requests_total" in body
            continue
        out = json.loads(body)  # every JSON answer, errors too ({"detail": ...})
        argv = words(command)
        sent = json.loads(argv[argv.index("-d") + 1]) if status == 200 and "-d" in argv else None
        if path == "/v1/score" and status == 200:
            assert len(out["scores"]) == len(sent["candidates"]) and all(0 < s < 1 for s in out["scores"])
            warm_known |= not out["cold_user"] and out["history_length"] > 0 and out["unknown_candidates"] == []
            cold_unknown |= out["cold_user"] and out["history_length"] == 0 and out["unknown_candidates"] != []
        if path == "/v1/events" and status == 200:
            assert out["appended"] + out["duplicates"] == len(sent["events"]) and out["unknown_items"] == 0
        if path == "/v1/embedding":
            assert not out["cold_user"] and len(out["embedding"]) > 0
        if path == "/healthz":
            assert set(out) == {"status", "model", "package", "weights", "store"} and out["status"] == "ok"
        if status == 401:
            assert "bearer token" in out["detail"]
    assert warm_known, "no example scores known items for a user with history (ids missing from the demo data?)"
    assert cold_unknown, "no example shows the cold-start flags (cold_user, unknown_candidates)"
    assert seen == {"/healthz": {200}, "/v1/score": {200, 401, 413, 422}, "/v1/events": {200, 401},
                    "/v1/embedding": {200}, "/metrics": {200}}


def test_load_store_refuses_data_of_another_vocabulary(workdir: Path, tmp_path: Path) -> None:
    p = planted_interest_log(n_users=20, n_items=50, n_categories=5, behaviors_per_user=30,
                             impressions_per_user=5, seed=3).write(tmp_path / "raw")
    prepare(sources_from_files(p["behaviors"], p["impressions"], p["items"]), tmp_path / "data", log=lambda s: None)
    r = runner.invoke(app, ["load-store", str(tmp_path / "data"), "--store", f"lmdb://{tmp_path / 'store'}",
                            "--package", str(workdir / "runs/demo/package")])
    assert r.exit_code == 1
    assert "not the prepared data" in r.output and "vocabulary fingerprints differ" in r.output
    assert "Traceback" not in r.output


def test_store_commands_help_renders_and_names_the_default_cap() -> None:
    r = runner.invoke(app, ["load-store", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and f"cap {TrainConfig.long_len:,}" in r.output, r.output
    r = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})  # "[/DB]" in help once broke Rich markup
    assert r.exit_code == 0 and "redis://HOST:PORT/DB" in r.output, r.output
