"""Model packages: sealed manifest, recorded inputs (content vectors included), old packages still load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from userlens.artifacts import MANIFEST_CHECKSUM, describe, seal
from userlens.data.content import import_vectors
from userlens.data.prepared import PreparedData
from userlens.errors import InputError
from userlens.serving.package import export_package, load_package
from userlens.training.config import resolve_config
from userlens.training.evaluate import evaluate_run
from userlens.training.trainer import fit


@pytest.fixture(scope="module")
def muse(tmp_path_factory: pytest.TempPathFactory, make_prepared) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    """A prepared copy with content vectors, a muse run on it and its package."""
    d = tmp_path_factory.mktemp("package")
    src = make_prepared(seed=5, n_users=20, n_items=60, n_categories=6, behaviors_per_user=40, recent=10,
                        impressions_per_user=4)
    shutil.copytree(src.path, d / "data")
    _vectors(d / "data", seed=0)
    fit(PreparedData(d / "data"), resolve_config("muse", {"epochs": 1, "compile": False}), d / "run",
        show_progress=False, log=lambda s: None)
    export_package(d / "run", d / "pkg")
    return {"data": d / "data", "run": d / "run", "pkg": d / "pkg"}


def _vectors(data_dir: Path, seed: int) -> None:
    n = PreparedData(data_dir).vocab_sizes["item"] - 2
    raw = PreparedData(data_dir).vocab("item")["raw"].cast(str).to_list()
    np.save(data_dir.parent / f"v{seed}.npy", np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32))
    (data_dir.parent / f"v{seed}.txt").write_text("\n".join(raw) + "\n")
    import_vectors(data_dir, vectors=data_dir.parent / f"v{seed}.npy", ids=data_dir.parent / f"v{seed}.txt")


def test_run_and_package_record_the_content_vectors_they_read(muse: dict[str, Path]) -> None:
    doc = json.loads((muse["run"] / "config.json").read_text())
    manifest = json.loads((muse["pkg"] / "package.json").read_text())
    assert doc["inputs"]["content"].startswith("blake2b:") and doc["inputs"]["vocabularies"] == doc["data_fingerprint"]
    assert manifest["inputs"] == doc["inputs"] and MANIFEST_CHECKSUM in manifest and MANIFEST_CHECKSUM in doc
    pkg = load_package(muse["pkg"])
    assert pkg.content is not None and pkg.short_len == pkg.config.train.short_len


def test_content_replaced_after_training_is_refused_everywhere(muse: dict[str, Path], tmp_path: Path) -> None:
    d = Path(shutil.copytree(muse["data"], tmp_path / "data"))
    _vectors(d, seed=1)
    with pytest.raises(InputError, match=r"its item content vectors are not those .* Fix: run `userlens embed-items` "
                                         r"again with the input used before training, or retrain"):
        evaluate_run(muse["run"], d)
    with pytest.raises(InputError, match="its item content vectors are not those"):
        export_package(muse["run"], tmp_path / "pkg", d)
    assert not (tmp_path / "pkg").exists()
    _vectors(d, seed=0)  # the same input again: the same vectors, so the run is usable again
    assert evaluate_run(muse["run"], d)["n"] > 0


def test_a_package_whose_content_is_not_its_runs_is_refused(muse: dict[str, Path], tmp_path: Path) -> None:
    """Even with every file re-described and the manifest re-sealed: the recorded inputs must still match."""
    p = Path(shutil.copytree(muse["pkg"], tmp_path / "pkg"))
    content = np.load(p / "items" / "content.npy")
    np.save(p / "items" / "content.npy", content[::-1].copy())
    manifest = json.loads((p / "package.json").read_text())
    manifest["files"].update(describe(p, ["items/content.npy"]))
    (p / "package.json").write_text(json.dumps(seal(manifest)))
    with pytest.raises(InputError, match=r"pkg: its content arrays are not those its run was trained with"):
        load_package(p)


def test_runs_and_packages_from_before_inputs_and_seals_still_load(muse: dict[str, Path], tmp_path: Path) -> None:
    """Old documents lack `inputs` and the seal: they are read, with the vocabularies checked only."""
    run = Path(shutil.copytree(muse["run"], tmp_path / "run"))
    doc = json.loads((run / "config.json").read_text())
    for key in ("inputs", MANIFEST_CHECKSUM):
        del doc[key]
    (run / "config.json").write_text(json.dumps(doc))
    assert evaluate_run(run, muse["data"])["n"] > 0
    export_package(run, tmp_path / "pkg", muse["data"])
    manifest = json.loads((tmp_path / "pkg" / "package.json").read_text())
    assert manifest["inputs"] is None
    del manifest[MANIFEST_CHECKSUM]
    (tmp_path / "pkg" / "package.json").write_text(json.dumps(manifest))
    assert load_package(tmp_path / "pkg").content is not None
