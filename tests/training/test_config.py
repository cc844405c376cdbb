from __future__ import annotations

import pytest

from userlens.errors import ConfigError
from userlens.training.config import RunConfig, load_config_file, parse_sets, resolve_config


def test_defaults_and_overrides_are_typed() -> None:
    cfg = resolve_config("din", {"lr": "0.01", "mlp": "64,32", "use_user": "true", "limit_batches": "none"})
    assert cfg.train.lr == 0.01 and cfg.model_config.mlp == (64, 32) and cfg.model_config.use_user is True
    assert cfg.train.limit_batches is None
    assert RunConfig.from_json(cfg.to_json()).to_json() == cfg.to_json()


def test_unknown_key_names_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'learning_rat'.*Known keys"):
        resolve_config("din", {"learning_rat": 1})
    with pytest.raises(ConfigError, match=r"unknown config key 'embed_dimm'.*Did you mean 'embed_dim'"):
        resolve_config("din", {"embed_dimm": 8})


def test_bad_values_are_rejected_before_running() -> None:
    with pytest.raises(ConfigError, match="epochs expects int, got 'many'"):
        resolve_config("din", {"epochs": "many"})
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        resolve_config("din", {"batch_size": 0})
    with pytest.raises(ConfigError, match="optimizer must be one of"):
        resolve_config("din", {"optimizer": "sgd"})
    with pytest.raises(ConfigError, match=r"unknown model 'dinn'.*Did you mean 'din'"):
        resolve_config("dinn")
    with pytest.raises(ConfigError, match="--set expects key=value"):
        parse_sets(["lr"])


def test_config_files(tmp_path) -> None:
    (tmp_path / "a.toml").write_text('model = "din"\nlr = 0.002\nmlp = [100, 50]\n')
    assert load_config_file(tmp_path / "a.toml") == {"model": "din", "lr": 0.002, "mlp": [100, 50]}
    cfg = resolve_config("din", {k: v for k, v in load_config_file(tmp_path / "a.toml").items() if k != "model"})
    assert cfg.model_config.mlp == (100, 50)
    (tmp_path / "b.toml").write_text("[train]\nlr = 1\n")
    with pytest.raises(ConfigError, match="flat"):
        load_config_file(tmp_path / "b.toml")


def test_every_config_key_of_every_model_has_a_meaning() -> None:
    """`userlens train --help` / `userlens models NAME` read keys from the dataclasses; a new key needs a meaning."""
    from userlens.models import list_models
    from userlens.training.keys import MODEL_KEYS, TRAIN_KEYS, model_keys, train_keys

    listed = train_keys() + [k for e in list_models() for k in model_keys(e.name)]
    assert [k.name for k in listed if k.meaning == "(no description)"] == []
    used = {k.name for k in listed}
    assert set(TRAIN_KEYS) | set(MODEL_KEYS) <= used  # no meaning left for a key that is gone
    assert set(TRAIN_KEYS).isdisjoint(MODEL_KEYS)  # a key has one home (resolve_config enforces it too)


def test_keys_are_described_as_set_takes_them() -> None:
    from userlens.training.keys import model_keys, train_keys

    t = {k.name: k for k in train_keys()}
    assert (t["optimizer"].kind, t["optimizer"].default) == ("adam|adamw", "adam")
    assert (t["threads"].kind, t["threads"].default) == ("int | none", "none")
    assert (t["compile"].kind, t["compile"].default) == ("bool", "true")
    m = {k.name: k for k in model_keys("din")}
    assert (m["mlp"].kind, m["mlp"].default) == ("ints", "200,80")
    # the listed defaults, given back through --set, are the defaults
    back = resolve_config("din", {**{k: v.default for k, v in m.items()}, **{k: v.default for k, v in t.items()}})
    assert back.to_json() == resolve_config("din").to_json()


@pytest.mark.parametrize(("key", "value", "match"), [
    ("threads", 100_000, r"threads must be in \[1, 1,024\]"),
    ("short_len", 10**12, r"short_len must be in \[1, 100,000\]"),
    ("long_len", 10**12, r"long_len must be in \[1, 10,000,000\]"),
    ("batch_size", 10**9, r"batch_size must be in \[1, 1,048,576\]"),
    ("eval_batch_size", 10**9, r"eval_batch_size must be in \[1, 1,048,576\]"),
    ("epochs", 10**9, r"epochs must be in \[1, 1,000,000\]"),
    ("patience", 10**9, r"patience must be in \[1, 1,000,000\]"),
    ("prefetch", 10**6, r"prefetch must be in \[0, 64\]"),
    ("user_group", 10**9, r"user_group must be in \[0, 1,048,576\]"),
    ("limit_batches", -3, r"limit_batches must be in \[1, 1,000,000\]"),
    ("limit_batches", 0, r"limit_batches must be in \[1,"),
    ("seed", -1, r"seed must be in \[0, 4,294,967,295\]"),
    ("seed", 2**70, r"seed must be in \[0, 4,294,967,295\]"),
    ("embed_dim", 10**13, r"embed_dim must be in \[1, 4,096\] \(a model size\)"),
    ("mlp", "200,100000", r"mlp must be layer sizes in \[1, 4096\]"),
])
def test_every_training_option_has_an_upper_bound(key: str, value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve_config("din", {key: value})


@pytest.mark.parametrize(("model", "key", "value", "match"), [
    ("sim_soft", "k", 10**9, r"k must be in \[1, 100,000\] \(behaviors per sample\)"),
    ("bst", "max_len", 10**9, r"max_len must be in \[1, 100,000\]"),
    ("bst", "layers", 10**6, r"layers must be in \[1, 4,096\]"),
    ("eta", "hash_seed", -1, r"hash_seed must be in \[0, 4,294,967,295\]"),
])
def test_model_sizes_and_seeds_are_bounded(model: str, key: str, value: int, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve_config(model, {key: value})


def test_batch_times_short_len_is_bounded_together() -> None:
    resolve_config("din", {"short_len": 100_000, "batch_size": 1024, "eval_batch_size": 1024})  # each alone is fine
    with pytest.raises(ConfigError, match=r"eval_batch_size × short_len must be <= 268,435,456.*Fix: lower"):
        resolve_config("din", {"short_len": 100_000})  # with the default eval batch of 8192
