"""Typed, flat run configuration: validated before anything runs, unknown keys rejected.

A run is ``model`` (a registered name) + its model config + a :class:`TrainConfig`.
``--set key=value`` and config files (JSON or TOML) address keys by their plain
name; each key lives in exactly one of the two configs, so a value has one source.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from userlens.data.counts import resolve_count_features
from userlens.errors import ConfigError
from userlens.limits import (MAX_BATCH, MAX_COUNT, MAX_GATHER, MAX_LENGTH, MAX_LONG_LEN, MAX_PREFETCH, MAX_THREADS,
                             MAX_WIDTH, check_int, check_seed)
from userlens.inputs import read_utf8
from userlens.models.registry import get_model


@dataclass
class TrainConfig:
    """Training loop settings (the model's own settings live in its config class)."""

    epochs: int = 10
    # 512, not 1024: a model must learn the general rule within its first pass over the samples, before it
    # starts memorising them; twice the optimiser steps per pass (generated family member sparse-items, few
    # samples per item, 1024 → 512: twin 0.854 → 0.911, sim_soft 0.861 → 0.914; benchmarks/RESULTS.md)
    batch_size: int = 512
    eval_batch_size: int = 8192
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    # early stopping: stop after this many consecutive epochs without a better `monitor` (>= 1). 3 keeps
    # the default runs as they were: the old default 2 stopped after 3 such epochs (an off-by-one); slow
    # starters need it (qin on the generated family: 2 flat epochs, then 0.53 → 0.89 AUC)
    patience: int = 3
    monitor: Literal["auc", "logloss"] = "auc"  # what early stopping and the kept weights optimise
    seed: int = 2024
    short_len: int = 50  # most recent behaviors gathered per sample
    long_len: int = 100_000  # lifelong models: the GSU searches this many most recent behaviors
    limit_batches: int | None = None  # debug: train on this many batches per epoch
    limit_valid_batches: int | None = None  # debug / benchmarks: validate on the first this many batches
    fast_dev_run: bool = False  # debug: one batch of train and valid, one epoch
    threads: int | None = None  # torch intra-op threads (None = torch's default)
    prefetch: int = 2  # batches prepared ahead in a background thread
    # shuffle runs of this many time-consecutive samples of one user (0 = plain shuffle): the lifelong
    # GSUs then read each user's history once per batch (see benchmarks/RESULTS.md for speed and AUC)
    user_group: int = 0
    # counting features (userlens.data.counts: the target item's recent popularity, the user's repeats of its
    # item and category, time since the user last touched them; all strictly before the sample) embedded
    # beside the user / context features of every learned model: names, or the groups all / item / user
    count_features: tuple[str, ...] = ()
    compile: bool = True  # torch.compile the elementwise hot spots (Dice): ~2x faster DIN on CPU
    deterministic: bool = True  # torch deterministic algorithms while fitting: seeded runs repeat bit for bit
    # the item and category tables' own update rule (fbgemm's exact CPU rules, training/table_optim.py), or
    # "same": the `optimizer` above, like every other parameter. TorchRec's fused tables need one of the three
    embedding_optimizer: Literal["same", "sgd", "adagrad", "rowwise_adagrad"] = "same"
    embedding_lr: float | None = None  # learning rate of embedding_optimizer (None: lr)
    # under torchrun, split the item and category tables across the ranks with TorchRec (the torchrec extra):
    # whole tables per rank (table) or blocks of columns (column); training/sharded.py
    shard_tables: Literal["none", "table", "column"] = "none"

    def check(self) -> None:
        positive = ("epochs", "batch_size", "eval_batch_size", "short_len", "long_len")
        for k in positive:
            if getattr(self, k) < 1:
                raise ConfigError(f"{k} must be >= 1, got {getattr(self, k)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a finite number > 0 (e.g. 1e-3), got {self.lr}")
        if not math.isfinite(self.weight_decay) or self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1 (or none for torch's default), got {self.threads}")
        if self.patience < 1:
            raise ConfigError(f"patience must be >= 1 (stop after that many consecutive epochs without a better "
                              f"validation `monitor`; use a large value to never stop early), got {self.patience}")
        if self.user_group < 0:
            raise ConfigError(f"user_group must be >= 0 (0 = plain shuffle), got {self.user_group}")
        if self.weight_decay < 0 or self.prefetch < 0:
            raise ConfigError(f"weight_decay and prefetch must be >= 0, got {self.weight_decay} and {self.prefetch}")
        if self.monitor not in ("auc", "logloss"):
            raise ConfigError(f"monitor must be one of ['auc', 'logloss'], got {self.monitor!r}")
        if self.optimizer not in ("adam", "adamw"):
            raise ConfigError(f"optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")
        if self.embedding_lr is not None and not (math.isfinite(self.embedding_lr) and self.embedding_lr > 0):
            raise ConfigError(f"embedding_lr must be a finite number > 0 (or none for lr), got {self.embedding_lr}")
        try:
            resolve_count_features(self.count_features)
        except ValueError as e:
            raise ConfigError(f"count_features: {e} (e.g. count_features=all)") from None
        self._check_upper_bounds()

    def _check_upper_bounds(self) -> None:
        """Bounds far above real use: beyond them a value fails later and worse (see :mod:`userlens.limits`)."""
        bounds = {"epochs": (1, MAX_COUNT, "epochs"), "patience": (1, MAX_COUNT, "epochs"),
                  "batch_size": (1, MAX_BATCH, "samples in memory at once"),
                  "eval_batch_size": (1, MAX_BATCH, "samples in memory at once"),
                  "short_len": (1, MAX_LENGTH, "behaviors gathered per sample"),
                  "long_len": (1, MAX_LONG_LEN, "behaviors the GSU searches"),
                  "prefetch": (0, MAX_PREFETCH, "whole batches held ahead"),
                  "user_group": (0, MAX_BATCH, "samples of one user in a row")}
        for key, (lo, hi, why) in bounds.items():
            check_int(key, getattr(self, key), lo, hi, why, ConfigError)
        check_seed("seed", self.seed, ConfigError)
        if self.limit_batches is not None:
            check_int("limit_batches", self.limit_batches, 1, MAX_COUNT, "batches per epoch, or none for all",
                      ConfigError)
        if self.limit_valid_batches is not None:
            check_int("limit_valid_batches", self.limit_valid_batches, 1, MAX_COUNT,
                      "validation batches, or none for all", ConfigError)
        if self.threads is not None:
            check_int("threads", self.threads, 1, MAX_THREADS, "torch threads; none = torch's default", ConfigError)
        for key in ("batch_size", "eval_batch_size"):
            if getattr(self, key) * self.short_len > MAX_GATHER:
                raise ConfigError(f"{key} × short_len must be <= {MAX_GATHER:,} (each gathered history field is a "
                                  f"({key}, short_len) int64 array: 2 GiB at the bound), got {getattr(self, key)} × "
                                  f"{self.short_len}. Fix: lower {key} or short_len.")


@dataclass
class RunConfig:
    model: str
    model_config: Any
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_json(self) -> dict:
        return {"model": self.model, "model_config": dataclasses.asdict(self.model_config),
                "train": dataclasses.asdict(self.train)}

    @classmethod
    def from_json(cls, d: dict) -> RunConfig:
        train = dict(d.get("train", {}))
        if train.get("patience") == 0:  # runs saved when patience counted bad epochs *after* the first: same stop
            train["patience"] = 1
        return resolve_config(d["model"], {**d.get("model_config", {}), **train})


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Turn a CLI string / JSON value into the field's declared type, or raise a ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        return _coerce(value, next(a for a in args if a is not type(None)), key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (str, list, tuple)):  # a config file's `"mlp": 200`
            raise ConfigError(f"{key} expects a comma-separated list (a list in a config file), got {value!r}")
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(_coerce(v.strip() if isinstance(v, str) else v, args[0], key) for v in items if v != "")
    if isinstance(value, bool) and tp is not bool:  # JSON / TOML true is no number: never read it as 1
        raise ConfigError(f"{key} expects {getattr(tp, '__name__', tp)}, got {value!r}")
    try:
        if tp is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            return bool(value)
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return tp(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} expects {getattr(tp, '__name__', tp)}, got {value!r}") from None


def _fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def resolve_config(model: str, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Defaults of ``model`` and :class:`TrainConfig`, updated by ``overrides`` (flat keys); validated.

    Raises:
        ConfigError: unknown key (with the closest known one), or a value of the wrong type.
    """
    entry = get_model(model)
    mfields, tfields = _fields(entry.config_cls), _fields(TrainConfig)
    clash = set(mfields) & set(tfields)
    if clash:  # a key must have exactly one home
        raise ConfigError(f"model {model!r} config redefines training keys {sorted(clash)}")
    m_kw, t_kw = {}, {}
    for key, value in (overrides or {}).items():
        if key in mfields:
            m_kw[key] = _coerce(value, mfields[key], key)
        elif key in tfields:
            t_kw[key] = _coerce(value, tfields[key], key)
        else:
            known = sorted(mfields) + sorted(tfields)
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {key!r} for model {model!r}.{hint} Known keys: {', '.join(known)}")
    cfg = RunConfig(model, entry.config_cls(**m_kw), TrainConfig(**t_kw))
    cfg.train.check()
    check_model_config(model, cfg.model_config)
    return cfg


LENGTH_KEYS = ("k", "max_len")  # model ints that count behaviors, not widths


def check_model_config(model: str, config: Any) -> None:
    """Range-check a model config by field kind, then build the model once on a tiny spec.

    Rules: integer sizes (``embed_dim``, ``k``, ``heads`` …, every int but ``*seed``) >= 1 and at most
    4096 (lengths ``k``, ``max_len``: 100,000); seeds in [0, 2**32); floats finite and >= 0, ``dropout``
    in [0, 1); layer sizes (``mlp`` …) all in [1, 4096]; ``activation`` names known. Building on a 3-item spec surfaces the model's own constraints (e.g. SDIM's
    ``rounds × width <= 64``) here, before any data is read.
    """
    from userlens.layers.activation import ACTIVATIONS
    from userlens.models.registry import build_model
    from userlens.models.spec import FeatureSpec

    for f in dataclasses.fields(config):
        v, name = getattr(config, f.name), f.name
        if isinstance(v, bool):
            continue
        if isinstance(v, int) and name.endswith("seed"):
            check_seed(name, v, ConfigError)
        elif isinstance(v, int) and v < 1:
            raise ConfigError(f"{name} must be >= 1, got {v}")
        elif isinstance(v, int):
            hi, why = (MAX_LENGTH, "behaviors per sample") if name in LENGTH_KEYS else (MAX_WIDTH, "a model size")
            check_int(name, v, 1, hi, why, ConfigError)
        if isinstance(v, float):
            if not math.isfinite(v) or v < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {v}")
            if name == "dropout" and not v < 1:
                raise ConfigError(f"dropout must be in [0, 1), got {v}")
        if isinstance(v, tuple) and any(not isinstance(x, int) or not 1 <= x <= MAX_WIDTH for x in v):
            raise ConfigError(f"{name} must be layer sizes in [1, {MAX_WIDTH}] like 200,80; got "
                              f"{','.join(map(str, v))}")
        if (name == "activation" or name.endswith("_activation")) and v not in ACTIVATIONS:
            close = difflib.get_close_matches(str(v), list(ACTIVATIONS), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{name} must be one of {sorted(ACTIVATIONS)}, got {v!r}.{hint}")
    try:
        build_model(model, FeatureSpec(n_users=3, n_items=3, n_categories=3), config)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model {model!r}: {e}") from None


def parse_sets(pairs: list[str]) -> dict[str, str]:
    """``["lr=0.01", "mlp=200,80"]`` → dict; a pair without ``=`` is an error."""
    out = {}
    for p in pairs:
        if "=" not in p:
            raise ConfigError(f"--set expects key=value, got {p!r}")
        k, v = p.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Flat keys from a JSON or TOML file (``model`` may be among them)."""
    p = Path(path)
    text = read_utf8(p, "--config")
    try:
        data = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{p}: cannot parse config ({e}). Fix: use flat JSON or TOML key = value pairs.") from None
    if not isinstance(data, dict) or any(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"{p}: config must be flat key = value pairs (no sections)")
    return data
