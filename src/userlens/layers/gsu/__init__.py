"""General Search Units (GSU): for each candidate, pick the few behaviors of a whole history worth attending to.

Every GSU reads a :class:`~userlens.batch.LongHistory` (index ranges into the
shared timeline, up to 100,000 behaviors per sample) and never builds a
``(B, L_long, D)`` tensor: ranges are scanned **newest first in chunks** sized
so that ``B × chunk × dim`` stays under a fixed budget, and a running top-k is
merged per chunk. Samples of one user share their history: their rows are
scanned together as a **slab** (:func:`partition`), each chunk read once and
scored for all of them, so a batch holding many samples per user costs about
one scan per user. What is static per item is computed once per call as a
per-item table (keys, SimHash signatures, bucket codes).

Selections are returned as global timeline positions, left-aligned and oldest
first (the :class:`~userlens.batch.History` convention); ties in relevance go to
the **more recent** behavior, so every GSU is deterministic and can be checked
exactly against a brute-force reference (``tests/layers/test_gsu.py``).

The units, one module each:

* :class:`CategoryIndex` (``category``) — SIM hard search (Pi et al., CIKM 2020):
  the most recent k behaviors of the target's category.
* :func:`table_topk` (``table``) — SIM soft search / TWIN / DARE / MUSE's content
  cosine: inner product between a target query and a per-item table.
* :class:`SimHash` + :func:`hamming_topk` (``simhash``) — ETA (Chen et al., 2021):
  top-k by Hamming distance between SimHash signatures.
* :func:`bucket_sum` (``buckets``) — SDIM (Cao et al., CIKM 2022): per hash round,
  the sum of behaviors whose bucket code equals the target's (no top-k at all).

and what they share: ``base`` (:class:`Selection`, the chunk budget, the
serving-state hook :class:`SearchState`), ``topk`` (exact top-k with ties to the
more recent, block prefilter), ``slab`` (partition, chunks, :func:`chunked_topk`).
Per-user serving state (the history grouped by item, running sums) lives in
:mod:`userlens.serving.state`, reached only through :class:`SearchState`.

Devices: the timeline is NumPy, so scans run on the CPU. Inputs that may live on
an accelerator are moved with ``.detach().cpu()`` here (selection needs no
gradient); :func:`bucket_sum`, which must keep its gradient, runs on the
device of its ``table`` and moves each chunk's item ids there.
"""

from __future__ import annotations

from userlens.layers.gsu.base import CHUNK_BUDGET, ItemScorer, SearchState, Selection, serving_state
from userlens.layers.gsu.buckets import bucket_sum
from userlens.layers.gsu.category import CategoryIndex
from userlens.layers.gsu.simhash import SimHash, hamming_topk
from userlens.layers.gsu.slab import SLAB_MIN_ROWS, Band, chunked_topk, chunks, partition
from userlens.layers.gsu.table import table_topk
from userlens.layers.gsu.topk import BLOCK

__all__ = [
    "BLOCK", "CHUNK_BUDGET", "SLAB_MIN_ROWS", "Band", "CategoryIndex", "ItemScorer", "SearchState", "Selection",
    "SimHash", "bucket_sum", "chunked_topk", "chunks", "hamming_topk", "partition", "serving_state", "table_topk",
]
