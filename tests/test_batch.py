"""The one behavior-sequence type: mask and packed index derived from lengths; shapes validated."""

from __future__ import annotations

import re

import pytest
import torch

from userlens.batch import COUNTS_FIELD, ALL_FIELDS, HIST_FIELDS, LONG_EXTRAS, LONG_FIELD, TARGET_FIELDS, Batch, History


def _history() -> History:
    item = torch.tensor([[5, 7, 9, 0], [3, 0, 0, 0], [0, 0, 0, 0], [1, 2, 3, 4]])
    return History({"item": item, "time": item * 10}, torch.tensor([3, 1, 0, 4]))


def test_mask_is_true_exactly_before_each_length() -> None:
    h = _history()
    assert h.max_len == 4
    assert h.mask().tolist() == [[True, True, True, False],
                                 [True, False, False, False],
                                 [False, False, False, False],
                                 [True, True, True, True]]
    assert h.mask().dtype == torch.bool


def test_mask_follows_lengths_not_values() -> None:
    # a real behavior may carry index 0 in some field; only lengths decide what is padding
    h = History({"behavior": torch.zeros(2, 3, dtype=torch.int64)}, torch.tensor([2, 0]))
    assert h.mask().tolist() == [[True, True, False], [False, False, False]]


def test_packed_index_lists_real_positions_row_major() -> None:
    h = _history()
    rows, cols = h.packed_index()
    assert rows.tolist() == [0, 0, 0, 1, 3, 3, 3, 3]
    assert cols.tolist() == [0, 1, 2, 0, 0, 1, 2, 3]
    assert h["item"][rows, cols].tolist() == [5, 7, 9, 3, 1, 2, 3, 4]
    assert h["time"][rows, cols].tolist() == [50, 70, 90, 30, 10, 20, 30, 40]
    assert len(rows) == int(h.lengths.sum())


def test_packed_index_of_an_all_empty_batch() -> None:
    h = History({"item": torch.zeros(3, 5, dtype=torch.int64)}, torch.zeros(3, dtype=torch.int64))
    rows, cols = h.packed_index()
    assert rows.numel() == 0 and cols.numel() == 0


def test_history_without_fields_has_zero_length_window() -> None:
    h = History({}, torch.tensor([0, 0]))
    assert h.max_len == 0 and h.mask().shape == (2, 0)


def test_lengths_must_be_one_dimensional() -> None:
    with pytest.raises(ValueError, match=re.escape("History.lengths must be 1-D (B,), got shape (2, 1)")):
        History({"item": torch.zeros(2, 3)}, torch.tensor([[1], [2]]))


@pytest.mark.parametrize(("shape", "shown"), [((3,), "(3,)"), ((2, 3), "(2, 3)"), ((3, 2, 1), "(3, 2, 1)")])
def test_values_must_be_batch_by_length(shape: tuple[int, ...], shown: str) -> None:
    msg = re.escape(f"History field 'item' must be (B, L) with B=3, got {shown}")
    with pytest.raises(ValueError, match=msg):
        History({"item": torch.zeros(shape)}, torch.tensor([1, 1, 1]))


def test_missing_field_says_how_to_request_it() -> None:
    with pytest.raises(KeyError, match=re.escape("history field 'category' was not loaded (have ['item', 'time']); "
                                                 "add 'hist_category' to the model's `fields`")):
        _history()["category"]


def test_batch_length_and_field_names() -> None:
    b = Batch(target={"target_item": torch.tensor([1, 2, 3, 4])}, history=_history())
    assert len(b) == 4 and b.label is None and b.context == {}
    assert ALL_FIELDS == set(HIST_FIELDS) | set(TARGET_FIELDS) | {LONG_FIELD, *LONG_EXTRAS, COUNTS_FIELD}
    assert b.long is None
    assert all(f.startswith("hist_") for f in HIST_FIELDS)
