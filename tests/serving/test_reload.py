"""Hot reload: a re-exported package is swapped in without dropping requests; a foreign one is refused."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from userlens.artifacts import array_digest, describe, seal
from userlens.cli import app as cli
from userlens.data.prepared import PreparedData
from userlens.errors import InputError
from userlens.serving.app import PackageReloader, create_app
from userlens.serving.package import export_package, load_package
from userlens.serving.reload import INFO_KEYS, claim_store, package_store_info
from userlens.serving.scorer import Scorer
from userlens.serving.server import app_from_env, open_checked
from userlens.serving.store import bulk_load_prepared, open_store
from userlens.training.config import resolve_config
from userlens.training.trainer import fit

runner = CliRunner()

def _run(data: PreparedData, out: Path, seed: int) -> Path:
    fit(data, resolve_config("sim_hard", {"epochs": 1, "compile": False, "seed": seed}), out, show_progress=False,
        log=lambda s: None)
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, make_prepared) -> dict:  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("reload")
    sizes = {"n_users": 20, "n_categories": 8, "behaviors_per_user": 60, "recent": 15, "impressions_per_user": 4}
    data = make_prepared(seed=3, n_items=120, **sizes)
    foreign = make_prepared(seed=4, n_items=150, **sizes)  # other items: other vocabularies
    return {"data": data, "foreign_data": foreign, "run1": _run(data, d / "run1", 1), "run2": _run(data, d / "run2", 2),
            "foreign": _run(foreign, d / "run3", 1)}


def _serving(setup: dict, tmp_path: Path) -> tuple[Path, object, str, list[str]]:
    """Package of run1 at ``tmp_path/pkg``, an LMDB store loaded with the data, a user and 5 items."""
    pkg = tmp_path / "pkg"
    export_package(setup["run1"], pkg)
    store = open_store(f"lmdb://{tmp_path}/store", cap=load_package(pkg).long_len)
    bulk_load_prepared(store, setup["data"])
    user = setup["data"].vocab("user")["raw"].cast(str).to_list()[0]
    return pkg, store, user, setup["data"].vocab("item")["raw"].cast(str).to_list()[:5]


def _other_categories(pkg: Path) -> None:
    """Give the package at ``pkg`` another item → category table, consistently (as if trained on it)."""
    cat = np.load(pkg / "items" / "category.npy")
    other = cat.copy()
    other[2:] = cat[2:][::-1]
    assert not np.array_equal(other, cat)
    np.save(pkg / "items" / "category.npy", other)
    manifest = json.loads((pkg / "package.json").read_text())
    manifest["files"].update(describe(pkg, ["items/category.npy"]))
    manifest["inputs"]["item_category"] = array_digest(other)  # a consistent package, trained on those categories
    (pkg / "package.json").write_text(json.dumps(seal(manifest)))
    load_package(pkg)  # loads on its own


def test_a_reexported_package_is_swapped_in_and_a_foreign_one_refused(setup: dict, tmp_path: Path) -> None:
    pkg, store, user, items = _serving(setup, tmp_path)
    holder = PackageReloader(Scorer(load_package(pkg), store))
    first = holder.scorer.score(user, items, 1_900_000_000_000).logits
    assert not holder.check()  # nothing changed
    export_package(setup["run2"], pkg, force=True)  # retrained on the same data: swapped in
    assert holder.check()
    second = holder.scorer.score(user, items, 1_900_000_000_000).logits
    assert second != first
    assert second == Scorer(load_package(pkg), store).score(user, items, 1_900_000_000_000).logits
    export_package(setup["foreign"], pkg, data_dir=setup["foreign_data"].path, force=True)
    assert not holder.check()  # other vocabularies than the store's codes: refused, the old package kept
    assert holder.scorer.score(user, items, 1_900_000_000_000).logits == second
    store.close()


def test_a_package_with_other_item_categories_is_refused(setup: dict, tmp_path: Path) -> None:
    """Same vocabularies, other item → category table (data prepared again from another items table): the store's
    category codes were loaded for the old one, so the package is refused, as `load-store --package` refuses it."""
    pkg, store, user, items = _serving(setup, tmp_path)
    holder = PackageReloader(Scorer(load_package(pkg), store))
    first = holder.scorer.score(user, items, 1_900_000_000_000).logits
    export_package(setup["run2"], pkg, force=True)
    _other_categories(pkg)
    assert not holder.check()
    assert holder.scorer.score(user, items, 1_900_000_000_000).logits == first
    store.close()


def test_requests_keep_succeeding_while_the_package_is_replaced(setup: dict, tmp_path: Path) -> None:
    pkg, store, user, items = _serving(setup, tmp_path)
    app = create_app(Scorer(load_package(pkg), store), token="t", reload_seconds=0.05)
    with TestClient(app, headers={"Authorization": "Bearer t"}) as client:  # the lifespan starts the watcher thread
        before = client.get("/healthz").json()["weights"]
        done = threading.Event()
        swapper = threading.Thread(target=lambda: (export_package(setup["run2"], pkg, force=True), done.set()))
        swapper.start()
        statuses = []
        deadline = time.time() + 30
        while time.time() < deadline:
            statuses.append(client.post("/v1/score", json={"user_id": user, "candidates": items}).status_code)
            if done.is_set() and client.get("/healthz").json()["weights"] != before:
                break
        swapper.join()
        assert client.get("/healthz").json()["weights"] != before, "the new package was never swapped in"
        assert set(statuses) == {200} and len(statuses) > 1
        assert 'userlens_package_reloads_total{result="ok"} 1.0' in client.get("/metrics").text
    store.close()


# --------------------------------------------------------------------------- what the store was loaded for

def _load_store(data: Path, url: str, pkg: Path | None = None) -> dict:
    r = runner.invoke(cli, ["load-store", str(data), "--store", url, *(["--package", str(pkg)] if pkg else [])])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_load_store_records_the_package_and_serve_refuses_another(setup: dict, tmp_path: Path) -> None:
    """Once a foreign package (other vocabularies) scored with 200s from wrong item codes, or failed every request."""
    export_package(setup["run1"], tmp_path / "pkg")
    export_package(setup["foreign"], tmp_path / "foreign", data_dir=setup["foreign_data"].path)
    url = f"lmdb://{tmp_path}/store"
    _load_store(setup["data"].path, url, tmp_path / "pkg")
    pkg = load_package(tmp_path / "pkg")
    with open_store(url, cap=pkg.long_len) as store:
        info = store.read_info()
    assert info is not None and {k: info[k] for k in INFO_KEYS} == {k: package_store_info(pkg)[k] for k in INFO_KEYS}
    assert info["package"] == str((tmp_path / "pkg").resolve())
    _, store = open_checked(str(tmp_path / "pkg"), url)  # the package it was loaded for
    store.close()
    with pytest.raises(InputError, match=r"loaded for .*pkg, with other vocabularies and item categories.*Fix: "
                                         r"load the store for this package \(`userlens load-store "):
        open_checked(str(tmp_path / "foreign"), url)
    r = runner.invoke(cli, ["serve", str(tmp_path / "foreign"), "--store", url, "--port", "1"])
    assert r.exit_code == 1 and "userlens load-store" in r.output
    assert "serving" not in r.output.split("error:")[0]  # the line once came before the check


def test_load_store_without_a_package_records_the_data_and_its_package_is_served(setup: dict, tmp_path: Path) -> None:
    export_package(setup["run1"], tmp_path / "pkg")
    url = f"lmdb://{tmp_path}/store"
    _load_store(setup["data"].path, url)
    _, store = open_checked(str(tmp_path / "pkg"), url)  # same vocabularies and item categories, default cap
    assert store.read_info()["data"] == str(setup["data"].path.resolve())
    store.close()


def test_a_package_with_other_item_categories_is_refused_at_startup(setup: dict, tmp_path: Path) -> None:
    pkg, store, _, _ = _serving(setup, tmp_path)
    claim_store(load_package(pkg), store, "lmdb://store")
    store.close()
    _other_categories(pkg)
    with pytest.raises(InputError, match="with other item categories"):
        open_checked(str(pkg), f"lmdb://{tmp_path}/store")


def test_a_store_without_info_is_served_with_a_warning_and_claimed(setup: dict, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    pkg, store, _, _ = _serving(setup, tmp_path)  # bulk-loaded, as an older userlens did: no info
    assert store.read_info() is None
    store.close()
    with caplog.at_level(logging.WARNING, logger="userlens.serving"):
        _, store = open_checked(str(pkg), f"lmdb://{tmp_path}/store")
    assert "does not record what it was loaded for" in caplog.text
    assert store.read_info()["vocabularies"] == load_package(pkg).manifest["data_fingerprint"]
    store.close()


def test_a_reload_refused_is_refused_again_at_the_next_start(setup: dict, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The refused package stays on disk: a restart must not serve it (today's worker factory checks too)."""
    pkg, store, _, _ = _serving(setup, tmp_path)
    store.close()
    url = f"lmdb://{tmp_path}/store"
    _, store = open_checked(str(pkg), url)  # serve starts: claims the store for run1's package
    holder = PackageReloader(Scorer(load_package(pkg), store))
    export_package(setup["foreign"], pkg, data_dir=setup["foreign_data"].path, force=True)
    assert not holder.check()
    store.close()
    with pytest.raises(InputError, match="userlens load-store"):
        open_checked(str(pkg), url)
    monkeypatch.setenv("USERLENS_PACKAGE", str(pkg))
    monkeypatch.setenv("USERLENS_STORE", url)
    with pytest.raises(InputError, match="userlens load-store"):
        app_from_env()


def test_load_store_refuses_a_store_holding_histories_of_other_vocabularies(setup: dict, tmp_path: Path) -> None:
    """Users absent from the new data would keep codes of the old vocabularies: a store mixing both is refused."""
    export_package(setup["foreign"], tmp_path / "foreign", data_dir=setup["foreign_data"].path)
    url = f"lmdb://{tmp_path}/store"
    _load_store(setup["data"].path, url)
    r = runner.invoke(cli, ["load-store", str(setup["foreign_data"].path), "--store", url, "--package",
                            str(tmp_path / "foreign")])
    assert r.exit_code == 1 and "users not in" in r.output and "Fix: load into a new store" in r.output
    _load_store(setup["foreign_data"].path, f"lmdb://{tmp_path}/fresh", tmp_path / "foreign")  # a new store: fine
    _load_store(setup["data"].path, url)  # the same data again: fine
