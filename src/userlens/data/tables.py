"""Reading and validating the three canonical input tables (DESIGN §2).

Every table goes through :func:`validate` whatever its source (a user's CSV /
Parquet or a dataset adapter), so the same defects get the same messages.
File-level defects (missing file, empty file, missing column) always stop.
Row-level defects (null ids, unparsable or absurd timestamps, labels outside
{0, 1}, duplicate ``event_id``, truncated lines) stop by default; with
``on_bad_rows="skip"`` they are removed, counted per (file, column, problem)
in a :class:`SkipReport`, printed and recorded in ``meta.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import polars as pl

from userlens.errors import InputError, did_you_mean

TableKind = Literal["behaviors", "impressions", "items"]
BadRowPolicy = Literal["error", "skip"]

LINE = "__line"  # 1-based line (CSV) or row (Parquet) number in the source file

REQUIRED: dict[str, tuple[str, ...]] = {
    "behaviors": ("user_id", "item_id", "timestamp"),
    "impressions": ("user_id", "item_id", "timestamp", "label"),
    "items": ("item_id",),
}
OPTIONAL: dict[str, tuple[str, ...]] = {
    "behaviors": ("behavior", "event_id", "category"),
    "impressions": ("split", "category"),
    "items": ("category", "title", "text"),
}
SPLITS = ("train", "valid", "test")

#: Timestamps outside this window are "absurd" (an epoch in the wrong unit, a 1900 default date ...).
DEFAULT_MIN_TIME = datetime(1990, 1, 1, tzinfo=timezone.utc)


@dataclass
class SkipReport:
    """What was skipped, by ``"file: column: problem"``; printed and saved in meta.json."""

    counts: dict[str, int] = field(default_factory=dict)
    first_line: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    time_units: dict[str, str] = field(default_factory=dict)  # input file → timestamp unit as detected

    def add(self, key: str, n: int, first: int) -> None:
        self.counts[key] = self.counts.get(key, 0) + n
        self.first_line.setdefault(key, first)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_json(self) -> dict[str, object]:
        return {
            "skipped_rows": self.total,
            "by_problem": [
                {"problem": k, "rows": v, "first_line": self.first_line[k]} for k, v in self.counts.items()
            ],
            "notes": list(self.notes),
        }


@dataclass
class RawTable:
    """A table as read from ``source`` with a ``__line`` column, not yet validated."""

    frame: pl.DataFrame
    source: str
    line_label: str = "line"  # "line" for text files, "row" for Parquet


def _first_ragged_line(p: Path, sep: str) -> int | str:
    """1-based line of the first record whose field count differs from the header's (error path only)."""
    import csv

    with open(p, newline="") as fh:
        reader = csv.reader(fh, delimiter=sep)
        width = len(next(reader, []))
        for row in reader:
            if row and len(row) != width:
                return reader.line_num
    return "?"


def _line_of_byte(p: Path, offset: int) -> int:
    """1-based physical line holding byte ``offset`` (streamed: error paths only)."""
    line, seen = 1, 0
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            if seen + len(chunk) > offset:
                return line + chunk.count(b"\n", 0, offset - seen)
            line += chunk.count(b"\n")
            seen += len(chunk)
    return line


def _first_non_utf8(p: Path) -> tuple[int, int] | None:
    """(physical line, byte value) of the first byte sequence that is not UTF-8, or None."""
    import codecs

    dec, seen = codecs.getincrementaldecoder("utf-8")(), 0
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            try:
                dec.decode(chunk)
            except UnicodeDecodeError as e:
                return _line_of_byte(p, seen + e.start), chunk[e.start]
            seen += len(chunk)
    return None


def _record_lines(p: Path, sep: str) -> tuple[list[int], int | None]:
    """Physical start line of every CSV record after the header, and the line of an unclosed quote (or None).

    A quoted field may span lines, so record k does not start on line k + 2; this
    walks the file once with the same RFC-4180 quoting polars applies.
    """
    starts: list[int] = []
    inside, opened = False, 0
    with open(p, encoding="utf-8", errors="replace", newline="") as fh:
        for n, line in enumerate(fh, start=1):
            if not inside and n > 1:  # a record (a blank line is a null record for polars too) starts here
                starts.append(n)
            if line.count('"') % 2:
                inside = not inside
                if inside:
                    opened = n
    return starts, (opened if inside else None)


def _header(p: Path, sep: str) -> list[str]:
    import csv

    with open(p, encoding="utf-8", errors="replace", newline="") as fh:
        return next(csv.reader(fh, delimiter=sep), [])


def _read_csv(p: Path, sep: str) -> pl.DataFrame:
    """A delimited text file with a header, every value as text, ``LINE`` = the physical line of each record."""
    head = _header(p, sep)
    dup = sorted({c for c in head if head.count(c) > 1})
    if dup:
        cols = [i + 1 for i, c in enumerate(head) if c == dup[0]]
        raise InputError(f"{p}:line 1: duplicate column {dup[0]!r} in the header (columns {cols}). "
                         "Fix: give every column a distinct name.")
    try:
        frame = pl.read_csv(p, separator=sep, infer_schema=False)
    except pl.exceptions.NoDataError:
        raise InputError(f"{p}: the file is empty. Fix: point to a file with a header and rows.") from None
    except pl.exceptions.ComputeError as exc:
        bad = _first_non_utf8(p)
        if bad is not None:
            raise InputError(f"{p}:line {bad[0]}: not UTF-8 text (byte 0x{bad[1]:02x}; Latin-1 or Windows-1252?). "
                             "Fix: re-save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 IN > OUT`.") from None
        _, unclosed = _record_lines(p, sep)
        if unclosed is not None:
            raise InputError(f"{p}:line {unclosed}: a quote (\") opens a value that is never closed. "
                             "Fix: close the quote, or double quotes inside quoted values (\"\").") from None
        raise InputError(f"{p}:line {_first_ragged_line(p, sep)}: cannot read the file as CSV "
                         f"({str(exc).splitlines()[0]}). Fix: make every line have the header's fields "
                         f"(quote values that contain {sep!r}).") from None
    lines = None
    if frame.height and p.stat().st_size < (1 << 31):  # a quoted newline shifts every later record's line
        with open(p, "rb") as fh:
            newlines = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 22), b""))
        if newlines > frame.height + 1 or (newlines == frame.height and not _ends_with_newline(p)):
            starts, _ = _record_lines(p, sep)
            if len(starts) >= frame.height:
                lines = starts[: frame.height]
    if lines is None:
        return frame.with_row_index(LINE, offset=2).with_columns(pl.col(LINE).cast(pl.Int64))
    return frame.with_columns(pl.Series(LINE, lines, dtype=pl.Int64)).select(LINE, *frame.columns)


def _ends_with_newline(p: Path) -> bool:
    with open(p, "rb") as fh:
        fh.seek(-1, 2)
        return fh.read(1) == b"\n"


def read_table(path: str | Path, rename: dict[str, str] | None = None) -> RawTable:
    """Read a CSV / TSV / Parquet file as-is (CSV values stay text; parsing happens in :func:`validate`).

    Raises:
        InputError: the file is missing, a directory, empty, unreadable (not UTF-8, an unclosed quote, a
        damaged Parquet file), has a duplicate header column, or an unknown extension; always naming the
        file and, for text, the physical line.
    """
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{p}: is a directory, not a file. Fix: point to the CSV or Parquet file inside it.")
    if not p.is_file():
        raise InputError(f"{p}: file not found. Fix: check the path.")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: the file is empty (0 bytes). Fix: point to a file with a header and rows.")
    suffix = p.suffix.lower()
    if suffix in (".parquet", ".pq"):
        try:
            frame = pl.read_parquet(p)
        except Exception as exc:  # polars / arrow raise several types for a damaged file
            raise InputError(f"{p}: cannot read as Parquet ({str(exc).splitlines()[0][:200]}); the file is "
                             "truncated or not Parquet. Fix: export the table again.") from None
        if len(set(frame.columns)) != len(frame.columns):
            raise InputError(f"{p}: duplicate column names {frame.columns}. Fix: give every column a distinct name.")
        frame = frame.with_row_index(LINE, offset=1).with_columns(pl.col(LINE).cast(pl.Int64))
        label = "row"
    elif suffix in (".csv", ".tsv", ".txt", ".dat"):
        frame = _read_csv(p, "\t" if suffix in (".tsv", ".dat") else ",")
        label = "line"
    else:
        raise InputError(f"{p}: unknown file type {suffix!r}. Fix: use .csv, .tsv or .parquet.")
    if rename:
        frame = frame.rename({k: v for k, v in rename.items() if k in frame.columns})
    return RawTable(frame, str(p), label)


def _check_columns(t: RawTable, kind: TableKind, extra: Sequence[str]) -> None:
    cols = [c for c in t.frame.columns if c != LINE]
    for need in REQUIRED[kind] + tuple(extra):
        if need not in cols:
            raise InputError(
                f"{t.source}: missing required column {need!r}{did_you_mean(need, cols)}; "
                f"found {cols}. Fix: rename the column or map it with the adapter's rename option."
            )


class _RowChecker:
    """Collects row defects of one table; raises on the first kind found (policy 'error') or drops them."""

    def __init__(self, t: RawTable, policy: BadRowPolicy, report: SkipReport) -> None:
        self.t, self.policy, self.report = t, policy, report
        self.bad = pl.Series("bad", [False] * t.frame.height, dtype=pl.Boolean)

    def flag(self, mask: pl.Series, column: str, problem: str, fix: str) -> None:
        mask = mask.fill_null(False) & ~self.bad
        n = int(mask.sum())
        if n == 0:
            return
        lines = self.t.frame[LINE].filter(mask)
        first = int(lines[0])
        col_values = self.t.frame[column].filter(mask) if column in self.t.frame.columns else None
        shown = "" if col_values is None else f" (value {col_values[0]!r})"
        key = f"{self.t.source}: column {column!r}: {problem}"
        if self.policy == "error":
            raise InputError(
                f"{self.t.source}:{self.t.line_label} {first}: column {column!r}: {problem}{shown}; "
                f"{n} row(s) affected. Fix: {fix}, or pass --on-bad-rows skip to skip and count such rows."
            )
        self.report.add(key, n, first)
        self.bad = self.bad | mask


EMPTY_ID = "empty id (null, blank or NaN; a truncated line?)"


def _normalised_ids(s: pl.Series, c: str, t: RawTable, chk: _RowChecker, report: SkipReport) -> pl.Series:
    """Ids as given, made comparable across tables; every normalisation is counted in ``report.notes``.

    * null, blank or NaN → an empty-id row defect (named, or skipped and counted);
    * a float id must be integral (``1.0`` → ``1``, matching integer ids elsewhere); ``1.5`` is a row defect;
    * text loses leading / trailing whitespace (no-break space included): counted, and distinct raw
      ids that become one are reported, since they merge;
    * text that is exactly a canonical integer becomes an integer (``"007"`` stays text).
    """
    if s.dtype.is_float():
        nan = s.is_nan().fill_null(False)
        chk.flag(s.is_null() | nan, c, EMPTY_ID, f"give every row a {c}")
        frac = ~nan & s.is_not_null() & (s != s.round(0))
        chk.flag(frac, c, "a numeric id that is not an integer", "use integer or text ids")
        ok = s.is_not_null() & ~nan & ~frac
        n_float = int(ok.sum())
        if n_float:
            report.notes.append(f"{t.source}: {n_float} float {c}s (like 1.0) read as integers")
        return pl.Series(c, s.to_numpy(), dtype=pl.Float64).fill_nan(None).cast(pl.Int64, strict=False)
    if s.dtype != pl.Utf8:
        chk.flag(s.is_null(), c, EMPTY_ID, f"give every row a {c}")
        return s
    stripped = s.str.strip_chars()
    empty = s.is_null() | (stripped == "") | (stripped.str.to_lowercase() == "nan")
    chk.flag(empty, c, EMPTY_ID, f"give every row a {c}")
    changed = (stripped != s).fill_null(False) & ~empty
    if changed.any():
        merged = s.filter(~empty).n_unique() - stripped.filter(~empty).n_unique()
        report.notes.append(f"{t.source}: {int(changed.sum())} {c}s had leading/trailing whitespace, removed"
                            + (f"; {merged} distinct raw ids became equal to another id" if merged else ""))
    # Blank ids are flagged above (and dropped under "skip"); as null they cannot keep the rest text.
    return _maybe_int_ids(stripped.replace("", None).replace({"NaN": None, "nan": None, "NAN": None}))


def _maybe_int_ids(s: pl.Series) -> pl.Series:
    """Text ids that are exactly canonical integers become Int64 (faster vocabularies).

    Only when every value round-trips ("007" stays text), so no id is ever reinterpreted.
    """
    as_int = s.cast(pl.Int64, strict=False)
    if as_int.null_count() != s.null_count():
        return s
    if bool((as_int.cast(pl.Utf8) == s).fill_null(True).all()):
        return as_int
    return s


def _parse_timestamp(col: pl.Series, unit: Literal["auto", "s", "ms"]) -> tuple[pl.Series, str]:
    """Epoch seconds / milliseconds (integers) or ISO-8601 text → (int64 epoch **milliseconds**, unit read).

    Unparsable values become null. The unit read is ``s``, ``ms``, ``iso``, ``iso+s`` / ``iso+ms``
    (a text column mixing both) or ``datetime`` (a Parquet timestamp column).
    """
    if col.dtype.is_temporal():
        return col.cast(pl.Datetime("ms")).dt.epoch("ms"), "datetime"
    if col.dtype.is_float():
        return _to_ms(col.round(0).cast(pl.Int64, strict=False), unit)
    if col.dtype.is_integer():
        return _to_ms(col.cast(pl.Int64), unit)
    text = col.cast(pl.Utf8).str.strip_chars()
    as_int = text.cast(pl.Int64, strict=False)
    as_float = text.cast(pl.Float64, strict=False)
    as_int = as_int.fill_null(as_float.round(0).cast(pl.Int64, strict=False))
    iso = _parse_iso(text)
    # Numbers decide the unit; ISO strings are already milliseconds.
    numeric_ms, numeric_unit = _to_ms(as_int, unit)
    has_num, has_iso = as_int.null_count() < len(as_int), bool((as_int.is_null() & iso.is_not_null()).any())
    label = f"iso+{numeric_unit}" if has_num and has_iso else ("iso" if has_iso else numeric_unit)
    return numeric_ms.fill_null(iso), label


# Tried in order, row by row, so one file may mix styles (``T`` or space, fractions, ``Z`` / ``±hh:mm``
# offsets, date only). Text without an offset is UTC.
ISO_FORMATS = ("%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M%#z", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d")


def _parse_iso(text: pl.Series) -> pl.Series:
    """ISO-8601 text → int64 epoch milliseconds (null = none of :data:`ISO_FORMATS`); formats may differ per row."""
    # A space between date and time is as valid as "T" (RFC 3339); only the first one, after a 10-char date.
    t = text.str.replace(r"^(\d{4}-\d{2}-\d{2}) ", "${1}T")
    out = pl.Series(text.name, [None] * len(text), dtype=pl.Int64)
    for fmt in ISO_FORMATS:
        out = out.fill_null(t.str.to_datetime(fmt, strict=False, time_zone="UTC", time_unit="ms").dt.epoch("ms"))
    return out


def _to_ms(v: pl.Series, unit: Literal["auto", "s", "ms"]) -> tuple[pl.Series, str]:
    if unit == "auto":
        med = v.drop_nulls().abs().median()
        # 1e11 s is the year 5138; 1e11 ms is 1973. Decide once per file, never per row.
        unit = "ms" if med is not None and float(med) > 1e11 else "s"
    return (v * 1000 if unit == "s" else v), unit


def validate(
    t: RawTable,
    kind: TableKind,
    *,
    policy: BadRowPolicy = "error",
    report: SkipReport | None = None,
    context_columns: Sequence[str] = (),
    timestamp_unit: Literal["auto", "s", "ms"] = "auto",
    min_time: datetime = DEFAULT_MIN_TIME,
    max_time: datetime | None = None,
) -> pl.DataFrame:
    """Check and normalise one table.

    Returns a frame with ``user_id``/``item_id`` as given (string or integer),
    ``timestamp`` as int64 epoch milliseconds, ``label`` as int8, ``LINE``, and the
    optional columns that were present. Rows with defects are removed only
    under ``policy="skip"`` and counted in ``report``.

    Raises:
        InputError: naming file, line, column and the fix.
    """
    report = report if report is not None else SkipReport()
    if t.frame.height == 0:
        raise InputError(f"{t.source}: the file has a header but no rows. Fix: point to a file with data.")
    _check_columns(t, kind, context_columns)
    chk = _RowChecker(t, policy, report)
    f = t.frame
    keep = [LINE, *REQUIRED[kind], *(c for c in OPTIONAL[kind] if c in f.columns), *context_columns]
    keep = list(dict.fromkeys(keep))
    out: dict[str, pl.Series] = {c: f[c] for c in keep}

    for c in ("user_id", "item_id"):
        if c in out:
            out[c] = _normalised_ids(out[c], c, t, chk, report)

    if "timestamp" in out:
        raw = out["timestamp"]
        missing = raw.is_null() | ((raw.cast(pl.Utf8).str.strip_chars() == "") if raw.dtype == pl.Utf8 else False)
        chk.flag(missing, "timestamp", "empty timestamp (a truncated line?)", "give every row a timestamp")
        ts, read_as = _parse_timestamp(raw, timestamp_unit)
        report.time_units[t.source] = read_as
        chk.flag(
            ts.is_null() & ~missing,
            "timestamp",
            "cannot parse the timestamp",
            "use integer epoch seconds or milliseconds, or ISO-8601 text like 2017-11-25T10:00:00",
        )
        hi = max_time or datetime.now(timezone.utc).replace(microsecond=0)
        lo_ms, hi_ms = int(min_time.timestamp() * 1000), int(hi.timestamp() * 1000) + 86_400_000
        chk.flag(
            (ts < lo_ms) | (ts > hi_ms),
            "timestamp",
            f"absurd timestamp (before {min_time.date()} or in the future)",
            "check the unit (--timestamp-unit s|ms) and the source clock",
        )
        out["timestamp"] = ts

    if "label" in out:
        raw = out["label"]
        if raw.dtype == pl.Boolean:  # a Parquet/Arrow boolean column: true = 1, false = 0
            lab = raw.cast(pl.Float64)
        else:
            text = raw.cast(pl.Utf8).str.strip_chars()
            lab = text.cast(pl.Float64, strict=False).fill_null(
                text.str.to_lowercase().replace_strict({"true": 1.0, "false": 0.0}, default=None, return_dtype=pl.Float64))
        chk.flag(~lab.is_in([0.0, 1.0]) | lab.is_null(), "label", "label is not 0 or 1", "encode labels as 0/1")
        out["label"] = lab.cast(pl.Int8, strict=False)

    if "split" in out:
        s = out["split"].cast(pl.Utf8).str.strip_chars().str.to_lowercase()
        chk.flag(
            ~s.is_in(list(SPLITS)) | s.is_null(),
            "split",
            f"split is not one of {SPLITS}",
            "use train/valid/test or drop the column to split by time",
        )
        out["split"] = s

    if kind == "behaviors" and "event_id" in out:
        eid = out["event_id"]
        chk.flag(eid.is_null(), "event_id", "empty event_id", "give every row an event_id or drop the column")
        chk.flag(eid.is_duplicated() & ~eid.is_first_distinct(), "event_id", "duplicate event_id",
                 "make event ids unique (re-ingested rows?)")

    if kind == "items":
        iid = out["item_id"]
        chk.flag(iid.is_duplicated() & ~iid.is_first_distinct(), "item_id", "duplicate item_id in the item table",
                 "keep one row per item")

    for c in context_columns:
        out[c] = out[c].cast(pl.Utf8).fill_null("")

    frame = pl.DataFrame(out)
    if chk.bad.any():
        frame = frame.filter(~chk.bad)
    if frame.height == 0:
        raise InputError(f"{t.source}: every row was skipped as defective; nothing left to prepare. Fix the file.")
    return frame


def unify_id_types(*frames: pl.DataFrame | None, column: str) -> list[pl.DataFrame | None]:
    """Make ``column`` the same dtype in all frames (``None`` entries pass through).

    Integers stay integers; any text makes all text, so "7" in a CSV and 7 in a Parquet file still match.
    """
    present = [f for f in frames if f is not None and column in f.columns]
    target = pl.Int64 if all(f[column].dtype.is_integer() for f in present) else pl.Utf8
    return [f.with_columns(pl.col(column).cast(target)) if f is not None and column in f.columns else f
            for f in frames]
