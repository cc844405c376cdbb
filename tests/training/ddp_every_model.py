"""Run under torchrun by ``test_distributed.py``: every registered model trains 2 epochs of 3 batches under DDP.

Prints one JSON line per model from rank 0: its replica digests (equal) or the error it raised.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

from userlens.data.prepared import PreparedData
from userlens.models.registry import list_models
from userlens.training.config import resolve_config
from userlens.training.distributed import World, process_group
from userlens.training.trainer import fit


def main(data_dir: str, out: str) -> None:
    world = World.from_env()
    data = PreparedData(data_dir)
    with process_group(world):  # one group for every fit (fit leaves a group it did not make in place)
        for entry in list_models():
            cfg = resolve_config(entry.name, {"epochs": 2, "limit_batches": 3, "batch_size": 64, "compile": False,
                                              "threads": 1, "long_len": 500, "user_group": 4})
            try:
                fit(data, cfg, Path(out) / entry.name, show_progress=False, log=lambda s: None)
                doc = json.loads((Path(out) / entry.name / "config.json").read_text())
                row = {"model": entry.name, "digests": doc.get("distributed", {}).get("replica_digests")}
            except Exception as e:  # noqa: BLE001 - reported per model, the test names it
                row = {"model": entry.name, "error": f"{type(e).__name__}: {e}"}
            dist.barrier()
            if world.is_main:
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
