"""artifacts: sealed manifests, required keys, full-disk recognition, staged writes, links and litter."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest

from userlens.artifacts import (MANIFEST_CHECKSUM, array_digest, check_seal, disk_full, inside_artifact,
                                read_manifest, refuse_link, require_keys, seal, staged_directory, write_atomic,
                                write_manifest)
from userlens.errors import InputError

DOC = {"model": "din", "train": {"short_len": 50, "lr": 0.001}, "files": {"a.npy": {"bytes": 3, "checksum": "x"}},
       "name": "café"}


def test_a_sealed_manifest_reads_back_and_any_edit_is_reported(tmp_path: Path) -> None:
    write_manifest(tmp_path / "m.json", DOC)
    assert read_manifest(tmp_path / "m.json", "manifest", "fix") == seal(DOC)
    for edit in (lambda d: d["train"].update(short_len=3), lambda d: d["files"].pop("a.npy"),
                 lambda d: d.update(extra=1), lambda d: d.update(name="cafe")):
        doc = json.loads((tmp_path / "m.json").read_text())
        edit(doc)
        (tmp_path / "m.json").write_text(json.dumps(doc))
        with pytest.raises(InputError, match=r"m.json: the manifest was edited after it was written.*Fix: fix"):
            read_manifest(tmp_path / "m.json", "manifest", "fix")
        write_manifest(tmp_path / "m.json", DOC)


def test_the_seal_ignores_formatting_and_key_order() -> None:
    sealed = seal(DOC)
    reordered = json.loads(json.dumps(dict(reversed(list(sealed.items()))), indent=4))
    check_seal(reordered, Path("m.json"), "manifest", "fix")  # no error
    assert sealed[MANIFEST_CHECKSUM].startswith("blake2b:")


def test_a_manifest_without_a_seal_is_read_as_written_before_seals() -> None:
    check_seal(dict(DOC), Path("m.json"), "manifest", "fix")  # legacy: accepted
    with pytest.raises(InputError, match="is list, expected a JSON object"):
        check_seal([1], Path("m.json"), "manifest", "fix")


def test_missing_or_mistyped_keys_are_named() -> None:
    keys = {"model": str, "train.short_len": int, "files": dict}
    require_keys(DOC, keys, Path("m.json"), "manifest", "re-create it")
    with pytest.raises(InputError, match=r"m.json: the manifest is missing key 'train.short_len'. Fix: re-create it"):
        require_keys({**DOC, "train": {}}, keys, Path("m.json"), "manifest", "re-create it")
    with pytest.raises(InputError, match=r"has 'train.short_len' = '50', expected int"):
        require_keys({**DOC, "train": {"short_len": "50"}}, keys, Path("m.json"), "manifest", "re-create it")
    with pytest.raises(InputError, match=r"has 'train.short_len' = True, expected int"):
        require_keys({**DOC, "train": {"short_len": True}}, keys, Path("m.json"), "manifest", "re-create it")
    with pytest.raises(InputError, match=r"missing key 'train.short_len'"):
        require_keys({**DOC, "train": 7}, keys, Path("m.json"), "manifest", "re-create it")


@pytest.mark.parametrize("exc", [
    OSError(errno.ENOSPC, "No space left on device"),
    OSError(errno.EDQUOT, "Disk quota exceeded"),
    OSError("450000 requested and 114624 written"),  # np.save on a full disk
    RuntimeError('IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'),  # safetensors
    ValueError("I/O error: No space left on device (os error 28)"),  # polars
])
def test_full_disk_is_recognised_in_every_library_form(exc: BaseException) -> None:
    assert disk_full(exc)


@pytest.mark.parametrize("exc", [OSError(errno.EACCES, "Permission denied"), ValueError("bad value 28")])
def test_other_errors_are_not_a_full_disk(exc: BaseException) -> None:
    assert not disk_full(exc)


def test_write_atomic_on_a_full_disk_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "f.json").write_text("old")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(InputError, match=r"no space left on device at .*f.json; nothing was written. Fix: free"):
        write_atomic(tmp_path / "f.json", {"a": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"] and (tmp_path / "f.json").read_text() == "old"


def test_staged_directory_removes_dead_writers_staging_and_keeps_the_target_on_failure(tmp_path: Path) -> None:
    for stale in (".out.tmp-424242", ".out.old-434343"):
        (tmp_path / stale).mkdir()
        (tmp_path / stale / "x").write_text("13 MB of a dead prepare")
    (tmp_path / ".other.tmp-1").mkdir()  # another output's staging: not ours to remove
    with staged_directory(tmp_path / "out", "thing", "marker") as d:
        (d / "marker").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-1", "out"]
    with pytest.raises(KeyError), staged_directory(tmp_path / "out", "thing", "marker", force=True) as d:
        (d / "marker").write_text("2")
        raise KeyError("writer failed")
    assert (tmp_path / "out" / "marker").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-1", "out"]


def test_links_are_refused_with_their_own_messages(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    refuse_link(tmp_path / "real")  # a plain directory is fine
    with pytest.raises(InputError, match=r"link: is a symbolic link \(to .*real\).*Fix: pass the target itself"):
        refuse_link(tmp_path / "link")
    with pytest.raises(InputError, match=r"dangling: is a symbolic link to .*gone, which does not exist"):
        refuse_link(tmp_path / "dangling")
    with pytest.raises(InputError, match="is a symbolic link"):
        with staged_directory(tmp_path / "link", "thing", "marker"):
            pass
    assert (tmp_path / "link").is_symlink() and list((tmp_path / "real").iterdir()) == []


def test_inside_artifact_needs_every_marker(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    markers = (("config.json", "model.safetensors"),)
    assert inside_artifact(tmp_path / "run" / "p.csv", markers) is None  # a folder with its own config.json
    (tmp_path / "run" / "model.safetensors").write_text("")
    assert inside_artifact(tmp_path / "run" / "sub" / "p.csv", markers) == tmp_path / "run"
    assert inside_artifact(tmp_path / "p.csv", markers) is None


def test_array_digest_is_about_values_not_memory_layout() -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert array_digest(a) == array_digest(np.asfortranarray(a)) == array_digest(a.copy())
    assert array_digest(a) != array_digest(a.astype(np.float64))  # dtype counts
    assert array_digest(a) != array_digest(a.reshape(4, 3))  # shape counts
    assert array_digest(a, a[0]) != array_digest(a)


@pytest.mark.parametrize("exc", [
    PermissionError(errno.EACCES, "Permission denied"),
    OSError(errno.EROFS, "Read-only file system"),
    OSError("Permission denied (os error 13)"),  # polars' io error: no errno, the text only
])
def test_an_output_it_may_not_write_is_named(tmp_path: Path, exc: OSError) -> None:
    """An unwritable --out used to reach the CLI's "unexpected ... report it" fallback."""
    from userlens.artifacts import output_errors

    (tmp_path / "part").mkdir()
    with pytest.raises(InputError, match=r"out: cannot write there \((Permission denied|Read-only file system).*"
                                         r"Fix: choose a directory you may write to"):
        with output_errors(tmp_path / "out", tmp_path / "part"):
            raise exc
    assert not (tmp_path / "part").exists()


def test_our_own_permission_message_is_not_restated(tmp_path: Path) -> None:
    from userlens.artifacts import output_errors

    with pytest.raises(InputError, match=r"^in.csv: permission denied \(not readable"):
        with output_errors(tmp_path / "out"):
            raise InputError("in.csv: permission denied (not readable by this user). Fix: chmod")


def test_the_lock_of_an_unwritable_output_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DirLock is every writer's first write: `open(OUT.lock)` refused becomes one line naming OUT."""
    import builtins

    from userlens.artifacts import DirLock

    real_open = builtins.open

    def denied(file, *args, **kwargs):  # type: ignore[no-untyped-def]
        if str(file).endswith(".lock"):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", denied)
    with pytest.raises(InputError, match=r"out: cannot write there \(Permission denied\)"):
        with DirLock(tmp_path / "out"):
            pass


def test_a_swap_that_died_between_its_renames_gets_its_old_output_back(tmp_path: Path) -> None:
    """swap_in renames the old output away, then the new one in: killed between, the old one is restored.

    The next writer without force must refuse it like any finished output, and a failing writer must
    leave it in place (before: clean_stale deleted the only complete copy).
    """
    (tmp_path / ".out.old-434343").mkdir()
    (tmp_path / ".out.old-434343" / "marker").write_text("old")
    with pytest.raises(InputError), staged_directory(tmp_path / "out", "thing", "marker") as d:
        (d / "marker").write_text("new")
    assert (tmp_path / "out" / "marker").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(KeyError), staged_directory(tmp_path / "out", "thing", "marker", force=True) as d:
        raise KeyError("writer failed")
    assert (tmp_path / "out" / "marker").read_text() == "old"
