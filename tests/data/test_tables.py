"""Validation of the canonical input tables: every defect stops with a pinned message, or is skipped and counted."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pytest

from userlens.data.tables import LINE, SkipReport, read_table, unify_id_types, validate
from userlens.errors import InputError

T = 1_600_000_000  # 2020-09-13 in epoch seconds


def _csv(tmp_path: Path, text: str, name: str = "t.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _row_error(path: Path, where: str, column: str, problem: str, fix: str) -> str:
    """Regex for a row-level message: ``<file>:<where>: column '<column>': <problem> ... Fix: <fix>``."""
    return (
        re.escape(f"{path}:{where}: column {column!r}: {problem}")
        + r".*Fix: " + re.escape(fix) + r", or pass --on-bad-rows skip"
    )


def _validate(path: Path, kind: str = "behaviors", **kw) -> pl.DataFrame:
    return validate(read_table(path), kind, **kw)


def _ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=timezone.utc).timestamp() * 1000)


# --------------------------------------------------------------------------- file-level defects


def test_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=re.escape(f"{tmp_path / 'nope.csv'}: file not found. Fix: check the path")):
        read_table(tmp_path / "nope.csv")


def test_empty_file_of_zero_bytes_is_rejected(tmp_path: Path) -> None:
    p = _csv(tmp_path, "")
    with pytest.raises(InputError, match=re.escape(f"{p}: the file is empty (0 bytes). Fix: point to a file")):
        read_table(p)


def test_header_only_csv_is_rejected(tmp_path: Path) -> None:
    p = _csv(tmp_path, "user_id,item_id,timestamp\n")
    with pytest.raises(InputError, match=re.escape(f"{p}: the file has a header but no rows. Fix: point to a file")):
        _validate(p)


def test_header_only_parquet_is_rejected(tmp_path: Path) -> None:
    p = tmp_path / "b.parquet"
    pl.DataFrame(schema={"user_id": pl.Int64, "item_id": pl.Int64, "timestamp": pl.Int64}).write_parquet(p)
    with pytest.raises(InputError, match=re.escape(f"{p}: the file has a header but no rows")):
        _validate(p)


def test_unknown_extension_lists_the_known_ones(tmp_path: Path) -> None:
    p = _csv(tmp_path, "user_id,item_id,timestamp\nu,i,1\n", name="b.json")
    with pytest.raises(InputError, match=re.escape(f"{p}: unknown file type '.json'. Fix: use .csv, .tsv or .parquet")):
        read_table(p)


def test_missing_column_names_the_file_the_column_and_what_was_found(tmp_path: Path) -> None:
    p = _csv(tmp_path, "user_id,item_id\nu,i\n")
    msg = (re.escape(f"{p}: missing required column 'timestamp'") + r"[^(]*; found \['user_id', 'item_id'\]\. "
           + re.escape("Fix: rename the column"))
    with pytest.raises(InputError, match=msg):
        _validate(p)


@pytest.mark.parametrize(
    ("header", "missing", "hint"),
    [("user,item_id,timestamp", "user_id", "user"),
     ("user_id,itemid,timestamp", "item_id", "itemid"),
     ("user_id,item_id,timestmap", "timestamp", "timestmap")],
)
def test_misspelt_column_gets_a_did_you_mean_hint(tmp_path: Path, header: str, missing: str, hint: str) -> None:
    p = _csv(tmp_path, f"{header}\nu,i,{T}\n")
    msg = re.escape(f"{p}: missing required column {missing!r} (did you mean {hint!r}?); found ") + r".*Fix: rename"
    with pytest.raises(InputError, match=msg):
        _validate(p)


def test_missing_label_in_impressions(tmp_path: Path) -> None:
    p = _csv(tmp_path, f"user_id,item_id,timestamp,lable\nu,i,{T},1\n")
    with pytest.raises(InputError, match=re.escape("missing required column 'label' (did you mean 'lable'?)")):
        _validate(p, "impressions")


def test_rename_maps_a_column_before_the_check(tmp_path: Path) -> None:
    p = _csv(tmp_path, f"uid,item_id,ts\nu,i,{T}\n")
    out = validate(read_table(p, rename={"uid": "user_id", "ts": "timestamp"}), "behaviors")
    assert out["timestamp"].to_list() == [T * 1000]


# --------------------------------------------------------------------------- row-level defects, policy "error"


def test_unparsable_timestamp(tmp_path: Path) -> None:
    p = _csv(tmp_path, f"user_id,item_id,timestamp\nu,i,{T}\nu,i,yesterday\n")
    msg = _row_error(p, "line 3", "timestamp", "cannot parse the timestamp (value 'yesterday'); 1 row(s) affected",
                     "use epoch seconds or milliseconds (integer or decimal), or ISO-8601 text like 2017-11-25T10:00:00")
    with pytest.raises(InputError, match=msg):
        _validate(p)


@pytest.mark.parametrize(
    "value",
    ["1900-01-01T00:00:00",  # a default date
     "2100-01-01T00:00:00",  # far future
     str(-2_208_988_800),  # 1900 in epoch seconds
     str(4_102_444_800)],  # 2100 in epoch seconds
)
def test_absurd_timestamp(tmp_path: Path, value: str) -> None:
    p = _csv(tmp_path, f"user_id,item_id,timestamp\nu,i,{T}\nu,i,{T + 1}\nu,i,{value}\n")
    problem = f"absurd timestamp (before 1990-01-01 or in the future) (value {value!r})"
    msg = _row_error(p, "line 4", "timestamp", problem, "check the unit (--timestamp-unit s|ms) and the source clock")
    with pytest.raises(InputError, match=msg):
        _validate(p)


def test_min_and_max_time_are_honoured(tmp_path: Path) -> None:
    p = _csv(tmp_path, f"user_id,item_id,timestamp\nu,i,{T}\n")
    with pytest.raises(InputError, match="absurd timestamp"):
        _validate(p, max_time=datetime(2019, 1, 1, tzinfo=timezone.utc))
    with pytest.raises(InputError, match=re.escape("absurd timestamp (before 2021-01-01")):
        _validate(p, min_time=datetime(2021, 1, 1, tzinfo=timezone.utc))


@pytest.mark.parametrize("column", ["user_id", "item_id"])
@pytest.mark.parametrize("blank", ["", "   "])
def test_blank_id(tmp_path: Path, column: str, blank: str) -> None:
    row = {"user_id": "u", "item_id": "i", "timestamp": str(T)}
    row[column] = blank
    p = _csv(tmp_path, f"user_id,item_id,timestamp\nu,i,{T}\n{','.join(row.values())}\n")
    msg = _row_error(p, "line 3", column, "empty id (null, blank or NaN; a truncated line?)", f"give every row a {column}")
    with pytest.raises(InputError, match=msg):
        _validate(p)


def test_null_id_in_parquet_names_the_row(tmp_path: Path) -> None:
    p = tmp_path / "b.parquet"
    pl.DataFrame({"user_id": [1, 2, 3], "item_id": [5, None, 6], "timestamp": [T, T, T]}).write_parquet(p)
    msg = _row_error(p, "row 2", "item_id", "empty id (null, blank or NaN; a truncated line?)", "give every row a item_id")
    with pytest.raises(InputError, match=msg):
        _validate(p)


@pytest.mark.parametrize("label", ["2", "-1", "0.5", "yes"])
def test_label_outside_0_1(tmp_path: Path, label: str) -> None:
    p = _csv(tmp_path, f"user_id,item_id,timestamp,label\nu,i,{T},1\nu,i,{T},0\nu,i,{T},{label}\n")
    msg = _row_error(p, "line 4", "label", f"label is not 0 or 1 (value {label!r})", "encode labels as 0/1")
    with pytest.raises(InputError, match=msg):
        _validate(p, "impressions")


def test_labels_written_as_floats_are_accepted(tmp_path: Path) -> None:
    p = _csv(tmp_path, f"user_id,item_id,timestamp,label\nu,i,{T},1.0\nu,i,{T},0\n")
    out = _validate(p, "impressions")
    assert out["label"].dtype == pl.Int8
    assert out["label"].to_list() == [1, 0]


def test_boolean_labels_are_accepted_from_parquet_and_text(tmp_path: Path) -> None:
    pq = tmp_path / "imp.parquet"
    pl.DataFrame({"user_id": ["u", "u"], "item_id": ["i", "j"], "timestamp": [T, T],
                  "label": [True, False]}).write_parquet(pq)
    assert _validate(pq, "impressions")["label"].to_list() == [1, 0]
    p = _csv(tmp_path, f"user_id,item_id,timestamp,label\nu,i,{T},True\nu,i,{T},false\n")
    assert _validate(p, "impressions")["label"].to_list() == [1, 0]


def test_null_boolean_label_is_a_defect(tmp_path: Path) -> None:
    pq = tmp_path / "imp.parquet"
    pl.DataFrame({"user_id": ["u", "u"], "item_id": ["i", "j"], "timestamp": [T, T],
                  "label": [True, None]}, schema_overrides={"label": pl.Boolean}).write_parquet(pq)
    with pytest.raises(InputError, match=re.escape(f"{pq}:row 2: column 'label': label is not 0 or 1")):
        _validate(pq, "impressions")


def test_invalid_split_value(tmp_path: Path) -> None:
    p = _csv(tmp_path, f"user_id,item_id,timestamp,label,split\nu,i,{T},1,Train\nu,i,{T},1,validation\n")
    msg = _row_error(p, "line 3", "split", "split is not one of ('train', 'valid', 'test') (value 'validation')",
                     "use train/valid/test or drop the column to split by time")
    with pytest.raises(InputError, match=msg):
        _validate(p, "impressions")


def test_split_values_are_normalised(tmp_path: Path) -> None:
    p = _csv(tmp_path, f"user_id,item_id,timestamp,label,split\nu,i,{T},1, Train\nu,i,{T},1,TEST\n")
    assert _validate(p, "impressions")["split"].to_list() == ["train", "test"]


def test_duplicate_event_id_names_the_second_occurrence(tmp_path: Path) -> None:
    p = _csv(tmp_path, f"user_id,item_id,timestamp,event_id\nu,i,{T},e1\nu,i,{T},e2\nu,i,{T},e1\n")
    msg = _row_error(p, "line 4", "event_id", "duplicate event_id (value 'e1'); 1 row(s) affected",
                     "make event ids unique (re-ingested rows?)")
    with pytest.raises(InputError, match=msg):
        _validate(p)


def test_duplicate_item_in_item_table(tmp_path: Path) -> None:
    p = _csv(tmp_path, "item_id,category\ni1,a\ni2,b\ni1,c\n")
    with pytest.raises(InputError, match=_row_error(p, "line 4", "item_id", "duplicate item_id in the item table",
                                                    "keep one row per item")):
        _validate(p, "items")


def test_truncated_last_line_is_reported_with_its_line_number(tmp_path: Path) -> None:
    # The writer died mid-line: the last line has no timestamp field at all (and no newline).
    p = _csv(tmp_path, f"user_id,item_id,timestamp\nu1,i1,{T}\nu2,i2,{T + 1}\nu3,i3")
    msg = _row_error(p, "line 4", "timestamp", "empty timestamp (a truncated line?)", "give every row a timestamp")
    with pytest.raises(InputError, match=msg):
        _validate(p)


def test_a_line_with_too_many_fields_is_an_input_error_naming_the_line(tmp_path: Path) -> None:
    p = _csv(tmp_path, f'user_id,item_id,timestamp\nu,"i,1",{T}\nu,i,{T}\nu,i,{T},extra\n')
    msg = re.escape(f"{p}:line 4: cannot read the file as CSV (") + r".*Fix: make every line have the header's fields"
    with pytest.raises(InputError, match=msg):
        read_table(p)


def test_line_numbers_count_blank_lines(tmp_path: Path) -> None:
    p = _csv(tmp_path, f"user_id,item_id,timestamp\nu1,i1,{T}\n\nu2,i2,{T}\nu3,i3,never\n")
    with pytest.raises(InputError, match=re.escape(f"{p}:line 3: column 'user_id': empty id")):
        _validate(p)
    report = SkipReport()
    assert _validate(p, policy="skip", report=report)[LINE].to_list() == [2, 4]
    assert report.first_line[f"{p}: column 'timestamp': cannot parse the timestamp"] == 5


def test_error_counts_every_affected_row(tmp_path: Path) -> None:
    p = _csv(tmp_path, f"user_id,item_id,timestamp\nu,i,x\nu,i,{T}\nu,i,y\nu,i,z\n")
    with pytest.raises(InputError, match=re.escape(":line 2: column 'timestamp': cannot parse the timestamp "
                                                   "(value 'x'); 3 row(s) affected")):
        _validate(p)


# --------------------------------------------------------------------------- policy "skip"


def test_skip_removes_exactly_the_bad_rows_and_counts_each_problem(tmp_path: Path) -> None:
    p = _csv(tmp_path, "\n".join([
        "user_id,item_id,timestamp,event_id",
        f"u1,i1,{T},e1",  # 2 ok
        f" ,i2,{T},e2",  # 3 blank user
        f"u1,,{T},e3",  # 4 empty item
        "u1,i3,soon,e4",  # 5 unparsable
        f"u1,i4,{T + 1},e5",  # 6 ok
        "u1,i5,-2208988800,e6",  # 7 absurd
        f"u1,i6,{T + 2},e1",  # 8 duplicate event id
        "u1,i7,1999999999999999,e8",  # 9 absurd (seconds file: 1000x further)
        f"u2,i8,{T + 3},e9",  # 10 ok
        f"u2,i9,{T + 4},e10",  # 11 ok
        "u3,i10",  # 12 truncated
    ]))
    report = SkipReport()
    out = _validate(p, policy="skip", report=report)
    assert out[LINE].to_list() == [2, 6, 10, 11]
    assert out["item_id"].to_list() == ["i1", "i4", "i8", "i9"]
    key = f"{p}: column "
    assert report.counts == {
        key + "'user_id': empty id (null, blank or NaN; a truncated line?)": 1,
        key + "'item_id': empty id (null, blank or NaN; a truncated line?)": 1,
        key + "'timestamp': empty timestamp (a truncated line?)": 1,
        key + "'timestamp': cannot parse the timestamp": 1,
        key + "'timestamp': absurd timestamp (before 1990-01-01 or in the future)": 2,
        key + "'event_id': duplicate event_id": 1,
    }
    assert report.first_line[key + "'timestamp': absurd timestamp (before 1990-01-01 or in the future)"] == 7
    assert report.first_line[key + "'timestamp': empty timestamp (a truncated line?)"] == 12
    assert report.total == 7
    js = report.to_json()
    assert js["skipped_rows"] == 7
    assert {d["problem"]: (d["rows"], d["first_line"]) for d in js["by_problem"]}[
        key + "'event_id': duplicate event_id"] == (1, 8)


def test_skip_on_impressions_counts_labels_and_splits(tmp_path: Path) -> None:
    p = _csv(tmp_path, "\n".join([
        "user_id,item_id,timestamp,label,split",
        f"u,a,{T},1,train", f"u,b,{T},2,train", f"u,c,{T},1,dev", f"u,d,{T},0,test", f"u,e,{T},,valid",
    ]) + "\n")
    report = SkipReport()
    out = _validate(p, "impressions", policy="skip", report=report)
    assert out["item_id"].to_list() == ["a", "d"]
    assert out["label"].to_list() == [1, 0]
    assert out["split"].to_list() == ["train", "test"]
    assert report.counts == {f"{p}: column 'label': label is not 0 or 1": 2,
                             f"{p}: column 'split': split is not one of ('train', 'valid', 'test')": 1}


def test_a_row_with_two_defects_is_counted_once(tmp_path: Path) -> None:
    p = _csv(tmp_path, f"user_id,item_id,timestamp\nu,i,{T}\n,i,garbage\n")
    report = SkipReport()
    out = _validate(p, policy="skip", report=report)
    assert out.height == 1
    assert report.total == 1


def test_skip_of_every_row_stops(tmp_path: Path) -> None:
    p = _csv(tmp_path, "user_id,item_id,timestamp\nu,i,x\n")
    with pytest.raises(InputError, match=re.escape(f"{p}: every row was skipped as defective")):
        _validate(p, policy="skip")


def test_file_level_defects_stop_even_under_skip(tmp_path: Path) -> None:
    p = _csv(tmp_path, "user,item_id,timestamp\nu,i,1\n")
    with pytest.raises(InputError, match="missing required column 'user_id'"):
        _validate(p, policy="skip")


# --------------------------------------------------------------------------- timestamps


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2017-11-25T10:00:00", _ms(2017, 11, 25, 10)),
     ("2017-11-25 10:00:00", _ms(2017, 11, 25, 10)),
     ("2017-11-25T10:00:00Z", _ms(2017, 11, 25, 10)),
     ("2017-11-25T10:00:00+02:00", _ms(2017, 11, 25, 8)),
     ("2017-11-25T10:00:00.250", _ms(2017, 11, 25, 10) + 250)],
)
def test_iso_text_parses_to_utc_epoch_ms(tmp_path: Path, text: str, expected: int) -> None:
    p = _csv(tmp_path, f"user_id,item_id,timestamp\nu,i,{text}\n")
    assert _validate(p)["timestamp"].to_list() == [expected]


def test_one_file_may_mix_iso_styles(tmp_path: Path) -> None:
    texts = ["2017-11-25T10:00:00", "2017-11-25 10:00:00.250", "2017-11-25T12:00:00+02:00", "2017-11-25T10:00Z",
             "2017-11-25"]
    p = _csv(tmp_path, "user_id,item_id,timestamp\n" + "".join(f"u,i,{t}\n" for t in texts))
    h10 = _ms(2017, 11, 25, 10)
    assert _validate(p)["timestamp"].to_list() == [h10, h10 + 250, h10, h10, _ms(2017, 11, 25)]


def test_epoch_seconds_and_milliseconds_are_detected_per_file(tmp_path: Path) -> None:
    secs = [T, T + 60, T + 3600]
    s = _csv(tmp_path, "user_id,item_id,timestamp\n" + "".join(f"u,i,{t}\n" for t in secs), "s.csv")
    ms = _csv(tmp_path, "user_id,item_id,timestamp\n" + "".join(f"u,i,{t * 1000 + 7}\n" for t in secs), "ms.csv")
    assert _validate(s)["timestamp"].to_list() == [t * 1000 for t in secs]
    assert _validate(ms)["timestamp"].to_list() == [t * 1000 + 7 for t in secs]


def test_the_unit_is_decided_per_file_never_per_row(tmp_path: Path) -> None:
    # A milliseconds value among seconds is scaled like its neighbours, so it lands in the far future.
    p = _csv(tmp_path, f"user_id,item_id,timestamp\nu,i,{T}\nu,i,{T + 1}\nu,i,{T * 1000}\n")
    with pytest.raises(InputError, match=re.escape(":line 4: column 'timestamp': absurd timestamp")):
        _validate(p)


def test_explicit_timestamp_unit_overrides_detection(tmp_path: Path) -> None:
    p = _csv(tmp_path, f"user_id,item_id,timestamp\nu,i,{T * 1000}\n")
    assert _validate(p, timestamp_unit="ms")["timestamp"].to_list() == [T * 1000]
    with pytest.raises(InputError, match="absurd timestamp"):
        _validate(p, timestamp_unit="s")


def test_parquet_timestamps_integer_and_datetime(tmp_path: Path) -> None:
    ints = tmp_path / "ints.parquet"
    pl.DataFrame({"user_id": [1], "item_id": [2], "timestamp": [T]}).write_parquet(ints)
    dts = tmp_path / "dts.parquet"
    pl.DataFrame({"user_id": [1], "item_id": [2],
                  "timestamp": [datetime(2017, 11, 25, 10, 0, 0, 250_000)]}).write_parquet(dts)
    assert _validate(ints)["timestamp"].to_list() == [T * 1000]
    assert _validate(dts)["timestamp"].to_list() == [_ms(2017, 11, 25, 10) + 250]


# --------------------------------------------------------------------------- fractional and huge timestamps


def test_fractional_epoch_seconds_keep_milliseconds_and_order(tmp_path: Path) -> None:
    """1700000100.1 ... .8 s are eight instants 100 ms apart, as text and as Parquet floats (not one second)."""
    secs = [f"1700000100.{k}" for k in range(1, 9)]
    text = _csv(tmp_path, "user_id,item_id,timestamp\n" + "".join(f"u,i{k},{v}\n" for k, v in enumerate(secs)))
    floats = tmp_path / "f.parquet"
    pl.DataFrame({"user_id": ["u"] * 8, "item_id": [f"i{k}" for k in range(8)],
                  "timestamp": [float(v) for v in secs]}).write_parquet(floats)
    want = [1_700_000_100_000 + 100 * k for k in range(1, 9)]
    for p in (text, floats):
        report = SkipReport()
        assert validate(read_table(p), "behaviors", report=report)["timestamp"].to_list() == want
        assert report.notes == [] and report.time_units[str(p)] == "s"  # nothing below a millisecond: no note


def test_digits_below_a_millisecond_are_rounded_and_counted(tmp_path: Path) -> None:
    from datetime import datetime as dt
    from decimal import Decimal

    p = _csv(tmp_path, "user_id,item_id,timestamp\nu,a,1700000100.25\nu,b,1700000100.0004\nu,c,1700000100.9996\n"
                       "u,d,2023-11-14T22:15:00.1235Z\n")
    report = SkipReport()
    out = validate(read_table(p), "behaviors", report=report)["timestamp"].to_list()
    assert out == [1_700_000_100_250, 1_700_000_100_000, 1_700_000_101_000, 1_700_000_100_124]
    assert report.notes == [f"{p}: 3 timestamps had digits below a millisecond (first at line 3), rounded to the "
                            "nearest millisecond"]
    ms = _csv(tmp_path, "user_id,item_id,timestamp\nu,a,1700000100123.5\nu,b,1700000100124\n", "ms.csv")
    assert _validate(ms)["timestamp"].to_list() == [1_700_000_100_124] * 2  # milliseconds with a fraction
    dec = tmp_path / "dec.parquet"
    pl.DataFrame({"user_id": [1, 1], "item_id": [1, 2],
                  "timestamp": pl.Series([Decimal("1700000100.125"), Decimal("1700000100.1256")],
                                         dtype=pl.Decimal(20, 4))}).write_parquet(dec)
    assert _validate(dec)["timestamp"].to_list() == [1_700_000_100_125, 1_700_000_100_126]
    micro = tmp_path / "dt.parquet"
    pl.DataFrame({"user_id": [1], "item_id": [1],
                  "timestamp": [dt(2017, 11, 25, 10, 0, 0, 250_600)]}).write_parquet(micro)
    report = SkipReport()
    assert validate(read_table(micro), "behaviors", report=report)["timestamp"].to_list() == [
        _ms(2017, 11, 25, 10) + 251]
    assert "1 timestamps had digits below a millisecond" in report.notes[0]


@pytest.mark.parametrize("value", [2**61, 2.0**61, "2305843009213693952", "9" * 25, "1e300", float("inf"),
                                   2**63 + 1])
def test_a_timestamp_whose_milliseconds_overflow_is_refused_not_wrapped(tmp_path: Path, value: object) -> None:
    """2^61 s times 1000 wraps int64 into 2023; it must be named, never read as a plausible date."""
    dtype = pl.UInt64 if value == 2**63 + 1 else None
    col = pl.Series([T, T + 1, T + 2, value], dtype=dtype, strict=False) if not isinstance(value, str) else \
        pl.Series([str(T), str(T + 1), str(T + 2), value])
    p = tmp_path / "w.parquet"
    pl.DataFrame({"user_id": [1] * 4, "item_id": [1, 2, 3, 4], "timestamp": col}).write_parquet(p)
    with pytest.raises(InputError, match=re.escape(f"{p}:row 4: column 'timestamp': absurd timestamp (too large")):
        validate(read_table(p), "behaviors")
    report = SkipReport()
    assert validate(read_table(p), "behaviors", policy="skip", report=report)["timestamp"].to_list() == [
        (T + k) * 1000 for k in range(3)]


# --------------------------------------------------------------------------- column types


@pytest.mark.parametrize(("column", "values", "kind"), [
    ("user_id", pl.Series([[1], [2]]), "List"),
    ("item_id", pl.Series([{"u": 0}, {"u": 1}]), "Struct"),
    ("item_id", pl.Series([b"a", b"b"]), "Binary"),
    ("timestamp", pl.Series([[T], [T]]), "List"),
    ("category", pl.Series([["a"], ["b"]]), "List"),
    ("behavior", pl.Series([{"x": 1}, {"x": 2}]), "Struct"),
])
def test_column_types_are_checked_before_any_cast(tmp_path: Path, column: str, values: pl.Series, kind: str) -> None:
    frame = pl.DataFrame({"user_id": [1, 2], "item_id": [1, 2], "timestamp": [T, T], "category": ["a", "b"],
                          "behavior": ["x", "y"]}).with_columns(values.alias(column))
    p = tmp_path / "b.parquet"
    frame.write_parquet(p)
    with pytest.raises(InputError, match=re.escape(f"{p}: column {column!r} has type {kind}")):
        _validate(p)


def test_categorical_ids_are_read_as_text(tmp_path: Path) -> None:
    p = tmp_path / "b.parquet"
    pl.DataFrame({"user_id": pl.Series(["7", " u1 "], dtype=pl.Categorical), "item_id": [1, 2],
                  "timestamp": [T, T]}).write_parquet(p)
    assert _validate(p)["user_id"].to_list() == ["7", "u1"]


def test_uint64_ids_beyond_int64_are_kept_exactly_as_text_and_match(tmp_path: Path) -> None:
    big = [2**63 + 5, 2**64 - 1]
    p = tmp_path / "b.parquet"
    pl.DataFrame({"user_id": pl.Series(big, dtype=pl.UInt64), "item_id": [1, 2], "timestamp": [T, T]}).write_parquet(p)
    report = SkipReport()
    out = validate(read_table(p), "behaviors", report=report)
    assert out["user_id"].to_list() == [str(v) for v in big]
    assert "unsigned 64-bit ids beyond int64" in report.notes[0]
    small = pl.DataFrame({"user_id": pl.Series([2**64 - 1], dtype=pl.UInt64)})
    a, b = unify_id_types(out, small.with_columns(pl.col("user_id").cast(pl.Utf8)), column="user_id")
    assert b["user_id"][0] in a["user_id"].to_list()


def test_float_ids_beyond_two_to_the_53_are_refused(tmp_path: Path) -> None:
    """1e20 as a float id used to become null for every row (one user, every label 1)."""
    p = tmp_path / "b.parquet"
    pl.DataFrame({"user_id": [1.0, 1e20, 2.0**53], "item_id": [1, 2, 3], "timestamp": [T] * 3}).write_parquet(p)
    with pytest.raises(InputError, match=re.escape(f"{p}:row 2: column 'user_id': a float id too large to be exact")):
        _validate(p)
    report = SkipReport()
    out = validate(read_table(p), "behaviors", policy="skip", report=report)
    assert out["user_id"].to_list() == [1] and report.total == 2


# --------------------------------------------------------------------------- ids


def test_canonical_integer_ids_become_integers(tmp_path: Path) -> None:
    p = _csv(tmp_path, f"user_id,item_id,timestamp\n7,12,{T}\n 8 ,13,{T}\n")
    out = _validate(p)
    assert out["user_id"].dtype == pl.Int64 and out["item_id"].dtype == pl.Int64
    assert out["user_id"].to_list() == [7, 8]


def test_zero_padded_ids_stay_text_and_distinct(tmp_path: Path) -> None:
    p = _csv(tmp_path, f"user_id,item_id,timestamp\n007,7,{T}\n7,07,{T}\n")
    out = _validate(p)
    assert out["user_id"].dtype == pl.Utf8 and out["item_id"].dtype == pl.Utf8
    assert out["user_id"].to_list() == ["007", "7"]
    assert out["item_id"].to_list() == ["7", "07"]


def test_skipped_blank_id_does_not_turn_integer_ids_into_text(tmp_path: Path) -> None:
    p = _csv(tmp_path, f"user_id,item_id,timestamp\n7,1,{T}\n ,2,{T}\n8,3,{T}\n")
    out = _validate(p, policy="skip")
    assert out["user_id"].dtype == pl.Int64
    assert out["user_id"].to_list() == [7, 8]


def test_unify_id_types_makes_integer_and_text_ids_comparable() -> None:
    ints = pl.DataFrame({"item_id": [7, 8]})
    text = pl.DataFrame({"item_id": ["7", "x"]})
    a, b, none = unify_id_types(ints, text, None, column="item_id")
    assert none is None
    assert a["item_id"].to_list() == ["7", "8"] and b["item_id"].dtype == pl.Utf8
    a2, b2 = unify_id_types(ints, pl.DataFrame({"item_id": [9]}), column="item_id")
    assert a2["item_id"].dtype == pl.Int64 and b2["item_id"].dtype == pl.Int64


def test_context_columns_are_kept_as_text_and_required(tmp_path: Path) -> None:
    p = _csv(tmp_path, f"user_id,item_id,timestamp,label,device\nu,i,{T},1,ios\nu,i,{T},0,\n")
    out = _validate(p, "impressions", context_columns=("device",))
    assert out["device"].to_list() == ["ios", ""]
    with pytest.raises(InputError, match=re.escape("missing required column 'page'; found")):
        _validate(p, "impressions", context_columns=("page",))


# --------------------------------------------------------------------------- ids are never reinterpreted silently


def test_float_ids_match_integer_ids_and_nan_is_a_null_id(tmp_path: Path) -> None:
    p = tmp_path / "b.parquet"
    pl.DataFrame({"user_id": [1.0, 2.0, float("nan"), 3.5], "item_id": [1, 2, 3, 4],
                  "timestamp": [T] * 4}).write_parquet(p)
    with pytest.raises(InputError, match=r"b\.parquet:row 3: column 'user_id': empty id \(null, blank or NaN"):
        validate(read_table(p), "behaviors")
    report = SkipReport()
    out = validate(read_table(p), "behaviors", policy="skip", report=report)
    assert out["user_id"].dtype == pl.Int64 and out["user_id"].to_list() == [1, 2]
    assert report.counts == {f"{p}: column 'user_id': empty id (null, blank or NaN; a truncated line?)": 1,
                             f"{p}: column 'user_id': a numeric id that is not an integer": 1}
    assert any("2 float user_ids (like 1.0) read as integers" in n for n in report.notes)


def test_whitespace_in_ids_is_removed_counted_and_merges_reported(tmp_path: Path) -> None:
    p = _csv(tmp_path, f"user_id,item_id,timestamp\nu1,a,{T}\nu1,a\u00a0,{T}\nu1, b ,{T}\n")
    report = SkipReport()
    out = validate(read_table(p), "behaviors", report=report)
    assert out["item_id"].to_list() == ["a", "a", "b"]
    assert any("2 item_ids had leading/trailing whitespace" in n and "1 distinct raw ids became equal" in n
               for n in report.notes)


def test_text_nan_id_is_a_null_id(tmp_path: Path) -> None:
    p = _csv(tmp_path, f"user_id,item_id,timestamp\nu1,NaN,{T}\n")
    with pytest.raises(InputError, match=r"line 2: column 'item_id': empty id"):
        validate(read_table(p), "behaviors")


# --------------------------------------------------------------------------- unreadable files, named


def test_duplicate_header_column_is_refused(tmp_path: Path) -> None:
    p = _csv(tmp_path, "user_id,item_id,user_id\n1,2,3\n")
    with pytest.raises(InputError, match=r"t\.csv:line 1: duplicate column 'user_id' in the header \(columns \[1, 3\]\)"):
        read_table(p)


def test_latin1_csv_names_the_line_and_the_fix(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_bytes(f"user_id,item_id,timestamp\nu,ok,{T}\nu,caf\xe9,{T}\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"t\.csv:line 3: not UTF-8 text \(byte 0xe9.*iconv -f latin1"):
        read_table(p)


def test_garbage_parquet_and_directories_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "b.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputError, match=r"b\.parquet: cannot read as Parquet .*Fix: export the table again"):
        read_table(bad)
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(InputError, match=r"d\.csv: is a directory, not a file"):
        read_table(tmp_path / "d.csv")


def test_line_numbers_are_physical_after_a_quoted_newline(tmp_path: Path) -> None:
    p = _csv(tmp_path, f'user_id,item_id,timestamp\nu1,"two\nlines",{T}\nu2,x,{T}\nu3,y,oops\n')
    with pytest.raises(InputError, match=r"t\.csv:line 5: column 'timestamp': cannot parse"):
        validate(read_table(p), "behaviors")


def test_unclosed_quote_names_the_line_it_opens(tmp_path: Path) -> None:
    p = _csv(tmp_path, f'user_id,item_id,timestamp\nu1,a,{T}\nu2,"open,{T}\nu3,b,{T}\n')
    with pytest.raises(InputError, match=r"t\.csv:line 3: a quote \(\"\) opens a value that is never closed"):
        read_table(p)
