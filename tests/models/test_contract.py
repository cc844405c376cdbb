"""The contract every registered model must honour (STYLE §12)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from userlens.batch import COUNT_BUCKETS, Batch, History
from userlens.data.counts import COUNT_FEATURES
from userlens.layers.gsu import CategoryIndex
from userlens.models import build_model, get_model, list_models
from userlens.training.checkpoint import load_run, save_run
from userlens.training.config import resolve_config
from userlens.training.trainer import training_loss

from .conftest import SPEC, random_batch, random_long

MODELS = [e.name for e in list_models()]
#: zero-parameter baselines (popularity, history_match): fixed scoring rules, nothing to train
FIXED = [n for n in MODELS if not any(p.requires_grad for p in build_model(n, SPEC).parameters())]


def _build(name: str, seed: int = 0, **overrides):  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    cfg = get_model(name).config_cls()
    fields = {f.name for f in dataclasses.fields(cfg)}
    if "use_user" in fields:
        overrides.setdefault("use_user", True)  # exercise the user table too
    return build_model(name, SPEC, dataclasses.replace(cfg, **overrides))


def _repad(batch: Batch, seed: int) -> Batch:
    """Same batch with garbage written into every padded position."""
    g = torch.Generator().manual_seed(seed)
    mask = batch.history.mask()
    vals = {k: torch.where(mask, v, torch.randint(2, 9, v.shape, generator=g)) for k, v in batch.history.values.items()}
    return Batch(batch.target, History(vals, batch.history.lengths), batch.label, batch.context, batch.long)


def test_registry_lists_foundation_models() -> None:
    assert {"avgpool", "din"} <= set(MODELS)
    assert set(FIXED) == {"popularity", "history_match"}  # every other model must learn something


@pytest.mark.parametrize("name", MODELS)
def test_output_shape_and_logits(name: str, batch: Batch) -> None:
    model = _build(name).eval()
    out = model(batch)
    assert out.shape == (len(batch),)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
def test_batch_of_one(name: str) -> None:
    model = _build(name)
    full = random_batch(batch=5, seed=3)
    model.eval()
    expected = model(full)
    for i in range(5):
        one = random_batch(batch=5, seed=3).take(i, i + 1)
        torch.testing.assert_close(model(one), expected[i : i + 1], rtol=1e-5, atol=1e-6)
    model.train()
    assert model(one).shape == (1,)  # a training batch of one must not crash (Dice/BatchNorm statistics)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_padding_invariance(name: str, mode: str, batch: Batch) -> None:
    model = _build(name)
    model.train(mode == "train")
    with torch.no_grad():
        a = model(batch)
        b = model(_repad(batch, seed=1))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", MODELS)
def test_history_matters(name: str, batch: Batch) -> None:
    """The converse of padding invariance: changing a real behavior changes the score (no dead mask)."""
    model = _build(name).eval()
    if not any(f.startswith("hist_") for f in model.fields):  # e.g. popularity, history_match (reads `long`)
        pytest.skip(f"{name} declares no short-history field; the loader does not even build batch.history")
    mask = batch.history.mask()
    vals = {k: torch.where(mask, (v + 1) % 7 + 2, v) for k, v in batch.history.values.items()}
    changed = Batch(batch.target, History(vals, batch.history.lengths), batch.label, batch.context, batch.long)
    with torch.no_grad():
        diff = (model(batch) - model(changed)).abs()
    has_hist = batch.history.lengths > 0
    assert (diff[has_hist] > 0).all()
    assert (diff[~has_hist] == 0).all()


@pytest.mark.parametrize("name", MODELS)
def test_determinism_under_seed(name: str, batch: Batch) -> None:
    a, b = _build(name, seed=5), _build(name, seed=5)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert torch.equal(a.eval()(batch), b.eval()(batch))
    if name in FIXED:
        return  # a fixed scoring rule: no initialisation for the seed to change
    c = _build(name, seed=6)
    assert not torch.equal(a(batch), c.eval()(batch))


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_gets_a_gradient(name: str) -> None:
    model = _build(name).train()
    if not any(p.requires_grad for p in model.parameters()):
        pytest.skip(f"{name} has no trainable parameters (the trainer only evaluates it)")
    batch = random_batch(batch=32, seed=2)
    loss, _ = training_loss(model, batch)  # exactly the trainer's loss: BCE + forward_train's extra terms
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"parameters without gradient: {missing}"
    broken = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not broken, f"non-finite gradients (rows without history?): {broken}"


@pytest.mark.parametrize("name", MODELS)
def test_save_load_round_trip(name: str, tmp_path, batch: Batch) -> None:
    cfg = resolve_config(name, {"use_user": True} if "use_user" in
                         {f.name for f in dataclasses.fields(get_model(name).config_cls)} else {})
    torch.manual_seed(0)
    model = build_model(name, SPEC, cfg.model_config)
    model.train()
    model(random_batch(batch=16, seed=9))  # move Dice running statistics off their initial values
    model.eval()
    save_run(tmp_path, model, cfg, SPEC, tmp_path, {"vocabularies": "sha256:test", "item_category": None,
                                                    "content": None})
    loaded, cfg2, _ = load_run(tmp_path)
    assert cfg2.to_json() == cfg.to_json()
    torch.testing.assert_close(loaded(batch), model(batch), rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(set(MODELS) - set(FIXED)))
def test_counting_features_are_read_and_learned(name: str) -> None:
    """With ``count_features`` every learned model declares them, its score depends on them, and their
    tables get a gradient; without, they are neither declared nor read."""
    spec = dataclasses.replace(SPEC, counts=COUNT_FEATURES)
    torch.manual_seed(0)
    model = build_model(name, spec, get_model(name).config_cls()).train()
    assert "counts" in model.fields and "counts" not in _build(name).fields
    batch = random_batch(spec, batch=16, seed=2)
    loss, _ = training_loss(model, batch)
    loss.backward()
    tables = {n: p for n, p in model.named_parameters() if ".counts." in n}
    assert len(tables) == len(COUNT_FEATURES) and all(torch.any(p.grad != 0) for p in tables.values())
    model.eval()
    other = Batch(batch.target, batch.history, batch.label, batch.context, batch.long,
                  {k: v % (COUNT_BUCKETS - 1) + 1 for k, v in batch.counts.items()})
    with torch.no_grad():
        assert (model(batch) != model(other)).all()


@pytest.mark.parametrize("name", MODELS)
def test_declares_fields(name: str) -> None:
    from userlens.batch import ALL_FIELDS

    model = _build(name)
    assert model.fields <= ALL_FIELDS and "target_item" in model.fields


LONG_MODELS = [n for n in MODELS if "long" in _build(n).fields]


def _with_timeline(batch: Batch, change) -> Batch:  # type: ignore[no-untyped-def]
    """Same batch whose shared timeline has ``change(tl, inside_mask)`` applied (a copy)."""
    long = batch.long
    n = len(long.timeline["item"])
    inside = np.zeros(n, dtype=bool)
    for lo, hi in zip(long.lo, long.hi):
        inside[lo:hi] = True
    tl = {k: v.copy() for k, v in long.timeline.items()}
    change(tl, inside, long.item_category)
    new_long = dataclasses.replace(long, timeline=tl, category_index=CategoryIndex(tl["category"]))
    return Batch(batch.target, batch.history, batch.label, batch.context, new_long)


def test_lifelong_models_are_registered() -> None:
    assert {"sim_hard", "sim_soft", "eta", "sdim", "twin", "dare", "muse", "qin"} <= set(LONG_MODELS)


@pytest.mark.parametrize("name", LONG_MODELS)
def test_long_history_outside_the_range_is_never_read(name: str) -> None:
    """No leakage through the GSU: behaviors outside [lo, hi) (e.g. after the sample) change nothing."""
    batch = random_batch(batch=8, seed=4, lengths=[0, 12, 3, 5, 7, 9, 11, 2])
    batch.long.lo[:] = np.minimum(batch.long.lo, 150)
    batch.long.hi[:] = np.minimum(batch.long.hi, 200)

    def scramble(tl, inside, item_cat):  # type: ignore[no-untyped-def]
        rng = np.random.default_rng(0)
        out = ~inside
        tl["item"][out] = rng.integers(2, SPEC.n_items, size=out.sum())
        tl["category"][out] = item_cat[tl["item"][out]]
        tl["time"][out] = rng.integers(0, 10**9, size=out.sum())

    model = _build(name).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(batch), model(_with_timeline(batch, scramble)), rtol=0, atol=0)


@pytest.mark.parametrize("name", LONG_MODELS)
def test_long_history_matters(name: str) -> None:
    """Changing the behaviors inside the ranges changes the score of rows that have a long history."""
    batch = random_batch(batch=8, seed=5)

    def swap(tl, inside, item_cat):  # type: ignore[no-untyped-def]
        tl["item"][inside] = (tl["item"][inside] + 7) % (SPEC.n_items - 2) + 2
        tl["category"][inside] = item_cat[tl["item"][inside]]

    model = _build(name).eval()
    with torch.no_grad():
        diff = (model(batch) - model(_with_timeline(batch, swap))).abs()
    has_long = torch.from_numpy(batch.long.hi > batch.long.lo)
    assert (diff[has_long] > 0).float().mean() >= 0.8  # a rare row may retrieve nothing of its category
    assert (diff[~has_long] == 0).all()


@pytest.mark.parametrize("name", ["muse", "qin"])
def test_content_models_use_content_vectors(name: str) -> None:
    spec = dataclasses.replace(SPEC, content_dim=12)
    torch.manual_seed(0)
    model = build_model(name, spec, get_model(name).config_cls()).eval()
    batch = random_batch(spec, batch=6, seed=7)
    batch.long = random_long(spec, 6, seed=7, content_dim=12)
    other = dataclasses.replace(batch.long, content=(batch.long.content[0][::-1].copy(), batch.long.content[1]))
    with torch.no_grad():
        a = model(batch)
        b = model(Batch(batch.target, batch.history, batch.label, batch.context, other))
    assert torch.isfinite(a).all() and not torch.equal(a, b)
    batch.long = dataclasses.replace(batch.long, content=None)
    with pytest.raises(ValueError, match="embed-items"):
        model(batch)
