"""Run directories and training checkpoints: tensors in safetensors, everything else in JSON, nothing pickled.

A finished run directory holds ``model.safetensors`` (best-validation weights),
``metrics.jsonl`` and ``config.json``: the resolved config, the feature spec, the
fingerprint of the data it was trained on, ``inputs`` (what the model reads besides
the samples: the vocabulary fingerprint and digests of the item categories and, for
models that read them, the content vectors) and the checksum of the weights.
``config.json`` is written last and sealed (its own checksum), so a directory with it
is complete and an edit to it is reported; loading verifies the weights, and
:func:`data_for_run` refuses data whose vocabularies, categories or vectors differ.
A run written before ``inputs`` existed has its vocabularies checked only.

While training, everything lives in ``<run>.partial``: the run's files so far and
a checkpoint after every epoch (``checkpoint.safetensors``: weights, optimiser
state, best weights, torch RNG; ``checkpoint.json``: epoch, best-so-far, early-
stopping count, Python / NumPy RNG states, the tensors' checksum), so a killed
run resumes from its last finished epoch and ends with the same weights as an
uninterrupted one. The finished directory replaces ``<run>`` in one rename.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from userlens.artifacts import checksum, output_errors, read_manifest, require_keys, verify, write_manifest
from userlens.data.prepared import PreparedData
from userlens.errors import ConfigError, InputError
from userlens.models.registry import build_model
from userlens.models.spec import FeatureSpec
from userlens.training.config import RunConfig

CONFIG, WEIGHTS, METRICS = "config.json", "model.safetensors", "metrics.jsonl"
STATE, STATE_META = "checkpoint.safetensors", "checkpoint.json"


def partial_dir(run_dir: str | Path) -> Path:
    """Where a run is trained, and where an interrupted one waits to be resumed."""
    p = Path(run_dir)
    return p.with_name(p.name + ".partial")


RUN_KEYS: dict[str, type] = {"model": str, "model_config": dict, "train": dict, "feature_spec": dict,
                             "data_dir": str, "data_fingerprint": str, "weights": dict}


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    tmp = path.with_name(f".{path.name}.tmp")
    with output_errors(path, tmp):
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
        tmp.replace(path)
    return {"bytes": path.stat().st_size, "checksum": checksum(path)}


def _load_tensors(path: Path, manifest: dict[str, Any], fix: str) -> dict[str, torch.Tensor]:
    verify(path, manifest, fix)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable safetensors file ({e}). Fix: {fix}") from None


def save_run(run_dir: str | Path, model: nn.Module, cfg: RunConfig, spec: FeatureSpec, data_dir: str | Path,
             inputs: dict[str, str | None], state: dict | None = None, notes: dict | None = None) -> None:
    """Write the weights (``state`` or the model's), then ``config.json`` (last, sealed) describing them.

    ``data_dir`` / ``inputs``: the prepared data trained on and what the model read of it
    (:meth:`PreparedData.item_inputs`; only data with the same may be scored later); ``notes``: extra
    facts about the run (e.g. whether content vectors were used).
    """
    d = Path(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    weights = _save_tensors(d / WEIGHTS, state or model.state_dict())
    doc = {**cfg.to_json(), "feature_spec": spec.to_json(), "data_dir": str(Path(data_dir).resolve()),
           "data_fingerprint": inputs["vocabularies"], "inputs": inputs, "weights": weights, **(notes or {})}
    write_manifest(d / CONFIG, doc)


def rebuild_model(config: dict[str, Any], feature_spec: Any, path: Path, fix: str
                  ) -> tuple[nn.Module, RunConfig, FeatureSpec]:
    """The model a saved config describes (weights not loaded), its resolved config and feature spec.

    Raises:
        InputError: naming ``path`` (the run's or the package's manifest): a config this userlens cannot
        build a model from (unknown model or key, a value out of range, a malformed feature spec).
    """
    try:
        cfg = RunConfig.from_json(config)
        spec = FeatureSpec(**feature_spec)
        return build_model(cfg.model, spec, cfg.model_config), cfg, spec
    except (KeyError, TypeError, ValueError, ConfigError) as e:
        raise InputError(f"{path}: not a config this userlens can rebuild a model from ({e}). Fix: {fix}") from None


def load_run(run_dir: str | Path) -> tuple[nn.Module, RunConfig, dict]:
    """(model in eval mode, resolved config, raw config document) of a finished run directory.

    Raises:
        InputError: not a (finished) run, an unreadable or edited config, weights whose checksum or
        shapes do not match (corrupted, replaced or foreign), each naming the file and the fix.
    """
    d = Path(run_dir)
    if d.exists() and not d.is_dir():
        raise InputError(f"{d}: is a file, not a run directory. Fix: pass the directory `userlens train --out` wrote.")
    if not (d / CONFIG).is_file():
        if (partial_dir(d) / STATE_META).is_file():
            raise InputError(f"{d}: the run was interrupted (checkpoint in {partial_dir(d)}). Fix: finish it with "
                             "`userlens train ... --resume`.")
        raise InputError(f"{d}: not a run directory (no {CONFIG}). Fix: run `userlens train --out {d}` first.")
    retrain = f"train again (`userlens train ... --out {d} --force`)"
    doc = read_manifest(d / CONFIG, "run config", retrain)
    require_keys(doc, RUN_KEYS, d / CONFIG, "run config", retrain)
    model, cfg, _ = rebuild_model(doc, doc["feature_spec"], d / CONFIG, retrain)
    tensors = _load_tensors(d / WEIGHTS, doc["weights"], retrain)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise InputError(f"{d / WEIGHTS}: these weights do not fit model {cfg.model!r} ({first}); foreign or "
                         f"edited weights. Fix: {retrain}") from None
    model.eval()
    return model, cfg, doc


# input → (what it is, how it changes, how to restore it)
_INPUT_NAMES = {
    "item_category": ("item categories", "it was prepared again from other item attributes",
                      "score the prepared directory the run was trained on"),
    "content": ("item content vectors", "`userlens embed-items` ran again since, or was undone",
                "run `userlens embed-items` again with the input used before training"),
}


def data_for_run(run_dir: str | Path, doc: dict, data_dir: str | Path | None,
                 fields: tuple[str, ...] | list[str] | set[str]) -> PreparedData:
    """The prepared data to score a run with: ``data_dir`` or the run's own, refused unless it is what the run read.

    Vocabularies (the fingerprint), item categories and, for models that read them, content vectors
    must be those of training: other ones would score with other ids or item features, silently.
    A run written before ``inputs`` were recorded has its vocabularies checked only.
    """
    run_dir = Path(run_dir)
    if data_dir is None and not Path(doc["data_dir"]).is_dir():
        raise InputError(f"{run_dir}: the prepared directory it was trained on ({doc['data_dir']}) is gone or "
                         "moved. Fix: pass --data DIR (that directory, or one prepared identically).")
    data = PreparedData(data_dir or doc["data_dir"])
    if data.fingerprint != doc["data_fingerprint"]:
        raise InputError(f"{data.path}: its vocabularies (fingerprint {data.fingerprint[:19]}…) are not those "
                         f"{run_dir} was trained on ({doc['data_fingerprint'][:19]}…): ids would mean "
                         "other users and items. Fix: evaluate on the prepared directory the run was trained on "
                         "(or one prepared from the same files with the same options), or retrain.")
    recorded = doc.get("inputs")
    if isinstance(recorded, dict):
        now = data.item_inputs(fields)
        for key, (what, why, restore) in _INPUT_NAMES.items():
            if now[key] != recorded.get(key):
                raise InputError(f"{data.path}: its {what} are not those {run_dir} was trained with ({why}?): the "
                                 f"model would score with other item features. Fix: {restore}, or retrain on the "
                                 "data as it is now.")
    return data


# --------------------------------------------------------------------------- training checkpoints


def save_checkpoint(work: Path, model: nn.Module, optimizer: torch.optim.Optimizer, best_state: dict | None,
                    progress: dict[str, Any], run: dict[str, Any]) -> None:
    """Everything needed to continue after the epoch just finished, atomically (tensors, then JSON).

    ``progress``: epoch, best epoch / score / metrics, early-stopping count, timings (JSON-able);
    ``run``: the resolved config and data fingerprint, checked on resume.
    """
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"best.{k}": v for k, v in (best_state or {}).items()})
    opt = optimizer.state_dict()
    for idx, st in opt["state"].items():
        for name, v in st.items():
            tensors[f"opt.{idx}.{name}"] = v if torch.is_tensor(v) else torch.tensor(v)
    tensors["rng.torch"] = torch.get_rng_state()
    manifest = _save_tensors(work / STATE, tensors)
    np_state = np.random.get_state()
    py_state = random.getstate()
    write_manifest(work / STATE_META, {
        "progress": progress, "run": run, "tensors": manifest, "has_best": best_state is not None,
        "param_groups": [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
                         for g in opt["param_groups"]],
        "rng_numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "rng_python": [py_state[0], list(py_state[1]), py_state[2]],
    })


CHECKPOINT_KEYS: dict[str, type] = {"progress": dict, "run": dict, "run.config": dict, "run.config.model": str,
                                    "run.config.model_config": dict, "run.config.train": dict, "tensors": dict,
                                    "has_best": bool, "param_groups": list, "rng_numpy": list, "rng_python": list}


def _read_checkpoint_meta(work: Path, fix: str) -> dict[str, Any]:
    meta = read_manifest(work / STATE_META, "training checkpoint", fix)
    require_keys(meta, CHECKPOINT_KEYS, work / STATE_META, "training checkpoint", fix)
    return meta


def interrupted_config(run_dir: str | Path) -> tuple[str, dict[str, Any]]:
    """(model name, flat config keys) of the interrupted run waiting in ``<run_dir>.partial``."""
    meta = _read_checkpoint_meta(partial_dir(run_dir), "train without --resume (or with --force)")
    cfg = meta["run"]["config"]
    return cfg["model"], {**cfg["model_config"], **cfg["train"]}


def load_checkpoint(work: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    run: dict[str, Any]) -> tuple[dict[str, Any], dict | None]:
    """Restore model, optimiser and RNG states from ``work``; returns (progress, best state or None).

    Raises:
        InputError: the checkpoint is damaged, or was made by another config or on other data.
    """
    fix = "pass --force instead of --resume to start over"
    meta = _read_checkpoint_meta(work, fix)
    if meta.get("run") != json.loads(json.dumps(run)):  # as JSON: tuples read back as lists
        raise InputError(f"{work / STATE_META}: the interrupted run used another config or other data than this "
                         f"command. Fix: resume with the same data and options, or {fix}.")
    tensors = _load_tensors(work / STATE, meta["tensors"], fix)
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    torch.set_rng_state(tensors["rng.torch"])
    n = meta["rng_numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = meta["rng_python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    best = {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")} if meta["has_best"] else None
    return meta["progress"], best


__all__ = ("CONFIG", "METRICS", "STATE", "STATE_META", "WEIGHTS", "load_checkpoint", "load_run", "partial_dir",
           "save_checkpoint", "save_run")
