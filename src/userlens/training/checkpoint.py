"""Run directories: ``config.json`` (resolved config + feature spec) and ``model.safetensors``.

Loading rebuilds the model from the registry and reads tensors only: nothing is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from userlens.errors import InputError
from userlens.models.registry import build_model
from userlens.models.spec import FeatureSpec
from userlens.training.config import RunConfig

CONFIG, WEIGHTS, METRICS = "config.json", "model.safetensors", "metrics.jsonl"


def save_run(run_dir: str | Path, model: nn.Module, cfg: RunConfig, spec: FeatureSpec, data_dir: str | Path,
             state: dict | None = None) -> None:
    """Write the config (with the feature spec and data location) and the weights (``state`` or the model's)."""
    d = Path(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    doc = {**cfg.to_json(), "feature_spec": spec.to_json(), "data_dir": str(Path(data_dir).resolve())}
    (d / CONFIG).write_text(json.dumps(doc, indent=2))
    tensors = {k: v.detach().contiguous() for k, v in (state or model.state_dict()).items()}
    save_file(tensors, str(d / WEIGHTS))


def load_run(run_dir: str | Path) -> tuple[nn.Module, RunConfig, dict]:
    """(model in eval mode, resolved config, raw config document) of a run directory."""
    d = Path(run_dir)
    if not (d / CONFIG).is_file() or not (d / WEIGHTS).is_file():
        raise InputError(f"{d}: not a run directory (needs {CONFIG} and {WEIGHTS}). Fix: run `userlens train` first.")
    doc = json.loads((d / CONFIG).read_text())
    cfg = RunConfig.from_json(doc)
    spec = FeatureSpec(**doc["feature_spec"])
    model = build_model(cfg.model, spec, cfg.model_config)
    model.load_state_dict(load_file(str(d / WEIGHTS)))
    model.eval()
    return model, cfg, doc
