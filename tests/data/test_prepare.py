"""``prepare``: the prepared directory's layout, the no-leakage sample contract, splits and negatives."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from userlens.data.prepare import PrepareOptions, prepare, sources_from_files
from userlens.data.prepared import PreparedData
from userlens.data.tables import SPLITS
from userlens.errors import InputError
from userlens.synthetic import leakage_log

T = 1_600_000_000  # epoch seconds


def _quiet(*_: object) -> None:
    pass


def _run(tmp_path: Path, behaviors: pl.DataFrame, impressions: pl.DataFrame | None = None,
         items: pl.DataFrame | None = None, fmt: str = "csv", out: str = "out", **opts) -> tuple[Path, dict]:
    """Write the tables as files, prepare them, return (prepared dir, meta)."""
    paths = {}
    for name, df in (("behaviors", behaviors), ("impressions", impressions), ("items", items)):
        if df is not None:
            paths[name] = tmp_path / f"{name}.{fmt}"
            df.write_csv(paths[name]) if fmt == "csv" else df.write_parquet(paths[name])
    out_dir = tmp_path / out
    meta = prepare(sources_from_files(paths["behaviors"], paths.get("impressions"), paths.get("items")),
                   out_dir, PrepareOptions(**opts), log=_quiet)
    return out_dir, meta


def _load_samples(d: Path, split: str) -> dict[str, np.ndarray]:
    return {f.stem: np.load(f) for f in sorted((d / "samples" / split).glob("*.npy"))}


def _all_samples(d: Path) -> dict[str, np.ndarray]:
    parts = [_load_samples(d, s) for s in SPLITS]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _decode(d: Path, name: str) -> dict[int, object]:
    v = pl.read_parquet(d / "vocab" / f"{name}.parquet")
    return dict(zip(v["index"].to_list(), v["raw"].to_list()))


# --------------------------------------------------------------------------- a small hand-made dataset

BEH = pl.DataFrame({
    "user_id": ["bob", "amy", "bob", "amy", "amy", "cat", "bob"],
    "item_id": ["i3", "i1", "i2", "i2", "i4", "i1", "i9"],
    "timestamp": [T + 50, T + 30, T + 10, T + 10, T + 30, T + 5, T + 50],
    "behavior": ["click", "buy", "click", "click", "cart", "click", "buy"],
    "category": ["c3", "c1", "c2", "c2", "c4", "c1", "c9"],
})
ITEMS = pl.DataFrame({"item_id": ["i1", "i2", "i3", "i5"], "category": ["k1", "k2", "k3", "k5"]})
IMP = pl.DataFrame({
    "user_id": ["amy", "bob", "bob", "cat", "dan"],
    "item_id": ["i5", "i1", "i2", "i3", "i1"],
    "timestamp": [T + 30, T + 50, T + 60, T + 1, T + 100],
    "label": [1, 0, 1, 0, 1],
    "split": ["train", "train", "valid", "test", "test"],
    "device": ["ios", "web", "ios", "web", "tv"],
})


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    return _run(tmp_path_factory.mktemp("small"), BEH, IMP, ITEMS, context_columns=("device",))


def test_layout_is_plain_files_readable_without_userlens(small: tuple[Path, dict]) -> None:
    d, meta = small
    expected = ["meta.json", "items/category.npy",
                *(f"vocab/{v}.parquet" for v in ("user", "item", "category", "behavior", "ctx_device")),
                *(f"timeline/{f}.npy" for f in ("offsets", "item", "category", "behavior", "time")),
                *(f"samples/{s}/{f}.npy" for s in SPLITS
                  for f in ("user", "item", "label", "time", "cutoff", "ctx_device"))]
    for rel in expected:
        assert (d / rel).is_file(), rel
    on_disk = json.loads((d / "meta.json").read_text())
    assert on_disk["schema_version"] == 2 and on_disk["storage_time_unit"] == "ms"
    assert on_disk["input_time_units"] and set(on_disk["input_time_units"].values()) <= {"s", "ms", "iso", "datetime"}
    assert set(on_disk["files"]) >= set(expected) - {"meta.json"} and on_disk["fingerprint"].startswith("sha256:")
    assert on_disk["counts"] == meta["counts"]
    assert on_disk["counts"]["behaviors"] == BEH.height
    for name in ("user", "item", "category", "behavior", "ctx_device"):
        v = pl.read_parquet(d / "vocab" / f"{name}.parquet")
        assert v["index"].to_list() == list(range(2, 2 + v.height)), "0 = pad and 1 = unknown are reserved"
        assert v["raw"].n_unique() == v.height
        assert on_disk["vocab_sizes"][name] == v.height + 2
    assert sorted(_decode(d, "user").values()) == ["amy", "bob", "cat", "dan"]
    assert sorted(_decode(d, "behavior").values()) == ["buy", "cart", "click"]
    total = sum(on_disk["samples"][s]["samples"] for s in SPLITS)
    assert total == IMP.height


def test_timeline_is_the_input_sorted_by_user_then_time(small: tuple[Path, dict]) -> None:
    d, _ = small
    off = np.load(d / "timeline" / "offsets.npy")
    item, t, beh = (np.load(d / "timeline" / f"{f}.npy") for f in ("item", "time", "behavior"))
    users, items, behaviors = _decode(d, "user"), _decode(d, "item"), _decode(d, "behavior")
    assert off.dtype == np.int64 and len(off) == len(users) + 3
    assert off[0] == 0 and off[-1] == len(item) == len(t) == len(beh) == BEH.height
    assert np.all(np.diff(off) >= 0)
    assert off[1] == off[2] == 0, "pad and unknown users own no behaviors"
    got = [(users[u], items[int(item[k])], int(t[k]), behaviors[int(beh[k])])
           for u in range(2, len(off) - 1) for k in range(off[u], off[u + 1])]
    want = (BEH.with_row_index("line").sort(["user_id", "timestamp", "line"])
            .select("user_id", "item_id", pl.col("timestamp") * 1000, "behavior").rows())
    assert got == want  # equal timestamps keep their input order (bob: i3 then i9)
    assert off[list(users.values()).index("dan") + 3] - off[list(users.values()).index("dan") + 2] == 0


def test_item_categories_prefer_the_item_table(small: tuple[Path, dict]) -> None:
    d, meta = small
    items, cats = _decode(d, "item"), _decode(d, "category")
    item_cat = np.load(d / "items" / "category.npy")
    assert len(item_cat) == meta["vocab_sizes"]["item"] and item_cat[0] == 0
    got = {items[i]: cats[int(item_cat[i])] for i in items}
    # items table wins (i1, i2, i3); behaviors fill the rest (i4, i9); i5 only in the items table
    assert got == {"i1": "k1", "i2": "k2", "i3": "k3", "i4": "c4", "i5": "k5", "i9": "c9"}
    tl_item, tl_cat = np.load(d / "timeline" / "item.npy"), np.load(d / "timeline" / "category.npy")
    assert np.array_equal(tl_cat, item_cat[tl_item])
    assert any("more than one category" in n for n in meta["bad_rows"]["notes"])


def test_impression_split_column_is_honoured(small: tuple[Path, dict]) -> None:
    d, meta = small
    users, items, dev = _decode(d, "user"), _decode(d, "item"), _decode(d, "ctx_device")
    for split in SPLITS:
        s = _load_samples(d, split)
        got = sorted((users[int(u)], items[int(i)], int(t), int(y), dev[int(c)])
                     for u, i, t, y, c in zip(s["user"], s["item"], s["time"], s["label"], s["ctx_device"]))
        want = sorted((r[0], r[1], r[2] * 1000, r[3], r[5]) for r in IMP.rows() if r[4] == split)
        assert got == want, split
    assert meta["samples"]["split"] == "impressions' split column"


def test_cutoffs_of_the_small_dataset_by_hand(small: tuple[Path, dict]) -> None:
    d, _ = small
    off, tl_t = np.load(d / "timeline" / "offsets.npy"), np.load(d / "timeline" / "time.npy")
    users = _decode(d, "user")
    s = _all_samples(d)
    hist = {(users[int(u)], int(t) // 1000 - T): int(c - off[u]) for u, t, c in zip(s["user"], s["time"], s["cutoff"])}
    # amy@30 sees only her behavior @10 (two @30 are excluded); bob@50 sees @10 (two @50 excluded); bob@60 all 3
    assert hist == {("amy", 30): 1, ("bob", 50): 1, ("bob", 60): 3, ("cat", 1): 0, ("dan", 100): 0}
    assert np.all(tl_t[s["cutoff"][s["cutoff"] > off[s["user"]]] - 1] < s["time"][s["cutoff"] > off[s["user"]]])


def test_prepared_data_reads_the_directory(small: tuple[Path, dict]) -> None:
    d, meta = small
    data = PreparedData(d)
    assert data.context_columns == ["device"]
    assert data.vocab_sizes == meta["vocab_sizes"]
    test = data.samples("test")
    assert len(test) == 2 and set(test.context) == {"device"}
    assert np.array_equal(data.timeline["time"], np.load(d / "timeline" / "time.npy"))
    with pytest.raises(InputError, match=re.escape("unknown split 'dev'; expected one of")):
        data.samples("dev")


# --------------------------------------------------------------------------- leakage


def test_no_history_behavior_at_or_after_the_sample_time(tmp_path: Path) -> None:
    # Every click is also logged as a behavior at the impression's own timestamp: the leak to avoid.
    log = leakage_log(n_users=40, n_items=80, behaviors_per_user=15, impressions_per_user=12, seed=3)
    paths = log.write(tmp_path / "raw")
    d = tmp_path / "out"
    prepare(sources_from_files(paths["behaviors"], paths["impressions"], paths["items"]), d, log=_quiet)
    off = np.load(d / "timeline" / "offsets.npy")
    tl_t = np.load(d / "timeline" / "time.npy")
    users = _decode(d, "user")
    raw_times = {u: np.sort(g["timestamp"].to_numpy() * 1000)
                 for (u,), g in log.behaviors.group_by("user_id")}
    s = _all_samples(d)
    assert len(s["user"]) == log.impressions.height
    same_time_excluded = 0
    for u, t, c in zip(s["user"], s["time"], s["cutoff"]):
        start, end = off[u], off[u + 1]
        assert start <= c <= end
        assert np.all(tl_t[start:c] < t), "a history behavior is not strictly before its sample"
        if c < end:
            assert tl_t[c] >= t, "a behavior strictly before the sample was left out of the history"
            same_time_excluded += int(tl_t[c] == t)
        # reference straight from the raw table: the number of the user's behaviors strictly before t
        assert c - start == np.searchsorted(raw_times[users[int(u)]], t, side="left")
    assert same_time_excluded >= 100, "the test must exercise behaviors that share the impression's timestamp"


# --------------------------------------------------------------------------- time split


def test_time_split_without_a_split_column_orders_train_valid_test(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 400
    beh = pl.DataFrame({"user_id": rng.integers(0, 20, 200), "item_id": rng.integers(0, 50, 200),
                        "timestamp": T + rng.integers(0, 10_000, 200)})
    imp = pl.DataFrame({"user_id": rng.integers(0, 20, n), "item_id": rng.integers(0, 50, n),
                        "timestamp": T + rng.integers(0, 40, n) * 250,  # heavy ties
                        "label": rng.integers(0, 2, n)})
    d, meta = _run(tmp_path, beh, imp, fmt="parquet", valid_fraction=0.2, test_fraction=0.1)
    tr, va, te = (_load_samples(d, s)["time"] for s in SPLITS)
    assert len(tr) + len(va) + len(te) == n
    assert len(va) > 0 and len(te) > 0
    assert tr.max() < va.min() and va.max() < te.min(), "a tie was split across train/valid/test"
    assert 0.05 < len(te) / n < 0.2 and 0.1 < len(va) / n < 0.35
    assert meta["samples"]["split"].startswith("time quantiles")


# --------------------------------------------------------------------------- samples from behaviors


def _behavior_log(seed: int = 0, n_users: int = 25) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        n = int(rng.integers(1, 16))
        times = T + np.sort(rng.choice(100_000, size=n, replace=False))
        rows += [(f"u{u}", int(rng.integers(0, 60)), int(t)) for t in times]
    return pl.DataFrame(rows, schema={"user_id": pl.Utf8, "item_id": pl.Int64, "timestamp": pl.Int64}, orient="row")


@pytest.fixture(scope="module")
def from_behaviors(tmp_path_factory: pytest.TempPathFactory) -> tuple[pl.DataFrame, Path, Path, Path]:
    tmp = tmp_path_factory.mktemp("beh")
    beh = _behavior_log()
    lolo = {"split": "leave-last-out", "min_history": 3, "negatives": 2}
    a, _ = _run(tmp, beh, out="a", seed=7, **lolo)
    b, _ = _run(tmp, beh, out="b", seed=7, **lolo)
    c, _ = _run(tmp, beh, out="c", seed=8, **lolo)
    return beh, a, b, c


def test_leave_last_out_puts_last_positive_in_test_and_second_last_in_valid(from_behaviors) -> None:
    beh, d, _, _ = from_behaviors
    users, items = _decode(d, "user"), _decode(d, "item")
    off = np.load(d / "timeline" / "offsets.npy")
    positives: dict[str, set] = {}
    for split in SPLITS:
        s = _load_samples(d, split)
        pos = s["label"] == 1
        positives[split] = {(users[int(u)], items[int(i)], int(t)) for u, i, t in
                            zip(s["user"][pos], s["item"][pos], s["time"][pos])}
        assert pos.sum() == len(positives[split])
        # history of a positive ends right before the behavior itself
        assert np.array_equal(s["cutoff"][pos] - off[s["user"][pos]],
                              np.array(_rank(beh, users, s, pos)))
    want = {k: set() for k in SPLITS}
    for (u,), g in beh.group_by("user_id"):
        rows = [(u, it, t * 1000) for it, t in g.sort("timestamp").select("item_id", "timestamp").rows()]
        for r, row in enumerate(rows):
            if r < 3:  # min_history
                continue
            from_end = len(rows) - 1 - r
            want["test" if from_end == 0 else "valid" if from_end == 1 else "train"].add(row)
    assert positives == want
    assert len(want["test"]) > 5 and len(want["valid"]) > 5 and len(want["train"]) > 5


def _rank(beh: pl.DataFrame, users: dict, s: dict[str, np.ndarray], pos: np.ndarray) -> list[int]:
    """Rank of each positive among its user's behaviors (= its number of earlier behaviors)."""
    out = []
    for u, t in zip(s["user"][pos], s["time"][pos]):
        ts = beh.filter(pl.col("user_id") == users[int(u)])["timestamp"].to_numpy() * 1000
        out.append(int((ts < t).sum()))
    return out


def test_negatives_never_hit_the_users_items_and_follow_the_ratio(from_behaviors) -> None:
    """A negative at time t: never an item the user touched at or before t, always an item seen before t."""
    beh, d, _, _ = from_behaviors
    users, items = _decode(d, "user"), _decode(d, "item")
    ms = beh.with_columns(pl.col("timestamp") * 1000)
    for split in SPLITS:
        s = _load_samples(d, split)
        pos, neg = s["label"] == 1, s["label"] == 0
        assert neg.sum() == 2 * pos.sum()
        neg_keys = sorted(zip(s["user"][neg], s["time"][neg], s["cutoff"][neg]))
        pos_keys = sorted(zip(s["user"][pos], s["time"][pos], s["cutoff"][pos]))
        assert neg_keys == sorted(pos_keys * 2), "each positive gets 2 negatives with its user, time and cutoff"
        for u, i, t in zip(s["user"][neg], s["item"][neg], s["time"][neg]):
            raw, user = items[int(i)], users[int(u)]
            mine = ms.filter((pl.col("user_id") == user) & (pl.col("timestamp") <= t))["item_id"].to_list()
            assert raw not in mine
            assert raw in ms.filter(pl.col("timestamp") < t)["item_id"].to_list(), "drawn from items seen before t"


def test_negatives_are_seeded(from_behaviors) -> None:
    _, a, b, c = from_behaviors
    for split in SPLITS:
        sa, sb, sc = (_load_samples(d, split) for d in (a, b, c))
        for k in sa:
            assert np.array_equal(sa[k], sb[k]), (split, k)
        assert np.array_equal(sa["user"], sc["user"]) and np.array_equal(sa["label"], sc["label"])
    train_a, train_c = _load_samples(a, "train"), _load_samples(c, "train")
    assert not np.array_equal(train_a["item"], train_c["item"]), "a different seed must draw other negatives"


def test_behaviors_time_split_orders_positives(tmp_path: Path) -> None:
    d, meta = _run(tmp_path, _behavior_log(seed=1, n_users=40), min_history=1, negatives=0, split="time",
                   valid_fraction=0.2, test_fraction=0.2)
    tr, va, te = (_load_samples(d, s) for s in SPLITS)
    assert all(np.all(s["label"] == 1) for s in (tr, va, te))
    assert tr["time"].max() < va["time"].min() and va["time"].max() < te["time"].min()
    assert meta["samples"]["split"] == "time"


def test_min_user_behaviors_drops_users_and_counts_them(tmp_path: Path) -> None:
    beh = _behavior_log(seed=2, n_users=30)
    counts = dict(beh.group_by("user_id").len().rows())
    small = {u for u, n in counts.items() if n < 5}
    assert 0 < len(small) < len(counts)
    n = len(counts)
    imp = pl.DataFrame({"user_id": sorted(counts), "item_id": [1] * n, "timestamp": [T + 200_000] * n,
                        "label": [1] * n})
    d, meta = _run(tmp_path, beh, imp, min_user_behaviors=5)
    assert meta["counts"]["users_dropped"] == len(small)
    assert json.loads((d / "meta.json").read_text())["counts"]["users_dropped"] == len(small)
    n_beh = sum(counts[u] for u in small)
    assert (meta["counts"]["behaviors_dropped_with_users"], meta["counts"]["impressions_dropped_with_users"]) == (
        n_beh, len(small))
    assert (f"dropped {len(small)} users with < 5 behaviors, with their {n_beh} behaviors and {len(small)} "
            "impressions") in meta["bad_rows"]["notes"]
    assert set(_decode(d, "user").values()) == set(counts) - small
    assert sum(meta["samples"][s]["samples"] for s in SPLITS) == len(counts) - len(small)
    assert meta["counts"]["behaviors"] == sum(n for u, n in counts.items() if u not in small)


def test_min_user_behaviors_drops_users_seen_only_in_impressions(tmp_path: Path) -> None:
    beh = _behavior_log(seed=2, n_users=30)
    users = sorted(set(beh["user_id"]))
    imp = pl.DataFrame({"user_id": [*users, "ghost"], "item_id": [1] * (len(users) + 1),
                        "timestamp": [T + 200_000] * (len(users) + 1), "label": [1] * (len(users) + 1)})
    counts = dict(beh.group_by("user_id").len().rows())
    small = {u for u, n in counts.items() if n < 2} | {"ghost"}
    d, meta = _run(tmp_path, beh, imp, min_user_behaviors=2)
    assert meta["counts"]["users_dropped"] == len(small)
    assert "ghost" not in set(_decode(d, "user").values())
    assert sum(meta["samples"][s]["samples"] for s in SPLITS) == len(users) + 1 - len(small)


# --------------------------------------------------------------------------- ids, checksums, bad rows


def test_integer_behavior_ids_match_text_impression_ids(tmp_path: Path) -> None:
    beh = pl.DataFrame({"user_id": [7, 7, 8], "item_id": [100, 101, 100], "timestamp": [T, T + 1, T + 2]})
    beh.write_parquet(tmp_path / "b.parquet")
    # "x5" makes the impression item ids text; users 7/8 stay integers on both sides
    (tmp_path / "i.csv").write_text(f"user_id,item_id,timestamp,label\n7,100,{T + 5},1\n8,101,{T + 5},0\n"
                                    f"8,x5,{T + 5},0\n")
    d = tmp_path / "out"
    prepare(sources_from_files(tmp_path / "b.parquet", tmp_path / "i.csv"), d, log=_quiet)
    items, users = _decode(d, "item"), _decode(d, "user")
    assert sorted(items.values()) == ["100", "101", "x5"]
    assert sorted(users.values()) == [7, 8]
    s = _all_samples(d)
    got = sorted((users[int(u)], items[int(i)]) for u, i in zip(s["user"], s["item"]))
    assert got == [(7, "100"), (8, "101"), (8, "x5")]
    tl_items = set(np.load(d / "timeline" / "item.npy").tolist())
    idx = {v: k for k, v in items.items()}
    assert {idx["100"], idx["101"]} == tl_items, "text '100' must be the same item as integer 100"
    off = np.load(d / "timeline" / "offsets.npy")
    assert sorted((s["cutoff"] - off[s["user"]]).tolist()) == [1, 1, 2]


def test_meta_records_source_checksums(small: tuple[Path, dict]) -> None:
    d, meta = small
    assert len(meta["sources"]) == 3
    for path, digest in meta["sources"].items():
        assert digest == hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_skipped_rows_are_recorded_in_meta(tmp_path: Path) -> None:
    (tmp_path / "b.csv").write_text("\n".join([
        "user_id,item_id,timestamp", f"u,a,{T}", "u,b,later", f"u,c,{T + 1}", f",d,{T + 2}", f"u,e,{T + 3}",
        "u,f,4102444800", f"v,g,{T + 4}", "v,h",
    ]))
    d = tmp_path / "out"
    lines: list[str] = []
    meta = prepare(sources_from_files(tmp_path / "b.csv"), d,
                   PrepareOptions(on_bad_rows="skip", min_history=1, negatives=0), log=lines.append)
    on_disk = json.loads((d / "meta.json").read_text())["bad_rows"]
    assert on_disk == meta["bad_rows"]
    assert on_disk["skipped_rows"] == 4
    by = {p["problem"].split(": column ", 1)[1]: (p["rows"], p["first_line"]) for p in on_disk["by_problem"]}
    assert by == {"'user_id': empty id (null, blank or NaN; a truncated line?)": (1, 5),
                  "'timestamp': empty timestamp (a truncated line?)": (1, 9),
                  "'timestamp': cannot parse the timestamp": (1, 3),
                  "'timestamp': absurd timestamp (before 1990-01-01 or in the future)": (1, 7)}
    assert meta["counts"]["behaviors"] == 4
    assert sorted(_decode(d, "item").values()) == ["a", "c", "e", "g"]
    assert lines[0] == "skipped 4 defective rows:"


def test_bad_rows_stop_prepare_by_default(tmp_path: Path) -> None:
    (tmp_path / "b.csv").write_text(f"user_id,item_id,timestamp\nu,a,{T}\nu,b,later\n")
    with pytest.raises(InputError, match=re.escape("b.csv:line 3: column 'timestamp': cannot parse the timestamp")):
        prepare(sources_from_files(tmp_path / "b.csv"), tmp_path / "out", log=_quiet)
    assert not (tmp_path / "out").exists()


def test_refuses_to_write_into_a_foreign_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("precious")
    with pytest.raises(InputError, match="exists, is not empty and is not a prepared directory"):
        _run(tmp_path, BEH, IMP)
    assert (tmp_path / "out" / "thesis.tex").read_text() == "precious"


@pytest.mark.parametrize(
    ("opts", "match"),
    [({"on_bad_rows": "ignore"}, "--on-bad-rows must be 'error' or 'skip'"),
     ({"valid_fraction": 0.6, "test_fraction": 0.5}, "valid/test fractions must be in"),
     ({"negatives": -1}, "negatives and min_history must be >= 0"),
     ({"split": "random"}, "split must be 'leave-last-out' or 'time'")],
)
def test_bad_options_are_rejected(tmp_path: Path, opts: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        _run(tmp_path, BEH, **opts)


def test_no_sample_from_behaviors_is_an_input_error(tmp_path: Path) -> None:
    # nobody has more than 3 behaviors, and behaviors at one timestamp do not count for each other
    with pytest.raises(InputError, match=re.escape("no samples: no behavior has --min-history 2 strictly earlier "
                                                   "behaviors of its user (most: 1). Fix: lower --min-history")):
        _run(tmp_path, BEH, min_history=2)


def test_dropping_every_impression_user_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=re.escape("no samples: every impression belongs to a user with < 9 "
                                                   "behaviors. Fix: lower --min-user-behaviors")):
        _run(tmp_path, BEH, IMP.filter(pl.col("user_id") != "dan"), min_user_behaviors=9)


def test_context_columns_need_impressions(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="context columns need an impressions table"):
        _run(tmp_path, BEH, context_columns=("device",))


def test_tables_sharing_no_ids_get_a_warning(tmp_path: Path) -> None:
    beh = pl.DataFrame({"user_id": [f"u{k}" for k in range(20)], "item_id": [f"i{k}" for k in range(20)],
                        "timestamp": [T + k for k in range(20)]})
    imp = pl.DataFrame({"user_id": [f"u{k}" for k in range(20)], "item_id": [f"item-{k}" for k in range(20)],
                        "timestamp": [T + 100] * 20, "label": [k % 2 for k in range(20)]})
    _, meta = _run(tmp_path, beh, imp)
    notes = meta["bad_rows"]["notes"]
    assert any("warning: behaviors and impressions (item_id) share 0 of 20 ids" in n for n in notes), notes
    assert not any("(user_id) share" in n for n in notes)


def test_duplicate_impressions_and_degenerate_splits_are_warned_about(tmp_path: Path) -> None:
    beh = pl.DataFrame({"user_id": ["a", "b"] * 5, "item_id": list(range(10)), "timestamp": [T + k for k in range(10)]})
    imp = pl.DataFrame({"user_id": ["a", "a", "b", "b"], "item_id": [1, 1, 2, 3],
                        "timestamp": [T + 100, T + 100, T + 100, T + 100], "label": [1, 1, 0, 1],
                        "split": ["train", "train", "train", "test"]})
    _, meta = _run(tmp_path, beh, imp)
    notes = meta["bad_rows"]["notes"]
    assert any("warning: 2 impression rows are exact duplicates" in n for n in notes), notes
    assert any("warning: the valid split is empty" in n for n in notes)
    assert any("warning: the test split has only label 1" in n for n in notes)


@pytest.mark.parametrize(("opts", "match"), [
    ({"negatives": 10**12}, r"--negatives must be in \[0, 1,000\]"),
    ({"min_history": 10**12}, r"--min-history must be in \[0, 10,000,000\]"),
    ({"min_user_behaviors": 10**12}, r"--min-user-behaviors must be in \[1, 10,000,000\]"),
    ({"seed": -1}, r"--seed must be in \[0, 4,294,967,295\]"),
    ({"seed": 2**70}, r"--seed must be in \[0, 4,294,967,295\]"),
])
def test_every_prepare_option_has_bounds(tmp_path: Path, opts: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        _run(tmp_path, BEH, **opts)
    assert not (tmp_path / "out").exists()


def test_meta_json_is_sealed_and_lists_every_file_a_reader_reads(tmp_path: Path) -> None:
    from userlens.artifacts import MANIFEST_CHECKSUM, seal
    from userlens.data.prepare import read_files

    _run(tmp_path, BEH, IMP)
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta[MANIFEST_CHECKSUM] == seal(meta)[MANIFEST_CHECKSUM]
    assert set(read_files(meta["context_columns"])) <= set(meta["files"])


# --------------------------------------------------------------------------- ids and context features, round 3


def test_ids_equal_after_nfc_are_kept_apart_and_reported(tmp_path: Path) -> None:
    """"José" composed (U+00E9) and decomposed (e + U+0301) are two ids: never merged on a guess, but named."""
    composed, decomposed = "Jos\u00e9", "Jose\u0301"
    beh = pl.DataFrame({"user_id": [composed, composed, "ann"], "item_id": ["a", "b", "a"],
                        "timestamp": [T, T + 1, T + 2]})
    imp = pl.DataFrame({"user_id": [decomposed, "ann"], "item_id": ["a", "b"], "timestamp": [T + 5, T + 6],
                        "label": [1, 0]})
    d, meta = _run(tmp_path, beh, imp)
    assert set(_decode(d, "user").values()) == {composed, decomposed, "ann"}
    notes = [n for n in meta["bad_rows"]["notes"] if "NFC" in n]
    assert notes == ["warning: 1 distinct user_ids equal another after Unicode NFC normalisation (e.g. "
                     "'Jose\\u0301' and 'Jos\\xe9'); kept apart. Fix: normalise the ids at the source if they "
                     "are the same"]  # escaped: printed as they are, the two look the same


def test_a_context_column_unique_per_row_is_not_taken_for_a_leak(tmp_path: Path) -> None:
    """A request id determines the label trivially (one row per value): a useless feature, not a leak."""
    imp = IMP.with_columns(pl.Series("request", [f"r{k}" for k in range(IMP.height)]),
                           pl.Series("page", ["home", "home", "home", "list", "list"]))
    _, meta = _run(tmp_path, BEH, imp, context_columns=("request", "page"))
    assert meta["context_columns"] == ["request", "page"]


def test_a_context_column_that_relabels_the_label_is_refused(tmp_path: Path) -> None:
    imp = pl.concat([IMP, IMP.with_columns(pl.col("timestamp") + 1)])
    imp = imp.with_columns(pl.when(pl.col("label") == 1).then(pl.lit("yes")).otherwise(pl.lit("no")).alias("clicked"))
    with pytest.raises(InputError, match=r"impressions\.csv: context column 'clicked' determines the label on every "
                                         r"row \(2 values, each with a single label\).*Fix: drop --context clicked"):
        _run(tmp_path, BEH, imp, context_columns=("clicked",))


@pytest.mark.parametrize("name", ["label", "split", "user_id", "item_id", "timestamp", "category", "event_id",
                                  "behavior", "__line"])
def test_reserved_columns_are_refused_as_context(name: str) -> None:
    with pytest.raises(InputError, match=re.escape(f"--context {name}: {name!r} is a column userlens reads itself")):
        PrepareOptions(context_columns=(name,)).check()


def test_context_names_that_are_not_file_names_are_encoded(tmp_path: Path) -> None:
    imp = IMP.with_columns(pl.col("device").alias("dev/ice"), pl.col("device").alias("../up"))
    d, meta = _run(tmp_path, BEH, imp, context_columns=("dev/ice", "../up"))
    assert meta["context_columns"] == ["dev/ice", "../up"]
    assert (d / "vocab" / "ctx_dev%2Fice.parquet").is_file() and (d / "vocab" / "ctx_..%2Fup.parquet").is_file()
    assert (d / "samples" / "train" / "ctx_dev%2Fice.npy").is_file()
    assert not list(tmp_path.rglob("up.*")) and not list(d.glob("ctx_*"))  # nothing escaped vocab/
    data = PreparedData(d)
    assert set(data.vocab("ctx_dev/ice")["raw"]) == {"ios", "web", "tv"}
    assert set(data.samples("test").context) == {"dev/ice", "../up"}
    assert meta["vocab_sizes"]["ctx_dev/ice"] == 5  # ios, web, tv + padding and unknown


def test_non_ascii_ids_prepare_with_sampled_negatives(tmp_path: Path) -> None:
    """Behaviors only (negatives hash the raw user ids): non-ASCII ids used to end in a UnicodeEncodeError."""
    beh = BEH.with_columns(pl.col("user_id").replace({"bob": "Jos\u00e9", "amy": "ユーザー"}))
    d, meta = _run(tmp_path, beh, min_history=1, negatives=1)
    assert set(_decode(d, "user").values()) == {"Jos\u00e9", "ユーザー", "cat"}
    assert meta["negatives"]["drawn"] > 0
