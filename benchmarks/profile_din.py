"""Where DIN's training time goes, per sample: batch building, forward, backward, optimizer, per operator.

Steady state on the peers' samples (as ``bench_train.py``, the peers' settings:
batch 1024, Adam 1e-3, history 50, Dice compiled as in training): warm-up steps
first (compile), then timed steps split into phases, then the same steps under the
torch profiler for the operator table. Batches are built in the timed loop (no
prefetch thread) so the loader's share is visible.

    .venv/bin/python benchmarks/profile_din.py --dataset taobao-userbehavior-sample --threads 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import prepared  # noqa: E402  (the peers' samples, prepared once)

from userlens.data.loader import BatchLoader  # noqa: E402
from userlens.layers.activation import compile_hot_layers  # noqa: E402
from userlens.models.registry import build_model  # noqa: E402
from userlens.models.spec import FeatureSpec  # noqa: E402
from userlens.training.config import resolve_config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="taobao-userbehavior-sample")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="userlens-profile-din-"))
    data = prepared(args.dataset, work)
    cfg = resolve_config("din", {"batch_size": 1024, "short_len": 50})
    torch.manual_seed(2024)
    model = build_model("din", FeatureSpec.from_meta(data.meta), cfg.model_config).train()
    compile_hot_layers(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = BatchLoader(data, "train", model.fields, 1024, 50, shuffle=True, seed=0, prefetch=0)

    def batches():  # type: ignore[no-untyped-def]
        while True:
            yield from loader

    it = batches()
    for _ in range(args.warmup):
        b = next(it)
        loss = F.binary_cross_entropy_with_logits(model(b), b.label)
        opt.zero_grad()
        loss.backward()
        opt.step()
    phases = {"batch": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    n = 0
    for _ in range(args.steps):
        t0 = time.perf_counter()
        b = next(it)
        t1 = time.perf_counter()
        loss = F.binary_cross_entropy_with_logits(model(b), b.label)
        t2 = time.perf_counter()
        opt.zero_grad()
        loss.backward()
        t3 = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        for k, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            phases[k] += dt
        n += len(b)
    total = sum(phases.values())
    print(f"# DIN, {args.dataset}, {args.threads} thread(s), {args.steps} steady steps of 1,024, "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    print(f"{n / total:,.0f} samples/s; {total / n * 1e6:.1f} µs per sample\n")
    print("| phase | µs per sample | share |\n|---|---|---|")
    for k, v in phases.items():
        print(f"| {k} | {v / n * 1e6:.1f} | {v / total:.0%} |")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(min(args.steps, 10)):
            b = next(it)
            loss = F.binary_cross_entropy_with_logits(model(b), b.label)
            opt.zero_grad()
            loss.backward()
            opt.step()
    print()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
