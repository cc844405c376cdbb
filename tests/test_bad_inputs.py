"""A catalogue of bad inputs, each generated here, fed through the CLI as a new user would.

Every case must end with exit code 1 and exactly one line on stderr that starts with
``error:``, names the file (where there is one) and the problem, and shows no traceback.
Nothing here is committed as a file: each case writes what it needs under ``tmp_path``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from userlens.cli import app
from userlens.synthetic import planted_interest_log

T = 1_600_000_000
runner = CliRunner()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A valid raw log, its prepared directory and a finished run: the things the cases break copies of."""
    d = tmp_path_factory.mktemp("base")
    raw = planted_interest_log(n_users=80, n_items=60, n_categories=6, behaviors_per_user=20,
                               impressions_per_user=8, seed=3).write(d / "raw")
    ok = runner.invoke(app, ["prepare", "--behaviors", str(raw["behaviors"]), "--impressions",
                             str(raw["impressions"]), "--items", str(raw["items"]), "--out", str(d / "data")])
    assert ok.exit_code == 0, ok.output
    ok = runner.invoke(app, ["train", str(d / "data"), "--model", "din", "--out", str(d / "run"), "--set", "epochs=1",
                             "--set", "compile=false", "--no-progress"])
    assert ok.exit_code == 0, ok.output
    return {"raw": d / "raw", "data": d / "data", "run": d / "run", **raw}


def _csv(tmp: Path, text: str, name: str = "b.csv", encoding: str = "utf-8") -> Path:
    p = tmp / name
    p.write_bytes(text.encode(encoding))
    return p


def _prep(*args: str | Path, out: Path | None = None) -> list[str]:
    return ["prepare", *map(str, args), "--out", str(out)]


def _copy(src: Path, tmp: Path, name: str) -> Path:
    dest = tmp / name
    shutil.copytree(src, dest)
    return dest


def _flip_byte(path: Path, offset: int = -1) -> None:
    b = bytearray(path.read_bytes())
    b[offset] ^= 0xFF
    path.write_bytes(bytes(b))


GOOD_HEAD = "user_id,item_id,timestamp\n"
# → (argv, substrings expected[, checks run after the command: e.g. that nothing was written])
Case = Callable[[Path, dict[str, Path]], tuple]
CASES: dict[str, Case] = {}


def case(name: str) -> Callable[[Case], Case]:
    def deco(fn: Case) -> Case:
        CASES[name] = fn
        return fn
    return deco


# --------------------------------------------------------------------------- prepare: files


@case("missing file")
def _(t, b):
    return _prep("--behaviors", t / "nope.csv", out=t / "o"), ["nope.csv", "file not found"]


@case("directory as a file")
def _(t, b):
    (t / "dir.csv").mkdir()
    return _prep("--behaviors", t / "dir.csv", out=t / "o"), ["dir.csv", "is a directory"]


@case("empty file")
def _(t, b):
    return _prep("--behaviors", _csv(t, ""), out=t / "o"), ["b.csv", "empty"]


@case("header only")
def _(t, b):
    return _prep("--behaviors", _csv(t, GOOD_HEAD), out=t / "o"), ["b.csv", "no rows"]


@case("missing column")
def _(t, b):
    return _prep("--behaviors", _csv(t, f"item_id,timestamp\n1,{T}\n"), out=t / "o"), ["b.csv", "'user_id'"]


@case("misspelt column")
def _(t, b):
    p = _csv(t, f"usr_id,item_id,timestamp\n1,1,{T}\n")
    return _prep("--behaviors", p, out=t / "o"), ["b.csv", "did you mean 'usr_id'"]


@case("duplicate header column")
def _(t, b):
    p = _csv(t, f"user_id,item_id,timestamp,item_id\n1,1,{T},2\n")
    return _prep("--behaviors", p, out=t / "o"), ["b.csv:line 1", "duplicate column 'item_id'"]


@case("latin-1 csv")
def _(t, b):
    p = _csv(t, GOOD_HEAD + f"1,caf\xe9,{T}\n", encoding="latin-1")
    return _prep("--behaviors", p, out=t / "o"), ["b.csv:line 2", "not UTF-8"]


@case("unclosed quote")
def _(t, b):
    p = _csv(t, GOOD_HEAD + f'1,2,{T}\n1,"open,{T}\n2,3,{T}\n')
    return _prep("--behaviors", p, out=t / "o"), ["b.csv:line 3", "never closed"]


@case("quoted newline then a bad timestamp")
def _(t, b):
    p = _csv(t, GOOD_HEAD + f'1,"a\nb",{T}\n2,3,later\n')
    return _prep("--behaviors", p, out=t / "o"), ["b.csv:line 4", "cannot parse the timestamp"]


@case("truncated line")
def _(t, b):
    return _prep("--behaviors", _csv(t, GOOD_HEAD + f"1,2,{T}\n3,4\n"), out=t / "o"), ["b.csv", "line 3"]


@case("unparsable timestamp")
def _(t, b):
    p = _csv(t, GOOD_HEAD + f"1,2,{T}\n1,3,yesterday\n")
    return _prep("--behaviors", p, out=t / "o"), ["b.csv:line 3", "cannot parse the timestamp"]


@case("absurd old timestamp")
def _(t, b):
    p = _csv(t, GOOD_HEAD + f"1,2,{T}\n1,3,1965-01-01\n")
    return _prep("--behaviors", p, out=t / "o"), ["b.csv:line 3", "absurd timestamp"]


@case("future timestamp")
def _(t, b):
    p = _csv(t, GOOD_HEAD + f"1,2,{T}\n1,3,2999-01-01\n")
    return _prep("--behaviors", p, out=t / "o"), ["b.csv:line 3", "absurd timestamp"]


@case("blank user id")
def _(t, b):
    p = _csv(t, GOOD_HEAD + f"1,2,{T}\n ,3,{T}\n")
    return _prep("--behaviors", p, out=t / "o"), ["b.csv:line 3", "empty id"]


@case("NaN float id in parquet")
def _(t, b):
    p = t / "b.parquet"
    pl.DataFrame({"user_id": [1.0, float("nan")], "item_id": [1, 2], "timestamp": [T, T]}).write_parquet(p)
    return _prep("--behaviors", p, out=t / "o"), ["b.parquet:row 2", "empty id"]


@case("fractional float id")
def _(t, b):
    p = t / "b.parquet"
    pl.DataFrame({"user_id": [1.0, 2.0], "item_id": [1.5, 2.0], "timestamp": [T, T]}).write_parquet(p)
    return _prep("--behaviors", p, out=t / "o"), ["b.parquet:row 1", "not an integer"]


@case("duplicate event id")
def _(t, b):
    p = _csv(t, f"user_id,item_id,timestamp,event_id\n1,2,{T},e1\n1,3,{T},e1\n")
    return _prep("--behaviors", p, out=t / "o"), ["b.csv:line 3", "duplicate event_id"]


@case("garbage parquet")
def _(t, b):
    p = t / "b.parquet"
    p.write_bytes(b"PAR1 not really")
    return _prep("--behaviors", p, out=t / "o"), ["b.parquet", "cannot read as Parquet"]


@case("truncated parquet")
def _(t, b):
    p = t / "b.parquet"
    p.write_bytes(b["behaviors"].read_bytes()[:300])
    return _prep("--behaviors", p, out=t / "o"), ["b.parquet", "cannot read as Parquet"]


@case("unknown extension")
def _(t, b):
    p = t / "b.xlsx"
    p.write_bytes(b"x")
    return _prep("--behaviors", p, out=t / "o"), ["b.xlsx", "unknown file type"]


@case("label outside 0/1")
def _(t, b):
    i = _csv(t, f"user_id,item_id,timestamp,label\n1,2,{T},2\n", "i.csv")
    return _prep("--behaviors", b["behaviors"], "--impressions", i, out=t / "o"), ["i.csv:line 2", "not 0 or 1"]


@case("unknown split value")
def _(t, b):
    i = _csv(t, f"user_id,item_id,timestamp,label,split\n1,2,{T},1,holdout\n", "i.csv")
    return _prep("--behaviors", b["behaviors"], "--impressions", i, out=t / "o"), ["i.csv:line 2", "split is not"]


@case("duplicate item in the items table")
def _(t, b):
    it = _csv(t, "item_id,category\n1,a\n1,b\n", "items.csv")
    return _prep("--behaviors", b["behaviors"], "--items", it, out=t / "o"), ["items.csv:line 3", "duplicate item_id"]


@case("context column missing")
def _(t, b):
    args = _prep("--behaviors", b["behaviors"], "--impressions", b["impressions"], "--context", "device", out=t / "o")
    return args, ["impressions.parquet", "missing required column 'device'"]


@case("context without impressions")
def _(t, b):
    return _prep("--behaviors", b["behaviors"], "--context", "device", out=t / "o"), ["context columns need"]


# --------------------------------------------------------------------------- prepare: options and outputs


@case("timestamp unit spelled out")
def _(t, b):
    return _prep("--behaviors", b["behaviors"], "--timestamp-unit", "seconds", out=t / "o"), ["--timestamp-unit",
                                                                                              "'seconds'"]


@case("unknown bad-row policy")
def _(t, b):
    return _prep("--behaviors", b["behaviors"], "--on-bad-rows", "ignore", out=t / "o"), ["--on-bad-rows"]


@case("unknown negative sampler")
def _(t, b):
    return _prep("--behaviors", b["behaviors"], "--negative-sampler", "hard", out=t / "o"), ["--negative-sampler"]


@case("popularity exponent out of range")
def _(t, b):
    return _prep("--behaviors", b["behaviors"], "--negative-alpha", "2", out=t / "o"), ["--negative-alpha", "[0, 1]"]


@case("fractions over one")
def _(t, b):
    args = _prep("--behaviors", b["behaviors"], "--valid-fraction", "0.6", "--test-fraction", "0.5", out=t / "o")
    return args, ["valid/test fractions"]


@case("min history above every user")
def _(t, b):
    return _prep("--behaviors", b["behaviors"], "--min-history", "1000", out=t / "o"), ["no samples", "--min-history"]


@case("output path is a file")
def _(t, b):
    (t / "o").write_text("x")
    return _prep("--behaviors", b["behaviors"], out=t / "o"), ["o: exists and is a file"]


@case("output is an existing prepared directory")
def _(t, b):
    return _prep("--behaviors", b["behaviors"], out=b["data"]), ["data: a prepared directory already exists",
                                                                 "--force"]


@case("output is an unrelated non-empty directory")
def _(t, b):
    (t / "o").mkdir()
    (t / "o" / "notes.txt").write_text("mine")
    return _prep("--behaviors", b["behaviors"], out=t / "o"), ["is not a prepared directory"]


@case("unknown dataset format")
def _(t, b):
    return ["prepare", "--format", "movielen", "--source", str(t), "--out", str(t / "o")], ["'movielen'",
                                                                                            "Did you mean"]


@case("dataset folder without its files")
def _(t, b):
    return ["prepare", "--format", "amazon", "--source", str(t), "--out", str(t / "o")], ["missing", "train.csv"]


# --------------------------------------------------------------------------- train


def _train(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", str(data), "--model", "din", "--out", str(out), "--no-progress", "--set", "epochs=1",
            "--set", "compile=false", *extra]


@case("data directory missing")
def _(t, b):
    return _train(t / "nodata", t / "r"), ["nodata", "no such prepared directory"]


@case("data directory not prepared")
def _(t, b):
    return _train(t, t / "r"), ["no meta.json"]


@case("truncated meta.json")
def _(t, b):
    d = _copy(b["data"], t, "d")
    (d / "meta.json").write_text((d / "meta.json").read_text()[:100])
    return _train(d, t / "r"), ["meta.json", "not valid JSON"]


@case("old schema version")
def _(t, b):
    d = _copy(b["data"], t, "d")
    meta = json.loads((d / "meta.json").read_text())
    (d / "meta.json").write_text(json.dumps({**meta, "schema_version": 1}))
    return _train(d, t / "r"), ["schema version 1", "prepare --force"]


@case("flipped byte in an array")
def _(t, b):
    d = _copy(b["data"], t, "d")
    _flip_byte(d / "timeline" / "item.npy")
    return _train(d, t / "r"), ["timeline/item.npy", "checksum mismatch"]


@case("truncated array")
def _(t, b):
    d = _copy(b["data"], t, "d")
    p = d / "samples" / "train" / "label.npy"
    p.write_bytes(p.read_bytes()[:-10])
    return _train(d, t / "r"), ["samples/train/label.npy", "bytes, the manifest says"]


@case("unknown model")
def _(t, b):
    return ["train", str(b["data"]), "--model", "dinn", "--out", str(t / "r")], ["unknown model 'dinn'"]


@case("zero embedding size")
def _(t, b):
    return _train(b["data"], t / "r", "--set", "embed_dim=0"), ["embed_dim must be >= 1"]


@case("dropout above one")
def _(t, b):
    return _train(b["data"], t / "r", "--set", "dropout=2"), ["dropout must be in [0, 1)"]


@case("lr nan")
def _(t, b):
    return _train(b["data"], t / "r", "--set", "lr=nan"), ["lr must be a finite number"]


@case("lr inf")
def _(t, b):
    return _train(b["data"], t / "r", "--set", "lr=inf"), ["lr must be a finite number"]


@case("zero threads")
def _(t, b):
    return _train(b["data"], t / "r", "--set", "threads=0"), ["threads must be >= 1"]


@case("unknown activation")
def _(t, b):
    return _train(b["data"], t / "r", "--set", "activation=relux"), ["activation must be one of", "'relu'"]


@case("unknown config key")
def _(t, b):
    return _train(b["data"], t / "r", "--set", "embedding_dim=8"), ["unknown config key 'embedding_dim'"]


@case("set without equals")
def _(t, b):
    return _train(b["data"], t / "r", "--set", "lr"), ["--set expects key=value"]


@case("truncated config file")
def _(t, b):
    c = t / "c.json"
    c.write_text('{"lr": 0.1, ')
    return ["train", str(b["data"]), "--model", "din", "--config", str(c), "--out", str(t / "r")], [
        "c.json", "cannot parse config"]


@case("run output is a file")
def _(t, b):
    (t / "r").write_text("x")
    return _train(b["data"], t / "r"), ["r: exists and is a file"]


@case("run output is a finished run")
def _(t, b):
    return _train(b["data"], b["run"]), ["run: a run directory already exists", "--force"]


@case("resume with nothing to resume")
def _(t, b):
    return _train(b["data"], t / "r", "--resume"), ["nothing to resume"]


@case("empty train split")
def _(t, b):
    imp = pl.read_parquet(b["impressions"]).with_columns(pl.lit("test").alias("split"))
    imp.write_parquet(t / "imp.parquet")
    ok = runner.invoke(app, ["prepare", "--behaviors", str(b["behaviors"]), "--impressions", str(t / "imp.parquet"),
                             "--out", str(t / "d")])
    assert ok.exit_code == 0, ok.output
    return _train(t / "d", t / "r"), ["the train split is empty"]


# --------------------------------------------------------------------------- evaluate


@case("run directory missing")
def _(t, b):
    return ["evaluate", str(t / "norun")], ["norun", "not a run directory"]


@case("run directory is a file")
def _(t, b):
    (t / "r").write_text("x")
    return ["evaluate", str(t / "r")], ["is a file, not a run directory"]


@case("truncated run config")
def _(t, b):
    r = _copy(b["run"], t, "r")
    (r / "config.json").write_text((r / "config.json").read_text()[:50])
    return ["evaluate", str(r)], ["config.json", "not valid JSON"]


@case("corrupted weights")
def _(t, b):
    r = _copy(b["run"], t, "r")
    _flip_byte(r / "model.safetensors", 200)
    return ["evaluate", str(r)], ["model.safetensors", "checksum mismatch"]


@case("foreign weights")
def _(t, b):
    r = _copy(b["run"], t, "r")
    from safetensors.torch import save_file

    import torch

    save_file({"w": torch.zeros(3)}, str(r / "model.safetensors"))
    from userlens.artifacts import describe, seal

    doc = json.loads((r / "config.json").read_text())
    doc["weights"] = describe(r, ["model.safetensors"])["model.safetensors"]  # checksum right, content foreign
    (r / "config.json").write_text(json.dumps(seal(doc)))  # re-sealed: as a deliberate writer would
    return ["evaluate", str(r)], ["model.safetensors", "do not fit model 'din'"]


@case("data with permuted ids")
def _(t, b):
    beh = pl.read_parquet(b["behaviors"]).with_columns(("u" + pl.col("user_id").cast(pl.Utf8)).alias("user_id"))
    beh.write_parquet(t / "b.parquet")
    imp = pl.read_parquet(b["impressions"]).with_columns(("u" + pl.col("user_id").cast(pl.Utf8)).alias("user_id"))
    imp.write_parquet(t / "i.parquet")
    ok = runner.invoke(app, ["prepare", "--behaviors", str(t / "b.parquet"), "--impressions", str(t / "i.parquet"),
                             "--items", str(b["items"]), "--out", str(t / "d")])
    assert ok.exit_code == 0, ok.output
    return ["evaluate", str(b["run"]), "--data", str(t / "d")], ["its vocabularies", "not those"]


@case("moved data directory")
def _(t, b):
    from userlens.artifacts import seal

    r = _copy(b["run"], t, "r")
    doc = json.loads((r / "config.json").read_text())
    (r / "config.json").write_text(json.dumps(seal({**doc, "data_dir": str(t / "gone")})))
    return ["evaluate", str(r)], ["gone", "is gone or moved", "--data"]


@case("predictions with an unknown extension")
def _(t, b):
    return ["evaluate", str(b["run"]), "--predictions", str(t / "p.txt")], ["p.txt", "unknown predictions format"]


@case("unknown split")
def _(t, b):
    return ["evaluate", str(b["run"]), "--split", "holdout"], ["unknown split 'holdout'"]


@case("embed-items without anything to embed")
def _(t, b):
    return ["embed-items", str(b["data"])], ["nothing to embed"]


# ------------------------------------------------ round 3: outputs, manifests, options


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _unchanged(d: Path) -> Callable[[], None]:
    """A check that ``d`` (a directory) holds the same bytes after the command as now."""
    before = _files(d)
    return lambda: _same(_files(d), before)


def _same(after: dict, before: dict) -> None:
    assert after == before, sorted(set(after) ^ set(before)) or "contents changed"


def _nothing_in(d: Path, *allowed: str) -> Callable[[], None]:
    """A check that the command left nothing in ``d`` but ``allowed`` (hidden staging and litter included)."""
    return lambda: _same(sorted(p.name for p in d.iterdir() if p.name not in allowed), [])


def _reseal(path: Path, edit: Callable[[dict], None]) -> None:
    """Edit a manifest and seal it again: what a writer (or a careful forger) would produce."""
    from userlens.artifacts import seal

    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(seal(doc)))


def _package(t: Path, b: dict[str, Path]) -> Path:
    ok = runner.invoke(app, ["export", str(b["run"]), "--out", str(t / "pkg")])
    assert ok.exit_code == 0, ok.output
    return t / "pkg"


def _load_store(t: Path, b: dict[str, Path], pkg: Path) -> list[str]:
    return ["load-store", str(b["data"]), "--store", f"lmdb://{t / 'store'}", "--package", str(pkg)]


def _embed(d: Path, t: Path, seed: int, name: str) -> None:
    """Random content vectors for every item of ``d`` (a .npy matrix and its ids), through the CLI."""
    import numpy as np

    raw = pl.read_parquet(d / "vocab" / "item.parquet")["raw"].cast(pl.Utf8).to_list()
    np.save(t / f"{name}.npy", np.random.default_rng(seed).normal(size=(len(raw), 8)).astype(np.float32))
    (t / f"{name}.txt").write_text("\n".join(raw) + "\n")
    ok = runner.invoke(app, ["embed-items", str(d), "--vectors", str(t / f"{name}.npy"), "--ids",
                             str(t / f"{name}.txt")])
    assert ok.exit_code == 0, ok.output


def _content_run(b: dict[str, Path]) -> tuple[Path, Path]:
    """A prepared copy with content vectors and a muse run trained on it (built once per module)."""
    home = b["data"].parent / "content"
    if not (home / "run" / "config.json").is_file():
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir()
        shutil.copytree(b["data"], home / "data")
        _embed(home / "data", home, 0, "v0")
        ok = runner.invoke(app, ["train", str(home / "data"), "--model", "muse", "--out", str(home / "run"),
                                 "--no-progress", "--set", "epochs=1", "--set", "compile=false"])
        assert ok.exit_code == 0, ok.output
    return home / "data", home / "run"


@case("content vectors replaced after training (evaluate)")
def _(t, b):
    data, run = _content_run(b)
    d = _copy(data, t, "d")
    _embed(d, t, 1, "v1")  # other vectors for the same items
    return ["evaluate", str(run), "--data", str(d)], ["d: its item content vectors are not those", "embed-items"]


@case("content vectors replaced after training (export)")
def _(t, b):
    data, run = _content_run(b)
    d = _copy(data, t, "d")
    _embed(d, t, 1, "v1")
    return (["export", str(run), "--data", str(d), "--out", str(t / "pkg")],
            ["its item content vectors are not those", "retrain"], _nothing_in(t, "d", "v1.npy", "v1.txt"))


@case("content vectors removed after training")
def _(t, b):
    data, run = _content_run(b)
    d = _copy(data, t, "d")
    for f in (d / "items").glob("content*"):
        f.unlink()
    return ["evaluate", str(run), "--data", str(d)], ["its item content vectors are not those"]


def _other_categories(t: Path, b: dict[str, Path]) -> Path:
    """The base data prepared again with the items' categories permuted: same vocabularies, other categories."""
    items = pl.read_parquet(b["items"])
    items.with_columns(pl.col("category").reverse()).write_parquet(t / "items.parquet")
    ok = runner.invoke(app, ["prepare", "--behaviors", str(b["behaviors"]), "--impressions", str(b["impressions"]),
                             "--items", str(t / "items.parquet"), "--out", str(t / "d")])
    assert ok.exit_code == 0, ok.output
    return t / "d"


@case("item categories changed after training")
def _(t, b):
    return ["evaluate", str(b["run"]), "--data", str(_other_categories(t, b))], ["its item categories are not those"]


@case("behavior store loaded from data with other item categories")
def _(t, b):
    d = _other_categories(t, b)
    return (["load-store", str(d), "--store", f"lmdb://{t / 'store'}", "--package", str(_package(t, b))],
            ["its item categories are not those", "pkg was trained with"], _nothing_in(t, "d", "pkg", "items.parquet"))


@case("behavior store from data with other item categories, package from before inputs")
def _(t, b):
    """The package's own item categories are compared, not its recorded digest: old packages are checked too."""
    d, pkg = _other_categories(t, b), _package(t, b)
    _resealed(pkg / "package.json", lambda m: m.update(inputs=None))  # as written before `inputs` existed
    return (["load-store", str(d), "--store", f"lmdb://{t / 'store'}", "--package", str(pkg)],
            ["its item categories are not those", "pkg was trained with"])


@case("embed-items where every text is empty")
def _(t, b):
    d = _copy(b["data"], t, "d")
    ids = pl.read_parquet(d / "vocab" / "item.parquet")["raw"]
    pl.DataFrame({"item_id": ids, "title": [""] * len(ids)}).write_parquet(t / "items.parquet")
    return (["embed-items", str(d), "--items", str(t / "items.parquet")], ["items.parquet", "every row's text",
                                                                          "is empty"], _unchanged(d))


@case("embed-items where no id is in the vocabulary")
def _(t, b):
    d = _copy(b["data"], t, "d")
    f = t / "v.parquet"
    pl.DataFrame({"item_id": ["x1", "x2"], "emb": [[1.0, 0.0], [0.0, 1.0]]}).write_parquet(f)
    return ["embed-items", str(d), "--vectors", str(f)], ["v.parquet", "none of its 2 ids", "--id-column"], _unchanged(d)


@case("embed-items with vectors of dimension 0")
def _(t, b):
    import numpy as np

    d = _copy(b["data"], t, "d")
    np.save(t / "v.npy", np.zeros((2, 0), dtype=np.float32))
    (t / "ids.txt").write_text("1\n2\n")
    return (["embed-items", str(d), "--vectors", str(t / "v.npy"), "--ids", str(t / "ids.txt")],
            ["v.npy", "dimension 0"], _unchanged(d))


@case("embed-items whose PCA finds no variance keeps the old vectors")
def _(t, b):
    d = _copy(b["data"], t, "d")
    _embed(d, t, 0, "v0")
    f = t / "v.parquet"
    pl.DataFrame({"item_id": [1, 2, 3], "emb": [[1.0, 2.0]] * 3}).write_parquet(f)  # one vector three times
    return (["embed-items", str(d), "--vectors", str(f), "--pca-dim", "1"], ["PCA found no variance"],
            _unchanged(d))


@case("threads far beyond any machine")
def _(t, b):
    return _train(b["data"], t / "r", "--set", "threads=100000"), ["threads must be in [1, 1,024]", "got 100000"]


@case("negatives per positive in the trillions")
def _(t, b):
    return _prep("--behaviors", b["behaviors"], "--negatives", str(10**12), out=t / "o"), [
        "--negatives must be in [0, 1,000]"]


@case("short_len in the trillions")
def _(t, b):
    return _train(b["data"], t / "r", "--set", f"short_len={10**12}"), ["short_len must be in [1, 100,000]"]


@case("batch times short_len beyond memory")
def _(t, b):
    return _train(b["data"], t / "r", "--set", "short_len=100000"), ["eval_batch_size × short_len must be <="]


@case("negative seed")
def _(t, b):
    return _train(b["data"], t / "r", "--set", "seed=-1"), ["seed must be in [0, 4,294,967,295]", "got -1"]


@case("seed beyond 64 bits")
def _(t, b):
    return _train(b["data"], t / "r", "--set", f"seed={2**70}"), ["seed must be in [0, 4,294,967,295]"]


@case("prepare seed beyond 64 bits")
def _(t, b):
    return _prep("--behaviors", b["behaviors"], "--seed", str(2**70), out=t / "o"), ["--seed must be in [0,"]


@case("embed-items negative seed")
def _(t, b):
    f = t / "v.parquet"
    pl.DataFrame({"item_id": [1, 2], "emb": [[1.0, 0.0], [0.0, 1.0]]}).write_parquet(f)
    return ["embed-items", str(b["data"]), "--vectors", str(f), "--seed", "-1"], ["--seed must be in [0,"]


@case("negative batch limit")
def _(t, b):
    return _train(b["data"], t / "r", "--limit-batches", "-3"), ["limit_batches must be in [1, 1,000,000]"]


@case("embedding size in the trillions")
def _(t, b):
    return _train(b["data"], t / "r", "--set", f"embed_dim={10**13}"), ["embed_dim must be in [1, 4,096]"]


@case("prefetch of a million batches")
def _(t, b):
    return _train(b["data"], t / "r", "--set", "prefetch=1000000"), ["prefetch must be in [0, 64]"]


def _serve(t: Path, *extra: str) -> list[str]:
    return ["serve", str(t / "no-package"), "--store", f"lmdb://{t / 'store'}", *extra]


@case("serve reload interval nan")
def _(t, b):
    return _serve(t, "--reload-seconds", "nan"), ["--reload-seconds must be a finite number in [0, 86400]"]


@case("serve negative candidate limit")
def _(t, b):
    return _serve(t, "--max-candidates", "-1"), ["--max-candidates must be in [1, 100,000]"]


@case("serve a hundred thousand workers")
def _(t, b):
    return _serve(t, "--workers", "100000"), ["--workers must be in [1, 256]"]


@case("demo with zero epochs")
def _(t, b):
    (t / "demo").mkdir()
    return (["demo", "--out", str(t / "demo"), "--epochs", "0"], ["epochs must be >= 1"],
            _nothing_in(t / "demo"))  # refused before generating and preparing anything


@case("output is a symbolic link")
def _(t, b):
    (t / "real").mkdir()
    (t / "o").symlink_to(t / "real")
    return (_prep("--behaviors", b["behaviors"], out=t / "o"), ["o: is a symbolic link", "does not write through"],
            _nothing_in(t, "real", "o"), _nothing_in(t / "real"))


@case("output is a dangling symbolic link")
def _(t, b):
    (t / "o").symlink_to(t / "gone")
    return _prep("--behaviors", b["behaviors"], out=t / "o"), ["o: is a symbolic link", "dangling"], _nothing_in(t, "o")


@case("run output is a symbolic link")
def _(t, b):
    (t / "real").mkdir()
    (t / "r").symlink_to(t / "real")
    return _train(b["data"], t / "r"), ["r: is a symbolic link"], _nothing_in(t, "real", "r")


@case("meta.json edited by hand")
def _(t, b):
    d = _copy(b["data"], t, "d")
    meta = json.loads((d / "meta.json").read_text())
    del meta["files"]["samples/test/label.npy"]  # so that flipped labels would go unnoticed
    (d / "meta.json").write_text(json.dumps(meta))
    return ["evaluate", str(b["run"]), "--data", str(d)], ["meta.json: the prepared meta.json was edited"]


@case("meta.json without the entry of a file it reads")
def _(t, b):
    d = _copy(b["data"], t, "d")
    _reseal(d / "meta.json", lambda m: m["files"].pop("samples/test/label.npy"))
    label = d / "samples" / "test" / "label.npy"
    import numpy as np

    np.save(label, 1 - np.load(label))  # flipped test labels: AUC 1 - a
    return ["evaluate", str(b["run"]), "--data", str(d)], ["does not list samples/test/label.npy"]


@case("meta.json missing a key")
def _(t, b):
    d = _copy(b["data"], t, "d")
    _reseal(d / "meta.json", lambda m: m.pop("vocab_sizes"))
    return _train(d, t / "r"), ["meta.json: the prepared meta.json is missing key 'vocab_sizes'", "prepare"]


@case("meta.json with a file entry without its checksum")
def _(t, b):
    d = _copy(b["data"], t, "d")
    _reseal(d / "meta.json", lambda m: m["files"]["timeline/item.npy"].pop("checksum"))
    return _train(d, t / "r"), ["timeline/item.npy: its manifest entry"]


@case("package.json edited by hand")
def _(t, b):
    pkg = _package(t, b)
    doc = json.loads((pkg / "package.json").read_text())
    doc["short_len"] = 3  # was served as is
    (pkg / "package.json").write_text(json.dumps(doc))
    return _load_store(t, b, pkg), ["package.json: the package manifest was edited"], _nothing_in(t, "pkg")


@case("package.json short_len unlike its config")
def _(t, b):
    pkg = _package(t, b)
    _reseal(pkg / "package.json", lambda m: m.update(short_len=3))
    return _load_store(t, b, pkg), ["long_len / short_len", "differ from its config"]


@case("package.json missing a key")
def _(t, b):
    pkg = _package(t, b)
    _reseal(pkg / "package.json", lambda m: m.pop("files"))
    return _load_store(t, b, pkg), ["package.json: the package manifest is missing key 'files'", "export"]


@case("package.json not listing its weights")
def _(t, b):
    pkg = _package(t, b)
    _reseal(pkg / "package.json", lambda m: m["files"].pop("model.safetensors"))
    (pkg / "model.safetensors").write_bytes(b"not safetensors")
    return _load_store(t, b, pkg), ["does not list model.safetensors"]


@case("package with a file it does not list")
def _(t, b):
    import numpy as np

    pkg = _package(t, b)
    np.save(pkg / "items" / "content.npy", np.zeros((3, 2), dtype=np.float32))
    return _load_store(t, b, pkg), ["items/content.npy: not listed in package.json"]


@case("run config.json edited by hand")
def _(t, b):
    r = _copy(b["run"], t, "r")
    doc = json.loads((r / "config.json").read_text())
    doc["train"]["short_len"] = 3
    (r / "config.json").write_text(json.dumps(doc))
    return ["evaluate", str(r)], ["config.json: the run config was edited"]


@case("run config.json missing a key")
def _(t, b):
    r = _copy(b["run"], t, "r")
    _reseal(r / "config.json", lambda m: m.pop("feature_spec"))
    return ["evaluate", str(r)], ["config.json: the run config is missing key 'feature_spec'"]


@case("predictions inside the prepared directory")
def _(t, b):
    d = _copy(b["data"], t, "d")
    return (["evaluate", str(b["run"]), "--data", str(d), "--predictions", str(d / "vocab" / "item.parquet")],
            ["is inside", "write --predictions outside it"], _unchanged(d))


@case("predictions inside the run directory")
def _(t, b):
    r = _copy(b["run"], t, "r")
    return ["evaluate", str(r), "--predictions", str(r / "model.parquet")], ["is inside"], _nothing_in(
        r, "config.json", "model.safetensors", "metrics.jsonl")


@case("predictions path is a directory")
def _(t, b):
    (t / "p.parquet").mkdir()
    return ["evaluate", str(b["run"]), "--predictions", str(t / "p.parquet")], ["p.parquet: is a directory"]


# a full disk: each writer fails at its first write; the message names the output and nothing is left behind

FULL = OSError(28, "No space left on device")


@pytest.mark.parametrize("where", ["numpy", "parquet", "oserror"])
def test_full_disk_while_preparing(where: str, base: dict[str, Path], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    import userlens.data.prepare as prep

    def short_write(*a, **k):  # what np.save raises on a full disk: no errno, only the counts
        raise OSError("450000 requested and 114624 written")

    def rust_full(*a, **k):
        raise pl.exceptions.ComputeError("No space left on device (os error 28)")

    def full(*a, **k):
        raise FULL

    if where == "numpy":
        monkeypatch.setattr(prep.np, "save", short_write)
    elif where == "parquet":
        monkeypatch.setattr(pl.DataFrame, "write_parquet", rust_full)
    else:
        monkeypatch.setattr(prep, "_save", full)
    del np
    _full_disk(runner.invoke(app, _prep("--behaviors", base["behaviors"], out=tmp_path / "o")), tmp_path / "o")
    assert list(tmp_path.iterdir()) == []  # no staging, no lock, no partial file


def test_full_disk_while_training_evaluating_exporting(base: dict[str, Path], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors import SafetensorError

    import userlens.training.checkpoint as ckpt

    def full_tensors(*a, **k):  # safetensors wraps the OS error in its own type
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                              '"No space left on device" })')

    with monkeypatch.context() as m:
        m.setattr(ckpt, "save_file", full_tensors)
        _full_disk(runner.invoke(app, _train(base["data"], tmp_path / "r")), tmp_path / "r.partial")
    assert sorted(p.name for p in tmp_path.iterdir()) == []

    def full(*a, **k):
        raise FULL

    with monkeypatch.context() as m:
        m.setattr(pl.DataFrame, "write_parquet", full)
        _full_disk(runner.invoke(app, ["evaluate", str(base["run"]), "--predictions", str(tmp_path / "p.parquet")]),
                   tmp_path / "p.parquet")
        _full_disk(runner.invoke(app, ["export", str(base["run"]), "--out", str(tmp_path / "pkg")]), tmp_path / "pkg")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_full_disk_while_embedding_keeps_the_old_vectors(base: dict[str, Path], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import userlens.data.content as content

    d = _copy(base["data"], tmp_path, "d")
    _embed(d, tmp_path, 0, "v0")
    before = _files(d)

    def full(*a, **k):
        raise FULL

    monkeypatch.setattr(content.np, "save", full)
    f = tmp_path / "v.parquet"
    pl.DataFrame({"item_id": [1, 2], "emb": [[1.0, 0.0], [0.0, 1.0]]}).write_parquet(f)
    _full_disk(runner.invoke(app, ["embed-items", str(d), "--vectors", str(f)]), d / "items")
    _same(_files(d), before)


def _full_disk(r, where: Path) -> None:
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("error:")]
    assert r.exit_code == 1 and errors == lines[-1:] and "Traceback" not in r.output, (r.exit_code, r.output)
    assert lines[-1].startswith(f"error: no space left on device at {where}; nothing was written"), lines[-1]


def test_dead_writers_staging_is_cleaned(base: dict[str, Path], tmp_path: Path) -> None:
    """`.out.tmp-PID` / `.out.old-PID` of a writer that died (killed mid-write) go with the next write."""
    for name in (".o.tmp-999999", ".o.old-999998"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "big.npy").write_bytes(b"x" * 1000)
    ok = runner.invoke(app, _prep("--behaviors", base["behaviors"], out=tmp_path / "o"))
    assert ok.exit_code == 0, ok.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


# ------------------------------------------------ round 3: input types and values


def _imp_with(t: Path, b: dict[str, Path], **columns: pl.Expr) -> Path:
    """The base impressions with ``columns`` added or replaced, as t/i.parquet."""
    pl.read_parquet(b["impressions"]).with_columns(**columns).write_parquet(t / "i.parquet")
    return t / "i.parquet"


def _ctx(t: Path, b: dict[str, Path], *names: str, imp: Path | None = None) -> list[str]:
    ctx = [a for n in names for a in ("--context", n)]
    return _prep("--behaviors", b["behaviors"], "--impressions", imp or b["impressions"], *ctx, out=t / "o")


@case("context is the label")
def _(t, b):
    return _ctx(t, b, "label"), ["--context label", "a column userlens reads itself", "hands the model the answer"]


@case("context is the split")
def _(t, b):
    return _ctx(t, b, "split"), ["--context split", "reads itself"]


@case("context is the user id")
def _(t, b):
    return _ctx(t, b, "user_id"), ["--context user_id", "reads itself"]


@case("context is the timestamp")
def _(t, b):
    return _ctx(t, b, "timestamp"), ["--context timestamp", "reads itself"]


@case("context column equal to the label")
def _(t, b):
    imp = _imp_with(t, b, clicked=pl.col("label"))
    return _ctx(t, b, "clicked", imp=imp), ["i.parquet", "'clicked' equals the label on every row",
                                            "drop --context clicked"]


@case("context column that relabels the label")
def _(t, b):
    imp = _imp_with(t, b, outcome=pl.when(pl.col("label") == 1).then(pl.lit("yes")).otherwise(pl.lit("no")))
    return _ctx(t, b, "outcome", imp=imp), ["i.parquet", "'outcome' determines the label on every row",
                                            "drop --context outcome"]


@case("context named twice")
def _(t, b):
    imp = _imp_with(t, b, device=pl.lit("ios"))
    return _ctx(t, b, "device", "device", imp=imp), ["--context device", "given twice"]


@case("context names differing only in case")
def _(t, b):
    imp = _imp_with(t, b, device=pl.lit("ios"), Device=pl.lit("web"))
    return _ctx(t, b, "device", "Device", imp=imp), ["--context device and --context Device", "only in case"]


def _parquet_beh(t: Path, b: dict[str, Path], column: str, values: pl.Series) -> Path:
    """The base behaviors with ``column`` replaced by ``values`` (repeated to the frame's height)."""
    beh = pl.read_parquet(b["behaviors"])
    beh = beh.with_columns(pl.Series(column, [values[i % len(values)] for i in range(beh.height)],
                                     dtype=values.dtype))
    beh.write_parquet(t / "b.parquet")
    return t / "b.parquet"


@case("list ids in parquet")
def _(t, b):
    p = _parquet_beh(t, b, "user_id", pl.Series([[1], [2]]))
    return _prep("--behaviors", p, out=t / "o"), ["b.parquet", "column 'user_id' has type List", "integers or text"]


@case("struct ids in parquet")
def _(t, b):
    p = _parquet_beh(t, b, "item_id", pl.Series([{"u": 0}, {"u": 1}]))
    return _prep("--behaviors", p, out=t / "o"), ["b.parquet", "column 'item_id' has type Struct"]


@case("decimal ids in parquet")
def _(t, b):
    from decimal import Decimal

    p = _parquet_beh(t, b, "user_id", pl.Series([Decimal("1.50"), Decimal("2.00")], dtype=pl.Decimal(10, 2)))
    return _prep("--behaviors", p, out=t / "o"), ["b.parquet", "column 'user_id' has type Decimal"]


@case("duration timestamps in parquet")
def _(t, b):
    from datetime import timedelta

    p = _parquet_beh(t, b, "timestamp", pl.Series([timedelta(seconds=T)]))
    return _prep("--behaviors", p, out=t / "o"), ["b.parquet", "column 'timestamp' has type Duration",
                                                  "a date or a timestamp"]


@case("time-of-day timestamps in parquet")
def _(t, b):
    from datetime import time

    p = _parquet_beh(t, b, "timestamp", pl.Series([time(10, 30)]))
    return _prep("--behaviors", p, out=t / "o"), ["b.parquet", "column 'timestamp' has type Time"]


@case("list labels in parquet")
def _(t, b):
    imp = _imp_with(t, b, label=pl.concat_list("label"))
    args = _prep("--behaviors", b["behaviors"], "--impressions", imp, out=t / "o")
    return args, ["i.parquet", "column 'label' has type List"]


@case("float id beyond int64")
def _(t, b):
    p = t / "b.parquet"
    pl.DataFrame({"user_id": [1e20, 2.0], "item_id": [1, 2], "timestamp": [T, T]}).write_parquet(p)
    return _prep("--behaviors", p, out=t / "o"), ["b.parquet:row 1", "column 'user_id'", "too large to be exact"]


@case("timestamp that would wrap")
def _(t, b):
    p = _csv(t, GOOD_HEAD + f"1,2,{T}\n1,3,{T + 1}\n1,4,{2**61}\n")
    return _prep("--behaviors", p, out=t / "o"), ["b.csv:line 4", "absurd timestamp (too large"]


@case("latin-1 config file")
def _(t, b):
    c = _csv(t, '{"lr": 0.01, "monitor": "auc"} # caf\xe9\n', "c.json", encoding="latin-1")
    return _train(b["data"], t / "r", "--config", str(c)), ["c.json:line 1", "not UTF-8", "iconv"]


@case("latin-1 ids file")
def _(t, b):
    import numpy as np

    np.save(t / "v.npy", np.ones((2, 4), dtype=np.float32))
    ids = _csv(t, "1\ncaf\xe9\n", "ids.txt", encoding="latin-1")
    return ["embed-items", str(b["data"]), "--vectors", str(t / "v.npy"), "--ids", str(ids)], [
        "ids.txt:line 2", "not UTF-8"]


@case("named pipe as input")
def _(t, b):
    import os

    os.mkfifo(t / "b.csv")
    return _prep("--behaviors", t / "b.csv", out=t / "o"), ["b.csv", "is a named pipe, not a regular file"]


@case("named pipe as config")
def _(t, b):
    import os

    os.mkfifo(t / "c.json")
    return _train(b["data"], t / "r", "--config", str(t / "c.json")), ["c.json", "is a named pipe"]


# --------------------------------------------------------------------------- found in review (round 3)

BELOW_A_FILE = "cannot be created: {} is not a directory"


def _a_file(t: Path) -> Path:
    (t / "f.csv").write_text("x")
    return t / "f.csv"


@case("prepare output below a file")
def _(t, b):
    return (_prep("--behaviors", b["behaviors"], out=_a_file(t) / "o"),
            ["f.csv/o", BELOW_A_FILE.format(t / "f.csv")])


@case("run output below a file")
def _(t, b):
    return _train(b["data"], _a_file(t) / "r"), [BELOW_A_FILE.format(t / "f.csv")]


@case("package output below a file")
def _(t, b):
    return ["export", str(b["run"]), "--out", str(_a_file(t) / "pkg")], [BELOW_A_FILE.format(t / "f.csv")]


@case("predictions below a file")
def _(t, b):
    return (["evaluate", str(b["run"]), "--predictions", str(_a_file(t) / "p.csv")],
            [BELOW_A_FILE.format(t / "f.csv")])


@case("lmdb store below a file")
def _(t, b):
    return (["load-store", str(b["data"]), "--store", f"lmdb://{_a_file(t)}/store"],
            [BELOW_A_FILE.format(t / "f.csv")])


@case("config file gives a number for a list key")
def _(t, b):
    (t / "c.json").write_text('{"mlp": 200}')
    return _train(b["data"], t / "r", "--config", str(t / "c.json")), ["mlp expects a comma-separated list", "200"]


@case("config file gives true for a number")
def _(t, b):
    (t / "c.json").write_text('{"threads": true}')  # was read as threads=1
    return _train(b["data"], t / "r", "--config", str(t / "c.json")), ["threads expects int, got True"]


@case("duration behavior column in parquet")
def _(t, b):
    from datetime import timedelta

    p = _parquet_beh(t, b, "behavior", pl.Series([timedelta(seconds=5)]))
    return _prep("--behaviors", p, out=t / "o"), ["b.parquet", "column 'behavior' has type Duration"]


@case("duration context column in parquet")
def _(t, b):
    from datetime import timedelta

    imp = pl.read_parquet(b["impressions"])
    imp.with_columns(pl.Series("wait", [timedelta(seconds=i % 3) for i in range(imp.height)])).write_parquet(
        t / "i.parquet")
    return (_prep("--behaviors", b["behaviors"], "--impressions", t / "i.parquet", "--context", "wait", out=t / "o"),
            ["i.parquet", "column 'wait' has type Duration"])


@case("timestamp in non-ASCII digits")
def _(t, b):
    p = _csv(t, GOOD_HEAD + "u1,i1,١٦٠٠٠٠٠٠٠٠\n")  # Arabic-Indic digits: was "too large: overflow int64"
    return _prep("--behaviors", p, out=t / "o"), ["b.csv:line 2", "cannot parse the timestamp"]


@case("embed-items vectors with list ids")
def _(t, b):
    d = _copy(b["data"], t, "d")
    pl.DataFrame({"item_id": [[1], [2]], "emb": [[1.0, 0.0], [0.0, 1.0]]}).write_parquet(t / "v.parquet")
    return (["embed-items", str(d), "--vectors", str(t / "v.parquet"), "--vector-column", "emb"],
            ["v.parquet: column 'item_id' has type List"], _unchanged(d))


@case("embed-items text in a struct column")
def _(t, b):
    """A struct was embedded as its printed form ('{"a":1}'), a list ended in a polars error."""
    d = _copy(b["data"], t, "d")
    ids = pl.read_parquet(d / "vocab" / "item.parquet")["raw"]
    pl.DataFrame({"item_id": ids, "title": [{"a": 1}] * len(ids)}).write_parquet(t / "items.parquet")
    return (["embed-items", str(d), "--items", str(t / "items.parquet")],
            ["items.parquet: column 'title' has type Struct", "a single value per row"], _unchanged(d))


def _resealed(manifest: Path, edit: Callable[[dict], None]) -> None:
    """Edit a manifest and seal it again: what only a config this userlens cannot build catches."""
    from userlens.artifacts import seal

    doc = json.loads(manifest.read_text())
    edit(doc)
    manifest.write_text(json.dumps(seal(doc)))


@case("run config this userlens cannot build")
def _(t, b):
    run = _copy(b["run"], t, "run")
    _resealed(run / "config.json", lambda d: d["train"].update(short_len=0))
    return ["evaluate", str(run)], ["run/config.json: not a config this userlens can rebuild a model from",
                                    "short_len must be >= 1"]


@case("package config this userlens cannot build")
def _(t, b):
    ok = runner.invoke(app, ["export", str(b["run"]), "--out", str(t / "pkg")])
    assert ok.exit_code == 0, ok.output
    _resealed(t / "pkg" / "package.json", lambda d: d["config"].update(model="no_such_model"))
    return (["load-store", str(b["data"]), "--store", f"lmdb://{t}/store", "--package", str(t / "pkg")],
            ["pkg/package.json: not a config this userlens can rebuild a model from", "no_such_model"])


def test_the_catalogue_is_large() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_gives_one_clear_line(name: str, base: dict[str, Path], tmp_path: Path) -> None:
    argv, expected, *after = CASES[name](tmp_path, base)
    r = runner.invoke(app, argv)
    err = r.stderr
    assert r.exit_code == 1, (name, r.exit_code, r.output, r.exception)
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)
    assert "Traceback" not in r.output and "Traceback" not in err
    for text in expected:
        assert text in lines[0], (name, text, lines[0])
    for check in after:
        check()


def test_an_error_message_keeps_square_brackets(tmp_path: Path) -> None:
    """Rich markup must not eat text: `pip install 'userlens[content]'` has to reach the user intact."""
    from userlens.cli import _error
    from rich.console import Console

    import userlens.cli as cli

    console = Console(file=open(tmp_path / "err.txt", "w"), soft_wrap=True)
    old, cli.err = cli.err, console
    try:
        _error("Fix: pip install 'userlens[content]' and retry [bold]now[/]")
    finally:
        cli.err = old
        console.file.close()
    text = (tmp_path / "err.txt").read_text()
    assert "userlens[content]" in text and "[bold]now[/]" in text


def test_an_error_of_a_class_outside_the_builtins_is_still_one_line(monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """polars raises PolarsError subclasses (not ValueError): they used to escape `_run` as a full traceback."""
    import typer

    from userlens.cli import _run

    class LibraryError(Exception):
        pass

    def boom() -> None:
        raise LibraryError("casting from Duration to String not supported\nmore detail")

    monkeypatch.delenv("USERLENS_DEBUG", raising=False)
    with pytest.raises(typer.Exit) as e:
        _run(boom)
    assert e.value.exit_code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: LibraryError: casting from Duration"), lines
    assert "(unexpected: set USERLENS_DEBUG=1" in lines[0]


def test_a_long_error_is_one_line_in_a_file(tmp_path: Path) -> None:
    long_name = tmp_path / ("x" * 150 + ".csv")
    r = runner.invoke(app, ["prepare", "--behaviors", str(long_name), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and len([x for x in r.stderr.splitlines() if x.strip()]) == 1


def test_prepare_failure_keeps_the_previous_directory(base: dict[str, Path], tmp_path: Path) -> None:
    """A failing `prepare --force` over an existing directory leaves it exactly as it was."""
    d = _copy(base["data"], tmp_path, "d")
    before = {p.relative_to(d): p.read_bytes() for p in d.rglob("*") if p.is_file()}
    bad = _csv(tmp_path, GOOD_HEAD + f"1,2,{T}\n1,3,yesterday\n")
    r = runner.invoke(app, ["prepare", "--behaviors", str(bad), "--out", str(d), "--force"])
    assert r.exit_code == 1
    after = {p.relative_to(d): p.read_bytes() for p in d.rglob("*") if p.is_file()}
    assert after == before
    assert not list(tmp_path.glob(".d.tmp-*")) and not (tmp_path / "d.lock").exists()


def test_no_nan_reaches_json(base: dict[str, Path], tmp_path: Path) -> None:
    """A single-class split gives auc null with a reason, never NaN (which is not JSON)."""
    imp = pl.read_parquet(base["impressions"])
    imp = imp.with_columns(pl.when(pl.col("split") == "test").then(pl.lit(1)).otherwise(pl.col("label"))
                           .cast(pl.Int8).alias("label")) if "split" in imp.columns else imp
    imp = imp.with_columns(pl.when(pl.arange(0, imp.height) % 5 == 0).then(pl.lit("test"))
                           .when(pl.arange(0, imp.height) % 5 == 1).then(pl.lit("valid"))
                           .otherwise(pl.lit("train")).alias("split"))
    imp = imp.with_columns(pl.when(pl.col("split") == "test").then(pl.lit(1)).otherwise(pl.col("label"))
                           .cast(pl.Int8).alias("label"))
    imp.write_parquet(tmp_path / "i.parquet")
    ok = runner.invoke(app, ["prepare", "--behaviors", str(base["behaviors"]), "--impressions",
                             str(tmp_path / "i.parquet"), "--out", str(tmp_path / "d")])
    assert ok.exit_code == 0 and "the test split has only label 1" in ok.stderr
    ok = runner.invoke(app, _train(tmp_path / "d", tmp_path / "r"))
    assert ok.exit_code == 0, ok.output
    r = runner.invoke(app, ["evaluate", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout.strip().splitlines()[-1])  # strict JSON: json.loads would accept NaN, so check
    assert res["auc"] is None and "only label 1" in res["notes"][0]
    assert "NaN" not in r.stdout and "NaN" not in (tmp_path / "r" / "metrics.jsonl").read_text()


@pytest.mark.parametrize("doc", ["[1]", '{"progress": 3}'])
def test_a_damaged_checkpoint_is_reported_not_masked(doc: str, base: dict[str, Path], tmp_path: Path) -> None:
    """`train --model M --resume` on a damaged checkpoint.json: its own error, not a TypeError of the clean-up."""
    (tmp_path / "r.partial").mkdir()
    (tmp_path / "r.partial" / "checkpoint.json").write_text(doc)
    r = runner.invoke(app, _train(base["data"], tmp_path / "r", "--resume"))
    assert r.exit_code == 1, r.output
    last = r.stderr.strip().splitlines()[-1]  # after the resolved config's log line
    assert last.startswith("error: ") and "checkpoint.json: the training checkpoint " in last, last
    assert "unexpected" not in r.stderr and "Traceback" not in r.output
