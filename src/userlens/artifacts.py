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
  directory (or nothing) at ``path``, never a mix. Staging left by a writer that
  died is removed by the next writer (it holds the lock, so no live writer owns it).
* :func:`seal` / :func:`check_seal` — a manifest (``meta.json``, ``config.json``,
  ``package.json``, ``content.json``) carries the checksum of its own canonical
  JSON, so a hand edit (a dropped file entry, a changed ``short_len``) is reported;
  :func:`require_keys` turns a missing key into one line naming it and the fix.
* :func:`output_errors` — a full disk while writing becomes "no space left on
  device at PATH; nothing was written", after the partial output is removed.

Outputs are never written through a symbolic link (:func:`refuse_link`): replacing a
directory swaps the link itself, so the data would land beside the target. An output below
a file (``data.csv/out``) is refused by name (:func:`refuse_file_parent`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from userlens.errors import InputError, UserlensError

MANIFEST_CHECKSUM = "manifest_checksum"  # the key under which a manifest stores its own checksum


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
    """``{relative name: {"bytes": size, "checksum": ...}}`` of files under ``directory``.

    Files are hashed on every core (hashlib releases the GIL): a 100M-behavior prepared directory is 6 GB.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(len(names), os.cpu_count() or 1) or 1) as pool:
        sums = list(pool.map(lambda n: checksum(directory / n), names))
    return {n: {"bytes": (directory / n).stat().st_size, "checksum": c} for n, c in zip(names, sums, strict=True)}


def array_digest(*arrays: np.ndarray) -> str:
    """``blake2b:<hex>`` of arrays' dtypes, shapes and values: the same data in any file gives the same digest."""
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(memoryview(a).cast("B"))
    return "blake2b:" + h.hexdigest()


def verify(path: Path, expected: dict[str, Any], fix: str) -> None:
    """Raise an :class:`InputError` naming ``path`` if its size or checksum differs from ``expected``."""
    if not (isinstance(expected, dict) and isinstance(expected.get("bytes"), int)
            and isinstance(expected.get("checksum"), str)):
        raise InputError(f"{path}: its manifest entry {expected!r} is not {{'bytes': N, 'checksum': ...}} (edited?). "
                         f"Fix: {fix}")
    if not path.is_file():
        raise InputError(f"{path}: missing (listed in the directory's manifest). Fix: {fix}")
    size = path.stat().st_size
    if size != expected["bytes"]:
        raise InputError(f"{path}: {size} bytes, the manifest says {expected['bytes']} (truncated or replaced). "
                         f"Fix: {fix}")
    if checksum(path) != expected["checksum"]:
        raise InputError(f"{path}: checksum mismatch (the file changed after it was written: corrupted or "
                         f"edited). Fix: {fix}")


# --------------------------------------------------------------------------- manifests that verify themselves


def _canonical(doc: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in doc.items() if k != MANIFEST_CHECKSUM}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def seal(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` plus the BLAKE2b of its canonical JSON under ``manifest_checksum`` (see :func:`check_seal`)."""
    return {**doc, MANIFEST_CHECKSUM: "blake2b:" + hashlib.blake2b(_canonical(doc), digest_size=16).hexdigest()}


def check_seal(doc: Any, path: Path, what: str, fix: str) -> None:
    """Refuse a manifest whose content no longer matches its ``manifest_checksum`` (edited by hand).

    A manifest without the key was written before manifests were sealed and is read as before:
    its files are still checked against it, and every file a reader reads must be listed.
    """
    if not isinstance(doc, dict):
        raise InputError(f"{path}: the {what} is {type(doc).__name__}, expected a JSON object. Fix: {fix}")
    if MANIFEST_CHECKSUM in doc and seal(doc)[MANIFEST_CHECKSUM] != doc[MANIFEST_CHECKSUM]:
        raise InputError(f"{path}: the {what} was edited after it was written (its {MANIFEST_CHECKSUM} does not "
                         f"match its content), so it cannot be trusted to describe the directory. Fix: {fix}")


def require_keys(doc: Mapping[str, Any], keys: Mapping[str | tuple[str, ...], type | tuple[type, ...]], path: Path,
                 what: str, fix: str) -> None:
    """Each key of ``keys`` present in ``doc`` with the given type, else one line. A key is dotted
    (``"weights.checksum"``) or, when a part may hold dots itself (a context column's name), a tuple of parts."""
    for key, kind in keys.items():
        parts = key if isinstance(key, tuple) else tuple(key.split("."))
        dotted = ".".join(parts)
        node: Any = doc
        for part in parts:
            node = node.get(part, _MISSING) if isinstance(node, dict) else _MISSING
        if node is _MISSING:
            raise InputError(f"{path}: the {what} is missing key {dotted!r}. Fix: {fix}")
        if not isinstance(node, kind) or (isinstance(node, bool) and kind in (int, float, (int, float))):
            want = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise InputError(f"{path}: the {what} has {dotted!r} = {node!r}, expected {want}. Fix: {fix}")


_MISSING = object()


def read_manifest(path: Path, what: str, fix: str) -> dict[str, Any]:
    """:func:`read_json` + :func:`check_seal`: a JSON object whose checksum (when it has one) matches."""
    doc = read_json(path, what, fix)
    check_seal(doc, path, what, fix)
    return doc


# --------------------------------------------------------------------------- writing


_FULL_DISK_TEXT = re.compile(r"No space left on device|StorageFull|Disk quota exceeded|os error 28|"
                             r"\d+ requested and \d+ written",  # numpy's short write on a full disk
                             re.IGNORECASE)  # also our own message, so an outer writer can restate it


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is a full disk (or quota): an ``OSError`` ENOSPC / EDQUOT, or a library's wrapping of one.

    numpy (``np.save``: "N requested and M written", no errno), safetensors and polars (Rust
    ``io::Error`` text) do not raise ``OSError(ENOSPC)`` themselves, hence the text patterns.
    """
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return bool(_FULL_DISK_TEXT.search(str(exc)))


def no_space(path: Path, what: str = "nothing was written") -> InputError:
    """The one message for a full disk while writing ``path``."""
    return InputError(f"no space left on device at {path}; {what}. Fix: free space on that disk (or write to "
                      "another one) and run the command again.")


def not_writable(path: Path, e: OSError) -> InputError:
    """The one message for an output userlens may not write (permissions, a read-only file system)."""
    return InputError(f"{path}: cannot write there ({e.strerror or e}). Fix: choose a directory you may write to, "
                      "or fix its permissions.")


_DENIED_TEXT = re.compile(r"Permission denied|Read-only file system|os error (13|30)\b", re.IGNORECASE)


def _denied(e: BaseException) -> bool:
    """Whether ``e`` is a write refused by permissions or a read-only file system (errno, or a library's text)."""
    if isinstance(e, UserlensError):  # our own messages ("... permission denied (not readable ...)") stand
        return False
    if isinstance(e, OSError) and e.errno is not None:
        return e.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
    return isinstance(e, (OSError, RuntimeError, ValueError)) and bool(_DENIED_TEXT.search(str(e)))


def _remove(p: Path) -> None:
    """Remove a partial output, whatever it is (a directory tree, a file, a link: never what a link points to)."""
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            p.unlink()


@contextlib.contextmanager
def output_errors(path: Path, *partial: Path) -> Iterator[None]:
    """Remove ``partial`` outputs when the body fails; a full disk becomes :func:`no_space` for ``path``, a
    permission denied (or a read-only file system) :func:`not_writable`."""
    try:
        yield
    except BaseException as e:
        for p in partial:
            _remove(p)
        if disk_full(e):
            raise no_space(path) from None
        if _denied(e):
            raise not_writable(path, e) from None  # type: ignore[arg-type]
        raise


def write_atomic(path: str | Path, data: bytes | str | dict | list) -> None:
    """Write ``data`` (JSON for dict / list) to ``path`` through a temporary sibling and a rename.

    On failure the temporary file is removed and ``path`` is as it was (a full disk: :func:`no_space`).
    """
    p = Path(path)
    if isinstance(data, (dict, list)):
        data = json.dumps(data, indent=2, allow_nan=False)
    raw = data.encode() if isinstance(data, str) else data
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    with output_errors(p, tmp):
        with open(tmp, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)


def write_manifest(path: str | Path, doc: dict[str, Any]) -> dict[str, Any]:
    """Write ``seal(doc)`` atomically; returns the sealed document."""
    sealed = seal(doc)
    write_atomic(path, sealed)
    return sealed


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
        try:
            self.lock_path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(self.lock_path, "a+")
        except OSError as e:  # the first write of every output: an unwritable --out is named here
            if disk_full(e):
                raise no_space(self.path) from None
            if _denied(e):
                raise not_writable(self.path, e) from None
            raise
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


def refuse_link(path: Path) -> None:
    """Refuse an output path that is a symbolic link (dangling or not): outputs replace what is at ``path``.

    Following the link would swap the link itself for a directory (the data landing beside the
    target, the link left behind as hidden litter); pass the target instead.
    """
    if not path.is_symlink():
        return
    target = os.readlink(path)
    if not path.exists():
        raise InputError(f"{path}: is a symbolic link to {target}, which does not exist (a dangling link). "
                         "Fix: remove the link, or pass the path to write instead of the link.")
    raise InputError(f"{path}: is a symbolic link (to {target}); userlens replaces an output as a whole (written "
                     f"beside it, then renamed) and does not write through links. Fix: pass the target itself "
                     f"({path.resolve()}), or another path.")


def inside_artifact(path: Path, markers: tuple[tuple[str, ...], ...]) -> Path | None:
    """The nearest directory above ``path`` holding every name of one of ``markers``, else None.

    ``markers``: e.g. ``(("meta.json", "vocab"), ("config.json", "model.safetensors"))``; two names,
    so a folder that merely has a ``config.json`` of its own is not taken for a run.
    """
    for parent in Path(os.path.realpath(path)).parents:
        if any(all((parent / name).exists() for name in names) for names in markers):
            return parent
    return None


def clean_stale(target: Path, marker: str | None = None) -> bool:
    """Recover what writers that died left beside ``target``; return whether an old output was put back.

    With ``marker``, a missing ``target`` first gets back the newest complete ``.<name>.old-*`` (one that
    holds ``marker``): :func:`swap_in` renames the previous output away only once the new one is complete,
    so a writer killed between its two renames leaves the only complete copy there. Then every other
    ``.<name>.tmp-*`` / ``.<name>.old-*`` is removed. Call it holding :class:`DirLock` on ``target``: every
    writer of ``target`` holds it, so no living process owns them. A caller that gets True checks the
    output again (it now needs ``force`` like any finished one).
    """
    restored = False
    if marker is not None and not (target.exists() or target.is_symlink()):
        olds = sorted((p for p in target.parent.glob(f".{target.name}.old-*") if (p / marker).is_file()),
                      key=lambda p: p.stat().st_mtime_ns)
        if olds:
            os.replace(olds[-1], target)
            restored = True
    for pattern in (f".{target.name}.tmp-*", f".{target.name}.old-*"):
        for p in target.parent.glob(pattern):
            _remove(p)
    return restored


def refuse_file_parent(path: Path) -> None:
    """Refuse an output path below something that is not a directory (``data.csv/out``): it can never be created.

    Without this check the first ``mkdir`` fails with a bare ``FileExistsError`` / ``NotADirectoryError``.
    """
    for parent in Path(os.path.abspath(path)).parents:
        if parent.is_dir():
            return
        if parent.exists() or parent.is_symlink():  # a file, a device, a dangling link
            raise InputError(f"{path}: cannot be created: {parent} is not a directory (a file, or a dangling link). "
                             "Fix: choose an output path inside a directory.")


def check_output_path(path: Path, what: str, marker: str, force: bool) -> None:
    """Refuse an output path that is a link or a file, below a file, or an existing directory unless ``force``."""
    refuse_link(path)
    refuse_file_parent(path)
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
    refuse_link(target)
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
    one is replaced only with ``force``. The whole write holds :class:`DirLock` on ``target``; staging
    left by writers that died is removed first. A full disk: :func:`no_space`, ``target`` untouched.
    """
    target = Path(target)
    check_output_path(target, what, marker, force)
    with DirLock(target):
        if clean_stale(target, marker):  # a swap that died halfway: the old output is back
            check_output_path(target, what, marker, force)
        staged = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        with output_errors(target, staged):
            staged.mkdir(parents=True)
            yield staged
            if not (staged / marker).is_file():
                raise RuntimeError(f"staged {what} has no {marker}")  # a writer bug, not a user error
            swap_in(staged, target)


__all__ = ("MANIFEST_CHECKSUM", "DirLock", "array_digest", "check_output_path", "check_seal", "checksum",
           "clean_stale", "describe", "disk_full", "inside_artifact", "no_space", "not_writable", "output_errors",
           "read_json", "read_manifest", "refuse_file_parent", "refuse_link", "require_keys", "seal",
           "staged_directory", "swap_in", "verify", "write_atomic", "write_manifest")
