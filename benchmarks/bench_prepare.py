"""Prepare benchmark: wall time and peak RSS of `userlens prepare` on long synthetic histories.

Each size is generated to Parquet first (not timed), then prepared in a fresh
process that reports its own peak RSS (``ru_maxrss``, as the kernel counts it).

    .venv/bin/python benchmarks/bench_prepare.py              # 1M and 20M behaviors
    .venv/bin/python benchmarks/bench_prepare.py --sizes 1m   # quick
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = {  # name: (users, behaviors per user, items)
    "1m": (10, 100_000, 200_000),
    "20m": (200, 100_000, 200_000),
}

GEN = """
import sys
from userlens.synthetic import long_history_log
users, per_user, items, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
long_history_log(users, per_user, items, seed=0).write(out)
"""

PREP = """
import json, resource, sys, time
from userlens.data.prepare import PrepareOptions, prepare, sources_from_files
src, out = sys.argv[1], sys.argv[2]
t = time.perf_counter()
meta = prepare(sources_from_files(src + "/behaviors.parquet", items=src + "/items.parquet"), out,
               PrepareOptions(), log=lambda s: None)
print(json.dumps({"seconds": time.perf_counter() - t, "samples": sum(meta["samples"][k]["samples"]
      for k in ("train", "valid", "test")), "behaviors": meta["counts"]["behaviors"],
      "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def run(name: str, work: Path) -> dict:
    users, per_user, items = SIZES[name]
    raw, out = work / f"raw_{name}", work / f"data_{name}"
    subprocess.run([sys.executable, "-c", GEN, str(users), str(per_user), str(items), str(raw)], check=True)
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PREP, str(raw), str(out)], check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    shutil.rmtree(raw)
    shutil.rmtree(out)
    return {"size": name, "users": users, "behaviors": res["behaviors"], "samples": res["samples"],
            "prepare_s": res["seconds"], "process_wall_s": wall,
            "peak_rss_gib": res["peak_kib"] / 2**20, "disk_gib": size / 2**30}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1m,20m", help="comma list of " + ",".join(SIZES))
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir)")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="userlens-bench-"))
    rows = [run(s.strip(), work) for s in args.sizes.split(",")]
    print("| size | users | behaviors | samples | prepare (s) | process wall (s) | peak RSS (GiB) | on disk (GiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['users']:,} | {r['behaviors']:,} | {r['samples']:,} | {r['prepare_s']:.1f} | "
              f"{r['process_wall_s']:.1f} | {r['peak_rss_gib']:.2f} | {r['disk_gib']:.2f} |")


if __name__ == "__main__":
    main()
