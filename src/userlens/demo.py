"""``userlens demo``: the whole flow on a generated log with a planted interest signal."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from userlens.data.prepare import prepare, sources_from_files
from userlens.data.prepared import PreparedData
from userlens.synthetic import planted_interest_log
from userlens.training.config import resolve_config
from userlens.training.evaluate import evaluate_run
from userlens.training.trainer import fit

DEMO_MODELS = ("avgpool", "din")


def run_demo(out: str | Path = "runs/demo", epochs: int = 4, models: tuple[str, ...] = DEMO_MODELS,
             console: Console | None = None) -> dict[str, dict[str, float]]:
    """Generate → prepare → train each model → evaluate on test; prints and returns the comparison."""
    configs = {name: resolve_config(name, {"epochs": epochs}) for name in models}  # refused before any work
    console = console or Console()
    out = Path(out)
    console.rule("userlens demo")
    console.print("1/3 generating a log: clicks depend on the candidate's category among the last 20 behaviors")
    log = planted_interest_log(n_users=1000, n_items=1000, n_categories=50, impressions_per_user=60, seed=7)
    paths = log.write(out / "raw")
    meta = prepare(sources_from_files(paths["behaviors"], paths["impressions"], paths["items"]), out / "data",
                   log=lambda s: console.print(s, markup=False), force=True)  # the demo owns its folder
    console.print(f"2/3 prepared {meta['counts']['behaviors']:,} behaviors, "
                  f"{meta['samples']['train']['samples']:,} train samples -> {out / 'data'}")
    data = PreparedData(out / "data")
    results: dict[str, dict[str, float]] = {}
    for name in models:
        console.print(f"3/3 training {name}")
        fit_res = fit(data, configs[name], out / "runs" / name, log=lambda s: None, force=True)
        results[name] = {**evaluate_run(out / "runs" / name), "samples_per_s": fit_res.train_samples_per_s}
    table = Table(title="test split (generated log with a planted interest)")
    for col in ("model", "AUC", "GAUC", "logloss", "n", "train samples/s"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for name, r in results.items():
        table.add_row(name, f"{r['auc']:.4f}", f"{r['gauc']:.4f}", f"{r['logloss']:.4f}", f"{r['n']:,}",
                      f"{r['samples_per_s']:,.0f}")
    console.print(table)
    console.print(f"runs in {out / 'runs'}; evaluate again with: userlens evaluate {out / 'runs' / models[-1]}")
    return results
