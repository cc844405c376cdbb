"""The benchmarks' machine-readable results: one JSON object per line, appended as each cell is measured.

``bench_long.py`` and ``bench_serve.py`` append one row per measured cell
(``benchmarks/results/long.jsonl``, ``serve.jsonl``) with the date, a machine
note, the torch version and the figures they print; ``plots.py`` draws the
figures of ``RESULTS.md`` from them. Appending (never rewriting) keeps every
measurement: a figure shows the newest row of each cell.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def machine_note(note: str = "") -> str:
    """Where a row was measured: CPUs, platform, load average at that moment, and the caller's note (e.g. "idle")."""
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    text = f"{os.cpu_count()} CPUs, {platform.platform()}, python {platform.python_version()}, load average {load}"
    return f"{text}; {note}" if note else text


def commit() -> str | None:
    """The checkout's short commit, ``+dirty`` when tracked files changed since; None outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout

    try:
        head = git("rev-parse", "--short", "HEAD").strip()
        return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no").strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def now() -> str:
    """The row's date, to the minute, UTC (``2026-11-27 19:45 UTC``)."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def append_row(path: str | Path, row: dict) -> None:
    """Append ``row`` as one line: a single ``write`` of a whole line, so a crash loses a row, never half of one."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")


def read_rows(path: str | Path, fix: str) -> list[dict]:
    """Every row of a results file, in the order written.

    Raises:
        FileNotFoundError: no such file (``fix`` says which benchmark writes it).
        ValueError: a line that is not a JSON object (named by line number), or no rows at all.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such results file. Fix: {fix}.")
    rows = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}, line {n}: not JSON ({e.msg}). Fix: delete or repair that line.") from None
        if not isinstance(row, dict):
            raise ValueError(f"{p}, line {n}: expected a JSON object, got {type(row).__name__}. Fix: delete that line.")
        rows.append(row)
    if not rows:
        raise ValueError(f"{p}: holds no rows. Fix: {fix}.")
    return rows


def newest(rows: list[dict], key: tuple[str, ...]) -> list[dict]:
    """The last row written for each distinct ``key`` (rows are appended in time order), in first-seen order."""
    last: dict[tuple, dict] = {}
    for r in rows:
        last[tuple(r.get(k) for k in key)] = r
    return list(last.values())
