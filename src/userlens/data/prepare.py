"""``userlens prepare``: validated tables → a prepared directory (DESIGN §3–4).

Layout written (all arrays are plain ``.npy``, memory-mappable, readable without userlens)::

    meta.json                      schema version, counts, vocab sizes, options, checksums, skips
    vocab/{user,item,category,behavior,ctx_<name>}.parquet   raw id ↔ index (0 = pad, 1 = unknown)
                                   (names percent-encoded as file names: ctx_dev/ice → ctx_dev%2Fice)
    timeline/offsets.npy           (n_users + 1,) int64 CSR offsets into the arrays below
    timeline/{item,category,behavior,time}.npy   per-behavior arrays, sorted by (user, time, input order)
    items/category.npy             (n_items,) int32 category index of every item index
    samples/{train,valid,test}/{user,item,label,time,cutoff[,ctx_<name>]}.npy

A sample's history is ``timeline[offsets[user] : cutoff]``: the user's behaviors
with time **strictly before** the sample's time. It is never copied per sample,
so memory stays linear in behaviors + samples, whatever the history length.

Everything else a sample sees is leakage-free too: item categories derived from
events use only rows before the validation period (:mod:`userlens.data.attributes`),
sampled negatives depend only on events before the sample (:mod:`userlens.data.sampling`).

Steps: validate → drop small users → vocabularies → timeline → samples and split →
item categories (need the split's cutoff) → negatives (need the categories) → write.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import quote

import numpy as np
import polars as pl

from userlens.artifacts import check_output_path, describe, sha256_file, staged_directory, write_manifest
from userlens.data.attributes import CategoryReport, attribute_cutoff, item_categories
from userlens.data.npyio import NpyWriter
from userlens.data import samples as samples_module
from userlens.data.samples import (BehaviorSamples, SampleOptions, Timeline, assign_split, cutoffs,  # noqa: F401
                                   earlier_counts,
                                   split_warnings, time_thresholds)
from userlens.data.sampling import SAMPLERS, Sampler, stable_id_hash
from userlens.data.tables import (LINE, SPLITS, BadRowPolicy, RawTable, SkipReport, note_unicode_twins, unify_id_types,
                                  validate)
from userlens.errors import InputError
from userlens.limits import MAX_MIN_HISTORY, MAX_NEGATIVES, check_int, check_seed

SCHEMA_VERSION = 2  # 2: fingerprint, file manifest, leakage-free attributes and negatives
PAD, UNK = 0, 1
FIRST_INDEX = 2


@dataclass
class Sources:
    """The canonical tables of one dataset, as read (by :func:`read_table` or an adapter)."""

    behaviors: RawTable
    impressions: RawTable | None = None
    items: RawTable | None = None
    #: user-produced item attributes (``item_id, tag, timestamp_ms``; e.g. Last.fm tags): an item's
    #: category becomes its most frequent tag *before the validation period* (see data/attributes.py)
    item_tags: pl.DataFrame | None = None
    files: list[Path] = field(default_factory=list)  # checksummed into meta.json
    notes: list[str] = field(default_factory=list)  # what an adapter decided (aggregations, mappings)
    name: str = "custom"
    #: SHA-256 of ``files`` when computed already (the duckdb engine hashes them while it works)
    file_hashes: Callable[[], dict[str, str]] | None = None


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
    split: Literal["time", "leave-last-out"] = "time"  # global time (DESIGN §3); leave-last-out for seq-rec tables
    min_history: int = 4  # a behavior becomes a positive once the user has this many strictly earlier ones
    negatives: int = 1  # sampled negatives per positive
    negative_sampler: Sampler = "uniform"  # uniform | popularity (∝ count^alpha before t) | category (hard)
    negative_alpha: float = 0.75  # popularity exponent, in [0, 1]
    seed: int = 2024

    def check(self) -> None:
        if self.timestamp_unit not in ("auto", "s", "ms"):
            raise InputError(f"--timestamp-unit must be one of ['auto', 's', 'ms'] (epoch seconds or milliseconds), "
                             f"got {self.timestamp_unit!r}")
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
        if self.negative_sampler not in SAMPLERS:
            raise InputError(f"--negative-sampler must be one of {list(SAMPLERS)}, got {self.negative_sampler!r}")
        if not 0.0 <= self.negative_alpha <= 1.0:
            raise InputError(f"--negative-alpha must be in [0, 1] (popularity ∝ count^alpha), got {self.negative_alpha}")
        check_int("--negatives", self.negatives, 0, MAX_NEGATIVES, "the samples grow by this factor")
        check_int("--min-history", self.min_history, 0, MAX_MIN_HISTORY, "behaviors")
        check_int("--min-user-behaviors", self.min_user_behaviors, 1, MAX_MIN_HISTORY, "behaviors")
        check_seed("--seed", self.seed)
        check_context_names(self.context_columns)


# --------------------------------------------------------------------------- context names

#: Columns userlens reads with a meaning of their own: never a context feature (``--context``).
RESERVED_CONTEXT: dict[str, str] = {
    "label": "the label itself: as a feature it hands the model the answer",
    "split": "it names the split, so a model would learn the split instead of the user",
    "timestamp": "the sample's time, which decides the split and the history",
    "user_id": "the sample's user, embedded already when use_user is set",
    "item_id": "the target item, embedded already",
    "category": "the item's category, embedded already with every item",
    "behavior": "the behavior type of the history",
    "event_id": "a unique id per event: no category to learn",
    LINE: "userlens's own line-number column",
}


def check_context_names(names: Sequence[str]) -> None:
    """Refuse context names that are reserved columns, empty, or given twice (also in another case).

    Raises:
        InputError: naming the option value and the fix.
    """
    for c in names:
        if c in RESERVED_CONTEXT:
            raise InputError(f"--context {c}: {c!r} is a column userlens reads itself ({RESERVED_CONTEXT[c]}). "
                             f"Fix: drop --context {c}; context features are other impression columns "
                             "(device, page ...).")
        if not c.strip():
            raise InputError(f"--context {c!r}: an empty name. Fix: give the impression column's name.")
        if len(file_stem(f"ctx_{c}")) > 200:
            raise InputError(f"--context {c[:40]}...: a name of {len(c)} characters, too long for the file that "
                             "holds its vocabulary. Fix: rename the column (200 characters at most).")
    folded = [c.casefold() for c in names]
    for i, c in enumerate(names):
        first = names[folded.index(folded[i])]
        if first == c and folded.index(folded[i]) != i:
            raise InputError(f"--context {c}: given twice. Fix: name each context column once.")
        if first != c:  # their files (vocab/ctx_<name>.parquet) would be one file on macOS and Windows
            raise InputError(f"--context {first} and --context {c}: names that differ only in case. "
                             "Fix: rename one of the columns.")


def file_stem(name: str) -> str:
    """A vocabulary or sample-array name as a file name: percent-encoded (``ctx_dev/ice`` → ``ctx_dev%2Fice``).

    Context names are column names, which may hold ``/`` or other characters a path cannot; plain names
    (``user``, ``ctx_device``) are unchanged, so the layout reads as before.
    """
    return quote(name, safe="")


# --------------------------------------------------------------------------- helpers


def _vocab(*columns: pl.Series) -> pl.DataFrame:
    """Sorted distinct raw values → indices from 2 (0 = padding, 1 = unknown)."""
    raw = pl.concat([c.rename("raw") for c in columns if c is not None]).drop_nulls().unique().sort()
    return pl.DataFrame({"raw": raw, "index": np.arange(FIRST_INDEX, FIRST_INDEX + len(raw), dtype=np.int32)})


def _encode(values: pl.Series, vocab: pl.DataFrame) -> np.ndarray:
    """Raw values → int32 indices; values missing from the vocabulary map to UNK."""
    return values.replace_strict(vocab["raw"], vocab["index"], default=UNK, return_dtype=pl.Int32).to_numpy()


def _save(dir_: Path, arrays: dict[str, np.ndarray]) -> None:
    dir_.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        np.save(dir_ / f"{file_stem(name)}.npy", np.ascontiguousarray(arr))


# --------------------------------------------------------------------------- samples


def _time_split(t: np.ndarray, valid_fraction: float, test_fraction: float) -> np.ndarray:
    """0/1/2 = train/valid/test by global time quantiles, so train < valid < test in time."""
    return assign_split(t, *time_thresholds(t, valid_fraction, test_fraction), valid_fraction)


def _impression_samples(imp: pl.DataFrame, user_v: pl.DataFrame, item_v: pl.DataFrame,
                        opt: PrepareOptions) -> tuple[dict[str, np.ndarray], dict[str, pl.DataFrame], str]:
    s = {
        "user": _encode(imp["user_id"], user_v),
        "item": _encode(imp["item_id"], item_v),
        "time": imp["timestamp"].to_numpy().astype(np.int64),
        "label": imp["label"].to_numpy().astype(np.int8),
    }
    if "split" in imp.columns:
        s["split"] = imp["split"].replace_strict(list(SPLITS), [0, 1, 2], return_dtype=pl.Int8).to_numpy()
        how = "impressions' split column"
    else:
        s["split"] = _time_split(s["time"], opt.valid_fraction, opt.test_fraction)
        how = f"time quantiles (valid {opt.valid_fraction}, test {opt.test_fraction})"
    ctx_vocabs = {c: _vocab(imp[c]) for c in opt.context_columns}
    for c, v in ctx_vocabs.items():
        s[f"ctx_{c}"] = _encode(imp[c], v)
    return s, ctx_vocabs, how


# --------------------------------------------------------------------------- steps


def validate_sources(sources: Sources, opt: PrepareOptions, report: SkipReport
                     ) -> tuple[pl.DataFrame, pl.DataFrame | None, pl.DataFrame | None]:
    """The validated (behaviors, impressions, items) frames, with id types unified across them."""
    vkw = dict(policy=opt.on_bad_rows, report=report, timestamp_unit=opt.timestamp_unit)
    beh = validate(sources.behaviors, "behaviors", **vkw)
    imp = (validate(sources.impressions, "impressions", context_columns=opt.context_columns, **vkw)
           if sources.impressions is not None else None)
    if opt.context_columns and imp is None:
        raise InputError("context columns need an impressions table (--impressions). Fix: drop --context.")
    items = validate(sources.items, "items", **vkw) if sources.items is not None else None
    beh, imp, items = unify_id_types(beh, imp, items, column="item_id")
    beh, imp, _ = unify_id_types(beh, imp, None, column="user_id")
    for col in ("user_id", "item_id"):
        note_unicode_twins([beh, imp, items], col, report)
    for name, other in (("impressions", imp), ("items", items)):
        for col in ("item_id", "user_id") if name == "impressions" else ("item_id",):
            if other is not None:
                _warn_disjoint(beh[col], other[col], f"behaviors and {name} ({col})", report)
    return beh, imp, items  # type: ignore[return-value]


def _warn_disjoint(a: pl.Series, b: pl.Series, what: str, report: SkipReport, below: float = 0.01) -> None:
    """A note when two tables share (almost) no ids: usually different id spaces or types, not real data."""
    ua, ub = a.unique(), b.unique()
    shared = int(ua.is_in(ub.implode()).sum())
    smaller = min(len(ua), len(ub))
    if smaller >= 10 and shared < below * smaller:
        report.notes.append(f"warning: {what} share {shared} of {smaller} ids: are they the same id space "
                            "(types, prefixes, zero-padding)? Histories and samples will not connect")


def _drop_small_users(beh: pl.DataFrame, imp: pl.DataFrame | None, minimum: int,
                      report: SkipReport) -> tuple[pl.DataFrame, pl.DataFrame | None, dict[str, int]]:
    """Users with fewer than ``minimum`` behaviors are dropped with their rows, all counted and reported."""
    none = {"users": 0, "behaviors": 0, "impressions": 0}
    if minimum <= 1:
        return beh, imp, none
    counts = beh.group_by("user_id").len()
    small = counts.filter(pl.col("len") < minimum)["user_id"]
    if imp is not None:  # users seen only in impressions have 0 behaviors: below any minimum
        small = pl.concat([small, imp.select("user_id").unique().join(counts, on="user_id", how="anti")["user_id"]])
    if len(small) == 0:
        return beh, imp, none
    n_beh, n_imp = beh.height, imp.height if imp is not None else 0
    beh = beh.filter(~pl.col("user_id").is_in(small.implode()))
    if imp is not None:
        imp = imp.filter(~pl.col("user_id").is_in(small.implode()))
        if imp.height == 0:
            raise InputError(f"no samples: every impression belongs to a user with < {minimum} behaviors. "
                             "Fix: lower --min-user-behaviors.")
    dropped = {"users": len(small), "behaviors": n_beh - beh.height,
               "impressions": n_imp - (imp.height if imp is not None else 0)}
    report.notes.append(f"dropped {len(small)} users with < {minimum} behaviors, with their "
                        f"{dropped['behaviors']} behaviors and {dropped['impressions']} impressions")
    return beh, imp, dropped


def _timeline(beh: pl.DataFrame, user_v: pl.DataFrame, item_v: pl.DataFrame, beh_v: pl.DataFrame
              ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """CSR timeline sorted by (user, time, input order); ``category`` is added once items have one."""
    enc = pl.DataFrame({
        "u": _encode(beh["user_id"], user_v),
        "i": _encode(beh["item_id"], item_v),
        "t": beh["timestamp"].to_numpy(),
        "b": _encode(beh["behavior"].cast(pl.Utf8), beh_v) if "behavior" in beh.columns
        else np.zeros(beh.height, dtype=np.int32),
        "line": beh[LINE].to_numpy(),
    }).sort(["u", "t", "line"])
    offsets = np.zeros(len(user_v) + FIRST_INDEX + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(np.bincount(enc["u"].to_numpy(), minlength=len(user_v) + FIRST_INDEX))
    tl = {"item": enc["i"].to_numpy().astype(np.int32), "behavior": enc["b"].to_numpy().astype(np.int16),
          "time": enc["t"].to_numpy().astype(np.int64)}
    return offsets, tl


def _item_table(item_v: pl.DataFrame, cats: pl.DataFrame, has_categories: bool) -> tuple[np.ndarray, pl.DataFrame]:
    """(n_items,) category index per item (UNK = none, PAD for padding) and the category vocabulary."""
    n_items = len(item_v) + FIRST_INDEX
    cat_v = _vocab(cats["category"]) if cats.height else _vocab(pl.Series([], dtype=pl.Utf8))
    item_cat = np.full(n_items, UNK if has_categories else PAD, dtype=np.int32)
    item_cat[PAD] = PAD
    if cats.height:
        text_v = item_v.with_columns(pl.col("raw").cast(pl.Utf8))
        item_cat[_encode(cats["item_id"], text_v)] = _encode(cats["category"], cat_v)
        item_cat[UNK] = UNK  # ids unknown to the vocabulary (none expected) never define a category
    return item_cat, cat_v


def _write_tables(out: Path, vocabs: dict[str, pl.DataFrame], offsets: np.ndarray, tl: dict[str, np.ndarray],
                 item_cat: np.ndarray) -> None:
    """Vocabularies, timeline and item table into ``out`` (a staged directory); meta.json is written after, last."""
    (out / "vocab").mkdir(parents=True, exist_ok=True)
    for name, v in vocabs.items():
        v.write_parquet(out / "vocab" / f"{file_stem(name)}.parquet")
    _save(out / "timeline", {"offsets": offsets, **tl})
    _save(out / "items", {"category": item_cat})


def _write_samples(out: Path, s: dict[str, np.ndarray]) -> dict[str, dict[str, int]]:
    """Impression samples, split by split in (user, time, label desc) order."""
    split_counts: dict[str, dict[str, int]] = {}
    order = np.lexsort((-s["label"], s["time"], s["user"], s["split"]))
    for k, name in enumerate(SPLITS):
        idx = order[s["split"][order] == k]
        _save(out / "samples" / name, {key: s[key][idx] for key in s if key != "split"})
        split_counts[name] = {"samples": int(len(idx)), "positives": int(s["label"][idx].sum())}
    return split_counts


# --------------------------------------------------------------------------- main entry


TIMELINE_FIELDS = ("offsets", "item", "category", "behavior", "time")
SAMPLE_FIELDS = ("user", "item", "label", "time", "cutoff")


def read_files(context_columns: Sequence[str]) -> list[str]:
    """Every file a reader of a prepared directory reads: each must be listed (and verified) in meta.json.

    A manifest that leaves one out would let that file be replaced unnoticed (e.g. flipped test labels).
    """
    ctx = [file_stem(f"ctx_{c}") for c in context_columns]  # as written: percent-encoded names
    vocabs = ["user", "item", "category", "behavior", *ctx]
    return ([f"vocab/{v}.parquet" for v in vocabs] + [f"timeline/{f}.npy" for f in TIMELINE_FIELDS]
            + ["items/category.npy"] + [f"samples/{s}/{f}.npy" for s in SPLITS for f in (*SAMPLE_FIELDS, *ctx)])


def fingerprint(vocabs: dict[str, pl.DataFrame]) -> str:
    """Hash of every vocabulary (raw id ↔ index): equal iff each index means the same raw value.

    A run records the fingerprint of the data it was trained on; scoring other data (permuted ids,
    a re-prepared directory, another dataset of the same sizes) is refused instead of producing a
    plausible-looking AUC.
    """
    h = hashlib.sha256()
    for name in sorted(vocabs):
        v = vocabs[name]
        h.update(f"{name}:{len(v)}:".encode())
        h.update("\x1f".join(v["raw"].cast(pl.Utf8).to_list()).encode())
        h.update(v["index"].to_numpy().astype(np.int64).tobytes())
    return "sha256:" + h.hexdigest()


def prepare(sources: Sources, out: str | Path, options: PrepareOptions | None = None,
            log: callable = print, force: bool = False) -> dict:  # type: ignore[valid-type]
    """Validate, encode and write a prepared directory; returns the meta dict (also in ``out/meta.json``).

    The directory is built in a temporary sibling under a lock and swapped in only when complete,
    ``meta.json`` (with the size and checksum of every file) written last; an existing prepared
    directory is replaced only with ``force``. A failure leaves ``out`` as it was.

    Example:
        >>> from userlens.data.tables import read_table
        >>> meta = prepare(Sources(read_table("b.csv")), "data/x")  # doctest: +SKIP
    """
    opt = options or PrepareOptions()
    opt.check()
    started = time.perf_counter()
    out = Path(out)
    check_output_path(out, "prepared directory", "meta.json", force)  # fail before the work, not after
    report = SkipReport(notes=list(sources.notes))
    beh, imp, items = validate_sources(sources, opt, report)
    beh, imp, dropped = _drop_small_users(beh, imp, opt.min_user_behaviors, report)

    user_v = _vocab(beh["user_id"], imp["user_id"] if imp is not None else None)
    item_v = _vocab(beh["item_id"], imp["item_id"] if imp is not None else None,
                    items["item_id"] if items is not None else None)
    beh_v = _vocab(beh["behavior"].cast(pl.Utf8)) if "behavior" in beh.columns else _vocab(pl.Series([], dtype=pl.Utf8))
    offsets, tl = _timeline(beh, user_v, item_v, beh_v)

    def categories(cutoff_ms: int | None) -> tuple[pl.DataFrame, CategoryReport, bool]:
        cats, cat_report = item_categories(items, [beh, imp], sources.item_tags, cutoff_ms)
        has_cat = bool(cats.height) or sources.item_tags is not None or any(
            f is not None and "category" in f.columns for f in (items, beh, imp))
        return cats, cat_report, has_cat

    if imp is None:
        enc = Encoded(user_v, item_v, beh_v, Timeline(offsets, tl), categories, dropped)
        return finish_behaviors(sources, enc, out, opt, report, log, force, started, engine="polars")

    s, ctx_vocabs, split_how = _impression_samples(imp, user_v, item_v, opt)
    # Item attributes need the split (what is "before the validation period").
    cats, cat_report, has_cat = categories(attribute_cutoff(s["time"], s["split"]))
    item_cat, cat_v = _item_table(item_v, cats, has_cat)
    tl["category"] = item_cat[tl["item"]]
    report.notes.extend(cat_report.notes)
    s["cutoff"] = cutoffs(offsets, tl["time"], s["user"], s["time"])
    vocabs = {"user": user_v, "item": item_v, "category": cat_v, "behavior": beh_v,
              **{f"ctx_{c}": v for c, v in ctx_vocabs.items()}}
    dup = imp.drop(LINE).is_duplicated()
    if dup.any():
        report.notes.append(f"warning: {int(dup.sum())} impression rows are exact duplicates of another row "
                            "(kept: each is a sample)")
    with staged_directory(out, "prepared directory", "meta.json", force) as staged:
        _write_tables(staged, vocabs, offsets, tl, item_cat)
        split_counts = _write_samples(staged, s)
        report.notes.extend(split_warnings(split_counts))
        meta = _meta(sources, opt, report, offsets, item_cat, has_cat, vocabs, split_counts,
                     "impressions", split_how, cat_report.to_json(), None, dropped, started, "polars")
        meta = _seal(staged, meta)
    log_report(report, log)
    return meta


@dataclass
class Encoded:
    """What an engine's relational part hands to :func:`finish_behaviors`: vocabularies, the sorted timeline
    (in memory, or ``.npy`` files already in the staged directory) and the rule for item categories."""

    user_v: pl.DataFrame
    item_v: pl.DataFrame
    behavior_v: pl.DataFrame
    timeline: Timeline  # columns item, time, behavior
    categories: Callable[[int | None], tuple[pl.DataFrame, CategoryReport, bool]]
    dropped: dict[str, int]


def finish_behaviors(sources: Sources, enc: Encoded, out: Path, opt: PrepareOptions, report: SkipReport,
                     log: Callable[[str], None], force: bool, started: float, engine: str,
                     staged: Path | None = None, chunk_rows: int | None = None) -> dict:
    """Samples from behaviors (:mod:`userlens.data.samples`), item table, vocabularies and meta.json.

    The one code path both engines share: ``staged`` is the DuckDB engine's staged directory (its timeline
    files already written there); without it the in-memory timeline is written into a new staged directory.
    """
    if staged is None:
        with staged_directory(out, "prepared directory", "meta.json", force) as new:
            _save(new / "timeline", {"offsets": enc.timeline.offsets,
                                     **{k: np.asarray(v) for k, v in enc.timeline.columns.items()}})
            meta = finish_behaviors(sources, enc, out, opt, report, log, force, started, engine, new, chunk_rows)
        log_report(report, log)
        return meta
    from userlens.data.outofcore import Stopwatch

    n_items = len(enc.item_v) + FIRST_INDEX
    sample_opt = SampleOptions(opt.min_history, opt.split, opt.valid_fraction, opt.test_fraction, opt.negatives,
                               opt.negative_sampler, opt.negative_alpha, opt.seed)
    bs = BehaviorSamples(enc.timeline, sample_opt, n_items, chunk_rows or samples_module.CHUNK_ROWS)
    # Item attributes need the split (what is "before the validation period"); negatives need the attributes.
    lap = Stopwatch(log if engine == "duckdb" else lambda _: None)
    cats, cat_report, has_cat = enc.categories(bs.plan())
    lap("positives and split")
    item_cat, cat_v = _item_table(enc.item_v, cats, has_cat)
    report.notes.extend(cat_report.notes)
    user_hash = (stable_id_hash([None, None, *enc.user_v["raw"].to_list()]) if opt.negatives > 0
                 else np.zeros(len(enc.user_v) + FIRST_INDEX, dtype=np.uint64))
    category = NpyWriter(staged / "timeline" / "category.npy", np.int32)
    try:
        result = bs.write(staged, item_cat, user_hash, category)
    finally:
        category.close()
    lap("negatives and samples written")
    report.notes.extend(result.notes)
    report.notes.extend(split_warnings(result.split_counts))
    vocabs = {"user": enc.user_v, "item": enc.item_v, "category": cat_v, "behavior": enc.behavior_v}
    (staged / "vocab").mkdir(parents=True, exist_ok=True)
    for name, v in vocabs.items():
        v.write_parquet(staged / "vocab" / f"{file_stem(name)}.parquet")
    _save(staged / "items", {"category": item_cat})
    how = (f"behaviors (min_history {opt.min_history} strictly earlier, {opt.negatives} "
           f"{opt.negative_sampler} negatives, seed {opt.seed})")
    negatives = result.negatives.to_json() if result.negatives is not None else None
    meta = _meta(sources, opt, report, enc.timeline.offsets, item_cat, has_cat, vocabs, result.split_counts, how,
                 opt.split, cat_report.to_json(), negatives, enc.dropped, started, engine)
    sealed = _seal(staged, meta)
    lap("checksums and meta.json")
    return sealed


def _seal(staged: Path, meta: dict) -> dict:
    """meta.json, last: the size and checksum of every file written."""
    names = sorted(str(f.relative_to(staged)) for f in staged.rglob("*") if f.is_file())
    meta["files"] = describe(staged, names)
    return write_manifest(staged / "meta.json", meta)


def log_report(report: SkipReport, log: Callable[[str], None]) -> None:
    if report.total:
        log(f"skipped {report.total} defective rows:")
        for k, v in report.counts.items():
            log(f"  {v:>8}  {k} (first at line {report.first_line[k]})")
    for note in report.notes:
        log(f"note: {note}")


def _meta(sources: Sources, opt: PrepareOptions, report: SkipReport, offsets: np.ndarray, item_cat: np.ndarray,
          has_cat: bool, vocabs: dict[str, pl.DataFrame], split_counts: dict, source_of_samples: str, split_how: str,
          item_attributes: dict, negatives: dict | None, dropped: dict[str, int], started: float, engine: str) -> dict:
    hist_len = np.diff(offsets)
    n_items = len(vocabs["item"]) + FIRST_INDEX
    return {
        "schema_version": SCHEMA_VERSION,
        "dataset": sources.name,
        "created_unix": int(time.time()),
        "fingerprint": fingerprint(vocabs),
        "storage_time_unit": "ms",  # every stored time is epoch milliseconds, whatever the input
        "input_time_units": dict(report.time_units),  # per input file: s, ms, iso or datetime (as detected)
        "counts": {
            "behaviors": int(offsets[-1]),
            "users": int((hist_len > 0).sum()),
            "max_history": int(hist_len.max()) if len(hist_len) else 0,
            "items_without_category": int((item_cat[FIRST_INDEX:] == UNK).sum()) if has_cat else n_items - FIRST_INDEX,
            "users_dropped": dropped["users"],
            "behaviors_dropped_with_users": dropped["behaviors"],
            "impressions_dropped_with_users": dropped["impressions"],
        },
        "vocab_sizes": {"user": len(vocabs["user"]) + FIRST_INDEX, "item": n_items,
                        "category": len(vocabs["category"]) + FIRST_INDEX,
                        "behavior": len(vocabs["behavior"]) + FIRST_INDEX,
                        **{k: len(v) + FIRST_INDEX for k, v in vocabs.items() if k.startswith("ctx_")}},
        "context_columns": list(opt.context_columns),
        "samples": {"source": source_of_samples, "split": split_how, **split_counts},
        "item_attributes": item_attributes,
        "negatives": negatives,
        "options": asdict(opt),
        "sources": (sources.file_hashes() if sources.file_hashes is not None
                    else {str(p): sha256_file(p) for p in sources.files}),
        "bad_rows": report.to_json(),
        "prepare_seconds": round(time.perf_counter() - started, 3),
        "engine": engine,  # polars (in memory) or duckdb (out of core); the arrays are equal either way
    }


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


__all__: Sequence[str] = ("PrepareOptions", "Sources", "prepare", "read_files", "sources_from_files",
                          "validate_sources")
