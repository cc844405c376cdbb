"""What the serving and store benchmarks share: latency percentiles, a ``userlens serve`` process, targets.

:func:`serve_process` starts the HTTP API on a free loopback port with one token set as both the
write token (``USERLENS_TOKEN``) and the read token (``USERLENS_READ_TOKEN``); clients send
:data:`HEADERS` (``Authorization: Bearer <token>``) on every request, reads included, so the
benchmarks run whether or not the server guards reads.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

TOKEN = "bench"
HEADERS = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentiles(ms: list[float]) -> dict[str, float]:
    """Latency percentiles and throughput (one request at a time), under the names the results files use."""
    a = np.asarray(ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "p99_ms": float(np.percentile(a, 99)), "requests_per_s": 1000.0 / float(a.mean())}


def met(ok: bool) -> str:
    """A target's verdict as a table cell."""
    return "yes" if ok else "**no**"


@contextmanager
def serve_process(package: Path, store_url: str, workers: int = 1, max_candidates: int = 5000) -> Iterator[str]:
    """``userlens serve`` on a free loopback port, answering ``/healthz``; yields its base URL, stops it after."""
    import httpx

    port = free_port()
    env = {**os.environ, "USERLENS_TOKEN": TOKEN, "USERLENS_READ_TOKEN": TOKEN}
    log = tempfile.TemporaryFile()  # a file, not a pipe: a chatty server never blocks on a full pipe
    server = subprocess.Popen([sys.executable, "-m", "userlens.cli", "serve", str(package), "--store", store_url,
                               "--port", str(port), "--workers", str(workers), "--max-candidates",
                               str(max_candidates)], env=env, stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{url}/healthz", headers=HEADERS).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.time() > deadline:
                log.seek(0)
                raise SystemExit(f"server did not start: {log.read().decode(errors='replace')[-500:]}")
            time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
