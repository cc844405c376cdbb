"""``userlens export RUN --out PKG``: a self-contained, versioned, verified model package.

A package is everything scoring needs and nothing of the training data::

    package.json            written last: format version, model, resolved config, feature spec,
                            data fingerprint, vocabulary hash, long_len / short_len, file manifest
    model.safetensors       the run's best weights
    vocab/*.parquet         raw id ↔ code of items, categories, behaviors, users, context features
    items/category.npy      category code of every item code
    items/content*.npy      the item content vectors (models that read them), as prepared
    items/counts.npy        per item, the sorted times of its behaviors in the training data (the
                            ``popularity`` model's counts; other models ignore it)

``package.json`` is sealed (it carries the checksum of its own content) and lists
every file of the package; it records ``inputs`` (the run's vocabulary fingerprint
and digests of the item categories and content vectors it was trained with). Export
refuses data whose inputs are not the run's. Loading (:func:`load_package`) refuses
an edited manifest, a missing key, a file it does not list, any file whose checksum
or the vocabulary hash does not match, and item arrays whose digests are not the
recorded inputs; it rebuilds the model from the registry and reads tensors only:
nothing is unpickled. A package written before ``inputs`` existed is read without
that last check. The package is built in a temporary sibling and renamed into place.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from torch import nn

from safetensors import SafetensorError

from userlens.artifacts import (array_digest, describe, read_manifest, require_keys, staged_directory, verify,
                                write_manifest)
from userlens.data.prepare import file_stem, fingerprint
from userlens.data.prepared import PreparedData
from userlens.errors import InputError
from userlens.models.spec import FeatureSpec
from userlens.training.checkpoint import data_for_run, load_run, rebuild_model
from userlens.training.config import RunConfig

FORMAT_VERSION = 1
MANIFEST = "package.json"


def export_package(run_dir: str | Path, out: str | Path, data_dir: str | Path | None = None,
                   force: bool = False) -> dict:
    """Write the package of a finished run to ``out``; returns its manifest."""
    model, cfg, doc = load_run(run_dir)
    data = data_for_run(run_dir, doc, data_dir, model.fields)
    names = ["item", "category", "behavior", "user", *(f"ctx_{c}" for c in data.context_columns)]
    vocabs = {n: data.vocab(n) for n in names}
    with staged_directory(out, "model package", MANIFEST, force) as d:
        (d / "vocab").mkdir()
        (d / "items").mkdir()
        for n, v in vocabs.items():
            v.write_parquet(d / "vocab" / f"{file_stem(n)}.parquet")
        np.save(d / "items" / "category.npy", np.asarray(data.item_category))
        np.save(d / "items" / "counts.npy", _item_times(data))
        content = data.content() if "long_content" in getattr(model, "fields", ()) else None
        if content is not None:
            np.save(d / "items" / "content.npy", content[0])
            np.save(d / "items" / "content_mask.npy", content[1])
        (d / "model.safetensors").write_bytes((Path(run_dir) / "model.safetensors").read_bytes())
        files = sorted(str(f.relative_to(d)) for f in d.rglob("*") if f.is_file())
        manifest = {
            "format_version": FORMAT_VERSION,
            "created_unix": int(time.time()),
            "model": cfg.model,
            "config": cfg.to_json(),
            "feature_spec": doc["feature_spec"],
            "data_fingerprint": data.fingerprint,
            "vocab_hash": fingerprint(vocabs),  # equals the data fingerprint: same vocabularies
            "inputs": doc.get("inputs"),  # what the run read (None: a run from before they were recorded)
            "long_len": cfg.train.long_len,
            "short_len": cfg.train.short_len,
            "context_columns": data.context_columns,
            "trained_on": {"data_dir": str(data.path.resolve()), "run_dir": str(Path(run_dir).resolve()),
                           "behaviors": int(data.offsets[-1]), "last_time_ms": int(np.max(data.timeline["time"]))
                           if data.offsets[-1] else None},
            "files": describe(d, files),
        }
        manifest = write_manifest(d / MANIFEST, manifest)
    return manifest


def check_store_data(pkg: ModelPackage, data: PreparedData) -> None:
    """Refuse prepared data whose histories would reach the package's model with other codes or categories.

    A behavior store keeps item and category codes of the directory it was loaded from: other
    vocabularies, or other item categories (a re-prepared directory), would score silently wrong.
    """
    trained_on = pkg.manifest["trained_on"]["data_dir"]
    if pkg.manifest["data_fingerprint"] != data.fingerprint:
        raise InputError(f"{data.path}: not the prepared data {pkg.path} was exported from (vocabulary fingerprints "
                         f"differ). Fix: load the directory the package's run was trained on ({trained_on}).")
    if not np.array_equal(pkg.item_category, data.item_category):  # the package's own: packages before `inputs` too
        raise InputError(f"{data.path}: its item categories are not those {pkg.path} was trained with (prepared "
                         f"again from other item attributes?). Fix: load the directory the package's run was "
                         f"trained on ({trained_on}).")


def _item_times(data: PreparedData) -> np.ndarray:
    """(n_items + 1,) CSR offsets followed by every behavior's time, grouped by item and sorted by time."""
    item = np.asarray(data.timeline["item"], dtype=np.int64)
    t = np.asarray(data.timeline["time"], dtype=np.int64)
    order = np.lexsort((t, item))
    n = data.vocab_sizes["item"]
    offsets = np.zeros(n + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(np.bincount(item, minlength=n))
    return np.concatenate([offsets, t[order]])


@dataclass
class Vocab:
    """raw id (as text) → code; unknown ids map to 1."""

    codes: dict[str, int]
    raw: list[str] = field(default_factory=list)  # code → raw id ("" for 0 and 1)

    @classmethod
    def from_frame(cls, frame: pl.DataFrame) -> Vocab:
        raw = frame["raw"].cast(pl.Utf8).to_list()
        idx = frame["index"].to_list()
        table = [""] * (max(idx, default=1) + 1)
        for r, i in zip(raw, idx):
            table[i] = r
        return cls(dict(zip(raw, idx)), table)

    def code(self, raw: object) -> int:
        return self.codes.get(str(raw), 1)

    def __len__(self) -> int:
        return len(self.raw)


@dataclass
class ModelPackage:
    """A loaded package: the model in eval mode plus everything needed to encode a request."""

    path: Path
    manifest: dict
    model: nn.Module
    config: RunConfig
    spec: FeatureSpec
    vocabs: dict[str, Vocab]
    item_category: np.ndarray  # (n_items,) int32
    item_times: tuple[np.ndarray, np.ndarray]  # CSR offsets (n_items + 1,), times grouped by item
    content: tuple[np.ndarray, np.ndarray] | None

    @property
    def long_len(self) -> int:
        return self.config.train.long_len

    @property
    def short_len(self) -> int:
        return self.config.train.short_len

    @property
    def version(self) -> str:
        return f"{self.manifest['model']}@{self.manifest['vocab_hash'][7:19]}"


# what loading reads from package.json (export writes them all; a hand-made or damaged one is refused by name)
PACKAGE_KEYS: dict[str, type] = {"model": str, "config": dict, "feature_spec": dict, "data_fingerprint": str,
                                 "vocab_hash": str, "long_len": int, "short_len": int, "files": dict,
                                 "trained_on": dict, "trained_on.data_dir": str}
REQUIRED_FILES = ("model.safetensors", "items/category.npy", "items/counts.npy", "vocab/item.parquet",
                  "vocab/category.parquet", "vocab/behavior.parquet", "vocab/user.parquet")


def load_package(path: str | Path) -> ModelPackage:
    """Load and verify a package (manifest seal and keys, every file, vocabulary hash, inputs); nothing is unpickled.

    Raises:
        InputError: not a package, another format version, an edited manifest or one missing a key, a
        file it does not list or whose checksum does not match (a damaged or edited package).
    """
    p = Path(path)
    fix = "export it again with `userlens export RUN --out PKG --force`"
    if not (p / MANIFEST).is_file():
        raise InputError(f"{p}: not a model package (no {MANIFEST}). Fix: create one with `userlens export RUN "
                         f"--out {p}`.")
    manifest = read_manifest(p / MANIFEST, "package manifest", fix)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{p}: package format {manifest.get('format_version')}, this userlens reads "
                         f"{FORMAT_VERSION}. Fix: {fix}")
    require_keys(manifest, PACKAGE_KEYS, p / MANIFEST, "package manifest", fix)
    _verify_files(p, manifest, fix)
    names = ["item", "category", "behavior", "user", *(f"ctx_{c}" for c in manifest.get("context_columns", []))]
    frames = {n: pl.read_parquet(p / "vocab" / f"{file_stem(n)}.parquet") for n in names}
    if fingerprint(frames) != manifest["vocab_hash"]:
        raise InputError(f"{p}: its vocabularies do not match the hash in {MANIFEST}. Fix: {fix}")
    model, cfg, spec = rebuild_model(manifest["config"], manifest["feature_spec"], p / MANIFEST, fix)
    if (manifest["long_len"], manifest["short_len"]) != (cfg.train.long_len, cfg.train.short_len):
        raise InputError(f"{p / MANIFEST}: long_len / short_len {manifest['long_len']} / {manifest['short_len']} "
                         f"differ from its config's {cfg.train.long_len} / {cfg.train.short_len}. Fix: {fix}")
    from safetensors.torch import load_file

    try:
        model.load_state_dict(load_file(str(p / "model.safetensors")))
    except (RuntimeError, SafetensorError) as e:
        raise InputError(f"{p / 'model.safetensors'}: does not fit model {cfg.model!r} ({str(e).splitlines()[0]}). "
                         f"Fix: {fix}") from None
    model.eval()
    counts = np.load(p / "items" / "counts.npy")
    n_items = spec.n_items
    item_category = np.load(p / "items" / "category.npy")
    content = None
    if "items/content.npy" in manifest["files"]:
        content = (np.load(p / "items" / "content.npy"), np.load(p / "items" / "content_mask.npy"))
    _check_inputs(p, manifest, item_category, content, fix)
    return ModelPackage(p, manifest, model, cfg, spec, {n: Vocab.from_frame(f) for n, f in frames.items()},
                        item_category, (counts[: n_items + 1], counts[n_items + 1:]), content)


def _verify_files(p: Path, manifest: dict, fix: str) -> None:
    """Every file of the package listed and matching, nothing unlisted, nothing a reader needs left out."""
    listed = manifest["files"]
    needed = [*REQUIRED_FILES, *(f"vocab/{file_stem(f'ctx_{c}')}.parquet" for c in manifest.get("context_columns", []))]
    if "items/content.npy" in listed:
        needed.append("items/content_mask.npy")
    missing = [f for f in needed if f not in listed]
    if missing:
        raise InputError(f"{p / MANIFEST}: does not list {missing[0]}, so it cannot be verified. Fix: {fix}")
    on_disk = sorted(str(f.relative_to(p)) for f in p.rglob("*") if f.is_file() and f.name != MANIFEST)
    extra = [f for f in on_disk if f not in listed]
    if extra:
        raise InputError(f"{p / extra[0]}: not listed in {MANIFEST} ({len(extra)} unlisted file(s)): a package "
                         f"holds only what it lists. Fix: remove it, or {fix}")
    for rel, want in listed.items():
        verify(p / rel, want, fix)


def _check_inputs(p: Path, manifest: dict, item_category: np.ndarray,
                  content: tuple[np.ndarray, np.ndarray] | None, fix: str) -> None:
    """The package's item arrays must be those its run was trained with (packages since ``inputs``)."""
    recorded = manifest.get("inputs")
    if not isinstance(recorded, dict):
        return
    now = {"item_category": array_digest(item_category),
           "content": array_digest(*content) if content is not None else None}
    for key, value in now.items():
        if recorded.get(key) != value:
            raise InputError(f"{p}: its {key.replace('_', ' ')} arrays are not those its run was trained with "
                             f"(recorded in {MANIFEST}). Fix: {fix}")


__all__ = ("FORMAT_VERSION", "ModelPackage", "Vocab", "check_store_data", "export_package", "load_package")
