"""Item and category tables sharded across torchrun ranks with TorchRec (``shard_tables``: table / column).

Optional: TorchRec is imported only here, only when ``shard_tables`` is set (``pip install
./packaging/fbgemm-gpu-shim -e '.[torchrec]'``, README "Scale"). A sharded run saves an ordinary
``model.safetensors`` (the shards gathered to rank 0), so ``evaluate``, ``export`` and ``serve`` never
import TorchRec.

How a step looks up the tables (:class:`ShardedItemTables`):

- Before the model runs, :meth:`~ShardedItemTables.prefetch` takes the batch's item and category ids (short
  history and target), drops padding (0) and duplicates, and looks the unique ids up in one TorchRec
  ``EmbeddingCollection`` call (an all-to-all to the ranks that hold each table or column block). The model's
  ``embedding.item`` / ``embedding.category`` are :class:`_Lookup` modules that gather from those rows, so
  model code is unchanged and every id is looked up once per step: the gradient of a row is the sum of its
  uses, as with :class:`~userlens.layers.embedding.Table`, and the fused optimizer updates it once.
- Only models that embed nothing but the batch's ids can do this: ``shardable_tables = True`` on the model
  class (din, avgpool, bst, dien, tin). Models that read the whole item table (sim_soft, eta, sdim, dare,
  qin / muse without content) or embed ids their search picks from the long history (sim_hard, twin …) are
  refused before anything runs.
- The lookups run on a process group of their own, so their all-to-alls never interleave with DDP's
  all-reduce of the other parameters. Validation pads the ranks with fewer batches with empty lookups:
  every rank must join every all-to-all.
- Backward updates the looked-up rows in place with fbgemm's fused optimizer (``embedding_optimizer``:
  sgd, adagrad, rowwise_adagrad; CPU fbgemm has no Adam), after dividing the gradients by the world
  size as DDP averages the dense ones, so ``loss_weight`` stays right.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from userlens.errors import ConfigError, TrainingError
from userlens.layers.embedding import FeatureEmbedding, Table
from userlens.training.distributed import World
from userlens.training.table_optim import EPS

#: the install line every refusal names (run from a userlens checkout)
INSTALL = "pip install ./packaging/fbgemm-gpu-shim -e '.[torchrec]'"
#: embedding_optimizer → fbgemm's fused CPU optimizer
FUSED = {"sgd": "exact_sgd", "adagrad": "exact_adagrad", "rowwise_adagrad": "exact_row_wise_adagrad"}
SHARDING = {"table": "table_wise", "column": "column_wise"}
TABLES = ("item", "category")
#: batch fields whose ids each table serves (history field, target field)
IDS = {"item": ("item", "target_item"), "category": ("category", "target_category")}


def torchrec_missing() -> str | None:
    """Why TorchRec cannot be used here (``ImportError``, or ``OSError`` for an fbgemm built for another
    torch), or None when it imports."""
    try:
        import fbgemm_gpu  # noqa: F401
        import torchrec  # noqa: F401
    except (ImportError, OSError) as e:
        return f"{type(e).__name__}: {str(e)[:200]}"
    return None


def shardable_models() -> list[str]:
    """Registered models whose class sets ``shardable_tables`` (built once on a 3-item spec)."""
    from userlens.models.registry import build_model, list_models
    from userlens.models.spec import FeatureSpec

    spec = FeatureSpec(n_users=3, n_items=3, n_categories=3)
    return sorted(e.name for e in list_models() if getattr(build_model(e.name, spec), "shardable_tables", False))


def check_sharding(cfg: Any, world: World) -> None:
    """Refuse a ``shard_tables`` run that cannot work, before any process group or data: no TorchRec, one
    process, a model that is not shardable, an optimizer fbgemm has not on CPU."""
    t = cfg.train
    if t.shard_tables == "none":
        return
    key = f"shard_tables={t.shard_tables}"
    why = torchrec_missing()
    if why is not None:
        raise ConfigError(f"{key} needs TorchRec, which does not import here ({why}). Fix: from the userlens "
                          f"checkout run `{INSTALL}` (the shim keeps pip from pulling the CUDA fbgemm-gpu; README "
                          "'Scale'), or set shard_tables=none")
    if not world.distributed:
        raise ConfigError(f"{key} splits the item and category tables across torchrun ranks, but this is one "
                          "process. Fix: launch with `torchrun --nproc-per-node 2 -m userlens train ...`, or set "
                          "shard_tables=none")
    from userlens.models.registry import build_model
    from userlens.models.spec import FeatureSpec

    model = build_model(cfg.model, FeatureSpec(n_users=3, n_items=3, n_categories=3), cfg.model_config)
    if not getattr(model, "shardable_tables", False):
        raise ConfigError(f"{key}: model {cfg.model!r} reads more of the item table than a batch's ids (the whole "
                          "table, or ids its search picks from the long history), which sharded lookups do not "
                          f"serve. Fix: use one of {shardable_models()}, or shard_tables=none")
    if t.embedding_optimizer not in FUSED:
        raise ConfigError(f"{key}: TorchRec on CPU updates its tables with fbgemm's fused optimizers, which have "
                          f"no {t.optimizer}; embedding_optimizer={t.embedding_optimizer!r}. Fix: set "
                          f"embedding_optimizer to one of {sorted(FUSED)} (the other parameters keep "
                          f"optimizer={t.optimizer})")


class _Lookup(nn.Module):
    """``embedding.item`` / ``embedding.category`` while sharded: rows of the step's prefetched unique ids."""

    def __init__(self, tables: ShardedItemTables, name: str, dim: int) -> None:
        super().__init__()
        self._tables, self.name, self.dim = tables, name, dim

    def forward(self, ids: Tensor) -> Tensor:
        uniq, rows = self._tables.cache[self.name]  # (U,) sorted ids, (U, D)
        flat = ids.reshape(-1)
        if len(uniq):
            pos = torch.searchsorted(uniq, flat).clamp_max(len(uniq) - 1)
            ok = (flat == 0) | (uniq[pos] == flat)
        else:
            pos, ok = torch.zeros_like(flat), flat == 0
        if not bool(ok.all()):
            raise TrainingError(f"a sharded {self.name} lookup asked for ids outside the batch's history and "
                                "target; the model's shardable_tables is wrong. Fix: train it with shard_tables=none")
        table = torch.cat([rows.new_zeros(1, self.dim), rows])  # row 0: padding, zero, no gradient
        return table.index_select(0, torch.where(flat == 0, 0, pos + 1)).view(*ids.shape, self.dim)


class ShardedItemTables:
    """The item and category tables of ``embedding`` in a TorchRec ``EmbeddingCollection`` sharded over the
    ranks (``sharding``: table or column), initialised from the plain tables' weights (which it then replaces
    with :class:`_Lookup` modules). Every rank builds it at the same point (collective)."""

    def __init__(self, embedding: FeatureEmbedding, sharding: str, optimizer: str, lr: float, world: World) -> None:
        from fbgemm_gpu.split_embedding_configs import EmbOptimType
        from torchrec import EmbeddingCollection, EmbeddingConfig
        from torchrec.distributed.embedding import EmbeddingCollectionSharder
        from torchrec.distributed.model_parallel import DistributedModelParallel
        from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
        from torchrec.distributed.types import ShardingEnv

        self.world, self.dim, self.lookups = world, embedding.dim, 0
        self.cache: dict[str, tuple[Tensor, Tensor]] = {}
        self._batch: object = None
        plain = {t: getattr(embedding, t) for t in TABLES}
        self.rows = {t: plain[t].num_embeddings for t in TABLES}
        self.pg = dist.new_group(backend="gloo")  # the lookups' own: never interleaved with DDP's all-reduce
        ec = EmbeddingCollection(tables=[EmbeddingConfig(name=t, embedding_dim=self.dim, num_embeddings=self.rows[t],
                                                         feature_names=[t]) for t in TABLES],
                                 device=torch.device("meta"))
        sharder = EmbeddingCollectionSharder(fused_params={"optimizer": EmbOptimType(FUSED[optimizer]),
                                                           "learning_rate": lr, "eps": EPS})
        # column-wise: one block of dim / N columns per rank (the planner would otherwise keep 1 block)
        constraints = {t: ParameterConstraints(sharding_types=[SHARDING[sharding]], compute_kernels=["fused"],
                                               min_partition=max(1, self.dim // world.size)) for t in TABLES}
        planner = EmbeddingShardingPlanner(topology=Topology(world_size=world.size, compute_device="cpu"),
                                           constraints=constraints)
        self.plan = planner.collective_plan(ec, [sharder], self.pg)
        self.dmp = DistributedModelParallel(ec, env=ShardingEnv.from_process_group(self.pg),
                                            device=torch.device("cpu"), plan=self.plan, sharders=[sharder])
        with torch.no_grad():
            for t, st in self._sharded().items():
                for s in st.local_shards():
                    (r0, c0), (r, c) = s.metadata.shard_offsets, s.metadata.shard_sizes
                    s.tensor.copy_(plain[t].weight[r0:r0 + r, c0:c0 + c])
        for t in TABLES:
            setattr(embedding, t, _Lookup(self, t, self.dim))

    def _sharded(self) -> dict[str, Any]:
        """table → its ``ShardedTensor`` (views of the fused weights)."""
        return {t: v for k, v in self.dmp.state_dict().items() for t in TABLES if k.endswith(f".{t}.weight")}

    def placement(self) -> dict[str, list[dict[str, Any]]]:
        """table → its blocks: row / column offsets and sizes, and the rank holding each."""
        return {t: [{"offsets": list(sm.shard_offsets), "sizes": list(sm.shard_sizes), "rank": sm.placement.rank()}
                    for sm in ps.sharding_spec.shards]
                for mp in self.plan.plan.values() for t, ps in mp.items()}

    def prefetch(self, batch: Any) -> None:
        """Look up the batch's unique non-padding item and category ids (one all-to-all); a no-op for the batch
        already fetched (the forward hook and the training step may both ask)."""
        if batch is self._batch:
            return
        # fbgemm's CPU lookup is registered behind its autograd kernel only, which inference mode skips
        # (predict runs in it): look up outside it, without a graph when none is wanted
        grad = torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        with torch.inference_mode(False), torch.set_grad_enabled(grad):
            self._fetch(batch)
        self._batch = batch
        self.lookups += 1

    def _fetch(self, batch: Any) -> None:
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

        uniq = {}
        for t, (hist, target) in IDS.items():
            parts = [batch.history[hist].reshape(-1)] if hist in batch.history.values else []
            parts += [batch.target[target].reshape(-1)] if target in batch.target else []
            u = torch.unique(torch.cat(parts)) if parts else torch.zeros(0, dtype=torch.int64)
            uniq[t] = u[u != 0]
        stride = max(1, *(len(u) for u in uniq.values()))
        lengths = torch.cat([(torch.arange(stride) < len(uniq[t])).long() for t in TABLES])
        kjt = KeyedJaggedTensor.from_lengths_sync(keys=list(TABLES), values=torch.cat([uniq[t] for t in TABLES]),
                                                  lengths=lengths)
        out = self.dmp(kjt)
        self.cache = {t: (uniq[t], out[t].values()) for t in TABLES}

    def most_over_ranks(self, n: int) -> int:
        """The largest ``n`` of all ranks (validation: the most batches any rank scores)."""
        x = torch.tensor([n])
        dist.all_reduce(x, op=dist.ReduceOp.MAX, group=self.pg)
        return int(x)

    @torch.no_grad()
    def idle(self, n: int) -> None:
        """``n`` empty lookups: a rank that ran out of validation batches joins the others' all-to-alls."""
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

        for _ in range(n):
            with torch.inference_mode(False):
                self.dmp(KeyedJaggedTensor.from_lengths_sync(
                    keys=list(TABLES), values=torch.zeros(0, dtype=torch.int64),
                    lengths=torch.zeros(len(TABLES), dtype=torch.int64)))
            self.lookups += 1
        self._batch, self.cache = None, {}

    def gather(self) -> dict[str, Tensor]:
        """The full tables on rank 0 (collective; the other ranks get {})."""
        out = {}
        for t, st in self._sharded().items():
            full = torch.empty(tuple(st.size())) if self.world.is_main else None
            st.gather(dst=0, out=full)
            if full is not None:
                out[t] = full
        return out


def embedding_of(model: nn.Module) -> tuple[str, FeatureEmbedding]:
    """(name, module) of the model's :class:`FeatureEmbedding` (shardable models have exactly one)."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, FeatureEmbedding)]
    if len(found) != 1:
        raise TrainingError(f"{type(model).__name__} has {len(found)} FeatureEmbedding modules; sharding needs one")
    return found[0]


def full_state(model: nn.Module, tables: ShardedItemTables) -> dict[str, Tensor]:
    """The model's state dict as a plain run holds it (``<embedding>.item.weight`` … gathered to rank 0, where
    the keys follow the plain model's order); on other ranks, the dense part only."""
    name, _ = embedding_of(model)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    full = tables.gather()
    if not full:
        return state
    prefix = f"{name}." if name else ""
    return {**{f"{prefix}{t}.weight": full[t] for t in TABLES}, **state}


def unshard(model: nn.Module, tables: ShardedItemTables) -> None:
    """Put plain :class:`Table` modules (zeros, to be loaded) back in place of the lookups (rank 0, to save)."""
    _, emb = embedding_of(model)
    for t in TABLES:
        setattr(emb, t, Table(tables.rows[t], tables.dim, padding_idx=0))
