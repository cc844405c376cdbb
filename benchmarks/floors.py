"""Floors: what the unavoidable kernels of a DIN step and of a 100K-behavior GSU scan cost alone, on this machine.

The performance goals (DIN ≥ 3× the fastest peer; lifelong training at 100K
behaviors ≥ 25 % of short-window DIN) are measured end to end by
``bench_peers.py`` and ``bench_long.py``. This script answers the other half of
the question: how much of that time is the bare arithmetic and memory traffic
the design cannot avoid. Each kernel is timed alone, warm, on synthetic tensors
of the measured shapes (median of ``--repeat`` runs):

* **DIN step** (batch 1024, ``--behaviors`` real behaviors per sample; 40.2 on
  the Taobao peer samples at history 50): the attention MLP's matrix products
  forward and backward (float32 as trained, and bfloat16 once with a fixed
  behavior count and once with a count that changes every step, as packed
  batches do), Dice forward + backward over the attention activations, the
  embedding gathers forward + backward, and Adam over the tables.
* **GSU scan** (one slab of ``--slab`` samples of a user scoring ``--length``
  behaviors with ``--dim``-wide keys, top ``--k``): gathering the behaviors'
  key rows, the score product (float32; bfloat16), the block maxima and the
  top-k over the candidate blocks, per sample.

    .venv/bin/python benchmarks/floors.py --threads 2
    .venv/bin/python benchmarks/floors.py --threads 1 --part gsu
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from userlens.layers.activation import Dice, compile_hot_layers
from userlens.layers.embedding import Table


def timed(fn: Callable[[], object], repeat: int, warm: int = 3) -> float:
    """Median seconds of ``fn`` over ``repeat`` calls after ``warm`` untimed ones."""
    for _ in range(warm):
        fn()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def din_rows(batch: int, behaviors: float, n_items: int, repeat: int) -> list[tuple[str, float]]:
    """(kernel, seconds per step) of one DIN training step's unavoidable pieces."""
    n, d, h0, h1 = int(batch * behaviors), 32, 64, 32
    g = torch.Generator().manual_seed(0)
    keys, prod = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    w1, w2, w3 = (torch.randn(a, b, generator=g) for a, b in ((d, h0), (h0, h1), (h1, 1)))
    g0, g1 = torch.randn(n, h0, generator=g), torch.randn(n, h1, generator=g)
    a1, a2 = torch.randn(n, h0, generator=g), torch.randn(n, h1, generator=g)

    def products(dtype: torch.dtype, jitter: bool) -> Callable[[], None]:
        ts = [t.to(dtype) for t in (keys, prod, w1, w2, w3, g0, g1, a1, a2)]
        step = [0]

        def run() -> None:
            step[0] += 1
            m = n - (step[0] % 97) * 7 if jitter else n  # packed batches change N every step
            k, p, x1, x2, x3, e0, e1, b1, b2 = (t[:m] if t.shape[0] == n else t for t in ts)
            k @ x1, p @ x1, b1 @ x2, b2 @ x3  # forward: the split first layer's two products, layers 2 and 3
            e0 @ x1.t(), e0 @ x1.t(), k.t() @ e0, p.t() @ e0  # first layer: dX, dW of both products
            e1 @ x2.t(), b1.t() @ e1  # second layer
            e1[:, :1] @ x3.t(), b2.t() @ e1[:, :1]  # output layer
        return run

    rows = [("attention products fwd+bwd, float32", timed(products(torch.float32, False), repeat)),
            ("attention products fwd+bwd, bfloat16, fixed N", timed(products(torch.bfloat16, False), repeat)),
            ("attention products fwd+bwd, bfloat16, N varies per step", timed(products(torch.bfloat16, True), repeat))]
    dice = torch.nn.Sequential(Dice(h0), Dice(h1)).train()
    compile_hot_layers(dice)
    x0, x1_ = a1.clone().requires_grad_(True), a2.clone().requires_grad_(True)
    rows.append(("Dice fwd+bwd (compiled), N x 64 and N x 32",
                 timed(lambda: (dice[0](x0).backward(g0), dice[1](x1_).backward(g1)), repeat)))
    item, cat = Table(n_items, 16, padding_idx=0), Table(max(n_items // 20, 2), 16, padding_idx=0)
    ids = torch.randint(1, n_items, (n,), generator=g)
    cids = torch.randint(1, max(n_items // 20, 2), (n,), generator=g)
    ge = torch.randn(n, 16, generator=g)

    def gathers() -> None:
        item.weight.grad = cat.weight.grad = None
        item(ids).backward(ge)
        cat(cids).backward(ge)
    rows.append(("embedding gathers fwd+bwd (2 x N lookups)", timed(gathers, repeat)))
    gathers()
    opt = torch.optim.Adam([item.weight, cat.weight], lr=1e-3)
    rows.append((f"Adam step over the tables ({n_items:,} items x 16)", timed(opt.step, repeat)))
    return rows


def gsu_rows(length: int, slab: int, dim: int, k: int, n_items: int, repeat: int) -> list[tuple[str, float]]:
    """(kernel, seconds per slab) of scanning one user's ``length`` behaviors for ``slab`` targets."""
    g = torch.Generator().manual_seed(0)
    length -= length % 64  # whole blocks
    table = torch.randn(n_items, dim, generator=g)
    ids = torch.randint(1, n_items, (length,), generator=g)
    q = torch.randn(slab, dim, generator=g)
    keys = table.index_select(0, ids)
    s = q @ keys.t()
    kb, qb = keys.bfloat16(), q.bfloat16()
    block_max = s.view(slab, -1, 64).amax(-1)
    rows = [("gather the behaviors' key rows", timed(lambda: table.index_select(0, ids), repeat)),
            ("score product, float32", timed(lambda: q @ keys.t(), repeat)),
            ("score product, bfloat16", timed(lambda: qb @ kb.t(), repeat)),
            ("block maxima (64 columns)", timed(lambda: s.view(slab, -1, 64).amax(-1), repeat))]
    blocks = block_max.topk(k, dim=1).indices
    cols = (blocks[:, :, None] * 64 + torch.arange(64)).view(slab, -1)
    rows.append((f"top-{k} blocks + top-{k} of their columns",
                 timed(lambda: (block_max.topk(k, dim=1), s.gather(1, cols).topk(k, dim=1)), repeat)))
    rows.append((f"plain top-{k} over every column (no prefilter)", timed(lambda: s.topk(k, dim=1), repeat)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--part", choices=("din", "gsu", "both"), default="both")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--behaviors", type=float, default=40.2, help="real behaviors per sample in a DIN batch")
    ap.add_argument("--items", type=int, default=100_000, help="embedding table rows")
    ap.add_argument("--length", type=int, default=100_000, help="behaviors a GSU scans per sample")
    ap.add_argument("--slab", type=int, default=32, help="samples of one user sharing the scan")
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# floors, {args.threads} thread(s), torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}\n")
    if args.part in ("din", "both"):
        rows = din_rows(args.batch, args.behaviors, args.items, args.repeat)
        print(f"## DIN step: batch {args.batch}, {args.behaviors} behaviors per sample\n")
        print("| kernel | ms per step | µs per sample |\n|---|---|---|")
        for name, sec in rows:
            print(f"| {name} | {sec * 1e3:.2f} | {sec / args.batch * 1e6:.1f} |")
        fp32 = sum(sec for name, sec in rows if "bfloat16" not in name)
        print(f"| **sum, float32 products** | {fp32 * 1e3:.2f} | {fp32 / args.batch * 1e6:.1f} |\n")
    if args.part in ("gsu", "both"):
        rows = gsu_rows(args.length, args.slab, args.dim, args.k, args.items, args.repeat)
        print(f"## GSU scan: {args.length:,} behaviors, slab of {args.slab} samples, {args.dim}-wide keys, "
              f"top {args.k}\n")
        print("| kernel | ms per slab | µs per sample |\n|---|---|---|")
        for name, sec in rows:
            print(f"| {name} | {sec * 1e3:.2f} | {sec / args.slab * 1e6:.1f} |")
        floor = sum(sec for name, sec in rows if "bfloat16" not in name and "plain" not in name)
        print(f"| **sum, float32, block prefilter** | {floor * 1e3:.2f} | {floor / args.slab * 1e6:.1f} |")


if __name__ == "__main__":
    main()
