"""Dataset adapters: published dataset formats → canonical :class:`~userlens.data.prepare.Sources` (DESIGN §2).

An adapter only *reads and reshapes*: it renames columns to the canonical ones
(``user_id``, ``item_id``, ``timestamp``, ``behavior``, ``category``, ``title``),
keeps every value as text and tags every row with its 1-based source line
(:data:`~userlens.data.tables.LINE`). Parsing and row checks stay in
:func:`~userlens.data.tables.validate`, so a defect in a published file (the
truncated last line of the Taobao slice, Last.fm's 1956 dates) gets the same
"file:line N: column ...: problem" message, and the same ``on_bad_rows="skip"``
counting, as a defect in a user's own CSV. Nothing is dropped here silently.

Example:
    >>> from userlens.data.prepare import prepare
    >>> prepare(load_adapter("movielens", "datasets/ml-100k"), "data/ml100k")  # doctest: +SKIP

Formats: ``movielens`` (ML-100k and ml-latest-small, detected by file name),
``taobao`` (UserBehavior.csv), ``amazon`` (ReChorus TSVs), ``lastfm``
(HetRec 2011 2k). Add one with :func:`register_adapter`.
"""

from __future__ import annotations

import difflib
import io
from collections.abc import Callable, Sequence
from pathlib import Path

import polars as pl

from userlens.data.prepare import Sources
from userlens.data.tables import LINE, RawTable
from userlens.errors import InputError

Adapter = Callable[[Path], Sources]

#: Registered adapters by format name (the ``--format`` of ``userlens prepare``).
ADAPTERS: dict[str, Adapter] = {}

#: ML-100k genre order (``u.genre``); ``u.item`` carries one 0/1 flag per genre in this order.
ML100K_GENRES: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)


def register_adapter(name: str) -> Callable[[Adapter], Adapter]:
    """Register ``fn(folder) -> Sources`` under ``name``; a name can be registered once."""

    def deco(fn: Adapter) -> Adapter:
        if name in ADAPTERS:
            raise ValueError(f"adapter {name!r} is already registered (by {ADAPTERS[name].__qualname__})")
        ADAPTERS[name] = fn
        return fn

    return deco


def load_adapter(fmt: str, source: str | Path) -> Sources:
    """Read dataset ``source`` (a folder, or for ``taobao`` the file itself) in format ``fmt``.

    Raises:
        InputError: unknown format (lists the known ones and the closest), missing folder or files.
    """
    if fmt not in ADAPTERS:
        hit = difflib.get_close_matches(fmt, list(ADAPTERS), n=1, cutoff=0.5)
        closest = f" Did you mean {hit[0]!r}?" if hit else ""
        raise InputError(f"unknown dataset format {fmt!r}; known formats: {sorted(ADAPTERS)}.{closest}")
    path = Path(source)
    if not path.exists():
        raise InputError(f"{path}: dataset source not found (format {fmt!r}). Fix: check the --source path.")
    return ADAPTERS[fmt](path)


# --------------------------------------------------------------------------- helpers


def _require(source: Path, fmt: str, names: Sequence[str]) -> list[Path]:
    """The files ``names`` inside ``source`` (a folder, or a file whose folder is used), or a clear error."""
    folder = source if source.is_dir() else source.parent
    paths = [folder / n for n in names]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise InputError(
            f"{folder}: not a {fmt!r} dataset folder: missing {missing}; expected files {list(names)}. "
            "Fix: point --source to the folder holding the unpacked files."
        )
    return paths


def _read(
    path: Path,
    *,
    sep: str,
    names: Sequence[str] | None = None,
    need: Sequence[str] = (),
    quote: str | None = None,
    latin1: bool = False,
) -> pl.DataFrame:
    """One delimited text file, all values as text, plus ``LINE`` = its 1-based line number.

    ``names`` given: the file has no header and these are its fields (a short line gets nulls,
    which ``validate`` reports with its line). Otherwise line 1 is the header and must hold ``need``.
    Quoting is off unless asked: these formats use ``"`` inside values (``Lee "Scratch" Perry``).
    Blank lines stay as all-null rows, so row index and line number never drift apart.
    """
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty (0 bytes). Fix: re-download the dataset.")
    # polars reads UTF-8 only; latin-1 files are re-encoded in memory (once per file, not per row).
    src: Path | io.BytesIO = io.BytesIO(path.read_bytes().decode("latin-1").encode()) if latin1 else path
    try:
        if names is not None:
            frame = pl.read_csv(src, has_header=False, schema=dict.fromkeys(names, pl.Utf8), separator=sep,
                                quote_char=quote, encoding="utf8-lossy")
            first = 1
        else:
            frame = pl.read_csv(src, infer_schema=False, separator=sep, quote_char=quote, encoding="utf8-lossy")
            first = 2  # line 1 is the header
    except (pl.exceptions.ComputeError, pl.exceptions.SchemaError) as e:
        expected = f"{len(names)} fields {list(names)}" if names is not None else f"columns {list(need)}"
        raise InputError(
            f"{path}: cannot read as {sep!r}-separated text with {expected}: {e}. Fix: check the file is "
            "the published version (not edited or converted)."
        ) from None
    missing = [c for c in need if c not in frame.columns]
    if missing:
        raise InputError(
            f"{path}: missing column(s) {missing}; found {frame.columns}, expected {list(need)} in the header. "
            "Fix: use the published file unchanged."
        )
    return frame.with_row_index(LINE, offset=first).with_columns(pl.col(LINE).cast(pl.Int64))


def _raw(frame: pl.DataFrame, path: Path) -> RawTable:
    return RawTable(frame, str(path), "line")


def _rating_behavior(col: str) -> pl.Expr:
    """Rating text → behavior token ``r4`` / ``r4.5``, so a model can embed the rating like a behavior type."""
    r = pl.col(col).str.strip_chars()
    return pl.concat_str(pl.lit("r"), r.str.replace(r"\.0+$", "")).alias("behavior")


# --------------------------------------------------------------------------- movielens


@register_adapter("movielens")
def movielens(source: Path) -> Sources:
    """MovieLens: ML-100k (``u.data`` + ``u.item``) or ml-latest-small / ml-latest (``ratings.csv`` + ``movies.csv``).

    The variant is detected by file name. ``behavior`` = the rating as a token (``r4``, ``r4.5``);
    item ``category`` = the first genre (a single category keeps GSU category search simple;
    the multi-hot genres are not canonical input yet), ``title`` = the title with its year.
    """
    folder = source if source.is_dir() else source.parent
    if (folder / "u.data").is_file():
        return _movielens_100k(folder)
    if (folder / "ratings.csv").is_file():
        return _movielens_latest(folder)
    raise InputError(
        f"{folder}: not a MovieLens folder: expected u.data + u.item (ML-100k) or ratings.csv + movies.csv "
        "(ml-latest, ml-latest-small). Fix: point --source to the unpacked archive folder."
    )


def _movielens_100k(folder: Path) -> Sources:
    data_p, item_p = _require(folder, "movielens", ["u.data", "u.item"])
    data = _read(data_p, sep="\t", names=["user_id", "item_id", "rating", "timestamp"])
    beh = data.select(LINE, "user_id", "item_id", "timestamp", _rating_behavior("rating"))
    flags = [f"g{k}" for k in range(len(ML100K_GENRES))]
    item = _read(item_p, sep="|", latin1=True,
                 names=["item_id", "title", "release_date", "video_release_date", "imdb_url", *flags])
    # First genre whose flag is "1"; movies with no flag get no category (null), not a made-up one.
    first_genre = pl.coalesce([pl.when(pl.col(f) == "1").then(pl.lit(g)) for f, g in zip(flags, ML100K_GENRES)])
    items = item.select(LINE, "item_id", first_genre.alias("category"), "title")
    return Sources(behaviors=_raw(beh, data_p), items=_raw(items, item_p), files=[data_p, item_p],
                   notes=["movielens (ml-100k): behavior = rating token (r1..r5); category = first genre flag set"],
                   name="movielens")


def _movielens_latest(folder: Path) -> Sources:
    rat_p, mov_p = _require(folder, "movielens", ["ratings.csv", "movies.csv"])
    rat = _read(rat_p, sep=",", need=["userId", "movieId", "rating", "timestamp"])
    beh = rat.select(LINE, pl.col("userId").alias("user_id"), pl.col("movieId").alias("item_id"), "timestamp",
                     _rating_behavior("rating"))
    mov = _read(mov_p, sep=",", quote='"', need=["movieId", "title", "genres"])  # RFC-4180: titles hold commas
    first = pl.col("genres").str.split("|").list.first()
    # "(no genres listed)" is a placeholder, not a genre: grouping those movies would invent similarity.
    category = pl.when(first != "(no genres listed)").then(first).alias("category")
    items = mov.select(LINE, pl.col("movieId").alias("item_id"), category, "title")
    return Sources(behaviors=_raw(beh, rat_p), items=_raw(items, mov_p), files=[rat_p, mov_p],
                   notes=["movielens (ml-latest): behavior = rating token (r0.5..r5); category = first genre "
                          "('(no genres listed)' = no category)"],
                   name="movielens")


# --------------------------------------------------------------------------- taobao


@register_adapter("taobao")
def taobao(source: Path) -> Sources:
    """Taobao UserBehavior (Tianchi 649): ``UserBehavior.csv`` without header, or any file in that layout.

    Fields ``user_id,item_id,category_id,behavior_type,timestamp``; ``behavior`` = pv/cart/fav/buy and
    ``category`` stays a behaviors column (the dataset has no item table). A truncated line keeps its
    row with a null timestamp so ``validate`` reports it (or counts it under ``on_bad_rows="skip"``).
    """
    path = _taobao_file(source)
    raw = _read(path, sep=",", names=TAOBAO_FIELDS)
    beh = raw.select(LINE, "user_id", "item_id", "timestamp", "behavior", "category")
    return Sources(behaviors=_raw(beh, path), files=[path], notes=[TAOBAO_NOTE], name="taobao")


TAOBAO_FIELDS = ("user_id", "item_id", "category", "behavior", "timestamp")
TAOBAO_NOTE = "taobao: behavior = behavior_type (pv/cart/fav/buy); category = category_id"


def _taobao_file(source: Path) -> Path:
    return source if source.is_file() else _require(source, "taobao", ["UserBehavior.csv"])[0]


def taobao_scan(source: Path):  # type: ignore[no-untyped-def]
    """The Taobao file as a streaming scan (``prepare --engine duckdb``): the full 100M-row file never sits in memory."""
    from userlens.data.outofcore import CsvScan, ScanSources

    path = _taobao_file(source)
    return ScanSources(CsvScan(path, ",", TAOBAO_FIELDS, quote=None, lossy=True), files=[path], notes=[TAOBAO_NOTE],
                       name="taobao")


#: adapters whose main table can be streamed; the others are read in memory and handed to the engine as tables
SCANS = {"taobao": taobao_scan}


# --------------------------------------------------------------------------- amazon (ReChorus)


@register_adapter("amazon")
def amazon(source: Path) -> Sources:
    """Amazon reviews as pre-processed by ReChorus: ``train.csv`` + ``item_meta.csv`` (tab-separated, header).

    ``train.csv`` holds ``user_id item_id time`` (unix s, day resolution); ``item_meta.csv`` gives the
    item ``category`` (``i_category``). The complement/substitute lists are not canonical input; not read.
    """
    train_p, meta_p = _require(source, "amazon", ["train.csv", "item_meta.csv"])
    train = _read(train_p, sep="\t", need=["user_id", "item_id", "time"])
    beh = train.select(LINE, "user_id", "item_id", pl.col("time").alias("timestamp"))
    meta = _read(meta_p, sep="\t", need=["item_id", "i_category"])
    items = meta.select(LINE, "item_id", pl.col("i_category").alias("category"))
    return Sources(behaviors=_raw(beh, train_p), items=_raw(items, meta_p), files=[train_p, meta_p],
                   notes=["amazon (ReChorus): category = i_category; train.csv lacks each user's last 2 "
                          "interactions (ReChorus dev/test)"],
                   name="amazon")


# --------------------------------------------------------------------------- lastfm


@register_adapter("lastfm")
def lastfm(source: Path) -> Sources:
    """Last.fm HetRec 2011 (2k users): dated tag assignments as behaviors, artists as items.

    ``user_taggedartists.dat`` has one row per (user, artist, tag, day, month, year); the several tags a
    user put on an artist on one date are one event, so they become one behavior (its ``LINE`` is the
    event's first line). ``timestamp`` = that date at 00:00 UTC in epoch seconds; an impossible date keeps
    its ``year-month-day`` text so ``validate`` names it. Items: ``artists.dat`` (``title`` = name).

    The artist's ``category`` is derived from the tags, which users *produce* by the very events that
    become samples; so the adapter hands the tag rows over as :attr:`Sources.item_tags` and ``prepare``
    takes the artist's most frequent tag over rows **before the validation period** only (ties: lowest
    tag id). Artists first tagged later get no category. ``user_artists.dat`` (play counts) has no time
    and is not read.
    """
    tag_p, art_p = _require(source, "lastfm", ["user_taggedartists.dat", "artists.dat"])
    tags = _read(tag_p, sep="\t", need=["userID", "artistID", "tagID", "day", "month", "year"])
    y, m, d = (pl.col(c).str.strip_chars() for c in ("year", "month", "day"))
    ymd = pl.concat_str(y, m.str.zfill(2), d.str.zfill(2), separator="-")  # null if any part is missing
    date = ymd.str.to_date("%Y-%m-%d", strict=False)
    epoch_s = date.cast(pl.Datetime("ms", "UTC")).dt.epoch("s")
    events = (
        tags.with_columns(pl.coalesce(epoch_s.cast(pl.Utf8), ymd).alias("timestamp"))
        .group_by(pl.col("userID").alias("user_id"), pl.col("artistID").alias("item_id"), "timestamp")
        .agg(pl.col(LINE).min(), pl.len().alias("tags"))
        .sort(LINE)
    )
    beh = events.select(LINE, "user_id", "item_id", "timestamp")
    # Impossible dates (null) are not used for categories; the behavior itself is reported by validate.
    item_tags = tags.select(pl.col("artistID").alias("item_id"), pl.col("tagID").alias("tag"),
                            (epoch_s * 1000).alias("timestamp_ms"))
    art = _read(art_p, sep="\t", need=["id", "name"])
    items = art.select(LINE, pl.col("id").alias("item_id"), pl.col("name").alias("title"))
    notes = [
        f"lastfm: {tags.height} tag rows of {tag_p.name} aggregated into {events.height} behaviors, one per "
        "distinct (user, artist, date); each keeps its first line",
        "lastfm: timestamp = the tagging date at 00:00 UTC (day resolution, effectively month); category = the "
        "artist's most frequent tag id before the validation period (ties: lowest id)",
    ]
    return Sources(behaviors=_raw(beh, tag_p), items=_raw(items, art_p), item_tags=item_tags,
                   files=[tag_p, art_p], notes=notes, name="lastfm")


__all__: Sequence[str] = ("ADAPTERS", "load_adapter", "register_adapter")
