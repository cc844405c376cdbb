"""Reusable blocks; each is tested on its own in tests/layers."""

from __future__ import annotations

from userlens.layers.activation import Dice, make_activation
from userlens.layers.attention import TargetAttention
from userlens.layers.embedding import FeatureEmbedding, masked_mean
from userlens.layers.mlp import MLP

__all__ = ["MLP", "Dice", "FeatureEmbedding", "TargetAttention", "make_activation", "masked_mean"]
