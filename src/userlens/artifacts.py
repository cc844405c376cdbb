"""Atomic, locked, verified artifacts: what every writer of a directory or file in userlens goes through.

* :func:`checksum` — BLAKE2b of a file's bytes (streamed); recorded next to what it
  describes (``meta.json``, ``config.json``) and checked on load, so a flipped byte
  is reported, never used.
* :func:`write_atomic` — bytes or JSON to a temporary sibling, fsync, rename: a
  reader sees the old file or the new one, never half of one.
* :class:`DirLock` — an exclusive ``fcntl`` lock on ``<path>.lock``, held while a
  directory is written; released by the kernel if the process dies, so a killed
  writer never leaves a stale lock behind.
* :func:`staged_directory` — build a directory in ``<path>.tmp-<pid>`` and swap it
  in only when complete: a failed or killed ``prepare`` leaves the previous
  directory (or nothing) at ``path``, never a mix.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from userlens.errors import InputError


def checksum(path: str | Path) -> str:
    """``blake2b:<hex>`` of the file's bytes (16-byte digest), streamed in 4 MiB blocks."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return "blake2b:" + h.hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, streamed: the provenance fingerprint of input files (``meta.json``
    ``sources``) and of the item vocabulary a content matrix was built for (``content.json``)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def describe(directory: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """``{relative name: {"bytes": size, "checksum": ...}}`` of files under ``directory``."""
    return {n: {"bytes": (directory / n).stat().st_size, "checksum": checksum(directory / n)} for n in names}


def verify(path: Path, expected: dict[str, Any], fix: str) -> None:
    """Raise an :class:`InputError` naming ``path`` if its size or checksum differs from ``expected``."""
    if not path.is_file():
        raise InputError(f"{path}: missing (listed in the directory's manifest). Fix: {fix}")
    size = path.stat().st_size
    if size != expected["bytes"]:
        raise InputError(f"{path}: {size} bytes, the manifest says {expected['bytes']} (truncated or replaced). "
                         f"Fix: {fix}")
    if checksum(path) != expected["checksum"]:
        raise InputError(f"{path}: checksum mismatch (the file changed after it was written: corrupted or "
                         f"edited). Fix: {fix}")


def write_atomic(path: str | Path, data: bytes | str | dict | list) -> None:
    """Write ``data`` (JSON for dict / list) to ``path`` through a temporary sibling and a rename."""
    p = Path(path)
    if isinstance(data, (dict, list)):
        data = json.dumps(data, indent=2, allow_nan=False)
    raw = data.encode() if isinstance(data, str) else data
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(raw)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, p)


def read_json(path: Path, what: str, fix: str) -> Any:
    """A JSON document, or an :class:`InputError` naming the file when it is missing or unreadable."""
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected the {what} file. Fix: {fix}")
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found. Fix: {fix}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: {what} is not valid JSON ({e}; truncated?). Fix: {fix}") from None


class DirLock:
    """Exclusive lock for writing ``path`` (a directory): ``<path>.lock`` held with ``fcntl.flock``.

    Raises:
        InputError: another process holds it (its pid is named).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._fh = None

    def __enter__(self) -> DirLock:
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.lock_path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            fh.close()
            raise InputError(f"{self.path}: another userlens process (pid {holder}) is writing it. Fix: wait "
                             f"for it to finish, or write elsewhere.") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self.lock_path.unlink()
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def check_output_path(path: Path, what: str, marker: str, force: bool) -> None:
    """Refuse an output path that is a file, or an existing directory unless ``force``."""
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: exists and is a file, not a directory. Fix: choose another output path.")
    if path.is_dir() and any(path.iterdir()):
        if not (path / marker).exists():
            raise InputError(f"{path}: exists, is not empty and is not a {what}. Fix: choose another output path.")
        if not force:
            raise InputError(f"{path}: a {what} already exists there. Fix: pass --force to replace it, or choose "
                             "another output path.")


def swap_in(staged: Path, target: Path) -> None:
    """Replace ``target`` by the complete directory ``staged`` (two renames; the old one removed after)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(staged, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_directory(target: str | Path, what: str, marker: str, force: bool = False) -> Iterator[Path]:
    """Yield an empty ``<target>.tmp-<pid>`` to fill; on success it replaces ``target``, on failure it is removed.

    ``marker`` is the file that makes a directory a complete ``what`` (e.g. ``meta.json``); an existing
    one is replaced only with ``force``. The whole write holds :class:`DirLock` on ``target``.
    """
    target = Path(target)
    check_output_path(target, what, marker, force)
    with DirLock(target):
        staged = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir(parents=True)
        try:
            yield staged
            if not (staged / marker).is_file():
                raise RuntimeError(f"staged {what} has no {marker}")  # a writer bug, not a user error
            swap_in(staged, target)
        finally:
            shutil.rmtree(staged, ignore_errors=True)


__all__ = ("DirLock", "check_output_path", "checksum", "describe", "read_json", "staged_directory", "swap_in",
           "verify", "write_atomic")
