"""``userlens prepare``: validated tables → a prepared directory (DESIGN §3–4).

Layout written (all arrays are plain ``.npy``, memory-mappable, readable without userlens)::

    meta.json                      schema version, counts, vocab sizes, options, checksums, skips
    vocab/{user,item,category,behavior,ctx_<name>}.parquet   raw id ↔ index (0 = pad, 1 = unknown)
    timeline/offsets.npy           (n_users + 1,) int64 CSR offsets into the arrays below
    timeline/{item,category,behavior,time}.npy   per-behavior arrays, sorted by (user, time, input order)
    items/category.npy             (n_items,) int32 category index of every item index
    samples/{train,valid,test}/{user,item,label,time,cutoff[,ctx_<name>]}.npy

A sample's history is ``timeline[offsets[user] : cutoff]``: the user's behaviors
with time **strictly before** the sample's time. It is never copied per sample,
so memory stays linear in behaviors + samples, whatever the history length.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from userlens.data.tables import LINE, SPLITS, BadRowPolicy, RawTable, SkipReport, unify_id_types, validate
from userlens.errors import InputError

SCHEMA_VERSION = 1
PAD, UNK = 0, 1
FIRST_INDEX = 2


@dataclass
class Sources:
    """The canonical tables of one dataset, as read (by :func:`read_table` or an adapter)."""

    behaviors: RawTable
    impressions: RawTable | None = None
    items: RawTable | None = None
    files: list[Path] = field(default_factory=list)  # checksummed into meta.json
    notes: list[str] = field(default_factory=list)  # what an adapter decided (aggregations, mappings)
    name: str = "custom"


@dataclass
class PrepareOptions:
    """Options of ``prepare``; all are recorded in meta.json."""

    on_bad_rows: BadRowPolicy = "error"
    timestamp_unit: Literal["auto", "s", "ms"] = "auto"
    context_columns: tuple[str, ...] = ()
    min_user_behaviors: int = 1  # users with fewer behaviors are dropped (counted in meta.json)
    # Impression samples without a split column: time split by global time quantiles.
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    # Samples from behaviors only:
    split: Literal["leave-last-out", "time"] = "leave-last-out"
    min_history: int = 4  # a behavior becomes a positive sample once the user has this many before it
    negatives: int = 1  # sampled negatives per positive
    seed: int = 2024

    def check(self) -> None:
        if self.on_bad_rows not in ("error", "skip"):
            raise InputError(f"--on-bad-rows must be 'error' or 'skip', got {self.on_bad_rows!r}")
        if not (0 <= self.valid_fraction < 1 and 0 < self.test_fraction < 1 and
                self.valid_fraction + self.test_fraction < 1):
            raise InputError(
                f"valid/test fractions must be in [0, 1) and sum below 1, got "
                f"{self.valid_fraction} / {self.test_fraction}"
            )
        if self.negatives < 0 or self.min_history < 0 or self.min_user_behaviors < 1:
            raise InputError("negatives and min_history must be >= 0 and min_user_behaviors >= 1")
        if self.split not in ("leave-last-out", "time"):
            raise InputError(f"split must be 'leave-last-out' or 'time', got {self.split!r}")


# --------------------------------------------------------------------------- helpers


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _vocab(*columns: pl.Series) -> pl.DataFrame:
    """Sorted distinct raw values → indices from 2 (0 = padding, 1 = unknown)."""
    raw = pl.concat([c.rename("raw") for c in columns if c is not None]).drop_nulls().unique().sort()
    return pl.DataFrame({"raw": raw, "index": np.arange(FIRST_INDEX, FIRST_INDEX + len(raw), dtype=np.int32)})


def _encode(values: pl.Series, vocab: pl.DataFrame) -> np.ndarray:
    """Raw values → int32 indices; values missing from the vocabulary map to UNK."""
    return values.replace_strict(vocab["raw"], vocab["index"], default=UNK, return_dtype=pl.Int32).to_numpy()


def _cutoffs(offsets: np.ndarray, tl_time: np.ndarray, user: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per sample: the timeline index of the user's first behavior with time >= t (history = [start, cutoff))."""
    if len(tl_time) == 0:
        return offsets[user].astype(np.int64)
    tl_user = np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))
    lo = int(min(tl_time.min(), t.min()))
    span = int(max(tl_time.max(), t.max())) - lo + 1
    if (len(offsets) + 1) * span < 2**62:
        tl_key = tl_user * span + (tl_time - lo)
        s_key = user.astype(np.int64) * span + (t - lo)
    else:  # very long spans: compress times to dense ranks so the key cannot overflow
        uniq, inv = np.unique(np.concatenate([tl_time, t]), return_inverse=True)
        span = len(uniq)
        tl_key = tl_user * span + inv[: len(tl_time)]
        s_key = user.astype(np.int64) * span + inv[len(tl_time):]
    return np.searchsorted(tl_key, s_key, side="left").astype(np.int64)


def _save(dir_: Path, arrays: dict[str, np.ndarray]) -> None:
    dir_.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        np.save(dir_ / f"{name}.npy", np.ascontiguousarray(arr))


# --------------------------------------------------------------------------- samples


def _negatives(
    user: np.ndarray, n_neg: int, pair_keys: np.ndarray, universe: np.ndarray, n_items: int, rng: np.random.Generator
) -> np.ndarray:
    """Draw ``n_neg`` items per entry of ``user``, uniformly from ``universe`` minus the user's own items.

    Rejection sampling, vectorised over all samples per round (never a loop per sample).
    """
    u = np.repeat(user.astype(np.int64), n_neg)
    out = universe[rng.integers(0, len(universe), size=len(u))].astype(np.int64)
    todo = np.arange(len(u))
    for _ in range(200):
        keys = u[todo] * n_items + out[todo]
        pos = np.searchsorted(pair_keys, keys)
        hit = (pos < len(pair_keys)) & (pair_keys[np.minimum(pos, len(pair_keys) - 1)] == keys)
        todo = todo[hit]
        if len(todo) == 0:
            return out.astype(np.int32)
        out[todo] = universe[rng.integers(0, len(universe), size=len(todo))]
    raise InputError(
        f"could not sample negatives for {len(todo)} samples: their users interacted with (almost) every item. "
        "Fix: pass --negatives 0 or provide impressions with labels."
    )


def _time_split(t: np.ndarray, valid_fraction: float, test_fraction: float) -> np.ndarray:
    """0/1/2 = train/valid/test by global time quantiles, so train < valid < test in time."""
    t1, t2 = np.quantile(t, [1 - valid_fraction - test_fraction, 1 - test_fraction], method="lower")
    split = np.zeros(len(t), dtype=np.int8)
    split[t >= t1] = 1
    split[t >= t2] = 2
    if valid_fraction == 0:
        split[split == 1] = 0
    return split


def _samples_from_behaviors(
    offsets: np.ndarray, tl_item: np.ndarray, tl_time: np.ndarray, n_items: int, opt: PrepareOptions
) -> dict[str, np.ndarray]:
    n_users = len(offsets) - 1
    lengths = np.diff(offsets)
    tl_user = np.repeat(np.arange(n_users, dtype=np.int32), lengths)
    rank = np.arange(len(tl_item)) - offsets[tl_user]
    pos_idx = np.flatnonzero(rank >= opt.min_history)
    if len(pos_idx) == 0:
        raise InputError(
            f"no samples: no user has more than --min-history {opt.min_history} behaviors (longest history: "
            f"{int(lengths.max())}). Fix: lower --min-history or provide impressions."
        )
    user, item, t = tl_user[pos_idx], tl_item[pos_idx], tl_time[pos_idx]
    if opt.split == "leave-last-out":
        from_end = (offsets[user + 1] - 1) - pos_idx  # 0 = user's last behavior
        split = np.where(from_end == 0, 2, np.where(from_end == 1, 1, 0)).astype(np.int8)
    else:
        split = _time_split(t, opt.valid_fraction, opt.test_fraction)
    label = np.ones(len(user), dtype=np.int8)
    if opt.negatives > 0:
        rng = np.random.default_rng(opt.seed)
        pair_keys = np.unique(tl_user.astype(np.int64) * n_items + tl_item)
        universe = np.unique(tl_item)
        neg_item = _negatives(user, opt.negatives, pair_keys, universe, n_items, rng)
        rep = lambda a: np.repeat(a, opt.negatives)  # noqa: E731 - keeps the four repeats readable
        user, item, t, split = (np.concatenate([a, rep(a)]) for a in (user, item, t, split))
        item = np.concatenate([item[: len(label)], neg_item])
        label = np.concatenate([label, np.zeros(len(neg_item), dtype=np.int8)])
    return {"user": user, "item": item, "time": t, "label": label, "split": split}


# --------------------------------------------------------------------------- main entry


def prepare(sources: Sources, out: str | Path, options: PrepareOptions | None = None,
            log: callable = print) -> dict:  # type: ignore[valid-type]
    """Validate, encode and write a prepared directory; returns the meta dict (also in ``out/meta.json``).

    Example:
        >>> from userlens.data.tables import read_table
        >>> meta = prepare(Sources(read_table("b.csv")), "data/x")  # doctest: +SKIP
    """
    opt = options or PrepareOptions()
    opt.check()
    started = time.perf_counter()
    out = Path(out)
    report = SkipReport(notes=list(sources.notes))
    vkw = dict(policy=opt.on_bad_rows, report=report, timestamp_unit=opt.timestamp_unit)
    beh = validate(sources.behaviors, "behaviors", **vkw)
    imp = (validate(sources.impressions, "impressions", context_columns=opt.context_columns, **vkw)
           if sources.impressions is not None else None)
    if opt.context_columns and imp is None:
        raise InputError("context columns need an impressions table (--impressions). Fix: drop --context.")
    items = validate(sources.items, "items", **vkw) if sources.items is not None else None

    frames = [beh, imp, items]
    beh, imp, items = unify_id_types(*frames, column="item_id")
    beh, imp, _ = unify_id_types(beh, imp, None, column="user_id")

    # Users with too few behaviors are dropped, counted, reported (never silently).
    dropped_users = 0
    if opt.min_user_behaviors > 1:
        counts = beh.group_by("user_id").len()
        small = counts.filter(pl.col("len") < opt.min_user_behaviors)["user_id"]
        if imp is not None:  # users seen only in impressions have 0 behaviors: below any minimum
            unseen = imp.select("user_id").unique().join(counts, on="user_id", how="anti")["user_id"]
            small = pl.concat([small, unseen])
        dropped_users = len(small)
        if dropped_users:
            beh = beh.filter(~pl.col("user_id").is_in(small.implode()))
            if imp is not None:
                imp = imp.filter(~pl.col("user_id").is_in(small.implode()))
            report.notes.append(f"dropped {dropped_users} users with < {opt.min_user_behaviors} behaviors")
            if imp is not None and imp.height == 0:
                raise InputError(f"no samples: every impression belongs to a user with < {opt.min_user_behaviors} "
                                 "behaviors. Fix: lower --min-user-behaviors.")

    # ---- vocabularies
    user_v = _vocab(beh["user_id"], imp["user_id"] if imp is not None else None)
    item_v = _vocab(beh["item_id"], imp["item_id"] if imp is not None else None,
                    items["item_id"] if items is not None else None)
    cat_sources: list[pl.DataFrame] = []  # (item_id, category) in priority order: items table, behaviors, impressions
    for fr in (items, beh, imp):
        if fr is not None and "category" in fr.columns:
            cat_sources.append(fr.select("item_id", pl.col("category").cast(pl.Utf8)).drop_nulls())
    cat_v = _vocab(*(c["category"] for c in cat_sources)) if cat_sources else _vocab(pl.Series([], dtype=pl.Utf8))
    beh_v = _vocab(beh["behavior"].cast(pl.Utf8)) if "behavior" in beh.columns else _vocab(pl.Series([], dtype=pl.Utf8))
    n_users, n_items = len(user_v) + FIRST_INDEX, len(item_v) + FIRST_INDEX

    # ---- item table: one category per item (first source wins; conflicts are counted)
    item_cat = np.full(n_items, UNK if cat_sources else PAD, dtype=np.int32)
    item_cat[PAD] = PAD
    conflicts = 0
    if cat_sources:
        allc = pl.concat([c.with_columns(pl.lit(k).alias("prio")) for k, c in enumerate(cat_sources)])
        firsts = allc.unique(subset=["item_id"], keep="first", maintain_order=True)
        conflicts = int(allc.unique(subset=["item_id", "category"]).group_by("item_id").len()
                        .filter(pl.col("len") > 1).height)
        item_cat[_encode(firsts["item_id"], item_v)] = _encode(firsts["category"], cat_v)
        if conflicts:
            report.notes.append(f"{conflicts} items have more than one category across rows/tables; "
                                "kept the item table's (else the first seen)")
    items_without_cat = int((item_cat[FIRST_INDEX:] == UNK).sum()) if cat_sources else n_items - FIRST_INDEX

    # ---- timeline (CSR): sort by (user, time, input order)
    enc = pl.DataFrame({
        "u": _encode(beh["user_id"], user_v),
        "i": _encode(beh["item_id"], item_v),
        "t": beh["timestamp"].to_numpy(),
        "b": _encode(beh["behavior"].cast(pl.Utf8), beh_v) if "behavior" in beh.columns
        else np.zeros(beh.height, dtype=np.int32),
        "line": beh[LINE].to_numpy(),
    }).sort(["u", "t", "line"])
    tl_user = enc["u"].to_numpy()
    tl = {
        "item": enc["i"].to_numpy().astype(np.int32),
        "behavior": enc["b"].to_numpy().astype(np.int16),
        "time": enc["t"].to_numpy().astype(np.int64),
    }
    tl["category"] = item_cat[tl["item"]]
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(np.bincount(tl_user, minlength=n_users))
    del enc, tl_user

    # ---- samples
    if imp is not None:
        s = {
            "user": _encode(imp["user_id"], user_v),
            "item": _encode(imp["item_id"], item_v),
            "time": imp["timestamp"].to_numpy().astype(np.int64),
            "label": imp["label"].to_numpy().astype(np.int8),
        }
        if "split" in imp.columns:
            s["split"] = imp["split"].replace_strict(list(SPLITS), [0, 1, 2], return_dtype=pl.Int8).to_numpy()
            split_how = "impressions' split column"
        else:
            s["split"] = _time_split(s["time"], opt.valid_fraction, opt.test_fraction)
            split_how = f"time quantiles (valid {opt.valid_fraction}, test {opt.test_fraction})"
        ctx_vocabs = {c: _vocab(imp[c]) for c in opt.context_columns}
        for c, v in ctx_vocabs.items():
            s[f"ctx_{c}"] = _encode(imp[c], v)
        source_of_samples = "impressions"
    else:
        s = _samples_from_behaviors(offsets, tl["item"], tl["time"], n_items, opt)
        ctx_vocabs = {}
        split_how = opt.split
        source_of_samples = f"behaviors (min_history {opt.min_history}, {opt.negatives} negatives, seed {opt.seed})"
    s["cutoff"] = _cutoffs(offsets, tl["time"], s["user"], s["time"])

    # ---- write
    if out.exists() and any(out.iterdir()) and not (out / "meta.json").exists():
        raise InputError(f"{out}: exists, is not empty and is not a prepared directory. Fix: choose another --out.")
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab").mkdir(exist_ok=True)
    for name, v in [("user", user_v), ("item", item_v), ("category", cat_v), ("behavior", beh_v),
                    *((f"ctx_{c}", v) for c, v in ctx_vocabs.items())]:
        v.write_parquet(out / "vocab" / f"{name}.parquet")
    _save(out / "timeline", {"offsets": offsets, **tl})
    _save(out / "items", {"category": item_cat})
    split_counts: dict[str, dict[str, int]] = {}
    order = np.lexsort((-s["label"], s["time"], s["user"], s["split"]))
    for k, name in enumerate(SPLITS):
        idx = order[s["split"][order] == k]
        _save(out / "samples" / name, {key: s[key][idx] for key in s if key != "split"})
        split_counts[name] = {"samples": int(len(idx)), "positives": int(s["label"][idx].sum())}

    hist_len = np.diff(offsets)
    meta = {
        "schema_version": SCHEMA_VERSION,
        "dataset": sources.name,
        "created_unix": int(time.time()),
        "time_unit": "ms",
        "counts": {
            "behaviors": int(offsets[-1]),
            "users": int((hist_len > 0).sum()),
            "max_history": int(hist_len.max()) if len(hist_len) else 0,
            "items_without_category": items_without_cat,
            "users_dropped": dropped_users,
        },
        "vocab_sizes": {"user": n_users, "item": n_items, "category": len(cat_v) + FIRST_INDEX,
                        "behavior": len(beh_v) + FIRST_INDEX,
                        **{f"ctx_{c}": len(v) + FIRST_INDEX for c, v in ctx_vocabs.items()}},
        "context_columns": list(opt.context_columns),
        "samples": {"source": source_of_samples, "split": split_how, **split_counts},
        "options": asdict(opt),
        "sources": {str(p): _sha256(Path(p)) for p in sources.files},
        "bad_rows": report.to_json(),
        "prepare_seconds": round(time.perf_counter() - started, 3),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    if report.total:
        log(f"skipped {report.total} defective rows:")
        for k, v in report.counts.items():
            log(f"  {v:>8}  {k} (first at line {report.first_line[k]})")
    for note in report.notes:
        log(f"note: {note}")
    return meta


def sources_from_files(behaviors: str | Path, impressions: str | Path | None = None,
                       items: str | Path | None = None, rename: dict[str, str] | None = None) -> Sources:
    """Canonical tables from the user's own CSV / Parquet files."""
    from userlens.data.tables import read_table

    files = [Path(p) for p in (behaviors, impressions, items) if p is not None]
    return Sources(
        behaviors=read_table(behaviors, rename),
        impressions=read_table(impressions, rename) if impressions else None,
        items=read_table(items, rename) if items else None,
        files=files,
        name=Path(behaviors).stem,
    )


__all__: Sequence[str] = ("PrepareOptions", "Sources", "prepare", "sources_from_files")
