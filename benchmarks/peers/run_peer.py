"""One peer DIN run (FuxiCTR 2.3.10 or DeepCTR-Torch 0.3.0) on one peer-samples dataset.

Started by ``benchmarks/bench_peers.py`` inside its scratch venv (torch 2.13.0 CPU plus
the peer packages; never the project's venv). Reads the same parquet files as our
``bench_train.py`` and builds the peer's DIN input by the peer-samples protocol
(``../shared/benchmarks/peer-samples/README.md``):

* history of an impression = the user's behaviors with timestamp strictly before
  the impression's, ordered by (timestamp, orig_row), the last ``L`` kept, most
  recent last; item and category sequences, padded with 0 after the last behavior;
* train on ``split == 'train'``, early stop on ``'valid'`` AUC (patience, at most
  ``epochs``), test AUC with scikit-learn's ``roc_auc_score`` from the best weights;
* train samples/s = train rows × epochs run / training seconds, where the training
  seconds exclude validation, checkpointing and early-stop bookkeeping (the peers'
  definition; input building is outside the clock too).

Vocabularies: items from ``items.parquet`` (the catalogue), categories from all files, users
from the impressions; each coded 1..n with 0 as padding (no out-of-vocabulary bucket:
every id is known).

Each peer trains through its own public API and its own training loop:

* FuxiCTR: ``BaseModel.fit`` fed by its ``RankDataLoader`` over ``.npz`` files (its
  default format; the library's default ``num_workers=1``). FuxiCTR ships its DIN in
  the repository's ``model_zoo``, not in the wheel, so :class:`FuxiDIN` below assembles
  the same model from the wheel's layers (``FeatureEmbeddingDict``, ``DIN_Attention``
  with Dice, ``MLP_Block`` with ReLU), with FuxiCTR's defaults otherwise (LR × 0.1 on
  each non-improving epoch, gradient-norm clip 10, embedding init N(0, 1e-4)).
* DeepCTR-Torch: ``deepctr_torch.models.DIN`` with ``model.fit`` (``verbose=0``: no
  per-batch training AUC) and its ``EarlyStopping(restore_best_weights=True)``; its own
  defaults otherwise (embedding L2 1e-6, init std 1e-4).

Prints progress to stderr and one line ``RESULT {json}`` on stdout.

    /tmp/userlens-peers-venv/bin/python benchmarks/peers/run_peer.py --peer fuxictr \\
        --data ../shared/benchmarks/peer-samples/movielens-latest-small --history 50 --workdir /tmp/peer-run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import log_loss, roc_auc_score

PEERS = ("fuxictr", "deepctr")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------- inputs
def build_inputs(data: Path, history: int, train_rows: int | None) -> tuple[dict[str, dict[str, np.ndarray]],
                                                                          dict[str, int]]:
    """Per split: user_id, item_id, cate_id (N,), item_history, cate_history (N, L), seq_length, label.

    ``train_rows`` keeps only the first that many train impressions (file order), for smoke runs.
    """
    beh = pd.read_parquet(data / "behaviors.parquet", columns=["user_id", "item_id", "timestamp", "category",
                                                                "orig_row"])
    imp = pd.read_parquet(data / "impressions.parquet", columns=["user_id", "item_id", "category", "timestamp",
                                                                  "label", "split"])
    items = pd.read_parquet(data / "items.parquet", columns=["item_id", "category"])
    item_index = pd.Index(pd.unique(pd.concat([items["item_id"], beh["item_id"], imp["item_id"]])))
    cate_index = pd.Index(pd.unique(pd.concat([items["category"], beh["category"], imp["category"]]).astype(str)))
    user_index = pd.Index(pd.unique(imp["user_id"]))

    def code(index: pd.Index, values: pd.Series) -> np.ndarray:  # 1..n, 0 is padding
        return index.get_indexer(values).astype(np.int64) + 1

    beh = beh[beh["user_id"].isin(user_index)]  # users without impressions (< 5 behaviors) have no samples
    b_user, b_item = code(user_index, beh["user_id"]), code(item_index, beh["item_id"])
    b_cate, b_ts = code(cate_index, beh["category"].astype(str)), beh["timestamp"].to_numpy(np.int64)
    order = np.lexsort((beh["orig_row"].to_numpy(), b_ts, b_user))  # by user, then (timestamp, orig_row)
    b_user, b_item, b_cate, b_ts = b_user[order], b_item[order], b_cate[order], b_ts[order]

    i_user, i_ts = code(user_index, imp["user_id"]), imp["timestamp"].to_numpy(np.int64)
    # One sorted int64 key (user, timestamp) so that a single searchsorted finds, per impression,
    # the end of "this user's behaviors strictly before this timestamp".
    t0 = min(b_ts.min(), i_ts.min())
    ts_bits = int(max(b_ts.max(), i_ts.max()) - t0).bit_length()
    if ts_bits + int(len(user_index) + 1).bit_length() > 62:
        raise ValueError(f"{data}: timestamps span 2**{ts_bits}: too wide to pack with user ids into int64")
    b_key = (b_user << ts_bits) | (b_ts - t0)
    end = np.searchsorted(b_key, (i_user << ts_bits) | (i_ts - t0), side="left")
    user_start = np.searchsorted(b_key, i_user << ts_bits, side="left")
    start = np.maximum(user_start, end - history)
    n = end - start  # (N,) history lengths, 0..L
    pos = np.arange(history)
    valid = pos[None, :] < n[:, None]  # (N, L): left-aligned, most recent last, 0-padded after
    idx = np.where(valid, start[:, None] + pos[None, :], 0)
    hist_item = np.where(valid, b_item[idx], 0)
    hist_cate = np.where(valid, b_cate[idx], 0)

    cols = {"user_id": i_user, "item_id": code(item_index, imp["item_id"]),
            "cate_id": code(cate_index, imp["category"].astype(str)), "item_history": hist_item,
            "cate_history": hist_cate, "seq_length": n.astype(np.int64), "label": imp["label"].to_numpy(np.int64)}
    split = imp["split"].to_numpy()
    out = {}
    for s in ("train", "valid", "test"):
        rows = np.flatnonzero(split == s)
        if s == "train" and train_rows is not None:
            rows = rows[:train_rows]
        out[s] = {k: np.ascontiguousarray(v[rows]) for k, v in cols.items()}
    vocab = {"users": len(user_index) + 1, "items": len(item_index) + 1, "cates": len(cate_index) + 1}
    return out, vocab


# ---------------------------------------------------------------------------------------- FuxiCTR
def run_fuxictr(inputs: dict, vocab: dict, s: argparse.Namespace, work: Path) -> dict:
    from fuxictr.features import FeatureMap
    from fuxictr.pytorch.dataloaders import RankDataLoader
    from fuxictr.pytorch.layers import DIN_Attention, FeatureEmbeddingDict, MLP_Block
    from fuxictr.pytorch.models import BaseModel
    from fuxictr.pytorch.torch_utils import seed_everything

    class FuxiDIN(BaseModel):
        """FuxiCTR's DIN (model_zoo/DIN) for one (item, category) target and its two sequences."""

        def __init__(self, feature_map, embedding_dim: int, attention_units: list[int], dnn_units: list[int],
                     learning_rate: float, **kwargs) -> None:
            super().__init__(feature_map, model_id="DIN", **kwargs)
            self.embedding_dim = embedding_dim
            self.embedding_layer = FeatureEmbeddingDict(feature_map, embedding_dim)
            self.attention = DIN_Attention(2 * embedding_dim, attention_units=attention_units,
                                           hidden_activations="Dice", output_activation=None, dropout_rate=0,
                                           use_softmax=False)
            self.dnn = MLP_Block(input_dim=feature_map.sum_emb_out_dim(), output_dim=1, hidden_units=dnn_units,
                                 hidden_activations="ReLU", output_activation=self.output_activation)
            self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
            self.reset_parameters()
            self.model_to_device()
            self.eval_seconds = 0.0

        def forward(self, inputs):  # type: ignore[no-untyped-def]
            X = self.get_inputs(inputs)
            emb = self.embedding_layer(X)  # name -> (B, E) or (B, L, E)
            target = torch.cat([emb["item_id"], emb["cate_id"]], dim=-1)  # (B, 2E)
            seq = torch.cat([emb["item_history"], emb["cate_history"]], dim=-1)  # (B, L, 2E)
            pooled = self.attention(target, seq, X["item_history"].long() != 0)  # (B, 2E)
            emb["item_history"], emb["cate_history"] = pooled.split(self.embedding_dim, dim=-1)
            return {"y_pred": self.dnn(self.embedding_layer.dict2tensor(emb, flatten_emb=True))}  # probabilities

        def eval_step(self) -> None:  # validation + checkpoint + early-stop bookkeeping: off the training clock
            t = time.perf_counter()
            super().eval_step()
            self.eval_seconds += time.perf_counter() - t

    seed_everything(s.seed)
    E = s.embed_dim
    cat = {"source": "", "type": "categorical", "padding_idx": 0}
    seq = {"source": "", "type": "sequence", "padding_idx": 0, "max_len": s.history}
    fmap = FeatureMap(f"peers_{s.data.name}", str(work))
    fmap.features = OrderedDict([
        ("user_id", {**cat, "vocab_size": vocab["users"]}),
        ("item_id", {**cat, "vocab_size": vocab["items"]}),
        ("cate_id", {**cat, "vocab_size": vocab["cates"]}),
        ("item_history", {**seq, "vocab_size": vocab["items"], "share_embedding": "item_id"}),
        ("cate_history", {**seq, "vocab_size": vocab["cates"], "share_embedding": "cate_id"}),
    ])
    fmap.labels, fmap.default_emb_dim = ["label"], E
    fmap.num_fields = fmap.get_num_fields()
    fmap.set_column_index()
    paths = {}
    for split, cols in inputs.items():
        paths[split] = str(work / f"{split}.npz")
        np.savez(paths[split], **{k: cols[k] for k in list(fmap.features) + ["label"]})
    train_gen, valid_gen, test_gen = RankDataLoader(
        fmap, stage="both", train_data=paths["train"], valid_data=paths["valid"], test_data=paths["test"],
        batch_size=s.batch_size, shuffle=True, data_format="npz")
    model = FuxiDIN(fmap, E, s.attention_mlp, s.dnn, s.lr, gpu=-1, task="binary_classification",
                    monitor="AUC", monitor_mode="max", early_stop_patience=s.patience, verbose=0,
                    model_root=str(work / "checkpoints"), metrics=["logloss", "AUC"], optimizer="adam",
                    loss="binary_crossentropy")
    os.makedirs(model.model_dir, exist_ok=True)
    t = time.perf_counter()
    model.fit(train_gen, epochs=s.epochs, validation_data=valid_gen)
    fit_seconds = time.perf_counter() - t
    epochs = model._epoch_index + 1
    return {"epochs": epochs, "train_seconds": fit_seconds - model.eval_seconds,
            "scores": model.predict(test_gen), "extra": {"fuxictr_num_workers": 1}}


# ---------------------------------------------------------------------------------------- DeepCTR
def run_deepctr(inputs: dict, vocab: dict, s: argparse.Namespace, work: Path) -> dict:
    import requests

    def no_network(*a, **k):  # deepctr_torch checks PyPI for a newer release on import: not from a benchmark
        raise requests.ConnectionError("version check disabled by bench_peers")

    requests.get = no_network
    from deepctr_torch.callbacks import EarlyStopping
    from deepctr_torch.inputs import SparseFeat, VarLenSparseFeat
    from deepctr_torch.models import DIN

    class TimedEarlyStopping(EarlyStopping):  # its best-weights copy is validation bookkeeping, off the clock
        seconds = 0.0

        def on_epoch_end(self, epoch, logs=None):  # type: ignore[no-untyped-def]
            t = time.perf_counter()
            super().on_epoch_end(epoch, logs)
            TimedEarlyStopping.seconds += time.perf_counter() - t

    E = s.embed_dim
    columns = [SparseFeat("user_id", vocab["users"], E), SparseFeat("item_id", vocab["items"], E),
               SparseFeat("cate_id", vocab["cates"], E),
               VarLenSparseFeat(SparseFeat("hist_item_id", vocab["items"], E, embedding_name="item_id"),
                                maxlen=s.history, length_name="seq_length"),
               VarLenSparseFeat(SparseFeat("hist_cate_id", vocab["cates"], E, embedding_name="cate_id"),
                                maxlen=s.history, length_name="seq_length")]

    def xy(cols: dict) -> tuple[dict, np.ndarray]:
        return ({"user_id": cols["user_id"], "item_id": cols["item_id"], "cate_id": cols["cate_id"],
                 "hist_item_id": cols["item_history"], "hist_cate_id": cols["cate_history"],
                 "seq_length": cols["seq_length"]}, cols["label"].astype(np.float32))

    model = DIN(columns, ["item_id", "cate_id"], dnn_hidden_units=tuple(s.dnn), att_hidden_size=tuple(s.attention_mlp),
                device="cpu", seed=s.seed)
    model.compile(torch.optim.Adam(model.parameters(), lr=s.lr), "binary_crossentropy", metrics=["auc"])
    eval_seconds = 0.0
    evaluate = model.evaluate

    def timed_evaluate(*a, **k):  # type: ignore[no-untyped-def]
        nonlocal eval_seconds
        t = time.perf_counter()
        r = evaluate(*a, **k)
        eval_seconds += time.perf_counter() - t
        return r

    model.evaluate = timed_evaluate
    x_train, y_train = xy(inputs["train"])
    stop = TimedEarlyStopping(monitor="val_auc", patience=s.patience, mode="max", restore_best_weights=True)
    t = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # fit prints the device and a summary line
        history = model.fit(x_train, y_train, batch_size=s.batch_size, epochs=s.epochs, verbose=0,
                            validation_data=xy(inputs["valid"]), shuffle=True, callbacks=[stop])
    fit_seconds = time.perf_counter() - t
    x_test, _ = xy(inputs["test"])
    return {"epochs": len(history.epoch), "train_seconds": fit_seconds - eval_seconds - TimedEarlyStopping.seconds,
            "scores": model.predict(x_test, batch_size=s.batch_size).reshape(-1), "extra": {}}


# ------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer", required=True, choices=PEERS)
    ap.add_argument("--data", required=True, type=Path, help="a peer-samples dataset folder")
    ap.add_argument("--history", type=int, default=50)
    ap.add_argument("--workdir", required=True, type=Path, help="scratch folder for this run (npz, checkpoints)")
    ap.add_argument("--train-rows", type=int, default=None, help="smoke runs: first N train impressions only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--patience", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--embed-dim", type=int, default=16)
    ap.add_argument("--attention-mlp", type=lambda v: [int(x) for x in v.split(",")], default=[64, 32])
    ap.add_argument("--dnn", type=lambda v: [int(x) for x in v.split(",")], default=[200, 80])
    s = ap.parse_args()
    torch.set_num_threads(s.threads)
    s.workdir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    inputs, vocab = build_inputs(s.data, s.history, s.train_rows)
    log(f"{s.peer}: inputs built in {time.perf_counter() - t:.1f}s: "
        + ", ".join(f"{k} {len(v['label']):,}" for k, v in inputs.items()) + f"; vocab {vocab}")
    run = run_fuxictr if s.peer == "fuxictr" else run_deepctr
    r = run(inputs, vocab, s, s.workdir)
    y, p = inputs["test"]["label"], np.asarray(r["scores"], dtype=np.float64)
    rows = len(inputs["train"]["label"])
    result = {"runner": s.peer, "dataset": s.data.name, "history": s.history, "epochs": r["epochs"],
              "train_rows": rows, "train_seconds": r["train_seconds"],
              "samples_per_s": rows * r["epochs"] / max(r["train_seconds"], 1e-9),
              "test_auc": float(roc_auc_score(y, p)),
              "test_logloss": float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1])),
              "threads": torch.get_num_threads(), "torch": torch.__version__, **r["extra"]}
    if not all(math.isfinite(v) for v in (result["test_auc"], result["samples_per_s"])):
        raise SystemExit(f"{s.peer}: non-finite result {result}")
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
