"""``prepare --engine duckdb``: the relational half of prepare out of core, on DuckDB (DESIGN §3–4).

Logs that outgrow memory are read in streaming batches (polars' CSV reader, so records, blank lines and
line numbers are exactly the in-memory engine's) into a DuckDB database under the output directory,
which spills to disk under ``memory_limit``. Validation, vocabularies, the (user, time, input order)
sort and the encoding run there as SQL; the sorted timeline streams out into ``.npy`` files. Samples,
split and negatives then go through the same code as the in-memory engine
(:func:`userlens.data.prepare.finish_behaviors`), reading the timeline a chunk of users at a time.

Validation mirrors :func:`userlens.data.tables.validate` rule by rule (same checks, order, messages,
skip counts and notes); a test prepares every adapter's data and generated logs with both engines and
compares every array. The item table (small) is validated by the in-memory code itself.
Behaviors-only data: impressions and context columns need the in-memory engine (refused with that fix).
"""

from __future__ import annotations

import glob as globmod
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from userlens.data.attributes import CategoryReport, item_categories
from userlens.data.npyio import NpyColumn, NpyWriter
from userlens.data import samples as samples_module
from userlens.data.samples import Timeline
from userlens.data.tables import (DEFAULT_MIN_TIME, EMPTY_ID, FUTURE_SLACK_MS, INT64_MAX, LINE, RawTable, SkipReport,
                                  csv_read_error)
from userlens.errors import InputError

FIRST_INDEX, UNK = 2, 1
BATCH_ROWS = 1 << 20


# --------------------------------------------------------------------------- what to read


@dataclass
class CsvScan:
    """A delimited text file read in streaming batches, every value as text."""

    path: Path
    sep: str = ","
    names: tuple[str, ...] | None = None  # no header: these are the fields
    quote: str | None = '"'
    lossy: bool = False  # invalid UTF-8 replaced (the adapters' published files), else refused


@dataclass
class ParquetScan:
    """One Parquet file, or a directory / glob of them read as one table (rows numbered across files in
    sorted file order)."""

    paths: list[Path]
    label: str


Scan = CsvScan | ParquetScan | RawTable


def scan_path(path: str | Path) -> Scan:
    """A user's ``--behaviors`` value: a CSV / TSV / Parquet file, or a directory or glob of Parquet files.

    Raises:
        InputError: nothing matches, or a directory / glob holds no Parquet file.
    """
    text = str(path)
    if any(ch in text for ch in "*?["):
        files = sorted(Path(p) for p in globmod.glob(text, recursive=True) if Path(p).is_file())
        if not files:
            raise InputError(f"{text}: the pattern matches no file. Fix: check the path and the pattern.")
    elif Path(text).is_dir():
        files = sorted(p for p in Path(text).rglob("*") if p.is_file() and p.suffix.lower() in (".parquet", ".pq"))
        if not files:
            raise InputError(f"{text}: a directory without .parquet files. Fix: point to a file, or to a directory "
                             "of Parquet files.")
    else:
        from userlens.inputs import input_file

        p = input_file(text)
        if p.stat().st_size == 0:
            raise InputError(f"{p}: the file is empty (0 bytes). Fix: point to a file with a header and rows.")
        suffix = p.suffix.lower()
        if suffix in (".csv", ".tsv", ".txt", ".dat"):
            return CsvScan(p, "\t" if suffix in (".tsv", ".dat") else ",")
        files = [p]
    bad = [f for f in files if f.suffix.lower() not in (".parquet", ".pq")]
    if bad:
        raise InputError(f"{bad[0]}: a directory or glob is read as Parquet files; this one is not. "
                         "Fix: match only .parquet files (or give one CSV file).")
    return ParquetScan(files, text)


# --------------------------------------------------------------------------- ingest


def _csv_batches(scan: CsvScan) -> tuple[list[str], pa.RecordBatchReader]:
    """The file's batches as Arrow, ``LINE`` = physical line (header: line 1)."""
    first = 1 if scan.names is not None else 2
    kw: dict = {"separator": scan.sep, "quote_char": scan.quote, "encoding": "utf8-lossy" if scan.lossy else "utf8"}
    if scan.names is not None:
        lf = pl.scan_csv(scan.path, has_header=False, schema=dict.fromkeys(scan.names, pl.Utf8), **kw)
    else:
        from userlens.data.tables import csv_header_check

        csv_header_check(scan.path, scan.sep)
        lf = pl.scan_csv(scan.path, infer_schema=False, **kw)
    lf = lf.with_row_index(LINE, offset=first).with_columns(pl.col(LINE).cast(pl.Int64))
    columns = lf.collect_schema().names()

    def batches():
        try:
            for df in lf.collect_batches(chunk_size=BATCH_ROWS):
                yield from df.to_arrow().to_batches()  # polars' own string layout: no cast, no copy
        except pl.exceptions.NoDataError:
            raise InputError(f"{scan.path}: the file is empty. Fix: point to a file with a header and rows.") from None
        except pl.exceptions.ComputeError as exc:
            raise csv_read_error(scan.path, scan.sep, exc) from None

    it = batches()
    head = next(it, None)
    if head is None:
        empty = pl.DataFrame(schema={LINE: pl.Int64, **{c: pl.Utf8 for c in columns if c != LINE}}).to_arrow()
        return columns, pa.RecordBatchReader.from_batches(empty.schema, iter(()))
    return columns, pa.RecordBatchReader.from_batches(head.schema, (b for part in ([head], it) for b in part))


def ingest(con, name: str, scan: Scan) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """Table ``name`` = the scan's rows with ``LINE``; returns (source named in errors, "line" or "row")."""
    if isinstance(scan, RawTable):
        frame = scan.frame.to_arrow()  # noqa: F841 (read by DuckDB's replacement scan)
        con.execute(f'CREATE TABLE {name} AS SELECT * FROM frame')
        return scan.source, scan.line_label
    if isinstance(scan, CsvScan):
        _, reader = _csv_batches(scan)  # noqa: F841
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM reader")
        if con.execute(f"SELECT count(*) FROM {name}").fetchone()[0] and scan.names is None:
            _check_line_numbers(con, name, scan)
        return str(scan.path), "line"
    import pyarrow.parquet as pq

    try:
        rows = [pq.ParquetFile(p).metadata.num_rows for p in scan.paths]
        base = pa.table({"filename": [str(p) for p in scan.paths],  # noqa: F841 (read by DuckDB)
                         "base": np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(np.int64)})
        con.execute(f"CREATE TABLE {name} AS SELECT CAST(b.base + r.file_row_number + 1 AS BIGINT) AS {LINE}, "
                    "r.* EXCLUDE (file_row_number, filename) FROM read_parquet(?, file_row_number = true, "
                    "filename = true) r JOIN base b USING (filename)", [[str(p) for p in scan.paths]])
    except Exception as exc:  # pyarrow / duckdb raise several types for a damaged file
        raise InputError(f"{scan.label}: cannot read as Parquet ({str(exc).splitlines()[0][:200]}); a file is "
                         "truncated or not Parquet. Fix: export the table again.") from None
    return scan.label, "row"


def _check_line_numbers(con, name: str, scan: CsvScan) -> None:  # type: ignore[no-untyped-def]
    """A quoted newline shifts every later record's line: renumber as the in-memory reader does (< 2 GiB)."""
    if scan.path.stat().st_size >= (1 << 31):
        return
    rows = con.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
    with open(scan.path, "rb") as fh:
        newlines = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 22), b""))
    from userlens.data.tables import ends_with_newline, record_lines

    if newlines > rows + 1 or (newlines == rows and not ends_with_newline(scan.path)):
        starts, _ = record_lines(scan.path, scan.sep)
        if len(starts) >= rows:
            lines = pa.table({"k": np.arange(2, rows + 2, dtype=np.int64), "line": np.asarray(starts[:rows])})  # noqa: F841
            con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT t.* REPLACE (l.line AS {LINE}) FROM {name} t "
                        f"JOIN lines l ON t.{LINE} = l.k ORDER BY l.line")


# --------------------------------------------------------------------------- validation (mirrors tables.validate)

#: Unicode White_Space (what polars' ``strip_chars()`` removes), as an RE2 class (DuckDB's trim with a set of
#: characters took 20× as long as this regex)
_WS = (r"[\t\n\x{0B}\f\r \x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}"
       r"\x{3000}]")
_INT_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER", "HUGEINT"}
_FLOAT_TYPES = {"FLOAT", "DOUBLE"}
_TIME_TYPES = ("DATE", "TIMESTAMP")
_DECIMAL = r"^([+-]?)([0-9]*)(?:\.([0-9]*))?$"
_ISO_TZ = ["%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M%z"]
_ISO_NAIVE = ["%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d"]


def _strip(x: str) -> str:
    return f"regexp_replace({x}, '^{_WS}+|{_WS}+$', '', 'g')"


def _canonical_int(x: str) -> str:
    """True where ``x`` is the decimal text of an int64 exactly as int64 prints it (so ``007`` stays text)."""
    return f"coalesce(CAST(TRY_CAST({x} AS BIGINT) AS VARCHAR) = {x}, false)"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass
class _Check:
    """One row check: its SQL condition (on the prepared columns), the column named and the fix."""

    column: str
    problem: str
    fix: str
    sql: str


class _TableSQL:
    """The SQL of one ingested table: normalised columns, row checks in ``validate``'s order, notes."""

    def __init__(self, con, name: str, source: str, line_label: str, report: SkipReport) -> None:  # type: ignore[no-untyped-def]
        self.con, self.name, self.source, self.line_label, self.report = con, name, source, line_label, report
        self.types = dict(con.execute("SELECT column_name, data_type FROM information_schema.columns "
                                      "WHERE table_name = ? ORDER BY ordinal_position", [name]).fetchall())
        self.checks: list[_Check] = []
        self.select: dict[str, str] = {}  # output column → SQL expression over the raw table
        self.helpers: dict[str, str] = {}  # intermediate columns (computed once)

    def one(self, sql: str):  # type: ignore[no-untyped-def]
        return self.con.execute(sql).fetchone()

    def type_error(self, c: str, expected: str, fix: str) -> InputError:
        return InputError(f"{self.source}: column {c!r} has type {self.types[c]}; expected {expected}. Fix: {fix}.")

    # ------------------------------------------------------------------ ids

    def _canonical_helpers(self, prefix: str, raw: str) -> tuple[str, str]:
        """``{prefix}_i`` (the value as int64) and ``{prefix}_c`` (the text is exactly that int's decimal text).

        The common case (every id and epoch of a log): such text needs no strip, no regex and no other check,
        so the expensive expressions below run only on the other rows.
        """
        self.helpers[f"{prefix}_i"] = f"TRY_CAST({raw} AS BIGINT)"
        self.helpers[f"{prefix}_c"] = f"coalesce(CAST({prefix}_i AS VARCHAR) = {raw}, false)"
        return f"{prefix}_i", f"{prefix}_c"

    def prescan_ids(self, columns: list[str]) -> None:
        """One scan for every text id column: rows changed by stripping, and whether all are canonical ints."""
        text = [c for c in columns if self.types[c].upper() == "VARCHAR"]
        aggs = []
        for c in text:
            raw = _q(c)
            i, canon = self._canonical_helpers(f"_{c}", raw)
            s = f"_{c}_s"
            self.helpers[s] = f"CASE WHEN {canon} THEN {raw} ELSE {_strip(raw)} END"
            empty = f"(NOT {canon} AND ({raw} IS NULL OR {s} = '' OR lower({s}) = 'nan'))"
            self.helpers[f"_{c}_empty"] = empty
            aggs += [f"count(*) FILTER (WHERE NOT {canon} AND {s} != {raw} AND NOT _{c}_empty)",
                     f"coalesce(bool_and({canon} OR {_canonical_int(s)}) FILTER (WHERE {s} IS NOT NULL AND {s} NOT IN "
                     "('', 'NaN', 'nan', 'NAN')), true)"]
        got = self.one(f"SELECT {', '.join(aggs)} FROM ({self._with_helpers()})") if aggs else ()
        self.prescan = {c: (got[2 * k], got[2 * k + 1]) for k, c in enumerate(text)}

    def ids(self, c: str) -> None:
        dtype, raw = self.types[c].upper(), _q(c)
        fix = f"give every row a {c}"
        if dtype == "VARCHAR":
            s, empty = f"_{c}_s", f"_{c}_empty"
            self.checks.append(_Check(c, EMPTY_ID, fix, empty))
            changed, as_int = self.prescan[c]
            if changed:
                merged = self.one(f"SELECT count(DISTINCT {raw}) FILTER (WHERE NOT {empty}) - count(DISTINCT {s}) "
                                  f"FILTER (WHERE NOT {empty}) FROM ({self._with_helpers()})")[0]
                self.report.notes.append(f"{self.source}: {changed} {c}s had leading/trailing whitespace, removed"
                                         + (f"; {merged} distinct raw ids became equal to another id" if merged else ""))
            self.select[c] = (f"CASE WHEN _{c}_c THEN _{c}_i ELSE TRY_CAST({s} AS BIGINT) END" if as_int
                              else f"nullif({s}, '')")
        elif dtype in _INT_TYPES:
            self.checks.append(_Check(c, EMPTY_ID, fix, f"{raw} IS NULL"))
            self.select[c] = f"CAST({raw} AS BIGINT)"
        elif dtype == "UBIGINT":
            self.checks.append(_Check(c, EMPTY_ID, fix, f"{raw} IS NULL"))
            if self.one(f"SELECT coalesce(max({raw}) > {INT64_MAX}, false) FROM {self.name}")[0]:
                self.report.notes.append(f"{self.source}: {c} holds unsigned 64-bit ids beyond int64; every {c} of "
                                         "the file is read as its decimal text (it still matches the same id in other "
                                         "tables)")
                self.select[c] = f"CAST({raw} AS VARCHAR)"
            else:
                self.select[c] = f"CAST({raw} AS BIGINT)"
        elif dtype in _FLOAT_TYPES:
            nan = f"coalesce(isnan({raw}), false)"
            frac = f"(NOT {nan} AND {raw} IS NOT NULL AND coalesce({raw} != round({raw}), false))"
            big = f"(NOT {nan} AND NOT {frac} AND coalesce(abs({raw}) >= {2.0**53}, false))"
            self.checks += [_Check(c, EMPTY_ID, fix, f"({raw} IS NULL OR {nan})"),
                            _Check(c, "a numeric id that is not an integer", "use integer or text ids", frac),
                            _Check(c, "a float id too large to be exact (2^53 or more, or infinite)",
                                   "write ids as int64 or text, not float", big)]
            ok = f"({raw} IS NOT NULL AND NOT {nan} AND NOT {frac} AND NOT {big})"
            n = self.one(f"SELECT count(*) FILTER (WHERE {ok}) FROM {self.name}")[0]
            if n:
                self.report.notes.append(f"{self.source}: {n} float {c}s (like 1.0) read as integers")
            self.select[c] = f"CASE WHEN {ok} THEN CAST({raw} AS BIGINT) END"
        elif dtype == '"NULL"' or dtype == "NULL":
            self.checks.append(_Check(c, EMPTY_ID, fix, "true"))
            self.select[c] = "CAST(NULL AS VARCHAR)"
        else:
            raise self.type_error(c, "integers or text", "write the ids as int64 or string")

    # ------------------------------------------------------------------ timestamps

    def _unit(self, values: str, where: str, unit: str) -> str:
        if unit != "auto":
            return unit
        med = self.one(f"SELECT median(abs({values})) FILTER (WHERE {where} AND isfinite({values})) "
                       f"FROM ({self._with_helpers()})")[0]
        return "ms" if med is not None and float(med) > 1e11 else "s"

    def _with_helpers(self) -> str:
        """The raw table with every helper column, one nested projection each: a helper is computed once per
        row however often later expressions name it (a lateral alias would be expanded at every use)."""
        sql = f"SELECT * FROM {self.name}"
        for k, e in self.helpers.items():
            sql = f"SELECT *, {e} AS {k} FROM ({sql})"
        return sql

    def timestamps(self, unit: str, min_time: datetime, max_time: datetime | None) -> None:
        c, dtype, raw = "timestamp", self.types["timestamp"].upper(), _q("timestamp")
        rounded = "false"
        if dtype == "VARCHAR" or dtype.startswith("DECIMAL"):
            text = "_t_text"
            if dtype == "VARCHAR":
                _, canon = self._canonical_helpers("_t", raw)
            else:  # a Parquet decimal: its text, always through the general path
                self.helpers["_t_i"], self.helpers["_t_c"], canon = "CAST(NULL AS BIGINT)", "false", "_t_c"
            self.helpers[text] = f"CASE WHEN {canon} THEN {raw} ELSE {_strip(f'CAST({raw} AS VARCHAR)')} END"
            missing = f"({raw} IS NULL OR {text} = '')" if dtype == "VARCHAR" else f"({raw} IS NULL)"
            self.helpers["_t_m"] = f"CASE WHEN NOT {canon} THEN regexp_extract({text}, '{_DECIMAL}', ['sign', 'whole', 'frac']) END"
            self.helpers["_t_f"] = f"CASE WHEN {canon} THEN CAST(_t_i AS DOUBLE) ELSE TRY_CAST({text} AS DOUBLE) END"
            # no match leaves every group empty, so a non-empty group means the text is plain decimal
            self.helpers["_t_exact"] = (f"({canon} OR coalesce(length(_t_m['whole']) > 0 OR length(_t_m['frac']) > 0, "
                                        "false))")
            self.helpers["_t_floaty"] = "(NOT _t_exact AND _t_f IS NOT NULL)"
            exact, floaty = "_t_exact", "_t_floaty"
            iso = (f"regexp_replace(regexp_replace({text}, '^([0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}) ', '\\1T'), "
                   f"'[Zz]$', '+00:00')")
            self.helpers["_t_us"] = (f"CASE WHEN NOT {exact} AND NOT {floaty} THEN coalesce("
                                     f"epoch_us(try_strptime({iso}, {_ISO_TZ})), "
                                     f"epoch_us(try_strptime({iso}, {_ISO_NAIVE}))) END")
            med, has_num, has_iso = self.one(
                f"SELECT median(abs(_t_f)) FILTER (WHERE ({exact} OR {floaty}) AND isfinite(_t_f)), "
                f"coalesce(bool_or({exact} OR {floaty}), false), coalesce(bool_or(_t_us IS NOT NULL), false) "
                f"FROM ({self._with_helpers()})")
            u = unit if unit != "auto" else ("ms" if med is not None and float(med) > 1e11 else "s")
            factor, digits = (1000, 3) if u == "s" else (1, 0)
            kept = "CAST(rpad(left(_t_m['frac'], 3), 3, '0') AS BIGINT)" if digits else "0"
            rest = f"substr(_t_m['frac'], {digits + 1})"
            self.helpers["_t_wtext"] = f"CASE WHEN NOT {canon} THEN regexp_replace(_t_m['whole'], '^0+', '') END"
            self.helpers["_t_w"] = (f"CASE WHEN {canon} THEN CASE WHEN _t_i > {-INT64_MAX - 1} THEN abs(_t_i) END "
                                    "ELSE TRY_CAST(CASE WHEN _t_wtext = '' THEN '0' ELSE _t_wtext END AS BIGINT) END")
            d_big = f"(_t_w IS NULL OR _t_w > {INT64_MAX // factor - 1})"
            mag = f"(_t_w * {factor} + {kept} + CASE WHEN left({rest}, 1) IN ('5','6','7','8','9') THEN 1 ELSE 0 END)"
            d_ms = (f"CASE WHEN {d_big} THEN NULL WHEN {canon} THEN _t_i * {factor} "
                    f"WHEN _t_m['sign'] = '-' THEN -{mag} ELSE {mag} END")
            d_round = f"(NOT {canon} AND replace({rest}, '0', '') != '')"  # the dropped digits are not all zeros
            f_ms, f_big, f_round = self._float_ms("_t_f", factor)
            iso_ms = "CAST(floor((_t_us + 500) / 1000) AS BIGINT)"
            self.helpers["_t_big"] = f"CASE WHEN {exact} THEN {d_big} WHEN {floaty} THEN {f_big} ELSE false END"
            ms = f"CASE WHEN {exact} THEN {d_ms} WHEN {floaty} THEN {f_ms} ELSE {iso_ms} END"
            too_large = "_t_big"
            rounded = (f"CASE WHEN {exact} THEN {d_round} WHEN {floaty} THEN {f_round} "
                       "ELSE coalesce(_t_us % 1000 != 0, false) END")
            label = f"iso+{u}" if has_num and has_iso else ("iso" if has_iso else u)
        elif dtype in _INT_TYPES or dtype == "UBIGINT":
            missing = f"({raw} IS NULL)"
            u = self._unit(f"CAST({raw} AS DOUBLE)", "true", unit)
            factor = 1000 if u == "s" else 1
            lim = INT64_MAX // factor
            i = f"TRY_CAST({raw} AS BIGINT)"
            too_large = f"(({i} IS NULL AND {raw} IS NOT NULL) OR coalesce({i} > {lim} OR {i} < -{lim}, false))"
            ms = f"CASE WHEN NOT {too_large} THEN {i} * {factor} END"
            label = u
        elif dtype in _FLOAT_TYPES:
            missing = f"({raw} IS NULL)"
            u = self._unit(f"CAST({raw} AS DOUBLE)", "true", unit)
            ms, too_large, rounded = self._float_ms(f"CAST({raw} AS DOUBLE)", 1000 if u == "s" else 1)
            label = u
        elif dtype.startswith(_TIME_TYPES):
            missing = f"({raw} IS NULL)"
            us = f"epoch_us(CAST({raw} AS TIMESTAMP))" if dtype == "DATE" else f"epoch_us({raw})"
            ms, too_large, rounded = f"CAST(floor(({us} + 500) / 1000) AS BIGINT)", "false", f"({us} % 1000 != 0)"
            label = "datetime"
        else:
            raise self.type_error(c, "epoch seconds or milliseconds (numbers), ISO-8601 text, a date or a timestamp",
                                  "write the time as int64 epoch seconds / milliseconds or as a timestamp column")
        self.report.time_units[self.source] = label
        hi = max_time or datetime.now(timezone.utc).replace(microsecond=0)
        lo_ms, hi_ms = int(min_time.timestamp() * 1000), int(hi.timestamp() * 1000) + FUTURE_SLACK_MS
        self.helpers["_t_ms"] = ms
        unit_fix = "check the unit (--timestamp-unit s|ms) and the source clock"
        self.checks += [
            _Check(c, "empty timestamp (a truncated line?)", "give every row a timestamp", missing),
            _Check(c, "absurd timestamp (too large: its milliseconds overflow int64)", unit_fix,
                   f"coalesce({too_large}, false)"),
            _Check(c, "cannot parse the timestamp", "use epoch seconds or milliseconds (integer or decimal), or "
                   "ISO-8601 text like 2017-11-25T10:00:00", f"(_t_ms IS NULL AND NOT {missing})"),
            _Check(c, f"absurd timestamp (before {min_time.date()} or in the future)", unit_fix,
                   f"coalesce(_t_ms < {lo_ms} OR _t_ms > {hi_ms}, false)")]
        self.rounded = f"coalesce({rounded}, false)"
        self.select[c] = "_t_ms"

    @staticmethod
    def _float_ms(v: str, factor: int) -> tuple[str, str, str]:
        x = f"({v} * {factor})"
        nan = f"coalesce(isnan({x}), false)"
        big = f"(NOT {nan} AND coalesce(abs({x}) >= {2.0**63}, false))"
        r = f"floor({x} + 0.5)"
        rounded = f"(NOT {nan} AND NOT {big} AND coalesce(abs({x} - {r}) > abs({x}) * 1e-15 + 1e-9, false))"
        return f"CASE WHEN NOT {big} THEN TRY_CAST({r} AS BIGINT) END", big, rounded

    # ------------------------------------------------------------------ the rest

    def event_ids(self) -> None:
        raw = _q("event_id")
        self.checks += [_Check("event_id", "empty event_id", "give every row an event_id or drop the column",
                               f"{raw} IS NULL"),
                        _Check("event_id", "duplicate event_id", "make event ids unique (re-ingested rows?)",
                               f"({raw} IS NOT NULL AND row_number() OVER (PARTITION BY {raw} ORDER BY {LINE}) > 1)")]

    def run(self, policy: str, out: str, keep: list[str]) -> None:
        """Flag rows in check order (a row counts for its first problem only); raise or drop and count."""
        problem = "CASE " + " ".join(f"WHEN {k.sql} THEN {i}" for i, k in enumerate(self.checks)) + " END"
        windowed = any("OVER" in k.sql for k in self.checks)
        inner = self._with_helpers()
        if windowed:  # a window cannot sit in a CASE with other windows' inputs: compute the flag first
            inner = f"SELECT *, row_number() OVER (PARTITION BY {_q('event_id')} ORDER BY {LINE}) AS _eid_n FROM ({inner})"
            problem = problem.replace(f"row_number() OVER (PARTITION BY {_q('event_id')} ORDER BY {LINE})", "_eid_n")
        cols = ", ".join(f"{e} AS {_q(k)}" for k, e in self.select.items())
        extra = ", ".join(_q(k) for k in keep if k not in self.select)
        self.con.execute(f"CREATE TABLE _flagged AS SELECT {LINE}, {cols}{', ' + extra if extra else ''}, "
                         f"{problem} AS _problem, {getattr(self, 'rounded', 'false')} AS _rounded FROM ({inner})")
        found = self.con.execute("SELECT _problem, count(*), min(" + LINE + ") FROM _flagged WHERE _problem IS NOT "
                                 "NULL GROUP BY _problem ORDER BY _problem").fetchall()
        for code, n, first in found:
            k = self.checks[code]
            key = f"{self.source}: column {k.column!r}: {k.problem}"
            if policy == "error":
                shown = ""
                if k.column in self.types:
                    value = self.one(f"SELECT {_q(k.column)} FROM {self.name} WHERE {LINE} = {first}")[0]
                    shown = f" (value {value!r})"
                raise InputError(
                    f"{self.source}:{self.line_label} {first}: column {k.column!r}: {k.problem}{shown}; "
                    f"{n} row(s) affected. Fix: {k.fix}, or pass --on-bad-rows skip to skip and count such rows.")
            self.report.add(key, n, first)
        n_round, first_round = self.one("SELECT count(*), min(" + LINE + ") FROM _flagged WHERE _rounded AND "
                                        "(_problem IS NULL OR _problem >= " + str(self._first_after_times()) + ")")
        if n_round:
            self.report.notes.append(f"{self.source}: {n_round} timestamps had digits below a millisecond (first at "
                                     f"{self.line_label} {first_round}), rounded to the nearest millisecond")
        self.con.execute(f"DROP TABLE {self.name}")
        if found:  # skipped rows (policy "skip"); deleting marks them, the table is not copied
            self.con.execute("DELETE FROM _flagged WHERE _problem IS NOT NULL")
        self.con.execute("ALTER TABLE _flagged DROP COLUMN _problem")
        self.con.execute("ALTER TABLE _flagged DROP COLUMN _rounded")
        self.con.execute(f"ALTER TABLE _flagged RENAME TO {out}")
        if not self.one(f"SELECT count(*) FROM {out}")[0]:
            raise InputError(f"{self.source}: every row was skipped as defective; nothing left to prepare. "
                             "Fix the file.")

    def _first_after_times(self) -> int:
        """Code of the first check after the timestamp checks (event ids): rows flagged there still count as rounded."""
        codes = [i for i, k in enumerate(self.checks) if k.column == "event_id"]
        return codes[0] if codes else len(self.checks)


# --------------------------------------------------------------------------- the engine


@dataclass
class ScanSources:
    """What ``prepare --engine duckdb`` reads: behaviors as a scan, the small tables in memory."""

    behaviors: Scan
    items: RawTable | None = None
    item_tags: pl.DataFrame | None = None
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    name: str = "custom"


ENGINES = ("auto", "polars", "duckdb")
AUTO_BYTES = 1 << 30  # auto: inputs from this size on go out of core


def scan_sources(fmt: str | None, source: Path | None, behaviors: Path | None, items: Path | None) -> ScanSources:
    """The inputs of ``prepare`` as the duckdb engine reads them (adapters stream where they can)."""
    from userlens.data.adapters import SCANS, load_adapter
    from userlens.data.tables import read_table

    if fmt:
        if fmt in SCANS and source is not None:
            return SCANS[fmt](Path(source))
        s = load_adapter(fmt, source)  # type: ignore[arg-type]
        if s.impressions is not None:
            raise InputError(f"--format {fmt} has impressions, which the duckdb engine does not read. "
                             "Fix: pass --engine polars.")
        return ScanSources(s.behaviors, s.items, s.item_tags, s.files, s.notes, s.name)
    scan = scan_path(behaviors)  # type: ignore[arg-type]
    files = scan.paths if isinstance(scan, ParquetScan) else [scan.path]  # type: ignore[union-attr]
    item_table = read_table(items) if items is not None else None
    return ScanSources(scan, item_table, None, [*files, *([Path(items)] if items else [])],
                       name=Path(str(behaviors).rstrip("/*")).stem or "custom")


def choose_engine(engine: str, fmt: str | None, source: Path | None, behaviors: Path | None,
                  impressions: Path | None, context: tuple[str, ...]) -> str:
    """``auto``: duckdb for large behaviors-only inputs (or a directory / glob of Parquet files), else polars."""
    if engine not in ENGINES:
        raise InputError(f"--engine must be one of {list(ENGINES)}, got {engine!r}")
    if engine != "auto":
        if engine == "duckdb" and (impressions is not None or context):
            raise InputError("impressions and --context need the in-memory engine. Fix: pass --engine polars.")
        return engine
    if impressions is not None or context:
        return "polars"
    target = behaviors if behaviors is not None else source
    if target is None:
        return "polars"
    text = str(target)
    parquet_dir = Path(text).is_dir() and any(p.suffix.lower() in (".parquet", ".pq") for p in Path(text).rglob("*"))
    if any(ch in text for ch in "*?[") or (behaviors is not None and parquet_dir):
        return "duckdb"  # (another directory: the in-memory reader names the mistake)
    paths = [p for p in Path(text).rglob("*") if p.is_file()] if Path(text).is_dir() else [Path(text)]
    big = sum(p.stat().st_size for p in paths if p.exists()) >= AUTO_BYTES
    return "duckdb" if big and (fmt is None or fmt in _streamable()) else "polars"


def _streamable() -> set[str]:
    from userlens.data.adapters import SCANS

    return set(SCANS)


def default_memory_limit() -> str:
    """8 GiB or 60% of RAM, whichever is smaller."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return f"{min(8 << 30, int(0.6 * ram)) >> 20}MiB"


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
DUCKDB_SHARE = 0.7  # of --memory-limit: DuckDB's buffers; the rest is Python, Arrow batches and NumPy chunks
ROW_BYTES = 250  # what a chunk of the sample passes holds per behavior, all its arrays together (measured)


def parse_size(text: str) -> int:
    """``8GiB``, ``6000MB``, ``512 MiB`` → bytes.

    Raises:
        InputError: not a size.
    """
    import re

    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise InputError(f"--memory-limit {text!r}: not a size. Fix: give a size like 4GiB or 8000MiB.")
    size = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if size > ram:
        raise InputError(f"--memory-limit {text!r}: more than this machine's memory ({ram >> 20} MiB); it would "
                         "never spill. Fix: give at most that, e.g. the default (drop the option).")
    if size < 256 << 20:
        raise InputError(f"--memory-limit {text!r}: below 256 MiB, too little to sort and validate in. "
                         "Fix: give at least 256MiB.")
    return size


def prepare_out_of_core(src: ScanSources, out: str | Path, opt, log=print, force: bool = False,  # type: ignore[no-untyped-def]
                        memory_limit: str | None = None, threads: int | None = None) -> dict:
    """:func:`userlens.data.prepare.prepare` for logs larger than memory (see the module docstring)."""
    import duckdb

    from userlens.artifacts import check_output_path, staged_directory
    from userlens.data.prepare import Sources, log_report, finish_behaviors

    opt.check()
    if opt.context_columns:
        raise InputError("--context needs impressions, which the duckdb engine does not read. "
                         "Fix: pass --engine polars.")
    started = time.perf_counter()
    out = Path(out)
    check_output_path(out, "prepared directory", "meta.json", force)
    report = SkipReport(notes=list(src.notes))
    limit = parse_size(memory_limit or default_memory_limit())  # the whole process's cap
    chunk_rows = max(1 << 16, min(samples_module.CHUNK_ROWS, int(limit * (1 - DUCKDB_SHARE) // (3 * ROW_BYTES))))
    from concurrent.futures import ThreadPoolExecutor

    from userlens.artifacts import sha256_file

    hashing = ThreadPoolExecutor(max_workers=1)  # the inputs' SHA-256 for meta.json, alongside the work
    hashes = hashing.submit(lambda: {str(p): sha256_file(p) for p in src.files})
    with hashing, staged_directory(out, "prepared directory", "meta.json", force) as staged:
        spill = staged / ".spill"
        spill.mkdir()
        try:
            config = {"memory_limit": f"{int(limit * DUCKDB_SHARE) >> 20}MiB", "temp_directory": str(spill / "tmp"),
                      "preserve_insertion_order": False}
            if threads:
                config["threads"] = threads
            try:
                # in memory, spilling to temp_directory beyond memory_limit: 2.6x faster than a database file
                # (no checkpoints of tables that live for one run)
                con = duckdb.connect(":memory:", config=config)
            except duckdb.Error as exc:
                raise InputError(f"--memory-limit {memory_limit!r}: {str(exc).splitlines()[0]}. Fix: give a size like "
                                 "4GiB or 8000MiB.") from None
            try:
                con.execute("SET TimeZone = 'UTC'")
                enc = _encode(con, src, staged, opt, report, log)
            finally:
                con.close()
        finally:
            shutil.rmtree(spill, ignore_errors=True)
        sources = Sources(behaviors=None, items=src.items, item_tags=src.item_tags,  # type: ignore[arg-type]
                          files=src.files, notes=src.notes, name=src.name, file_hashes=hashes.result)
        meta = finish_behaviors(sources, enc, out, opt, report, log, force, started, "duckdb", staged,
                                chunk_rows=chunk_rows)
    log_report(report, log)
    return meta


class Stopwatch:
    """Logs how long each stage of a long prepare took (``stage: 12.3 s``), so a user sees where time goes."""

    def __init__(self, log) -> None:  # type: ignore[no-untyped-def]
        self.log, self.last = log, time.perf_counter()

    def __call__(self, what: str) -> None:
        now = time.perf_counter()
        self.log(f"{what}: {now - self.last:.1f} s")
        self.last = now


def _encode(con, src: ScanSources, staged: Path, opt, report: SkipReport, log=print):  # type: ignore[no-untyped-def]
    from userlens.data.prepare import Encoded
    from userlens.data.tables import OPTIONAL, REQUIRED, validate
    from userlens.errors import did_you_mean

    lap = Stopwatch(log)
    source, line_label = ingest(con, "beh_raw", src.behaviors)
    lap("read")
    t = _TableSQL(con, "beh_raw", source, line_label, report)
    if not t.one("SELECT count(*) FROM beh_raw")[0]:
        raise InputError(f"{source}: the file has a header but no rows. Fix: point to a file with data.")
    cols = [c for c in t.types if c != LINE]
    for need in REQUIRED["behaviors"]:
        if need not in cols:
            raise InputError(f"{source}: missing required column {need!r}{did_you_mean(need, cols)}; found {cols}. "
                             "Fix: rename the column or map it with the adapter's rename option.")
    extra = [c for c in OPTIONAL["behaviors"] if c in cols]
    for c in extra:
        d = t.types[c].upper()
        if d.endswith("]") or d.startswith(("STRUCT", "MAP", "BLOB", "INTERVAL", "UNION")):
            raise t.type_error(c, "a single value per row (text, number, boolean, date)",
                               "write one value per row (text or number)")
    t.prescan_ids(["user_id", "item_id"])
    t.ids("user_id")
    t.ids("item_id")
    t.timestamps(opt.timestamp_unit, DEFAULT_MIN_TIME, None)
    if "event_id" in extra:
        t.event_ids()
    t.run(opt.on_bad_rows, "beh", [c for c in extra if c != "event_id"])
    lap("validated")
    items = (validate(src.items, "items", policy=opt.on_bad_rows, report=report, timestamp_unit=opt.timestamp_unit)
             if src.items is not None else None)
    has_cat = "category" in extra or (items is not None and "category" in items.columns) or src.item_tags is not None
    id_type = dict(con.execute("SELECT column_name, data_type FROM information_schema.columns "
                               "WHERE table_name = 'beh'").fetchall())
    if items is not None:
        item_frame = items.select("item_id").to_arrow()  # noqa: F841 (read by DuckDB)
        con.execute("CREATE TABLE item_ids AS SELECT item_id FROM item_frame")
        if id_type["item_id"] != "BIGINT" or not items["item_id"].dtype.is_integer():  # any text makes all text
            con.execute("ALTER TABLE beh ALTER item_id TYPE VARCHAR")
            con.execute("ALTER TABLE item_ids ALTER item_id TYPE VARCHAR")
            items = items.with_columns(pl.col("item_id").cast(pl.Utf8))
    for c in ("user_id", "item_id"):
        _note_unicode_twins(con, c, ["beh"] + (["item_ids"] if c == "item_id" and items is not None else []), report)
    if items is not None:
        _warn_disjoint(con, "behaviors and items (item_id)", report)
    dropped = _drop_small_users(con, opt.min_user_behaviors, report)

    union = " UNION ALL SELECT item_id FROM item_ids" if items is not None else ""
    for name, sql in (("uv", "SELECT user_id AS raw FROM beh"), ("iv", f"SELECT item_id AS raw FROM beh{union}"),
                      ("bv", "SELECT CAST(behavior AS VARCHAR) AS raw FROM beh" if "behavior" in extra
                       else "SELECT CAST(NULL AS VARCHAR) AS raw")):
        con.execute(f"CREATE TABLE {name} AS SELECT raw, CAST(row_number() OVER (ORDER BY raw) + {FIRST_INDEX - 1} "
                    f"AS INTEGER) AS idx FROM (SELECT DISTINCT raw FROM ({sql}) WHERE raw IS NOT NULL)")
    vocab = {n: pl.from_arrow(con.sql(f"SELECT raw, idx AS index FROM {n} ORDER BY idx").to_arrow_table())
             for n in ("uv", "iv", "bv")}
    lap("vocabularies")
    offsets = _export_timeline(con, staged / "timeline", len(vocab["uv"]) + FIRST_INDEX, "behavior" in extra)
    lap("timeline sorted by (user, time)")
    carried = _event_categories(con, report) if "category" in extra else None
    tags = src.item_tags

    def categories(cutoff_ms: int | None) -> tuple[pl.DataFrame, CategoryReport, bool]:
        cats, rep = item_categories(items, [], tags, cutoff_ms, carried=carried)
        return cats, rep, bool(cats.height) or has_cat

    tl = Timeline(offsets, {k: NpyColumn(staged / "timeline" / f"{k}.npy") for k in ("item", "time", "behavior")})
    return Encoded(vocab["uv"], vocab["iv"], vocab["bv"], tl, categories, dropped)


def _export_timeline(con, into: Path, n_users: int, has_behavior: bool) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The (user, time, input order) sort streamed into ``timeline/*.npy``; returns the CSR offsets."""
    beh = "coalesce(v.idx, 1)" if has_behavior else "0"
    join = "LEFT JOIN bv v ON CAST(b.behavior AS VARCHAR) = v.raw" if has_behavior else ""
    reader = con.sql(
        f"SELECT u.idx AS u, i.idx AS i, b.timestamp AS t, CAST({beh} AS SMALLINT) AS b FROM beh b "
        f"JOIN uv u ON b.user_id = u.raw JOIN iv i ON b.item_id = i.raw {join} "
        f"ORDER BY u.idx, b.timestamp, b.{LINE}").to_arrow_reader(BATCH_ROWS)
    writers = {"item": NpyWriter(into / "item.npy", np.int32), "time": NpyWriter(into / "time.npy", np.int64),
               "behavior": NpyWriter(into / "behavior.npy", np.int16)}
    counts = np.zeros(n_users, dtype=np.int64)
    try:
        for batch in reader:
            u = batch.column("u").to_numpy()
            counts += np.bincount(u, minlength=n_users)
            writers["item"].append(batch.column("i").to_numpy())
            writers["time"].append(batch.column("t").to_numpy())
            writers["behavior"].append(batch.column("b").to_numpy())
    finally:
        for w in writers.values():
            w.close()
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(counts)
    np.save(into / "offsets.npy", offsets)
    return offsets


def _event_categories(con, report: SkipReport) -> tuple[pl.DataFrame, int]:  # type: ignore[no-untyped-def]
    """Per item, the category of its earliest event (time, then line), and how many items have several."""
    frame = pl.from_arrow(con.sql(
        "SELECT CAST(item_id AS VARCHAR) AS item_id, first(CAST(category AS VARCHAR) ORDER BY timestamp, "
        f"{LINE}) AS category, count(DISTINCT CAST(category AS VARCHAR)) AS n FROM beh WHERE category IS NOT NULL "
        "GROUP BY item_id ORDER BY item_id").to_arrow_table())
    return frame.select("item_id", "category"), int((frame["n"] > 1).sum())


def _note_unicode_twins(con, column: str, tables: list[str], report: SkipReport) -> None:  # type: ignore[no-untyped-def]
    """As :func:`userlens.data.tables.note_unicode_twins`: text ids equal after NFC normalisation, counted."""
    types = {con.execute(f"SELECT data_type FROM information_schema.columns WHERE table_name = '{t}' AND "
                         f"column_name = '{column}'").fetchone()[0] for t in tables}
    if types != {"VARCHAR"}:
        return
    ids = " UNION ".join(f"SELECT {column} AS id FROM {t}" for t in tables)
    n = con.execute(f"SELECT count(DISTINCT id) - count(DISTINCT nfc_normalize(id)) FROM ({ids})").fetchone()[0]
    if n:
        pair = [r[0] for r in con.execute(
            f"SELECT id FROM (SELECT id, nfc_normalize(id) AS nfc FROM ({ids}) WHERE id IS NOT NULL) "
            "QUALIFY count(*) OVER (PARTITION BY nfc) > 1 ORDER BY nfc, id LIMIT 2").fetchall()]
        report.notes.append(f"warning: {n} distinct {column}s equal another after Unicode NFC normalisation (e.g. "
                            f"{ascii(pair[0])} and {ascii(pair[1])}); kept apart. Fix: normalise the ids at the "
                            "source if they are the same")


def _warn_disjoint(con, what: str, report: SkipReport, below: float = 0.01) -> None:  # type: ignore[no-untyped-def]
    shared, a, b = con.execute(
        "SELECT (SELECT count(*) FROM (SELECT DISTINCT item_id FROM beh) JOIN (SELECT DISTINCT item_id FROM item_ids) "
        "USING (item_id)), (SELECT count(DISTINCT item_id) + max(CASE WHEN item_id IS NULL THEN 1 ELSE 0 END) "
        "FROM beh), (SELECT count(DISTINCT item_id) + max(CASE WHEN item_id IS NULL THEN 1 ELSE 0 END) "
        "FROM item_ids)").fetchone()
    smaller = min(a, b)
    if smaller >= 10 and shared < below * smaller:
        report.notes.append(f"warning: {what} share {shared} of {smaller} ids: are they the same id space "
                            "(types, prefixes, zero-padding)? Histories and samples will not connect")


def _drop_small_users(con, minimum: int, report: SkipReport) -> dict[str, int]:  # type: ignore[no-untyped-def]
    none = {"users": 0, "behaviors": 0, "impressions": 0}
    if minimum <= 1:
        return none
    users, rows = con.execute(f"SELECT count(*), coalesce(sum(n), 0) FROM (SELECT count(*) AS n FROM beh "
                              f"GROUP BY user_id HAVING count(*) < {minimum})").fetchone()
    if not users:
        return none
    con.execute(f"DELETE FROM beh WHERE user_id IN (SELECT user_id FROM beh GROUP BY user_id "
                f"HAVING count(*) < {minimum})")
    report.notes.append(f"dropped {users} users with < {minimum} behaviors, with their {int(rows)} behaviors and "
                        "0 impressions")
    return {"users": int(users), "behaviors": int(rows), "impressions": 0}


__all__ = ("ENGINES", "CsvScan", "ParquetScan", "ScanSources", "choose_engine", "default_memory_limit", "ingest",
           "prepare_out_of_core", "scan_path", "scan_sources")
