"""Item attributes without leakage: one category per item, from static metadata or from the past only.

Three sources, in priority order (the first that has a value for an item wins):

1. **the items table** (``category``): static metadata, known at any time;
2. **item tags** (:attr:`Sources.item_tags`): attributes that users *produce* by
   their events (Last.fm tags). The item's category is its most frequent tag over
   tag rows strictly before the **attribute cutoff** (the earliest valid/test
   sample), ties to the smallest tag. An item tagged only later gets none: its
   category would otherwise come from held-out events, even from the label
   event itself;
3. **a ``category`` column on behaviors / impressions**: item metadata carried
   by each event (Taobao's ``category_id``). When rows disagree, the earliest
   event wins (time, then input line), never a later one.

:func:`attribute_cutoff` is the one definition of "before the validation period"
used by every rule that derives anything from events.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from userlens.data.tables import LINE


def attribute_cutoff(sample_time: np.ndarray, split: np.ndarray) -> int | None:
    """Epoch ms of the earliest valid/test sample (``split`` 1 or 2); None when every sample is train.

    Event-derived attributes use rows strictly before it, so deleting every
    valid/test event (and anything later) leaves them unchanged.
    """
    held = np.asarray(split) != 0
    return int(np.asarray(sample_time)[held].min()) if held.any() else None


@dataclass
class CategoryReport:
    """How each item got its category; recorded in meta.json."""

    cutoff_ms: int | None
    from_items_table: int = 0
    from_tags: int = 0
    from_events: int = 0
    conflicts: int = 0  # items whose events / tables disagree on the category
    tag_rows_used: int = 0
    tag_rows_held_out: int = 0  # at or after the cutoff
    tag_rows_undated: int = 0
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"cutoff_ms": self.cutoff_ms, "from_items_table": self.from_items_table, "from_tags": self.from_tags,
                "from_events": self.from_events, "conflicts": self.conflicts,
                "tag_rows_used": self.tag_rows_used, "tag_rows_held_out": self.tag_rows_held_out,
                "tag_rows_undated": self.tag_rows_undated,
                "rule": "items table > most frequent tag before cutoff_ms > earliest event's category"}


def _as_text(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(pl.col("item_id").cast(pl.Utf8), pl.col("category").cast(pl.Utf8))


def _tag_mode(tags: pl.DataFrame, cutoff_ms: int | None, rep: CategoryReport) -> pl.DataFrame:
    """Most frequent tag per item over rows before the cutoff; ties → the smallest tag (numeric when all are)."""
    dated = tags.filter(pl.col("timestamp_ms").is_not_null())
    rep.tag_rows_undated = tags.height - dated.height
    past = dated if cutoff_ms is None else dated.filter(pl.col("timestamp_ms") < cutoff_ms)
    rep.tag_rows_used, rep.tag_rows_held_out = past.height, dated.height - past.height
    counts = past.group_by(pl.col("item_id").cast(pl.Utf8), pl.col("tag").cast(pl.Utf8).alias("category")).len()
    numeric = counts.height > 0 and counts["category"].cast(pl.Int64, strict=False).null_count() == 0
    key = pl.col("category").cast(pl.Int64) if numeric else pl.col("category")
    return (counts.with_columns(key.alias("_key"))
            .sort(["item_id", "len", "_key"], descending=[False, True, False])
            .unique("item_id", keep="first", maintain_order=True)
            .select("item_id", "category"))


def _earliest_event_category(events: list[pl.DataFrame], rep: CategoryReport) -> pl.DataFrame:
    """Per item, the category of its earliest event (time, then source order, then line)."""
    rows = [e.select(pl.col("item_id").cast(pl.Utf8), pl.col("category").cast(pl.Utf8), "timestamp",
                     pl.lit(k).alias("_src"), pl.col(LINE).alias("_line")).drop_nulls(["category"])
            for k, e in enumerate(events)]
    if not rows:
        return pl.DataFrame({"item_id": [], "category": []}, schema={"item_id": pl.Utf8, "category": pl.Utf8})
    allc = pl.concat(rows).sort(["item_id", "timestamp", "_src", "_line"])
    rep.conflicts += int(allc.unique(["item_id", "category"]).group_by("item_id").len()
                         .filter(pl.col("len") > 1).height)
    return allc.unique("item_id", keep="first", maintain_order=True).select("item_id", "category")


def item_categories(
    items: pl.DataFrame | None,
    events: list[pl.DataFrame],
    tags: pl.DataFrame | None,
    cutoff_ms: int | None,
    carried: tuple[pl.DataFrame, int] | None = None,
) -> tuple[pl.DataFrame, CategoryReport]:
    """``(item_id (text), category (text))`` for every item that has one, and how it was decided.

    Args:
        items: validated items table (static metadata), or None.
        events: validated behaviors / impressions frames that may carry a ``category`` column.
        tags: ``item_id, tag, timestamp_ms`` rows of user-produced item attributes, or None.
        cutoff_ms: :func:`attribute_cutoff`.
        carried: each item's earliest event category and the number of items with several, when computed
            elsewhere (the out-of-core engine, in SQL); ``events`` are then not read.
    """
    rep = CategoryReport(cutoff_ms)
    empty = pl.DataFrame(schema={"item_id": pl.Utf8, "category": pl.Utf8})
    static = (_as_text(items.select("item_id", "category")).drop_nulls("category")
              if items is not None and "category" in items.columns else empty)
    derived = _tag_mode(tags, cutoff_ms, rep) if tags is not None else empty
    if carried is None:
        carried = _earliest_event_category([e for e in events if e is not None and "category" in e.columns], rep)
    else:
        carried, conflicts = carried
        rep.conflicts += conflicts
    if static.height and carried.height:  # the table and the events disagree
        both = static.join(carried, on="item_id", suffix="_ev").filter(pl.col("category") != pl.col("category_ev"))
        rep.conflicts += both.height
    out = static
    for frame, attr in ((derived, "from_tags"), (carried, "from_events")):
        new = frame.join(out, on="item_id", how="anti")
        setattr(rep, attr, new.height)
        out = pl.concat([out, new])
    rep.from_items_table = static.height
    if rep.conflicts:
        rep.notes.append(f"{rep.conflicts} items have more than one category across rows/tables; kept the item "
                         "table's, else the earliest event's")
    if tags is not None:
        rep.notes.append(f"item tags: category = most frequent tag over {rep.tag_rows_used} tag rows before the "
                         f"attribute cutoff ({rep.tag_rows_held_out} later rows held out, {rep.tag_rows_undated} "
                         f"undated rows unused); {rep.from_tags} items got one")
    return out, rep


__all__ = ("CategoryReport", "attribute_cutoff", "item_categories")
