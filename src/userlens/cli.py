"""The ``userlens`` command line (DESIGN §6). Every command wraps an importable function."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand

from userlens.errors import InputError, Interrupted, UserlensError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Lifelong user-interest modeling: prepare logs, train CTR models, evaluate.")
# soft_wrap: a message is one line even when stderr is a file (Rich would wrap at 80 columns)
err = Console(stderr=True, soft_wrap=True)
# no "[/DB]": option help is Rich markup, where it is a closing tag and crashed `--help`
STORE_HELP = ("behavior store: lmdb://PATH, redis://HOST:PORT/DB (/DB optional) or "
              "redis-cluster://HOST:PORT[,HOST:PORT...][?replicas=N&wait_ms=MS]")


def _say(line: str) -> None:
    """A plain line on stderr: never read as Rich markup (``[content]`` stays in the text)."""
    err.print(line, markup=False, highlight=False)


def _error(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)


def _run(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    """Call fn; an error becomes a one-line cause and exit code 1 (130 when interrupted), never a traceback.

    ``USERLENS_DEBUG=1`` re-raises unexpected exceptions with their traceback (for bug reports).
    """
    try:
        return fn(*args, **kwargs)
    except (Interrupted, KeyboardInterrupt) as e:
        _error(str(e) or "interrupted")
        raise typer.Exit(130) from None
    except UserlensError as e:
        _error(str(e))
        raise typer.Exit(1) from None
    except Exception as e:  # every library's errors too (polars' are not ValueError): a line, never a traceback
        if os.environ.get("USERLENS_DEBUG"):
            raise
        first = (str(e).splitlines() or [""])[0]
        _error(f"{type(e).__name__}: {first} (unexpected: set USERLENS_DEBUG=1 for the traceback and report it)")
        raise typer.Exit(1) from None


def _help_completed(before: Callable[[click.Command], None] | None = None,
                    after: Callable[[], None] | None = None) -> type[TyperCommand]:
    """A command class whose ``--help`` is completed when shown: ``before`` edits it, ``after`` prints more.

    What they list comes from registries (adapters, config dataclasses) that import polars or torch:
    reading them at import time would slow every ``userlens`` call, and a hand-copied list goes stale.
    """

    class Command(TyperCommand):
        def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
            if before is not None:
                before(self)
            super().format_help(ctx, formatter)
            if after is not None:
                after()

    return Command


def _list_formats(command: click.Command) -> None:
    from userlens.data.adapters import ADAPTERS

    for param in command.params:
        if param.name == "format":  # comma-separated: Rich wraps it, where it cropped one a|b|c word
            param.help = f"dataset adapter, one of: {', '.join(sorted(ADAPTERS))}"  # type: ignore[attr-defined]


def _list_train_keys() -> None:
    """The training keys as a panel under the options, like Typer's own (it prints to stdout too)."""
    from rich.padding import Padding
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    from userlens.training.keys import train_keys

    table = Table(box=None, show_header=True, header_style="dim", pad_edge=False)
    for column in ("key", "default", "type", "meaning"):
        table.add_column(column, no_wrap=column != "meaning")
    for k in train_keys():
        table.add_row(k.name, k.default, k.kind, k.meaning)
    out = Console(highlight=False)
    out.print(Panel(table, title="Config keys: --set key=value, or a flat JSON/TOML --config file; every model",
                    title_align="left", border_style="dim"))
    out.print(Padding(Text("Model keys (embed_dim, mlp, k ...) depend on the model: `userlens models NAME` lists "
                           "them with their defaults. An unknown key is refused with the closest match; the first "
                           "log line is the resolved config."), (0, 1, 1, 1)))


@app.command(cls=_help_completed(before=_list_formats))
def prepare(
    out: Annotated[Path, typer.Option(help="prepared directory to write")],
    behaviors: Annotated[Optional[Path], typer.Option(help="behaviors table (CSV/Parquet)")] = None,
    impressions: Annotated[Optional[Path], typer.Option(help="impressions table with labels")] = None,
    items: Annotated[Optional[Path], typer.Option(help="items table (category, title ...)")] = None,
    format: Annotated[Optional[str], typer.Option("--format", help="dataset adapter (listed by --help)")] = None,
    source: Annotated[Optional[Path], typer.Option(help="dataset folder for --format")] = None,
    on_bad_rows: Annotated[str, typer.Option(help="error (stop) or skip (skip, count, report)")] = "error",
    timestamp_unit: Annotated[str, typer.Option(help="auto|s|ms for integer timestamps")] = "auto",
    context: Annotated[Optional[list[str]], typer.Option(help="impression column to use as a context feature (repeatable)")] = None,
    min_user_behaviors: Annotated[int, typer.Option(help="drop users with fewer behaviors (counted)")] = 1,
    valid_fraction: Annotated[float, typer.Option(help="time split: share of validation")] = 0.1,
    test_fraction: Annotated[float, typer.Option(help="time split: share of test")] = 0.1,
    split: Annotated[str, typer.Option(help="behaviors-only samples: time (global time, default) | leave-last-out")] = "time",
    min_history: Annotated[int, typer.Option(help="behaviors-only samples: strictly earlier behaviors needed before a positive")] = 4,
    negatives: Annotated[int, typer.Option(help="behaviors-only samples: sampled negatives per positive")] = 1,
    negative_sampler: Annotated[str, typer.Option(help="uniform | popularity (∝ count^alpha before t) | category (hard negatives)")] = "uniform",
    negative_alpha: Annotated[float, typer.Option(help="popularity sampler exponent in [0, 1]")] = 0.75,
    seed: Annotated[int, typer.Option(help="negative-sampling seed")] = 2024,
    force: Annotated[bool, typer.Option(help="replace an existing prepared directory at --out")] = False,
    engine: Annotated[str, typer.Option(help="auto | polars (in memory) | duckdb (out of core, behaviors-only; "
                                              "auto picks it for inputs of 1 GiB+ or Parquet directories / globs)")] = "auto",
    memory_limit: Annotated[Optional[str], typer.Option(help="duckdb engine: memory cap before spilling to disk under "
                                                             "--out (default: 8GiB or 60% of RAM, the smaller)")] = None,
) -> None:
    """Validate raw logs and write a prepared directory (vocabularies, timeline, samples, meta.json).

    --behaviors may be a CSV / TSV / Parquet file, or (duckdb engine) a directory or glob of Parquet files."""
    from userlens.data.prepare import PrepareOptions
    from userlens.data.prepare import prepare as do_prepare
    from userlens.data.prepare import sources_from_files

    def go() -> dict:
        from userlens.data.outofcore import choose_engine, prepare_out_of_core, scan_sources

        if format and (source is None or behaviors is not None):
            raise InputError("--format needs --source DIR and no --behaviors. Fix: use one or the other.")
        if not format and behaviors is None:
            raise InputError("give --behaviors FILE (with optional --impressions/--items) or --format NAME --source DIR")
        opts = PrepareOptions(
            on_bad_rows=on_bad_rows, timestamp_unit=timestamp_unit, context_columns=tuple(context or ()),  # type: ignore[arg-type]
            min_user_behaviors=min_user_behaviors, valid_fraction=valid_fraction, test_fraction=test_fraction,
            split=split, min_history=min_history, negatives=negatives, seed=seed,  # type: ignore[arg-type]
            negative_sampler=negative_sampler, negative_alpha=negative_alpha,  # type: ignore[arg-type]
        )
        chosen = choose_engine(engine, format, source, behaviors, impressions, tuple(context or ()))
        if chosen == "duckdb":
            _say(f"engine: duckdb (out of core, memory limit {memory_limit or 'default'})")
            return prepare_out_of_core(scan_sources(format, source, behaviors, items), out, opts, log=_say,
                                       force=force, memory_limit=memory_limit)
        if memory_limit is not None:
            raise InputError("--memory-limit applies to the duckdb engine. Fix: add --engine duckdb or drop it.")
        if format:
            from userlens.data.adapters import load_adapter

            sources = load_adapter(format, source)
        else:
            sources = sources_from_files(behaviors, impressions, items)  # type: ignore[arg-type]
        return do_prepare(sources, out, opts, log=_say, force=force)

    meta = _run(go)
    c, s = meta["counts"], meta["samples"]
    _say(f"prepared {out}: {c['behaviors']:,} behaviors of {c['users']:,} users (max history "
         f"{c['max_history']:,}); samples train {s['train']['samples']:,} / valid {s['valid']['samples']:,} / "
         f"test {s['test']['samples']:,}; {meta['prepare_seconds']} s")


@app.command(cls=_help_completed(after=_list_train_keys))
def train(
    data_dir: Annotated[Path, typer.Argument(help="prepared directory")],
    model: Annotated[Optional[str], typer.Option(help="registered model name (see `userlens models`)")] = None,
    out: Annotated[Path, typer.Option(help="run directory to write")] = Path("runs/latest"),
    config: Annotated[Optional[Path], typer.Option(help="flat JSON/TOML config file")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="key=value override (repeatable)")] = None,
    limit_batches: Annotated[Optional[int], typer.Option(help="debug: batches per epoch")] = None,
    fast_dev_run: Annotated[bool, typer.Option(help="debug: one train and one valid batch")] = False,
    progress: Annotated[bool, typer.Option(help="show progress (bars on a terminal, lines in a file)")] = True,
    resume: Annotated[bool, typer.Option(help="continue the interrupted run at --out from its last checkpoint")] = False,
    force: Annotated[bool, typer.Option(help="replace an existing run (or interrupted run) at --out")] = False,
    dist_timeout: Annotated[float, typer.Option(
        help="under torchrun: seconds a rank waits for the others in a collective before the run fails "
             "(a rank that died or hung ends the job instead of hanging it)")] = 600.0,
) -> None:
    """Train a model; writes config.json, model.safetensors and metrics.jsonl to --out.

    The run is built in OUT.partial with a checkpoint per epoch and moved to OUT when finished.
    A killed or interrupted run continues with the same command plus --resume (--model may then be omitted).
    On several processes: `torchrun --nproc-per-node N -m userlens train ...` (batch_size is the global batch;
    rank 0 logs and writes OUT).
    """
    from userlens.data.prepared import PreparedData
    from userlens.errors import ConfigError
    from userlens.training.config import load_config_file, parse_sets, resolve_config
    from userlens.training.distributed import World
    from userlens.training.trainer import fit

    def go() -> None:
        overrides = load_config_file(config) if config else {}
        name = model or overrides.pop("model", None)
        overrides.pop("model", None)
        if resume and not name and not overrides and not set_:  # the interrupted run's own config
            from userlens.training.checkpoint import interrupted_config

            name, overrides = interrupted_config(out)
        if not name:
            raise ConfigError("no model given. Fix: pass --model NAME (see `userlens models`).")
        overrides.update(parse_sets(set_ or []))
        if limit_batches is not None:
            overrides["limit_batches"] = limit_batches
        if fast_dev_run:
            overrides["fast_dev_run"] = True
        cfg = resolve_config(name, overrides)  # validated before any data is touched
        data = PreparedData(data_dir)
        res = fit(data, cfg, out, resume=resume, force=force, show_progress=progress, log=_say,
                  dist_timeout=dist_timeout)
        if not World.from_env().is_main:  # one voice per run: rank 0's
            return
        valid = {k: (None if isinstance(v, float) and v != v else v) for k, v in res.best_valid.items()}
        speed = "not trained (no parameters)" if not res.epochs_run else (
            f"{res.train_samples_per_s:,.0f} train samples/s over all {res.epochs_run} epoch(s) "
            "(Σ train_samples / Σ train_seconds of metrics.jsonl)")
        _say(f"best epoch {res.best_epoch}: valid {json.dumps(valid)}; {speed}; run saved to {out}")

    _run(go)


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="run directory written by `userlens train`")],
    data: Annotated[Optional[Path], typer.Option(help="prepared directory (default: the one trained on)")] = None,
    split: Annotated[str, typer.Option(help="train|valid|test")] = "test",
    predictions: Annotated[Optional[Path], typer.Option(help="write per-sample predictions (.parquet/.csv)")] = None,
) -> None:
    """Print JSON metrics (auc, gauc, logloss, n) of a trained run on a split.

    Under `torchrun --nproc-per-node N -m userlens evaluate ...` the ranks score blocks of the split and
    rank 0 prints the metrics of every sample.
    """
    from userlens.training.distributed import World
    from userlens.training.evaluate import evaluate_run

    result = _run(evaluate_run, run_dir, data, split, predictions)
    if World.from_env().is_main:
        typer.echo(json.dumps(result, allow_nan=False))


@app.command("embed-items")
def embed_items(
    data_dir: Annotated[Path, typer.Argument(help="prepared directory")],
    items: Annotated[Optional[Path], typer.Option(help="items table (CSV/Parquet) with an id and text columns")] = None,
    text_column: Annotated[Optional[list[str]], typer.Option(help="text column to embed (repeatable; default title)")] = None,
    id_column: Annotated[str, typer.Option(help="item id column of --items / a Parquet --vectors")] = "item_id",
    vectors: Annotated[Optional[Path], typer.Option(help="precomputed vectors: Parquet (id + list column) or .npy")] = None,
    ids: Annotated[Optional[Path], typer.Option(help="ids of a .npy --vectors: .npy or .txt, one per row")] = None,
    vector_column: Annotated[Optional[str], typer.Option(help="list column of a Parquet --vectors (default: the only one)")] = None,
    pca_dim: Annotated[Optional[int], typer.Option(help="reduce to this many dimensions with PCA")] = None,
    dtype: Annotated[str, typer.Option(help="stored as float32 or int8 (per-dimension scale)")] = "float32",
    normalize: Annotated[bool, typer.Option(help="L2-normalise the final vectors")] = True,
    seed: Annotated[int, typer.Option(help="PCA seed")] = 2024,
    batch_size: Annotated[int, typer.Option(help="texts per embedding batch")] = 64,
) -> None:
    """Write item content vectors (items/content*.npy) from item text (all-MiniLM-L6-v2) or from --vectors; prints JSON."""
    from userlens.data.content import build_content, import_vectors

    def go() -> dict:
        common = dict(pca_dim=pca_dim, dtype=dtype, normalize=normalize, seed=seed)
        if vectors is not None:
            if items is not None or text_column:
                raise InputError("--vectors imports ready vectors, --items/--text-column embeds text: give one. "
                                 "Fix: drop --items/--text-column, or drop --vectors.")
            return import_vectors(data_dir, vectors=vectors, ids=ids, id_column=id_column,
                                  vector_column=vector_column, **common)  # type: ignore[arg-type]
        if items is None:
            raise InputError("nothing to embed. Fix: pass --items FILE --text-column NAME, or --vectors FILE.")
        if ids is not None or vector_column is not None:
            raise InputError("--ids/--vector-column go with --vectors, not --items. Fix: drop them.")
        return build_content(data_dir, items=items, id_column=id_column, text_columns=tuple(text_column or ("title",)),
                             batch_size=batch_size, **common)  # type: ignore[arg-type]

    typer.echo(json.dumps(_run(go)))


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="run directory written by `userlens train`")],
    out: Annotated[Path, typer.Option(help="package directory to write")],
    data: Annotated[Optional[Path], typer.Option(help="prepared directory (default: the one trained on)")] = None,
    force: Annotated[bool, typer.Option(help="replace an existing package at --out")] = False,
) -> None:
    """Write a self-contained, verified model package for serving; prints its manifest summary (JSON)."""
    from userlens.serving.package import export_package

    m = _run(export_package, run_dir, out, data, force)
    typer.echo(json.dumps({"package": str(out), "model": m["model"], "vocab_hash": m["vocab_hash"],
                           "long_len": m["long_len"], "files": len(m["files"])}))


@app.command("load-store")
def load_store(
    data_dir: Annotated[Path, typer.Argument(help="prepared directory whose timelines to load")],
    store: Annotated[str, typer.Option(help=STORE_HELP)],
    package: Annotated[Optional[Path], typer.Option(
        help="model package to serve from this store: caps histories at its long_len and checks that DATA_DIR "
             "has its vocabularies (without it: cap 100,000, the default long_len, and no check)")] = None,
) -> None:
    """Bulk-load every user's timeline of a prepared directory into a behavior store; prints a JSON summary.

    A user's stored history is replaced (loading twice gives the same store); users not in DATA_DIR are kept.
    The store records what it was loaded for (vocabularies, item categories, cap): `serve` refuses a package
    that differs.
    """
    import time

    from userlens.data.prepared import PreparedData
    from userlens.serving.reload import INFO_KEYS, package_store_info, store_info
    from userlens.serving.store import bulk_load_prepared, open_store
    from userlens.training.config import TrainConfig

    def go() -> dict:
        t0 = time.perf_counter()
        data = PreparedData(data_dir)
        about = {"data": str(data.path.resolve()), "loaded_unix": int(time.time())}
        cap = TrainConfig.long_len
        info = store_info(data.fingerprint, data.item_category, cap, **about)
        if package is not None:
            from userlens.serving.package import check_store_data, load_package

            pkg = load_package(package)
            check_store_data(pkg, data)
            cap = pkg.long_len
            info = package_store_info(pkg, package=str(pkg.path.resolve()), **about)
        with open_store(store, cap=cap) as s:
            old = s.read_info()
            differ = [k for k in INFO_KEYS if old is not None and old.get(k) != info[k]]
            if differ and s.stats()["users"]:
                raise InputError(f"{store}: holds histories loaded for {old.get('package') or old.get('data')} "
                                 f"with another {' and '.join(differ)}; users not in {data_dir} would keep them "
                                 "(codes the new package misreads). Fix: load into a new store (another "
                                 "directory or namespace), or delete this one first.")
            loaded = bulk_load_prepared(s, data)
            s.write_info(info)  # last: a load that failed half-way leaves the previous record
            stats = s.stats()
        return {"store": store, "data": str(data_dir), "cap": cap, "loaded_behaviors": loaded,
                "users": stats["users"], "behaviors": stats["behaviors"],
                "seconds": round(time.perf_counter() - t0, 3)}

    typer.echo(json.dumps(_run(go)))


@app.command()
def serve(
    package: Annotated[Path, typer.Argument(help="model package written by `userlens export`")],
    store: Annotated[str, typer.Option(help=STORE_HELP)],
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    workers: Annotated[int, typer.Option(help="worker processes")] = 1,
    threads: Annotated[int, typer.Option(help="requests one worker scores at once (its thread pool)")] = 40,
    max_candidates: Annotated[int, typer.Option(help="largest candidate list a score request may carry")] = 1000,
    reload_seconds: Annotated[float, typer.Option(
        help="poll the package directory this often and swap in a re-exported package (0: never)")] = 2.0,
    open_reads: Annotated[bool, typer.Option(
        "--open-reads", help="serve scores and embeddings without a token (to anyone who can reach the port)")] = False,
    docs: Annotated[bool, typer.Option("--docs", help="serve the Swagger page at /docs (its script loads from a "
                                                      "CDN); the schema is at /openapi.json either way")] = False,
    log_level: Annotated[str, typer.Option(help="critical|error|warning|info|debug; info logs every request")] = "info",
) -> None:
    """Serve the package over HTTP; writes need the USERLENS_TOKEN bearer token, reads USERLENS_READ_TOKEN or it.

    The package and store are checked first (the store must answer and have been loaded for this package).
    """
    from userlens.serving.server import serve as run_server

    reads = "open" if open_reads else "token" if os.environ.get("USERLENS_READ_TOKEN") or os.environ.get(
        "USERLENS_TOKEN") else "off (set USERLENS_READ_TOKEN)"
    writes = "token" if os.environ.get("USERLENS_TOKEN") else "off (set USERLENS_TOKEN)"

    def ready() -> None:
        _say(f"serving {package} on http://{host}:{port} (store {store}, {workers} worker(s) x {threads} threads; "
             f"reads: {reads}, writes: {writes}; schema at /openapi.json)")

    _run(run_server, str(package), store, host, port, workers, max_candidates, reload_seconds, threads, log_level,
         open_reads, docs, ready)


@app.command()
def models(name: Annotated[Optional[str], typer.Argument(help="a model: list its config keys")] = None) -> None:
    """List the registered models, one line each; with NAME, that model's config keys and their defaults."""
    from userlens.models import get_model, list_models
    from userlens.training.keys import key_lines, model_keys, train_keys

    if name is None:
        entries = list_models()
        width = max(len(e.name) for e in entries)
        for e in entries:
            typer.echo(f"{e.name:<{width}}  {e.summary}")
        return
    own = _run(model_keys, name)
    lines = key_lines(own + train_keys())  # one alignment for both parts
    typer.echo(f"{name}: {get_model(name).summary}\n")
    typer.echo("model keys (--set key=value; name, default, type, meaning):" if own else "model keys: none")
    for line in lines[:len(own)] + ["", "training keys (every model):"] + lines[len(own):]:
        typer.echo(line)


@app.command()
def demo(out: Annotated[Path, typer.Option(help="working folder")] = Path("runs/demo"),
         epochs: Annotated[int, typer.Option(help="training epochs per model")] = 4) -> None:
    """Generate a log with a planted interest, prepare it, train avgpool and din, compare on test."""
    from userlens.demo import run_demo

    _run(run_demo, out, epochs=epochs)


def main() -> None:  # pragma: no cover - console entry
    app(prog_name="userlens")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
