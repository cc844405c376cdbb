"""What each config key means: the listing of ``userlens train --help`` and ``userlens models NAME``.

Names, types and defaults are read from the config dataclasses (:class:`TrainConfig`, each registered
model's config), so the listing cannot drift from the code. The meanings live here, one line per key
name; ``tests/training/test_config.py`` fails when a key of any registered model has none.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

from userlens.models.registry import get_model
from userlens.training.config import TrainConfig

#: Training keys (:class:`TrainConfig`): one meaning each, for every model.
TRAIN_KEYS: dict[str, str] = {
    "epochs": "passes over the train split (early stopping may end sooner)",
    "batch_size": "training samples per optimiser step",
    "eval_batch_size": "samples per batch when validating and evaluating",
    "optimizer": "adam, or adamw (decoupled weight decay)",
    "lr": "learning rate",
    "weight_decay": "L2 penalty (adam) or decoupled decay (adamw)",
    "count_features": "counting features (userlens.data.counts) every learned model embeds: all, item, user or "
                      "names (none by default)",
    "patience": "stop after this many consecutive epochs without a better `monitor`",
    "monitor": "validation metric that early stopping and the kept weights optimise",
    "seed": "seeds initialisation, dropout and the shuffle",
    "short_len": "most recent behaviors gathered per sample (the short history)",
    "long_len": "lifelong models: the GSU searches this many most recent behaviors",
    "limit_batches": "debug: train on this many batches per epoch (none: all)",
    "limit_valid_batches": "debug / benchmarks: validate on the first this many batches (none: all; early stopping "
                           "then reads a part of the split)",
    "fast_dev_run": "debug: one train and one valid batch, one epoch",
    "threads": "torch intra-op threads (none: torch's default)",
    "prefetch": "batches prepared ahead in a background thread",
    "user_group": "shuffle runs of this many time-consecutive samples of one user (0: plain shuffle)",
    "compile": "torch.compile the Dice activations (about 2x faster DIN on a CPU)",
    "deterministic": "torch deterministic algorithms while fitting: seeded runs repeat bit for bit",
    "embedding_optimizer": "update rule of the item and category tables: same (as optimizer), sgd, adagrad or "
                           "rowwise_adagrad (fbgemm's; needed by shard_tables)",
    "embedding_lr": "learning rate of embedding_optimizer (none: lr)",
    "shard_tables": "under torchrun, split the item and category tables across ranks with TorchRec: none, table "
                    "or column (pip extra torchrec; README 'Scale')",
}

#: Model keys, by name: a name means the same in every model config that has it.
MODEL_KEYS: dict[str, str] = {
    "embed_dim": "embedding size per id field (an item is item ⊕ category: twice this)",
    "mlp": "hidden layer sizes of the output tower",
    "activation": "activation of the tower and the attention MLPs (din's attention: attention_activation)",
    "attention_activation": "activation of the target-attention MLP",
    "attention_mlp": "hidden layer sizes of the target-attention MLPs (DIN units)",
    "dropout": "dropout rate in the tower (and BST's encoder), in [0, 1)",
    "use_user": "also embed the user id as a feature",
    "batch_norm": "batch-normalise each tower layer before its activation",
    "k": "behaviors the search unit (GSU) passes to the exact unit (ESU)",
    "heads": "attention heads (bst: of the encoder; others: of the exact unit)",
    "head_dim": "size of each attention head",
    "layers": "Transformer encoder layers",
    "max_len": "positions embedded; older behaviors share the last position",
    "gru_dim": "hidden size of the interest GRU and AUGRU",
    "aux_weight": "weight of the auxiliary next-behavior loss",
    "bits": "SimHash signature length (8, 16, 32 or 64)",
    "hash_seed": "seed of the random hash hyperplanes",
    "time_bias": "add the time gap as a scalar logit bias per head",
    "qk_norm": "RMS-normalise queries and keys (unit-scale logits from the start)",
    "esu": "exact unit: multi_head (SIM's target attention) or din",
    "attention_dim": "size of the attention queries and keys",
    "attention_std": "initial standard deviation of the attention tables (dare: of the category table)",
    "attention_item_std": "initial standard deviation of the item attention table",
    "hash_item_weight": "weight of the item id half in what sdim hashes, [w · item ; category] (0: the category only)",
    "time_gap": "each retrieved behavior also carries its time-gap embedding (as SIM's exact unit)",
    "item_init_std": "initial standard deviation of the item id table (category and other tables: 0.02)",
    "tiers": "SimTier bins over the cosine range [-1, 1]",
    "qnn": "hidden layer sizes of the quadratic tower",
    "rounds": "hash functions (rounds × width <= 64)",
    "width": "bits per hash",
    "normalize": "per_round (L2 per hash round) or once (the paper's form)",
    "count": "also feed the tower the log count of colliding behaviors",
    "decay": "recency decay per behavior, newest first (0.99: half-life of about 69 behaviors)",
    "item_weight": "weight of an exact item repeat against one same-category behavior",
}


@dataclass(frozen=True)
class KeyDoc:
    """One config key as ``--set`` takes it: name, value type, default and meaning."""

    name: str
    kind: str
    default: str
    meaning: str


def train_keys() -> list[KeyDoc]:
    """The training keys of every model, in declaration order."""
    return _describe(TrainConfig, TRAIN_KEYS)


def model_keys(model: str) -> list[KeyDoc]:
    """The keys of ``model``'s own config (an unknown model raises ConfigError with the closest name)."""
    return _describe(get_model(model).config_cls, MODEL_KEYS)


def key_lines(keys: list[KeyDoc], indent: str = "  ") -> list[str]:
    """One aligned line per key: ``name  default  kind  meaning``."""
    widths = [max((len(getattr(k, f)) for k in keys), default=0) for f in ("name", "default", "kind")]
    return [f"{indent}{k.name:<{widths[0]}}  {k.default:<{widths[1]}}  {k.kind:<{widths[2]}}  {k.meaning}"
            for k in keys]


def _describe(config_cls: type, meanings: dict[str, str]) -> list[KeyDoc]:
    hints = typing.get_type_hints(config_cls)
    defaults = config_cls()
    return [KeyDoc(f.name, _kind(hints[f.name]), _value(getattr(defaults, f.name)),
                   meanings.get(f.name, "(no description)")) for f in dataclasses.fields(config_cls)]


def _kind(tp: object) -> str:
    """``int``, ``float | none``, ``adam|adamw``, ``ints`` (``200,80``): what ``--set`` accepts."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Literal:
        return "|".join(map(str, args))
    if typing.get_origin(tp) is tuple:
        return f"{_kind(args[0])}s"
    if type(None) in args:
        return f"{_kind(next(a for a in args if a is not type(None)))} | none"
    return getattr(tp, "__name__", str(tp))


def _value(v: object) -> str:
    """A default written as ``--set`` takes it: ``200,80``, ``true``, ``none``."""
    if isinstance(v, tuple):
        return ",".join(map(str, v))
    if isinstance(v, bool):
        return str(v).lower()
    return "none" if v is None else str(v)
