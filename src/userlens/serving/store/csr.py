"""CSR arrays (a prepared timeline) → each user's meta and blocks, for ``bulk_load`` on every backend."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from userlens.errors import InputError
from userlens.serving.store import record


def segments(user_ids: Sequence[str], offsets: np.ndarray, item: np.ndarray, category: np.ndarray,
             time: np.ndarray, behavior: np.ndarray, cap: int
             ) -> Iterator[tuple[str, tuple[record.Meta, list[tuple[int, bytes]]] | None, int, int, int]]:
    """Per user: ``(user_id, (meta, blocks) or None when empty, behaviors kept, dropped over cap, unknown items)``.

    User ``i`` owns rows ``[offsets[i], offsets[i + 1])`` (offsets need not start at 0). Rows of one
    user are sorted by time here when they are not already (stable: ties keep their order).
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    cols = {"item": item, "category": category, "time": time, "behavior": behavior}
    lengths = {name: len(a) for name, a in cols.items()}
    if len(set(lengths.values())) != 1:
        raise InputError(f"bulk_load: column lengths differ {lengths}. Fix: pass the arrays of one timeline.")
    if len(offsets) != len(user_ids) + 1:
        raise InputError(f"bulk_load: {len(offsets)} offsets for {len(user_ids)} users, expected users + 1. "
                         "Fix: pass offsets[first:last + 2] for users first..last.")
    if len(user_ids) == 0:
        return
    if (np.diff(offsets) < 0).any() or offsets[0] < 0 or offsets[-1] > len(time):
        raise InputError(f"bulk_load: offsets must be non-decreasing within [0, {len(time)}], got "
                         f"[{offsets[0]}, ..., {offsets[-1]}]. Fix: pass the timeline's CSR offsets.")
    lo, hi = int(offsets[0]), int(offsets[-1])
    t = np.asarray(time[lo:hi])
    within = np.ones(max(0, hi - lo - 1), dtype=bool)  # pairs (j, j + 1) inside one user
    within[(offsets[1:-1] - lo - 1)[(offsets[1:-1] > lo) & (offsets[1:-1] < hi)]] = False
    if (np.diff(t) < 0)[within].any():
        seg = np.repeat(np.arange(len(user_ids)), np.diff(offsets))
        order = np.lexsort((t, seg))
        cols = {name: np.asarray(a[lo:hi])[order] for name, a in cols.items()}
        offsets, lo = offsets - lo, 0
    for i, user in enumerate(user_ids):
        a, b = int(offsets[i]), int(offsets[i + 1])  # rows of the (possibly re-sorted) columns
        if b == a:
            yield user, None, 0, 0, 0
            continue
        meta, blocks, dropped, unknown = record.build(cols["time"][a:b], cols["item"][a:b], cols["category"][a:b],
                                                      cols["behavior"][a:b], cap)
        yield user, (meta, blocks), b - a - dropped, dropped, unknown
