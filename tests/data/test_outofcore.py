"""``prepare --engine duckdb``: the out-of-core engine writes exactly what the in-memory one writes.

Every array, vocabulary and meta.json entry (but timings and the engine's name) is compared, on generated
logs (each sampler, both splits), every adapter's shared data, defective files under both bad-row
policies, and Parquet directories; the chunked sample code is checked against one-user chunks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from userlens.data import samples
from userlens.data.adapters import load_adapter
from userlens.data.generate import write_taobao_like
from userlens.data.outofcore import (ScanSources, choose_engine, parse_size, prepare_out_of_core, scan_path,
                                     scan_sources)
from userlens.data.prepare import PrepareOptions, prepare, sources_from_files
from userlens.errors import InputError

DATASETS = (Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets").resolve()
needs_datasets = pytest.mark.skipif(not DATASETS.is_dir(), reason=f"shared datasets not found at {DATASETS}")
SKIPPED_META = {"created_unix", "prepare_seconds", "files", "manifest_checksum", "engine", "sources",
                "input_time_units"}


def quiet(*_: object) -> None:
    pass


def assert_same(a: Path, b: Path, same_sources: bool = True) -> None:
    """Every file of two prepared directories holds the same values; meta.json agrees but for timings."""
    fa = sorted(str(f.relative_to(a)) for f in a.rglob("*") if f.is_file())
    assert fa == sorted(str(f.relative_to(b)) for f in b.rglob("*") if f.is_file())
    for f in fa:
        if f.endswith(".npy"):
            x, y = np.load(a / f), np.load(b / f)
            assert x.dtype == y.dtype and np.array_equal(x, y), f
        elif f.endswith(".parquet"):
            assert pl.read_parquet(a / f).equals(pl.read_parquet(b / f)), f
    ma, mb = json.loads((a / "meta.json").read_text()), json.loads((b / "meta.json").read_text())
    skip = SKIPPED_META if same_sources else SKIPPED_META | {"bad_rows", "dataset"}
    assert {k: v for k, v in ma.items() if k not in skip} == {k: v for k, v in mb.items() if k not in skip}
    assert ma["engine"] == "polars" and mb["engine"] == "duckdb"
    if same_sources:
        assert ma["input_time_units"] == mb["input_time_units"]


def both(tmp_path: Path, fmt: str | None, source: Path, **opts) -> tuple[Path, Path]:
    """(polars dir, duckdb dir) of one input."""
    opt = PrepareOptions(**opts)
    a, b = tmp_path / "polars", tmp_path / "duckdb"
    polars_src = load_adapter(fmt, source) if fmt else sources_from_files(source)
    prepare(polars_src, a, opt, log=quiet)
    prepare_out_of_core(scan_sources(fmt, source if fmt else None, None if fmt else source, None), b,
                        PrepareOptions(**opts), log=quiet, memory_limit="256MiB", threads=1)
    return a, b


@pytest.fixture(scope="module")
def taobao_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("gen") / "UserBehavior.csv"
    write_taobao_like(p, 40_000, 400, 3_000, 50, seed=3)
    return p


@pytest.mark.parametrize("opts", [
    {},
    {"negative_sampler": "popularity", "negatives": 2, "negative_alpha": 0.5},
    {"negative_sampler": "category", "negatives": 3, "split": "leave-last-out", "min_user_behaviors": 30},
])
def test_engines_agree_on_a_generated_taobao_log(tmp_path: Path, taobao_like: Path, opts: dict) -> None:
    assert_same(*both(tmp_path, "taobao", taobao_like, **opts))


def test_samples_do_not_depend_on_the_chunk_size(tmp_path: Path, taobao_like: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    opt = PrepareOptions(negative_sampler="popularity", negatives=2)
    prepare(load_adapter("taobao", taobao_like), tmp_path / "one", opt, log=quiet)
    monkeypatch.setattr(samples, "CHUNK_ROWS", 7)  # about one user per chunk
    prepare(load_adapter("taobao", taobao_like), tmp_path / "many", PrepareOptions(negative_sampler="popularity",
                                                                                  negatives=2), log=quiet)
    for f in (tmp_path / "one").rglob("*.npy"):
        assert np.array_equal(np.load(f), np.load(tmp_path / "many" / f.relative_to(tmp_path / "one"))), f


@needs_datasets
@pytest.mark.realdata
@pytest.mark.parametrize(("fmt", "folder", "opts"), [
    ("movielens", "movielens-100k", {}),
    ("amazon", "amazon-grocery-rechorus", {"negative_sampler": "category"}),
    ("lastfm", "lastfm-hetrec2011-2k", {"on_bad_rows": "skip", "min_user_behaviors": 5}),
    ("taobao", "taobao-userbehavior-sample", {"on_bad_rows": "skip", "negative_sampler": "popularity"}),
])
def test_engines_agree_on_every_adapter(tmp_path: Path, fmt: str, folder: str, opts: dict) -> None:
    assert_same(*both(tmp_path, fmt, DATASETS / folder, **opts))


def test_movielens_latest_agrees_too(tmp_path: Path) -> None:
    if not (DATASETS / "movielens-latest-small").is_dir():
        pytest.skip(f"shared datasets not found at {DATASETS}")
    assert_same(*both(tmp_path, "movielens", DATASETS / "movielens-latest-small", split="leave-last-out"))


# --------------------------------------------------------------------------- defects: same errors, counts, notes

T = 1_600_000_000
GOOD = [f"u{u},{i},{T + 60 * k},pv,c{i % 3}" for k, (u, i) in enumerate((u, i) for u in range(4) for i in range(8))]
DEFECTS = {
    "empty user": ",7,1600000000,pv,c1",
    "blank line": "",
    "nan item": "u1,NaN,1600000000,pv,c1",
    "unparsable time": "u1,7,yesterday,pv,c1",
    "absurd time": "u1,7,100,pv,c1",
    "future time": "u1,7,99999999999,pv,c1",
    "overflowing time": "u1,7,99999999999999999999,pv,c1",
}


def _csv(tmp_path: Path, rows: list[str], header: str = "user_id,item_id,timestamp,behavior,category") -> Path:
    p = tmp_path / "b.csv"
    p.write_text("\n".join([header, *rows]) + "\n")
    return p


def _both_ways(tmp_path: Path, p: Path, **opts) -> tuple[Path | str, Path | str]:
    """Each engine's directory, or its error message."""
    res = []
    for eng in ("polars", "duckdb"):
        out = tmp_path / eng
        try:
            if eng == "polars":
                prepare(sources_from_files(p), out, PrepareOptions(**opts), log=quiet)
            else:
                prepare_out_of_core(ScanSources(scan_path(p), files=[p], name=p.stem), out, PrepareOptions(**opts),
                                    log=quiet, memory_limit="256MiB")
            res.append(out)
        except InputError as e:
            res.append(str(e))
    return res[0], res[1]


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_a_defect_stops_both_engines_with_the_same_message(tmp_path: Path, defect: str) -> None:
    a, b = _both_ways(tmp_path, _csv(tmp_path, [*GOOD[:10], DEFECTS[defect], *GOOD[10:]]), min_history=1)
    assert isinstance(a, str) and a == b


def test_skipped_rows_and_notes_are_the_same(tmp_path: Path) -> None:
    rows = [*GOOD, *DEFECTS.values(), " u1 ,7,1600000100.1234,pv,c1", "u2,7.0,2020-09-13T12:30:00Z,cart,",
            "u3,8,2020-09-13 12:31:00.5+02:00,fav,c2", "u3,9,1600000222.5,buy,c2"]
    a, b = _both_ways(tmp_path, _csv(tmp_path, rows), min_history=1, on_bad_rows="skip")
    assert isinstance(a, Path) and isinstance(b, Path), (a, b)
    assert_same(a, b)
    bad = json.loads((b / "meta.json").read_text())["bad_rows"]
    assert bad["skipped_rows"] == len(DEFECTS) and any("whitespace" in n for n in bad["notes"])


def test_duplicate_event_ids_and_float_ids_from_parquet(tmp_path: Path) -> None:
    n = 40
    frame = pl.DataFrame({"user_id": [float(k % 4) for k in range(n)], "item_id": [k % 9 for k in range(n)],
                          "timestamp": [T + k for k in range(n)], "event_id": [f"e{min(k, 30)}" for k in range(n)]})
    p = tmp_path / "b.parquet"
    frame.write_parquet(p)
    a, b = _both_ways(tmp_path, p, min_history=1)
    assert isinstance(a, str) and a == b and "duplicate event_id" in a
    a, b = _both_ways(tmp_path, p, min_history=1, on_bad_rows="skip")
    assert_same(a, b)  # type: ignore[arg-type]


def test_a_parquet_directory_is_one_table_numbered_across_files(tmp_path: Path) -> None:
    frame = pl.DataFrame({"user_id": [k % 5 for k in range(60)], "item_id": [k % 11 for k in range(60)],
                          "timestamp": [T + 7 * k for k in range(60)]})
    whole = tmp_path / "whole.parquet"
    frame.write_parquet(whole)
    parts = tmp_path / "parts"
    parts.mkdir()
    frame[:25].write_parquet(parts / "part-0.parquet")
    frame[25:].write_parquet(parts / "part-1.parquet")
    prepare(sources_from_files(whole), tmp_path / "a", PrepareOptions(min_history=1), log=quiet)
    for i, target in enumerate((parts, Path(f"{parts}/*.parquet"))):
        prepare_out_of_core(scan_sources(None, None, target, None), tmp_path / f"b{i}", PrepareOptions(min_history=1),
                            log=quiet)
        assert_same(tmp_path / "a", tmp_path / f"b{i}", same_sources=False)
        assert not any(p.name == ".spill" for p in (tmp_path / f"b{i}").rglob("*"))


def test_engine_choice_and_refusals(tmp_path: Path) -> None:
    p = _csv(tmp_path, GOOD)
    assert choose_engine("auto", None, None, p, None, ()) == "polars"  # small
    assert choose_engine("auto", None, None, tmp_path, None, ()) == "polars"  # no Parquet inside: the reader says so
    pl.DataFrame({"user_id": [1]}).write_parquet(tmp_path / "part.parquet")
    assert choose_engine("auto", None, None, tmp_path, None, ()) == "duckdb"  # a directory of Parquet files
    assert choose_engine("auto", None, None, p, p, ()) == "polars"  # impressions
    with pytest.raises(InputError, match="--engine polars"):
        choose_engine("duckdb", None, None, p, p, ())
    with pytest.raises(InputError, match="--engine must be one of"):
        choose_engine("spark", None, None, p, None, ())
    with pytest.raises(InputError, match="matches no file"):
        scan_path(tmp_path / "none-*.parquet")
    with pytest.raises(InputError, match="--memory-limit"):
        prepare_out_of_core(ScanSources(scan_path(p), files=[p]), tmp_path / "x", PrepareOptions(min_history=1),
                            log=quiet, memory_limit="lots")
    assert not (tmp_path / "x").exists()
    for bad in ("NaN", "", "-1GiB", "1e9", "99999999TiB", "1MiB"):
        with pytest.raises(InputError, match="--memory-limit"):
            parse_size(bad)
