"""The tables' own optimizers (``embedding_optimizer``) and the ``shard_tables`` refusals; no TorchRec needed.

The sharded runs themselves, and the proof that TorchRec's fused updates equal :class:`TableOptimizer`, are
in ``test_torchrec.py`` (skipped where the extra is absent).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from userlens.data.prepared import PreparedData
from userlens.errors import ConfigError
from userlens.training import sharded
from userlens.training.config import resolve_config
from userlens.training.distributed import World
from userlens.training.table_optim import EPS, TableOptimizer
from userlens.training.trainer import fit


def _step(kind: str, w0: torch.Tensor, grads: list[torch.Tensor], lr: float = 0.1) -> torch.Tensor:
    w = torch.nn.Parameter(w0.clone())
    opt = TableOptimizer([w], kind, lr)  # type: ignore[arg-type]
    for g in grads:
        w.grad = g.clone()
        opt.step()
    return w.detach()


def test_table_optimizers_follow_fbgemms_exact_rules() -> None:
    torch.manual_seed(0)
    w0 = torch.randn(4, 3)
    g1, g2 = torch.randn(4, 3), torch.randn(4, 3)
    g1[2], g2[3] = 0, 0  # untouched rows keep their weights (and state)
    assert torch.allclose(_step("sgd", w0, [g1, g2]), w0 - 0.1 * (g1 + g2))
    s = g1 * g1
    w = w0 - 0.1 * g1 / (s.sqrt() + EPS)
    s = s + g2 * g2
    w = w - 0.1 * g2 / (s.sqrt() + EPS) * (g2 != 0).any(1, keepdim=True)
    assert torch.allclose(_step("adagrad", w0, [g1, g2]), w, atol=1e-6)
    r = (g1 * g1).mean(1, keepdim=True)
    w = w0 - 0.1 * g1 / (r.sqrt() + EPS)
    r = r + (g2 * g2).mean(1, keepdim=True)
    w = w - 0.1 * g2 / (r.sqrt() + EPS) * (g2 != 0).any(1, keepdim=True)
    assert torch.allclose(_step("rowwise_adagrad", w0, [g1, g2]), w, atol=1e-6)


def test_a_plain_run_updates_its_tables_with_the_embedding_optimizer(small_data: PreparedData, tmp_path: Path) -> None:
    """sgd with a zero-ish rate leaves the tables where they started; Adam moves everything else."""
    base = {"epochs": "1", "limit_batches": "2", "batch_size": "64", "compile": "false", "threads": "1"}
    fit(small_data, resolve_config("avgpool", {**base, "embedding_optimizer": "sgd", "embedding_lr": "1e-30"}),
        tmp_path / "sgd", show_progress=False, log=lambda s: None)
    fit(small_data, resolve_config("avgpool", {**base, "lr": "1e-30"}), tmp_path / "frozen", show_progress=False,
        log=lambda s: None)  # Adam at ~0 rate: every weight as initialised
    from safetensors.numpy import load_file

    a, b = load_file(str(tmp_path / "sgd" / "model.safetensors")), load_file(str(tmp_path / "frozen" / "model.safetensors"))
    tables = {"embedding.item.weight", "embedding.category.weight"}
    assert all((a[k] == b[k]).all() for k in tables)
    assert any(not (a[k] == b[k]).all() for k in a.keys() - tables)
    assert json.loads((tmp_path / "sgd" / "config.json").read_text())["train"]["embedding_optimizer"] == "sgd"


def test_sharding_without_the_extra_names_the_install_line(small_data: PreparedData, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchrec", None)  # import torchrec now raises ImportError
    cfg = resolve_config("din", {"shard_tables": "column", "embedding_optimizer": "adagrad"})
    with pytest.raises(ConfigError, match=r"shard_tables=column needs TorchRec.*Fix: .*`pip install "
                                          r"\./packaging/fbgemm-gpu-shim -e '\.\[torchrec\]'`"):
        fit(small_data, cfg, tmp_path / "run", show_progress=False, log=lambda s: None)
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


def test_sharding_refuses_one_process_whole_table_models_and_adam(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sharded, "torchrec_missing", lambda: None)  # as if installed
    two = World(0, 2, 0)
    ok = {"shard_tables": "table", "embedding_optimizer": "rowwise_adagrad"}
    sharded.check_sharding(resolve_config("din", ok), two)
    with pytest.raises(ConfigError, match="this is one process. Fix: launch with `torchrun"):
        sharded.check_sharding(resolve_config("din", ok), World())
    with pytest.raises(ConfigError, match=r"model 'sim_soft' reads more of the item table.*\['avgpool', 'bst', "
                                          r"'dien', 'din', 'tin'\]"):
        sharded.check_sharding(resolve_config("sim_soft", ok), two)
    with pytest.raises(ConfigError, match="no adam; embedding_optimizer='same'. Fix: set embedding_optimizer"):
        sharded.check_sharding(resolve_config("din", {"shard_tables": "table"}), two)
