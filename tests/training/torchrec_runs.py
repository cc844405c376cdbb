"""Started by ``tests/training/test_torchrec.py`` under torchrun: several ``fit`` runs in one launch.

One process group serves them all (``fit`` joins the one it finds), so TorchRec and torch are imported
once. ``argv``: prepared data dir, output dir, JSON ``{run name: {config key: value}}`` (``model`` among
them, default din). Rank 0 writes each run to ``<output>/<run name>``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

from userlens.data.prepared import PreparedData
from userlens.training.config import resolve_config
from userlens.training.trainer import fit


def main() -> None:
    data, out, runs = PreparedData(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
    dist.init_process_group("gloo")
    try:
        for name, settings in runs.items():
            model = settings.pop("model", "din")
            fit(data, resolve_config(model, settings), out / name, show_progress=False, log=lambda s: None)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
