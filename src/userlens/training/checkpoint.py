"""Run directories and training checkpoints: tensors in safetensors, everything else in JSON, nothing pickled.

A finished run directory holds ``model.safetensors`` (best-validation weights),
``metrics.jsonl`` and ``config.json``: the resolved config, the feature spec, the
fingerprint of the data it was trained on and the checksum of the weights.
``config.json`` is written last, so a directory with it is complete; loading
verifies the checksum and refuses data with another fingerprint.

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

from userlens.artifacts import checksum, read_json, verify, write_atomic
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


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    tmp = path.with_name(f".{path.name}.tmp")
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
             data_fingerprint: str, state: dict | None = None, notes: dict | None = None) -> None:
    """Write the weights (``state`` or the model's), then ``config.json`` (last) describing them.

    ``data_dir`` / ``data_fingerprint``: the prepared data trained on (only that fingerprint may be
    scored later); ``notes``: extra facts about the run (e.g. whether content vectors were used).
    """
    d = Path(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    weights = _save_tensors(d / WEIGHTS, state or model.state_dict())
    doc = {**cfg.to_json(), "feature_spec": spec.to_json(), "data_dir": str(Path(data_dir).resolve()),
           "data_fingerprint": data_fingerprint, "weights": weights, **(notes or {})}
    write_atomic(d / CONFIG, doc)


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
    doc = read_json(d / CONFIG, "run config", retrain)
    try:
        cfg = RunConfig.from_json(doc)
        spec = FeatureSpec(**doc["feature_spec"])
        model = build_model(cfg.model, spec, cfg.model_config)
    except (KeyError, TypeError, ValueError, ConfigError) as e:
        raise InputError(f"{d / CONFIG}: not a config this userlens can rebuild a model from ({e}). "
                         f"Fix: {retrain}") from None
    if "weights" not in doc:
        raise InputError(f"{d / CONFIG}: written by an older userlens (no weights checksum). Fix: {retrain}")
    tensors = _load_tensors(d / WEIGHTS, doc["weights"], retrain)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise InputError(f"{d / WEIGHTS}: these weights do not fit model {cfg.model!r} ({first}); foreign or "
                         f"edited weights. Fix: {retrain}") from None
    model.eval()
    return model, cfg, doc


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
    write_atomic(work / STATE_META, {
        "progress": progress, "run": run, "tensors": manifest, "has_best": best_state is not None,
        "param_groups": [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
                         for g in opt["param_groups"]],
        "rng_numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "rng_python": [py_state[0], list(py_state[1]), py_state[2]],
    })


def load_checkpoint(work: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    run: dict[str, Any]) -> tuple[dict[str, Any], dict | None]:
    """Restore model, optimiser and RNG states from ``work``; returns (progress, best state or None).

    Raises:
        InputError: the checkpoint is damaged, or was made by another config or on other data.
    """
    fix = "pass --force instead of --resume to start over"
    meta = read_json(work / STATE_META, "training checkpoint", fix)
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
