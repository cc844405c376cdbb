"""Read access to a prepared directory: memory-mapped timeline and sample arrays."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import polars as pl

from userlens.artifacts import array_digest, check_seal, read_json, read_manifest, require_keys, sha256_file, verify
from userlens.data.counts import UserIndexes
from userlens.data.prepare import SCHEMA_VERSION, file_stem, read_files
from userlens.data.sampling import ItemCounts, NegativeReport
from userlens.data.tables import SPLITS
from userlens.errors import InputError


# what readers take from meta.json (prepare writes them all; a hand-made or damaged one is refused by name)
META_KEYS: dict[str, type] = {"fingerprint": str, "files": dict, "vocab_sizes": dict, "vocab_sizes.user": int,
                              "vocab_sizes.item": int, "vocab_sizes.category": int, "vocab_sizes.behavior": int}
CONTENT_KEYS: dict[str, type | tuple[type, ...]] = {"dim": int, "dtype": str, "n_items": int, "manifest": dict,
                                                    "vocab_item_sha256": str}
CONTENT_FILES = ("content.npy", "content_mask.npy")  # + content_scale.npy when int8: all listed in content.json


@dataclass(frozen=True)
class Samples:
    """The samples of one split; every array has one entry per sample."""

    user: np.ndarray  # int32 user index
    item: np.ndarray  # int32 target item index
    label: np.ndarray  # int8 0/1
    time: np.ndarray  # int64 epoch ms
    cutoff: np.ndarray  # int64: history = timeline[offsets[user] : cutoff]
    context: dict[str, np.ndarray]  # context feature name → int32 indices

    def __len__(self) -> int:
        return len(self.user)


class PreparedData:
    """A prepared directory (see :mod:`userlens.data.prepare` for the layout).

    Arrays are memory-mapped, so opening a 20M-behavior directory costs no RAM
    until batches touch it.

    Example:
        >>> data = PreparedData("data/taobao")  # doctest: +SKIP
        >>> data.samples("train").label.mean()  # doctest: +SKIP
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta_file = self.path / "meta.json"
        if not self.path.is_dir():
            raise InputError(f"{self.path}: no such prepared directory. Fix: run `userlens prepare --out "
                             f"{self.path}` first, or check the path.")
        if not meta_file.is_file():
            raise InputError(f"{self.path}: not a prepared directory (no meta.json). Fix: run `userlens prepare` first.")
        fix = "re-create it with `userlens prepare ... --force`"
        self.meta: dict = read_json(meta_file, "prepared meta.json", fix)
        if not isinstance(self.meta, dict) or self.meta.get("schema_version") != SCHEMA_VERSION:
            version = self.meta.get("schema_version") if isinstance(self.meta, dict) else None
            raise InputError(
                f"{self.path}: prepared with schema version {version}, this userlens "
                f"reads {SCHEMA_VERSION}. Fix: run `userlens prepare --force` again."
            )
        check_seal(self.meta, meta_file, "prepared meta.json", fix)
        require_keys(self.meta, META_KEYS, meta_file, "prepared meta.json", fix)
        context = self.meta.get("context_columns", [])
        if not (isinstance(context, list) and all(isinstance(c, str) for c in context)):
            raise InputError(f"{meta_file}: context_columns is {context!r}, expected a list of names. Fix: {fix}")
        require_keys(self.meta, {("vocab_sizes", f"ctx_{c}"): int for c in context}, meta_file, "prepared meta.json", fix)
        files = self.meta["files"]
        unlisted = [f for f in read_files(context) if f not in files]
        if unlisted:
            raise InputError(f"{meta_file}: does not list {unlisted[0]} ({len(unlisted)} file(s) unlisted), so it "
                             f"cannot be verified. Fix: {fix}")
        # every file against meta.json's manifest, once per open: ~1 s per GB (BLAKE2b), small beside
        # training or scoring, and a flipped byte is reported here, before anything reads it
        for rel, want in files.items():
            verify(self.path / rel, want, fix)

    @property
    def fingerprint(self) -> str:
        """Hash of the vocabularies: a run trained here can only score data with the same one."""
        return str(self.meta["fingerprint"])

    def _load(self, rel: str) -> np.ndarray:
        return np.load(self.path / rel, mmap_mode="r")

    @cached_property
    def offsets(self) -> np.ndarray:
        return np.asarray(self._load("timeline/offsets.npy"))

    @cached_property
    def timeline(self) -> dict[str, np.ndarray]:
        """field (``item``, ``category``, ``behavior``, ``time``) → memory-mapped per-behavior array."""
        return {f: self._load(f"timeline/{f}.npy") for f in ("item", "category", "behavior", "time")}

    @cached_property
    def item_category(self) -> np.ndarray:
        return np.asarray(self._load("items/category.npy"))

    @cached_property
    def category_index(self):  # type: ignore[no-untyped-def]
        """Timeline positions grouped by category (SIM hard search), built on first use and shared."""
        from userlens.layers.gsu import CategoryIndex

        return CategoryIndex(np.asarray(self.timeline["category"]))

    @cached_property
    def item_counts(self) -> ItemCounts:
        """Per-item behavior counts before any time (the ``popularity`` baseline), built on first use and shared."""
        return ItemCounts(np.asarray(self.timeline["item"]), np.asarray(self.timeline["time"]))

    @cached_property
    def user_indexes(self) -> UserIndexes:
        """The timeline's item / category position indexes (counting features), built on first use and shared."""
        tl = self.timeline
        return UserIndexes(np.asarray(tl["item"]), np.asarray(tl["category"]), np.asarray(tl["time"]))

    @property
    def negatives(self) -> NegativeReport | None:
        """What negative sampling did (``None``: samples from impressions, or ``--negatives 0``)."""
        saved = self.meta.get("negatives")
        return NegativeReport.from_json(saved) if saved else None

    @property
    def vocab_sizes(self) -> dict[str, int]:
        return dict(self.meta["vocab_sizes"])

    @property
    def context_columns(self) -> list[str]:
        return list(self.meta.get("context_columns", []))

    def samples(self, split: str) -> Samples:
        if split not in SPLITS:
            raise InputError(f"unknown split {split!r}; expected one of {SPLITS}")
        d = f"samples/{split}"
        return Samples(
            user=self._load(f"{d}/user.npy"),
            item=self._load(f"{d}/item.npy"),
            label=self._load(f"{d}/label.npy"),
            time=self._load(f"{d}/time.npy"),
            cutoff=self._load(f"{d}/cutoff.npy"),
            context={c: self._load(f"{d}/{file_stem(f'ctx_{c}')}.npy") for c in self.context_columns},
        )

    def content_dim(self) -> int:
        """Size of the item content vectors from ``items/content.json`` (0 = none); reads no matrix."""
        info = self._content_info()
        return int(info["dim"]) if info is not None else 0

    def _content_info(self) -> dict | None:
        """``items/content.json``, sealed and complete, or None when ``embed-items`` has not run."""
        f = self.path / "items" / "content.json"
        if not f.is_file():  # written last: absent or half-written reads as None
            return None
        fix = "re-create it with `userlens embed-items` (same input, or new vectors and then retrain)"
        info = read_manifest(f, "content vectors description", fix)
        require_keys(info, CONTENT_KEYS, f, "content vectors description", fix)
        needed = CONTENT_FILES + (("content_scale.npy",) if info["dtype"] == "int8" else ())
        missing = [n for n in needed if n not in info["manifest"]]
        if missing:
            raise InputError(f"{f}: does not list items/{missing[0]}, so it cannot be verified. Fix: {fix}")
        return info

    def item_inputs(self, fields: tuple[str, ...] | list[str] | set[str]) -> dict[str, str | None]:
        """What a model with these batch ``fields`` reads besides the samples: recorded by a run, checked later.

        ``vocabularies``: the fingerprint; ``item_category``: digest of the item → category table;
        ``content``: digest of the content vectors and mask when the model reads them (``long_content``),
        else None. Scoring with other categories or vectors than training is refused (evaluate, export).
        """
        content = self.content() if "long_content" in fields else None
        return {"vocabularies": self.fingerprint, "item_category": array_digest(self.item_category),
                "content": array_digest(*content) if content is not None else None}

    def content(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Item content vectors ((n_items, d) float32, int8 dequantised) and has-content mask ((n_items,) bool).

        None when ``userlens embed-items`` has not written them (see :mod:`userlens.data.content`).
        Loaded once per :class:`PreparedData` and shared by its loaders.
        """
        if "_content" not in self.__dict__:
            self.__dict__["_content"] = self._read_content()
        return self.__dict__["_content"]

    def _read_content(self) -> tuple[np.ndarray, np.ndarray] | None:
        d = self.path / "items"
        info = self._content_info()
        if info is None:
            return None
        for name, want in info["manifest"].items():
            verify(d / name, want, "run `userlens embed-items` again")
        vectors = self._load("items/content.npy")
        if vectors.dtype == np.int8:
            vectors = vectors.astype(np.float32) * np.load(d / "content_scale.npy")
        mask = np.asarray(self._load("items/content_mask.npy"), dtype=bool)
        made_for = info["vocab_item_sha256"]
        if len(vectors) != self.vocab_sizes["item"] or made_for != sha256_file(self.path / "vocab" / "item.parquet"):
            raise InputError(f"{d / 'content.npy'}: written for another item vocabulary (the directory was "
                             "prepared again since). Fix: run `userlens embed-items` again.")
        return np.asarray(vectors, dtype=np.float32), mask

    def vocab(self, name: str) -> pl.DataFrame:
        """raw ↔ index table of ``user``, ``item``, ``category``, ``behavior`` or ``ctx_<name>``."""
        return pl.read_parquet(self.path / "vocab" / f"{file_stem(name)}.parquet")
