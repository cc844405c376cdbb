"""Models: one file each, registered by name, built from :mod:`userlens.layers`; they return logits."""

from __future__ import annotations

from userlens.models.registry import build_model, get_model, list_models, register_model
from userlens.models.spec import FeatureSpec

__all__ = ["FeatureSpec", "build_model", "get_model", "list_models", "register_model"]
