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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import polars as pl

from userlens.errors import InputError, did_you_mean
from userlens.inputs import first_non_utf8, input_file, not_utf8

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
#: how far past the latest allowed time (default: now) a timestamp may lie: clock skew between machines
FUTURE_SLACK_MS = 86_400_000


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


def record_lines(p: Path, sep: str) -> tuple[list[int], int | None]:
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


def csv_header_check(p: Path, sep: str) -> None:
    """Refuse a header that names a column twice (which column would a reader take?)."""
    head = _header(p, sep)
    dup = sorted({c for c in head if head.count(c) > 1})
    if dup:
        cols = [i + 1 for i, c in enumerate(head) if c == dup[0]]
        raise InputError(f"{p}:line 1: duplicate column {dup[0]!r} in the header (columns {cols}). "
                         "Fix: give every column a distinct name.")


def csv_read_error(p: Path, sep: str, exc: Exception) -> InputError:
    """What polars' refusal to read ``p`` means, with the line: not UTF-8, an unclosed quote, a ragged line."""
    bad = first_non_utf8(p)
    if bad is not None:
        return not_utf8(p, *bad)
    _, unclosed = record_lines(p, sep)
    if unclosed is not None:
        return InputError(f"{p}:line {unclosed}: a quote (\") opens a value that is never closed. "
                          "Fix: close the quote, or double quotes inside quoted values (\"\").")
    return InputError(f"{p}:line {_first_ragged_line(p, sep)}: cannot read the file as CSV "
                      f"({str(exc).splitlines()[0]}). Fix: make every line have the header's fields "
                      f"(quote values that contain {sep!r}).")


def _read_csv(p: Path, sep: str) -> pl.DataFrame:
    """A delimited text file with a header, every value as text, ``LINE`` = the physical line of each record."""
    csv_header_check(p, sep)
    try:
        frame = pl.read_csv(p, separator=sep, infer_schema=False)
    except pl.exceptions.NoDataError:
        raise InputError(f"{p}: the file is empty. Fix: point to a file with a header and rows.") from None
    except pl.exceptions.ComputeError as exc:
        raise csv_read_error(p, sep, exc) from None
    lines = None
    if frame.height and p.stat().st_size < (1 << 31):  # a quoted newline shifts every later record's line
        with open(p, "rb") as fh:
            newlines = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 22), b""))
        if newlines > frame.height + 1 or (newlines == frame.height and not ends_with_newline(p)):
            starts, _ = record_lines(p, sep)
            if len(starts) >= frame.height:
                lines = starts[: frame.height]
    if lines is None:
        return frame.with_row_index(LINE, offset=2).with_columns(pl.col(LINE).cast(pl.Int64))
    return frame.with_columns(pl.Series(LINE, lines, dtype=pl.Int64)).select(LINE, *frame.columns)


def ends_with_newline(p: Path) -> bool:
    with open(p, "rb") as fh:
        fh.seek(-1, 2)
        return fh.read(1) == b"\n"


def read_table(path: str | Path, rename: dict[str, str] | None = None) -> RawTable:
    """Read a CSV / TSV / Parquet file as-is (CSV values stay text; parsing happens in :func:`validate`).

    Raises:
        InputError: the file is missing, a directory or a named pipe, empty, unreadable (not UTF-8, an unclosed quote, a
        damaged Parquet file), has a duplicate header column, or an unknown extension; always naming the
        file and, for text, the physical line.
    """
    p = input_file(path)
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


def _is_text(d: pl.DataType) -> bool:
    return d.base_type() in (pl.String, pl.Categorical, pl.Enum, pl.Null)


def _is_number(d: pl.DataType) -> bool:
    return d.is_integer() or d.is_float()


#: What each column userlens reads may hold, checked before any cast: (test, what is expected, fix).
COLUMN_TYPES: dict[str, tuple[Callable[[pl.DataType], bool], str, str]] = {
    "id": (lambda d: _is_text(d) or _is_number(d), "integers or text",
           "write the ids as int64 or string (e.g. pl.col({c!r}).cast(pl.Utf8))"),
    "timestamp": (lambda d: _is_text(d) or _is_number(d) or d.base_type() in (pl.Date, pl.Datetime, pl.Decimal),
                  "epoch seconds or milliseconds (numbers), ISO-8601 text, a date or a timestamp",
                  "write the time as int64 epoch seconds / milliseconds or as a timestamp column"),
    "label": (lambda d: _is_text(d) or _is_number(d) or d.base_type() in (pl.Boolean, pl.Decimal),
              "0/1 numbers, booleans or text", "write the label as 0/1 integers or booleans"),
    # a duration has no text form in polars ("casting from Duration to String not supported")
    "value": (lambda d: not d.is_nested() and d.base_type() not in (pl.Binary, pl.Object, pl.Duration),
              "a single value per row (text, number, boolean, date)", "write one value per row (text or number)"),
}


def _role(column: str) -> str:
    return "id" if column in ("user_id", "item_id") else column if column in ("timestamp", "label") else "value"


def _check_types(t: RawTable, columns: Sequence[str]) -> None:
    """Refuse a column type userlens cannot read faithfully (lists, structs, binary ...) before any cast."""
    check_column_types(t, {c: _role(c) for c in columns})


def check_column_types(t: RawTable, roles: dict[str, str]) -> None:
    """Each column of ``roles`` (column → a role of :data:`COLUMN_TYPES`: id, timestamp, label, value) must have
    a type that role can read; else an :class:`InputError` naming the file, column, type and fix."""
    for c, role in roles.items():
        dtype = t.frame.schema[c]
        ok, expected, fix = COLUMN_TYPES[role]
        if not ok(dtype):
            raise InputError(f"{t.source}: column {c!r} has type {dtype}; expected {expected}. "
                             f"Fix: {fix.format(c=c)}.")


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


def _plain(s: pl.Series) -> pl.Series:
    """Categorical / enum columns as plain text: the values are what count, not the dictionary."""
    return s.cast(pl.Utf8) if s.dtype.base_type() in (pl.Categorical, pl.Enum) else s


def _normalised_ids(s: pl.Series, c: str, t: RawTable, chk: _RowChecker, report: SkipReport) -> pl.Series:
    """Ids as given, made comparable across tables; every normalisation is counted in ``report.notes``.

    * null, blank or NaN → an empty-id row defect (named, or skipped and counted);
    * a float id must be integral (``1.0`` → ``1``, matching integer ids elsewhere); ``1.5`` is a row defect;
    * text loses leading / trailing whitespace (no-break space included): counted, and distinct raw
      ids that become one are reported, since they merge;
    * text that is exactly a canonical integer becomes an integer (``"007"`` stays text).
    """
    if s.dtype.is_float():
        return _float_ids(s, c, t, chk, report)
    if s.dtype.is_integer():
        chk.flag(s.is_null(), c, EMPTY_ID, f"give every row a {c}")
        as_int = s.cast(pl.Int64, strict=False)
        if (as_int.is_null() & s.is_not_null()).any():  # uint64 ids of 2^63 and above
            report.notes.append(f"{t.source}: {c} holds unsigned 64-bit ids beyond int64; every {c} of the file "
                                "is read as its decimal text (it still matches the same id in other tables)")
            return s.cast(pl.Utf8)
        return as_int
    if s.dtype != pl.Utf8:  # an all-null column
        chk.flag(s.is_null(), c, EMPTY_ID, f"give every row a {c}")
        return s.cast(pl.Utf8)
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


#: Beyond 2^53 a float64 no longer holds every integer: 2^53 + 1 reads as 2^53, two ids become one.
FLOAT_EXACT = 2**53


def _float_ids(s: pl.Series, c: str, t: RawTable, chk: _RowChecker, report: SkipReport) -> pl.Series:
    """Float ids must be whole numbers a float holds exactly (``1.0`` → ``1``); others are row defects."""
    nan = s.is_nan().fill_null(False)
    chk.flag(s.is_null() | nan, c, EMPTY_ID, f"give every row a {c}")
    frac = ~nan & s.is_not_null() & (s != s.round(0)).fill_null(False)
    chk.flag(frac, c, "a numeric id that is not an integer", "use integer or text ids")
    big = ~nan & ~frac & (s.abs() >= FLOAT_EXACT).fill_null(False)
    chk.flag(big, c, "a float id too large to be exact (2^53 or more, or infinite)",
             "write ids as int64 or text, not float")
    ok = s.is_not_null() & ~nan & ~frac & ~big
    n_float = int(ok.sum())
    if n_float:
        report.notes.append(f"{t.source}: {n_float} float {c}s (like 1.0) read as integers")
    return pl.select(pl.when(ok).then(s)).to_series().cast(pl.Int64)


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


INT64_MAX = 2**63 - 1
#: A number in ``[+-]digits[.digits]`` form: read exactly (no float), so ``1700000100.1`` s is 1700000100100 ms.
DECIMAL = r"^([+-]?)([0-9]*)(?:\.([0-9]*))?$"  # ASCII digits: "\d" also matches "١٧٠٠" (Unicode)


@dataclass
class _Times:
    """Timestamps as int64 epoch milliseconds, and what happened on the way."""

    ms: pl.Series  # null where unparsable or too large
    unit: str  # s, ms, iso, iso+s / iso+ms, datetime
    too_large: pl.Series  # a number whose milliseconds do not fit in int64 (they would wrap to another date)
    rounded: pl.Series  # had digits below a millisecond: rounded to the nearest millisecond (halves up)


def _parse_timestamp(col: pl.Series, unit: Literal["auto", "s", "ms"]) -> _Times:
    """Epoch seconds / milliseconds or ISO-8601 text or a date / datetime → int64 epoch **milliseconds**.

    Fractions are kept to the millisecond (``1700000100.25`` s → ``1700000100250``); finer digits are
    rounded, and flagged in ``rounded`` so they can be counted. Numbers are read exactly when given as
    decimal text, and a value whose milliseconds overflow int64 is ``too_large``, never wrapped.
    Unparsable values become null. The unit read is ``s``, ``ms``, ``iso``, ``iso+s`` / ``iso+ms``
    (a text column mixing both) or ``datetime`` (a Parquet date or timestamp column).
    """
    no = pl.Series([False] * len(col), dtype=pl.Boolean)
    if col.dtype.base_type() in (pl.Date, pl.Datetime):
        ms, rounded = _us_to_ms(col.cast(pl.Datetime("us")).dt.epoch("us"))
        return _Times(ms, "datetime", no, rounded)
    if col.dtype.is_integer() or col.dtype.is_float():
        u = _decide_unit(col.cast(pl.Float64), unit)
        ms, too_large, rounded = (_int_ms if col.dtype.is_integer() else _float_ms)(col, 1000 if u == "s" else 1)
        return _Times(ms, u, too_large, rounded)
    text = col.cast(pl.Utf8).str.strip_chars()  # a Parquet decimal too: its text is exact
    g = text.str.extract_groups(DECIMAL)
    sign, whole, frac = (g.struct.field(k) for k in ("1", "2", "3"))
    exact = (whole.str.len_chars() > 0) | (frac.str.len_chars() > 0)  # null when the text is not plain decimal
    exact = exact.fill_null(False)
    as_float = text.cast(pl.Float64, strict=False)
    floaty = ~exact & as_float.is_not_null()  # 1.7e9, inf, nan
    u = _decide_unit(as_float.filter(exact | floaty), unit)
    factor = 1000 if u == "s" else 1
    d_ms, d_big, d_round = _decimal_ms(sign, whole, frac, factor)
    f_ms, f_big, f_round = _float_ms(as_float, factor)
    rest = ~exact & ~floaty
    # numbers only (the common case): no row needs the five ISO formats tried
    iso_us = _parse_iso(text) if rest.any() else pl.Series([None] * len(text), dtype=pl.Int64)
    iso_ms, iso_round = _us_to_ms(iso_us)

    def pick(a: pl.Series, b: pl.Series, c: pl.Series) -> pl.Series:
        return pl.select(pl.when(exact).then(a).when(floaty).then(b).otherwise(c)).to_series()

    has_num = bool((exact | floaty).any())
    has_iso = bool((rest & iso_ms.is_not_null()).any())
    label = f"iso+{u}" if has_num and has_iso else ("iso" if has_iso else u)
    return _Times(pick(d_ms, f_ms, iso_ms), label, pick(d_big, f_big, no), pick(d_round, f_round, iso_round))


def _decide_unit(values: pl.Series, unit: Literal["auto", "s", "ms"]) -> Literal["s", "ms"]:
    if unit != "auto":
        return unit
    finite = values.filter(values.is_finite())
    med = finite.abs().median() if len(finite) else None
    # 1e11 s is the year 5138; 1e11 ms is 1973. Decide once per file, never per row.
    return "ms" if med is not None and float(med) > 1e11 else "s"  # type: ignore[arg-type]


def _int_ms(v: pl.Series, factor: int) -> tuple[pl.Series, pl.Series, pl.Series]:
    """(ms, too large, rounded) of integers in units of ``1/factor`` s; a product that would wrap is too large."""
    i = v.cast(pl.Int64, strict=False)  # null for uint64 beyond int64
    lim = INT64_MAX // factor
    too_large = (i.is_null() & v.is_not_null()) | (i > lim).fill_null(False) | (i < -lim).fill_null(False)
    ms = pl.select(pl.when(~too_large).then(i * factor)).to_series()
    return ms, too_large, pl.Series([False] * len(v), dtype=pl.Boolean)


def _float_ms(v: pl.Series, factor: int) -> tuple[pl.Series, pl.Series, pl.Series]:
    """(ms, too large, rounded) of floats; a float's own representation error is not counted as rounding."""
    x = v.cast(pl.Float64) * factor
    nan = x.is_nan().fill_null(False)
    too_large = ~nan & (x.abs() >= 2.0**63).fill_null(False)
    r = (x + 0.5).floor()
    rounded = ~nan & ~too_large & ((x - r).abs() > x.abs() * 1e-15 + 1e-9).fill_null(False)
    ms = pl.select(pl.when(~too_large).then(r)).to_series().cast(pl.Int64, strict=False)
    return ms, too_large, rounded


def _decimal_ms(sign: pl.Series, whole: pl.Series, frac: pl.Series, factor: int
                ) -> tuple[pl.Series, pl.Series, pl.Series]:
    """(ms, too large, rounded) of ``[sign] whole . frac`` decimal text, exactly (no float in between)."""
    digits = 3 if factor == 1000 else 0
    frac = frac.fill_null("")
    kept = (frac.str.slice(0, digits).str.pad_end(digits, "0").cast(pl.Int64, strict=False).fill_null(0)
            if digits else pl.Series([0] * len(frac), dtype=pl.Int64))
    rest = frac.str.slice(digits)
    up = rest.str.slice(0, 1).is_in(list("56789")).cast(pl.Int64)
    rounded = rest.str.contains("[1-9]").fill_null(False)
    w = whole.fill_null("").str.replace(r"^0+", "")
    w_int = w.replace("", "0").cast(pl.Int64, strict=False)  # null: more digits than int64 holds
    too_large = w_int.is_null() | (w_int > INT64_MAX // factor - 1).fill_null(False)
    magnitude = pl.select(pl.when(~too_large).then(w_int * factor + kept + up)).to_series()
    ms = pl.select(pl.when(sign == "-").then(-magnitude).otherwise(magnitude)).to_series()
    return ms, too_large, rounded


def _us_to_ms(us: pl.Series) -> tuple[pl.Series, pl.Series]:
    """Epoch microseconds → (epoch milliseconds rounded to the nearest, halves up; had a sub-ms part)."""
    return (us + 500) // 1000, (us % 1000 != 0).fill_null(False)


# Tried in order, row by row, so one file may mix styles (``T`` or space, fractions, ``Z`` / ``±hh:mm``
# offsets, date only). Text without an offset is UTC.
ISO_FORMATS = ("%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M%#z", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d")


def _parse_iso(text: pl.Series) -> pl.Series:
    """ISO-8601 text → int64 epoch **micro**seconds (null = none of :data:`ISO_FORMATS`); formats may differ per row."""
    # A space between date and time is as valid as "T" (RFC 3339); only the first one, after a 10-char date.
    t = text.str.replace(r"^(\d{4}-\d{2}-\d{2}) ", "${1}T")
    out = pl.Series(text.name, [None] * len(text), dtype=pl.Int64)
    for fmt in ISO_FORMATS:
        out = out.fill_null(t.str.to_datetime(fmt, strict=False, time_zone="UTC", time_unit="us").dt.epoch("us"))
    return out


def _note_rounded(rounded: pl.Series, t: RawTable, report: SkipReport) -> None:
    """Count timestamps whose sub-millisecond digits were rounded away (storage is int64 milliseconds)."""
    n = int(rounded.sum())
    if n:
        first = int(t.frame[LINE].filter(rounded)[0])
        report.notes.append(f"{t.source}: {n} timestamps had digits below a millisecond (first at "
                            f"{t.line_label} {first}), rounded to the nearest millisecond")


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
    _check_types(t, keep[1:])
    out: dict[str, pl.Series] = {c: _plain(f[c]) for c in keep}

    for c in ("user_id", "item_id"):
        if c in out:
            out[c] = _normalised_ids(out[c], c, t, chk, report)

    if "timestamp" in out:
        raw = out["timestamp"]
        missing = raw.is_null() | ((raw.cast(pl.Utf8).str.strip_chars() == "") if raw.dtype == pl.Utf8 else False)
        chk.flag(missing, "timestamp", "empty timestamp (a truncated line?)", "give every row a timestamp")
        times = _parse_timestamp(raw, timestamp_unit)
        report.time_units[t.source] = times.unit
        chk.flag(times.too_large, "timestamp", "absurd timestamp (too large: its milliseconds overflow int64)",
                 "check the unit (--timestamp-unit s|ms) and the source clock")
        ts = times.ms
        chk.flag(
            ts.is_null() & ~missing,
            "timestamp",
            "cannot parse the timestamp",
            "use epoch seconds or milliseconds (integer or decimal), or ISO-8601 text like 2017-11-25T10:00:00",
        )
        hi = max_time or datetime.now(timezone.utc).replace(microsecond=0)
        lo_ms, hi_ms = int(min_time.timestamp() * 1000), int(hi.timestamp() * 1000) + FUTURE_SLACK_MS
        chk.flag(
            (ts < lo_ms) | (ts > hi_ms),
            "timestamp",
            f"absurd timestamp (before {min_time.date()} or in the future)",
            "check the unit (--timestamp-unit s|ms) and the source clock",
        )
        _note_rounded(times.rounded & ~chk.bad, t, report)
        out["timestamp"] = ts

    if "label" in out:
        lab = _label_values(out["label"])
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
    if kind == "impressions":
        _refuse_label_leaks(frame, context_columns, t.source)
    return frame


def _label_values(raw: pl.Series) -> pl.Series:
    """A label column as Float64: numbers, ``true``/``false`` (any case) or booleans; null where none of those."""
    if raw.dtype == pl.Boolean:  # a Parquet/Arrow boolean column: true = 1, false = 0
        return raw.cast(pl.Float64)
    text = raw.cast(pl.Utf8).str.strip_chars()
    return text.cast(pl.Float64, strict=False).fill_null(
        text.str.to_lowercase().replace_strict({"true": 1.0, "false": 0.0}, default=None, return_dtype=pl.Float64))


# --------------------------------------------------------------------------- context features


def _refuse_label_leaks(frame: pl.DataFrame, columns: Sequence[str], source: str) -> None:
    """Refuse a context column that gives the label away: equal to it, or one label per value on every row.

    "One label per value" counts only when values repeat (on average at least twice): a column with a new
    value on almost every row (a request id) is pure by construction, not a leak.
    """
    label = frame["label"]
    if not columns or label.n_unique() < 2:  # one class: nothing to leak, and every column is "pure"
        return
    for c in columns:
        if bool((_label_values(frame[c]) == label.cast(pl.Float64)).fill_null(False).all()):
            raise InputError(f"{source}: context column {c!r} equals the label on every row: a model would read "
                             f"the answer from it (test AUC 1.0). Fix: drop --context {c}.")
        per_value = frame.group_by(c).agg(pl.col("label").n_unique().alias("labels"))
        if per_value["labels"].max() == 1 and 2 * per_value.height <= frame.height:
            raise InputError(f"{source}: context column {c!r} determines the label on every row ({per_value.height} "
                             f"values, each with a single label): it is the label under another name (a model "
                             f"would score test AUC 1.0). Fix: drop --context {c}.")


def note_unicode_twins(frames: Sequence[pl.DataFrame | None], column: str, report: SkipReport) -> None:
    """Report text ids equal after Unicode NFC normalisation ("José" typed two ways): kept apart, but counted.

    They stay distinct (userlens never merges ids on a guess) and usually mean the same user or item
    written by two systems; the note says how many and shows one pair.
    """
    parts = [f[column] for f in frames if f is not None and column in f.columns]
    if not parts or any(p.dtype != pl.Utf8 for p in parts):
        return
    ids = pl.concat(parts).unique()
    nfc = ids.str.normalize("NFC")
    n = len(ids) - nfc.n_unique()
    if n:
        twin = pl.DataFrame({"id": ids, "nfc": nfc}).filter(pl.col("nfc").is_duplicated()).sort("nfc", "id")
        pair = twin["id"].head(2).to_list()
        # ascii(): the two forms print alike ('José' and 'José'); escaped they are told apart
        report.notes.append(f"warning: {n} distinct {column}s equal another after Unicode NFC normalisation (e.g. "
                            f"{ascii(pair[0])} and {ascii(pair[1])}); kept apart. Fix: normalise the ids at the "
                            "source if they are the same")


def unify_id_types(*frames: pl.DataFrame | None, column: str) -> list[pl.DataFrame | None]:
    """Make ``column`` the same dtype in all frames (``None`` entries pass through).

    Integers stay integers; any text makes all text, so "7" in a CSV and 7 in a Parquet file still match.
    """
    present = [f for f in frames if f is not None and column in f.columns]
    target = pl.Int64 if all(f[column].dtype.is_integer() for f in present) else pl.Utf8
    return [f.with_columns(pl.col(column).cast(target)) if f is not None and column in f.columns else f
            for f in frames]
