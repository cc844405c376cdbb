"""TorchRec-sharded item and category tables (``shard_tables``) under torchrun, against plain DDP.

Skipped, with the reason, where the torchrec extra does not import (``ImportError``, or ``OSError`` from an
fbgemm built for another torch, which ``pytest.importorskip`` would not catch). The refusals that need no
TorchRec are tested in ``test_table_optim.py``, which always runs.

Default suite: one 2-rank launch (~15 s on 2 cores) training DIN three times on tiny data with the same
seed and ``embedding_optimizer=adagrad`` (elementwise, so the result does not depend on how columns are
split): plain DDP, table-wise and column-wise. The sharded runs must reach plain DDP's weights (float
summation order only), keep the dense replicas equal, spread the tables as asked, and save a run that
``evaluate`` and ``export`` read like any other. Slow: rowwise_adagrad and sgd, and DIEN (forward_train).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from userlens.training.sharded import INSTALL

try:
    import fbgemm_gpu  # noqa: F401
    import torchrec  # noqa: F401
except (ImportError, OSError) as e:  # OSError: an fbgemm_gpu built against another torch (ABI mismatch)
    pytest.skip(f"the torchrec extra does not import here ({type(e).__name__}: {str(e)[:150]}); install it with "
                f"`{INSTALL}`", allow_module_level=True)

from userlens.data.prepared import PreparedData  # noqa: E402
from userlens.training.distributed import state_digest  # noqa: E402
from userlens.training.evaluate import evaluate_run  # noqa: E402

pytestmark = pytest.mark.torchrec

HERE = Path(__file__).resolve().parent
TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parents[1] / "src")}
# a DIN without batch statistics, a few steps (see test_distributed.py)
FAST = {"epochs": "2", "batch_size": "128", "compile": "false", "threads": "1", "lr": "0.003",
        "activation": "prelu", "attention_activation": "prelu", "batch_norm": "false", "embedding_lr": "0.05"}
TABLES = ("embedding.item.weight", "embedding.category.weight")


def _launch(data: Path, out: Path, runs: dict[str, dict[str, str]]) -> None:
    cmd = [TORCHRUN, "--nproc-per-node", "2", "--standalone", str(HERE / "torchrec_runs.py"), str(data), str(out),
           json.dumps(runs)]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-4000:]


def _max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


@pytest.fixture(scope="module")
def adagrad_runs(small_data: PreparedData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("torchrec")
    opt = {**FAST, "embedding_optimizer": "adagrad"}
    _launch(small_data.path, out, {"ddp": opt, "table": {**opt, "shard_tables": "table"},
                                   "column": {**opt, "shard_tables": "column"}})
    return out


def test_table_and_column_wise_train_to_plain_ddps_weights(adagrad_runs: Path) -> None:
    ddp = load_file(str(adagrad_runs / "ddp" / "model.safetensors"))
    for sharding in ("table", "column"):
        run = adagrad_runs / sharding
        got = load_file(str(run / "model.safetensors"))
        assert _max_diff(ddp, got) < 2e-5, sharding  # float summation order only
        assert all(got[k].shape == ddp[k].shape for k in TABLES)  # whole tables, gathered from the shards
        doc = json.loads((run / "config.json").read_text())
        digests = doc["distributed"]["replica_digests"]
        assert len(digests) == 2 and digests[0] == digests[1]  # the dense replicas agree
        blocks = doc["sharded"]["placement"]
        if sharding == "table":  # each table whole on one rank, the two on different ranks
            assert [len(blocks[t]) for t in ("item", "category")] == [1, 1]
            assert {blocks[t][0]["rank"] for t in ("item", "category")} == {0, 1}
        else:  # each table in two blocks of half the columns, one per rank
            dim = ddp["embedding.item.weight"].shape[1]
            for t in ("item", "category"):
                assert sorted(b["offsets"][1] for b in blocks[t]) == [0, dim // 2]
                assert {b["rank"] for b in blocks[t]} == {0, 1} and all(b["sizes"][1] == dim // 2 for b in blocks[t])


def test_a_sharded_run_evaluates_and_exports_like_any_other(adagrad_runs: Path, tmp_path: Path) -> None:
    from userlens.serving.package import export_package, load_package

    run = adagrad_runs / "column"
    want, got = evaluate_run(adagrad_runs / "ddp"), evaluate_run(run)
    assert got["n"] == want["n"] and abs(got["auc"] - want["auc"]) < 1e-4
    export_package(run, tmp_path / "pkg")
    packaged = load_package(tmp_path / "pkg").model.state_dict()
    saved = load_file(str(run / "model.safetensors"))
    assert state_digest(packaged) == state_digest({k: torch.from_numpy(v) for k, v in saved.items()})


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["rowwise_adagrad", "sgd"])
def test_table_wise_matches_plain_ddp_with_other_optimizers(small_data: PreparedData, tmp_path: Path,
                                                           optimizer: str) -> None:
    """rowwise_adagrad only table-wise: column-wise keeps one accumulator per row per column block."""
    opt = {**FAST, "embedding_optimizer": optimizer}
    runs = {"ddp": opt, "table": {**opt, "shard_tables": "table"}}
    if optimizer == "sgd":
        runs["column"] = {**opt, "shard_tables": "column"}
    _launch(small_data.path, tmp_path, runs)
    ddp = load_file(str(tmp_path / "ddp" / "model.safetensors"))
    for name in runs:
        assert _max_diff(ddp, load_file(str(tmp_path / name / "model.safetensors"))) < 2e-5, name


@pytest.mark.slow
def test_dien_trains_sharded_through_forward_train(small_data: PreparedData, tmp_path: Path) -> None:
    opt = {"model": "dien", "epochs": "1", "batch_size": "128", "compile": "false", "threads": "1",
           "embedding_optimizer": "sgd", "embedding_lr": "0.05"}
    _launch(small_data.path, tmp_path, {"ddp": opt, "table": {**opt, "shard_tables": "table"}})
    a = load_file(str(tmp_path / "ddp" / "model.safetensors"))
    assert _max_diff(a, load_file(str(tmp_path / "table" / "model.safetensors"))) < 1e-4
