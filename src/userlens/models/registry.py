"""One registry of models by explicit name: ``@register_model("din", DINConfig)`` on a builder."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from userlens.errors import ConfigError
from userlens.models.spec import FeatureSpec


@dataclass(frozen=True)
class ModelEntry:
    name: str
    build: Callable[[FeatureSpec, Any], nn.Module]
    config_cls: type
    summary: str


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, config_cls: type, summary: str) -> Callable:
    """Register ``build(spec, config) -> nn.Module`` under ``name``; the config must be a dataclass."""
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"{config_cls!r} must be a dataclass")

    def deco(build: Callable[[FeatureSpec, Any], nn.Module]) -> Callable[[FeatureSpec, Any], nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(name, build, config_cls, summary)
        return build

    return deco


def get_model(name: str) -> ModelEntry:
    """The entry of ``name``; an unknown name lists the known ones and the closest match."""
    _load_builtin()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown model {name!r}; registered: {', '.join(sorted(_REGISTRY))}.{hint}")
    return _REGISTRY[name]


def list_models() -> list[ModelEntry]:
    _load_builtin()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def build_model(name: str, spec: FeatureSpec, config: Any | None = None) -> nn.Module:
    """Build a registered model; ``config`` defaults to its config class's defaults."""
    entry = get_model(name)
    cfg = config if config is not None else entry.config_cls()
    if not isinstance(cfg, entry.config_cls):
        raise ConfigError(f"model {name!r} takes a {entry.config_cls.__name__}, got {type(cfg).__name__}")
    return entry.build(spec, cfg)


def _load_builtin() -> None:
    # Importing the model modules runs their @register_model decorators.
    from userlens.models import (  # noqa: F401
        avgpool, bst, dare, dien, din, eta, history_match, muse, popularity, qin, sdim, sim_hard, sim_soft, tin, twin,
    )
