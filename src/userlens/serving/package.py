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

Loading (:func:`load_package`) verifies every file's checksum and the vocabulary
hash, rebuilds the model from the registry and reads tensors only: nothing is
unpickled. The package is built in a temporary sibling and renamed into place.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from torch import nn

from userlens.artifacts import describe, read_json, staged_directory, verify, write_atomic
from userlens.data.prepare import file_stem, fingerprint
from userlens.data.prepared import PreparedData
from userlens.errors import InputError
from userlens.models.registry import build_model
from userlens.models.spec import FeatureSpec
from userlens.training.checkpoint import load_run
from userlens.training.config import RunConfig

FORMAT_VERSION = 1
MANIFEST = "package.json"


def export_package(run_dir: str | Path, out: str | Path, data_dir: str | Path | None = None,
                   force: bool = False) -> dict:
    """Write the package of a finished run to ``out``; returns its manifest."""
    model, cfg, doc = load_run(run_dir)
    data = PreparedData(data_dir or doc["data_dir"])
    if data.fingerprint != doc.get("data_fingerprint"):
        raise InputError(f"{data.path}: not the prepared data {run_dir} was trained on (fingerprints differ). Fix: "
                         "pass --data with the directory it was trained on.")
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
            "long_len": cfg.train.long_len,
            "short_len": cfg.train.short_len,
            "context_columns": data.context_columns,
            "trained_on": {"data_dir": str(data.path.resolve()), "run_dir": str(Path(run_dir).resolve()),
                           "behaviors": int(data.offsets[-1]), "last_time_ms": int(np.max(data.timeline["time"]))
                           if data.offsets[-1] else None},
            "files": describe(d, files),
        }
        write_atomic(d / MANIFEST, manifest)
    return manifest


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
        return int(self.manifest["long_len"])

    @property
    def short_len(self) -> int:
        return int(self.manifest["short_len"])

    @property
    def version(self) -> str:
        return f"{self.manifest['model']}@{self.manifest['vocab_hash'][7:19]}"


def load_package(path: str | Path) -> ModelPackage:
    """Load and verify a package (checksums, vocabulary hash, format version); nothing is unpickled.

    Raises:
        InputError: not a package, another format version, a file whose checksum or the vocabulary
        hash does not match (a damaged or edited package).
    """
    p = Path(path)
    fix = "export it again with `userlens export RUN --out PKG --force`"
    if not (p / MANIFEST).is_file():
        raise InputError(f"{p}: not a model package (no {MANIFEST}). Fix: create one with `userlens export RUN "
                         f"--out {p}`.")
    manifest = read_json(p / MANIFEST, "package manifest", fix)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{p}: package format {manifest.get('format_version')}, this userlens reads "
                         f"{FORMAT_VERSION}. Fix: {fix}")
    for rel, want in manifest["files"].items():
        verify(p / rel, want, fix)
    names = ["item", "category", "behavior", "user", *(f"ctx_{c}" for c in manifest.get("context_columns", []))]
    frames = {n: pl.read_parquet(p / "vocab" / f"{file_stem(n)}.parquet") for n in names}
    if fingerprint(frames) != manifest["vocab_hash"]:
        raise InputError(f"{p}: its vocabularies do not match the hash in {MANIFEST}. Fix: {fix}")
    cfg = RunConfig.from_json(manifest["config"])
    spec = FeatureSpec(**manifest["feature_spec"])
    model = build_model(cfg.model, spec, cfg.model_config)
    from safetensors.torch import load_file

    try:
        model.load_state_dict(load_file(str(p / "model.safetensors")))
    except RuntimeError as e:
        raise InputError(f"{p / 'model.safetensors'}: does not fit model {cfg.model!r} ({str(e).splitlines()[0]}). "
                         f"Fix: {fix}") from None
    model.eval()
    counts = np.load(p / "items" / "counts.npy")
    n_items = spec.n_items
    content = None
    if (p / "items" / "content.npy").is_file():
        content = (np.load(p / "items" / "content.npy"), np.load(p / "items" / "content_mask.npy"))
    return ModelPackage(p, manifest, model, cfg, spec, {n: Vocab.from_frame(f) for n, f in frames.items()},
                        np.load(p / "items" / "category.npy"), (counts[: n_items + 1], counts[n_items + 1:]),
                        content)


__all__ = ("FORMAT_VERSION", "ModelPackage", "Vocab", "export_package", "load_package")
