"""Leakage-free sampling and item attributes: what a sample sees depends only on what was known before it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from userlens.data.attributes import attribute_cutoff, item_categories
from userlens.data.prepare import PrepareOptions, earlier_counts, prepare, sources_from_files
from userlens.data.prepared import PreparedData
from userlens.data.sampling import NegativeReport, NegativeSampler, counter_uniform, stable_id_hash
from userlens.data.tables import SPLITS

T = 1_600_000_000  # epoch seconds


def _quiet(*_: object) -> None:
    pass


def _log(seed: int = 0, n_users: int = 60, n_items: int = 150, n: int = 3000, n_cat: int = 8) -> pl.DataFrame:
    """Random behaviors with skewed item popularity, categories on the rows, a few same-time ties."""
    rng = np.random.default_rng(seed)
    item = np.minimum(rng.zipf(1.6, n), n_items) - 1
    return pl.DataFrame({"user_id": [f"u{u}" for u in rng.integers(0, n_users, n)], "item_id": item,
                         "timestamp": T + rng.integers(0, 50_000, n) * 60, "category": [f"c{i % n_cat}" for i in item]})


def _prepare(tmp: Path, beh: pl.DataFrame, name: str, **opts) -> Path:
    path = tmp / f"{name}.parquet"
    beh.write_parquet(path)
    prepare(sources_from_files(path), tmp / name, PrepareOptions(**opts), log=_quiet)
    return tmp / name


def _samples_by_key(d: Path) -> dict[tuple, list]:
    """(raw user, time, raw positive items) → sorted raw negative items, over every split."""
    users = dict(pl.read_parquet(d / "vocab" / "user.parquet").select("index", "raw").rows())
    items = dict(pl.read_parquet(d / "vocab" / "item.parquet").select("index", "raw").rows())
    out: dict[tuple, list] = {}
    for split in SPLITS:
        s = {k: np.load(d / "samples" / split / f"{k}.npy") for k in ("user", "item", "time", "label", "cutoff")}
        key = list(zip(s["user"], s["time"], s["cutoff"]))
        pos: dict[tuple, tuple] = {}
        for k, i, lab in zip(key, s["item"], s["label"]):
            if lab == 1:
                pos[k] = tuple(sorted(pos.get(k, ()) + (items[int(i)],)))
        for k, i, lab in zip(key, s["item"], s["label"]):
            if lab == 0:
                out.setdefault((users[int(k[0])], int(k[1]), pos.get(k)), []).append(items[int(i)])
    return {k: sorted(v) for k, v in out.items()}


@pytest.mark.parametrize("sampler", ["uniform", "popularity", "category"])
def test_negatives_do_not_change_when_later_events_are_deleted(tmp_path: Path, sampler: str) -> None:
    beh = _log(seed=1)
    full = _samples_by_key(_prepare(tmp_path, beh, "full", negatives=2, negative_sampler=sampler, seed=5))
    cut_ms = int(np.quantile(beh["timestamp"].to_numpy(), 0.6)) * 1000
    early = _samples_by_key(_prepare(tmp_path, beh.filter(pl.col("timestamp") * 1000 <= cut_ms), "early",
                                     negatives=2, negative_sampler=sampler, seed=5))
    assert len(early) > 200
    for key, negs in early.items():
        assert full[key] == negs, key  # same user, time, positive → same negatives, whatever happens later


def test_negatives_come_from_the_past_and_exclude_the_users_items(tmp_path: Path) -> None:
    beh = _log(seed=2).with_columns(pl.col("timestamp") * 1000)
    d = _prepare(tmp_path, beh, "d", negatives=3)
    for (user, t, pos), negs in _samples_by_key(d).items():
        past = beh.filter(pl.col("timestamp") < t)
        mine = set(beh.filter((pl.col("user_id") == user) & (pl.col("timestamp") <= t))["item_id"].to_list())
        for n in negs:
            assert n in set(past["item_id"].to_list()) and n not in mine and n not in pos


def test_category_negatives_share_the_positives_category(tmp_path: Path) -> None:
    beh = _log(seed=3)
    d = _prepare(tmp_path, beh, "d", negatives=1, negative_sampler="category")
    cat = dict(beh.select("item_id", "category").unique().rows())
    keys = _samples_by_key(d)
    same = sum(cat[n] in {cat[p] for p in pos} for (_, _, pos), negs in keys.items() for n in negs)
    total = sum(len(negs) for negs in keys.values())
    import json

    meta = json.loads((d / "meta.json").read_text())
    assert meta["negatives"]["sampler"] == "category" and meta["options"]["negative_sampler"] == "category"
    assert same + meta["negatives"]["category_fallbacks"] >= total  # every other one is a counted fallback
    assert same > 0.9 * total


def _sampler(beh: pl.DataFrame, seed: int = 0) -> tuple[NegativeSampler, np.ndarray, np.ndarray, np.ndarray]:
    """A sampler over a hand-built timeline (users 2.., items 2..) and its arrays sorted by (user, time)."""
    f = beh.sort(["user", "time"])
    user, item, t = (f[c].to_numpy().astype(np.int64) for c in ("user", "item", "time"))
    n_users, n_items = int(user.max()) + 1, int(item.max()) + 1
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(np.bincount(user, minlength=n_users))
    s = NegativeSampler(offsets, item, t, np.full(n_items, 2), stable_id_hash(list(range(n_users))), seed)
    return s, user, item, t


def test_popularity_negatives_follow_count_to_the_alpha() -> None:
    # one "hot" item with 50 earlier events, nine items with one event each; user 9 has touched none of them
    items = [2] * 50 + list(range(3, 12))
    beh = pl.DataFrame({"user": list(range(2, 2 + 59)), "item": items, "time": list(range(59))})
    beh = pl.concat([beh, pl.DataFrame({"user": [70], "item": [12], "time": [100]})])
    s, *_ = _sampler(beh)
    n = 20_000
    user = np.full(n, 70)
    rank = np.arange(n)  # distinct keys: independent draws
    for alpha, expected in ((1.0, 50 / 59), (0.5, 50**0.5 / (50**0.5 + 9)), (0.0, 1 / 10)):
        neg, rep = s.draw(user, rank, np.full(n, 100), np.full(n, 12), 1, "popularity", alpha)
        share = float((neg[:, 0] == 2).mean())
        assert abs(share - expected) < 0.02, (alpha, share, expected)
        assert rep.drawn == n
    assert np.array_equal(s.count_before(np.array([2, 2, 3]), np.array([10, 100, 100])), [10, 50, 1])


def test_exact_fallback_and_impossible_negatives_are_counted() -> None:
    # user 2 touched items 2..5 before t=10; only item 6 (seen at t=1 by user 3) is left; at t=1 nothing is
    beh = pl.DataFrame({"user": [2, 2, 2, 2, 3, 2], "item": [2, 3, 4, 5, 6, 7], "time": [0, 0, 0, 0, 1, 10]})
    s, *_ = _sampler(beh)
    neg, rep = s.draw(np.array([2, 2]), np.array([5, 1]), np.array([10, 0]), np.array([7, 3]), 2)
    assert neg[0].tolist() == [6, 6]  # the only item seen before t=10 that user 2 had not touched
    assert neg[1].tolist() == [-1, -1] and rep.positives_without_negative == 1
    assert rep.drawn == 2


def test_draws_left_after_the_rejection_rounds_are_enumerated_and_counted_by_name() -> None:
    # user 2 touched items 2..301 before t=1000; only item 302 (user 3's) is allowed: a uniform proposal is
    # accepted 1 time in 301, so a draw survives the 64 rounds with probability (300/301)^64 ≈ 0.81
    beh = pl.DataFrame({"user": [2] * 300 + [3, 2], "item": list(range(2, 302)) + [302, 303],
                        "time": list(range(300)) + [0, 1000]})
    s, *_ = _sampler(beh)
    neg, rep = s.draw(np.array([2]), np.array([300]), np.array([1000]), np.array([303]), 16)
    assert (neg == 302).all()
    assert 0 < rep.draws_enumerated_after_rejections <= 16
    saved = rep.to_json()
    assert saved["draws_enumerated_after_rejections"] == rep.draws_enumerated_after_rejections
    assert saved["rejection_rounds"] == 64 and "exact_fallbacks" not in saved
    assert NegativeReport.from_json(saved) == rep


def test_prepared_data_reads_the_negatives_report_under_its_old_name(tmp_path: Path) -> None:
    import json

    from userlens.artifacts import MANIFEST_CHECKSUM

    d = _prepare(tmp_path, _log(n=400), "data", negatives=2)
    report = PreparedData(d).negatives
    assert report is not None and report.drawn > 0
    meta = json.loads((d / "meta.json").read_text())
    assert meta["negatives"]["draws_enumerated_after_rejections"] == report.draws_enumerated_after_rejections
    # a directory prepared before the rename: before manifests were sealed too (no checksum of its own)
    meta.pop(MANIFEST_CHECKSUM)
    meta["negatives"]["exact_fallbacks"] = 7
    del meta["negatives"]["draws_enumerated_after_rejections"], meta["negatives"]["rejection_rounds"]
    (d / "meta.json").write_text(json.dumps(meta))
    old = PreparedData(d).negatives
    assert old is not None and old.draws_enumerated_after_rejections == 7 and old.drawn == report.drawn


def test_counter_uniform_and_id_hash_are_stable() -> None:
    a = counter_uniform(7, np.arange(5), 3)
    assert np.array_equal(a, counter_uniform(7, np.arange(5), 3)) and (0 <= a).all() and (a < 1).all()
    assert not np.array_equal(a, counter_uniform(8, np.arange(5), 3))
    h = stable_id_hash(["u1", 7, "7"])
    assert h[1] == h[2] and h[0] != h[1]
    assert int(stable_id_hash(["a"])[0]) == 0xAF63DC4C8601EC8C  # FNV-1a 64 of "a", a published test vector
    u = counter_uniform(1, np.arange(200_000))
    assert abs(u.mean() - 0.5) < 0.005


def test_min_history_counts_strictly_earlier_behaviors(tmp_path: Path) -> None:
    """Day-resolution data: five behaviors on one day do not give each other a history."""
    day = 86_400
    beh = pl.DataFrame({"user_id": ["a"] * 8 + ["b"] * 6, "item_id": list(range(8)) + list(range(10, 16)),
                        "timestamp": [T] * 5 + [T + day] * 3 + [T + k * day for k in range(6)]})
    d = _prepare(tmp_path, beh, "d", min_history=4, negatives=0, split="leave-last-out")
    pos = np.concatenate([np.load(d / "samples" / s / "time.npy") for s in SPLITS])
    users = np.concatenate([np.load(d / "samples" / s / "user.npy") for s in SPLITS])
    raw = dict(pl.read_parquet(d / "vocab" / "user.parquet").select("index", "raw").rows())
    got = sorted((raw[int(u)], int(t) // 1000 - T) for u, t in zip(users, pos))
    # a: the three next-day behaviors have 5 earlier ones; b: days 4 and 5
    assert got == [("a", day)] * 3 + [("b", 4 * day), ("b", 5 * day)]
    off = np.array([0, 0, 0, 8, 14])
    tl_time = np.array([0] * 5 + [1] * 3 + list(range(6)))
    assert earlier_counts(off, tl_time).tolist() == [0] * 5 + [5] * 3 + list(range(6))


def test_behaviors_default_to_the_global_time_split(tmp_path: Path) -> None:
    d = _prepare(tmp_path, _log(seed=4), "d")
    t = {s: np.load(d / "samples" / s / "time.npy") for s in SPLITS}
    assert t["train"].max() < t["valid"].min() and t["valid"].max() < t["test"].min()
    import json

    meta = json.loads((d / "meta.json").read_text())
    assert meta["samples"]["split"] == "time" and meta["options"]["split"] == "time"
    assert meta["item_attributes"]["cutoff_ms"] == int(t["valid"].min())


# --------------------------------------------------------------------------- item attributes


def test_attribute_cutoff_is_the_earliest_held_out_sample() -> None:
    assert attribute_cutoff(np.array([5, 9, 7, 3]), np.array([0, 1, 2, 0])) == 7
    assert attribute_cutoff(np.array([5]), np.array([0])) is None


def test_tag_categories_use_only_rows_before_the_cutoff() -> None:
    tags = pl.DataFrame({"item_id": ["a", "a", "a", "b", "b", "c"], "tag": ["3", "9", "9", "4", "5", "7"],
                         "timestamp_ms": [1, 2, 50, 60, None, 70]})
    cats, rep = item_categories(None, [], tags, cutoff_ms=10)
    # "a": before 10 one "3" and one "9": tie → lowest (numerically); "9" at 50 is held out. "b", "c": later only.
    assert dict(cats.rows()) == {"a": "3"}
    assert (rep.tag_rows_used, rep.tag_rows_held_out, rep.tag_rows_undated, rep.from_tags) == (2, 3, 1, 1)
    everything, _ = item_categories(None, [], tags, cutoff_ms=None)
    assert dict(everything.rows()) == {"a": "9", "b": "4", "c": "7"}


def test_event_categories_take_the_earliest_event_and_the_table_wins() -> None:
    from userlens.data.tables import LINE

    beh = pl.DataFrame({"item_id": [1, 1, 2], "category": ["late", "early", "x"], "timestamp": [9, 1, 5],
                        LINE: [2, 3, 4]})
    items = pl.DataFrame({"item_id": [2], "category": ["table"]})
    cats, rep = item_categories(items, [beh], None, cutoff_ms=3)
    assert dict(cats.rows()) == {"1": "early", "2": "table"}
    assert rep.conflicts == 2 and rep.from_items_table == 1 and rep.from_events == 1


def test_id_hash_of_non_ascii_ids_is_fnv1a_of_their_utf8() -> None:
    """np.bytes_ of a str is ASCII only: "José" used to stop every behaviors-only prepare (UnicodeEncodeError)."""
    def fnv1a(data: bytes) -> int:
        h = 0xCBF29CE484222325
        for byte in data:
            h = ((h ^ byte) * 0x100000001B3) % 2**64
        return h

    ids = ["José", "Jose\u0301", "ユーザー", "a", 7]
    assert stable_id_hash(ids).tolist() == [fnv1a(str(v).encode()) for v in ids]
