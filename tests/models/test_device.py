"""Every registered model runs on CUDA and agrees with the CPU: forward and backward (skipped without a GPU).

The GSUs scan a NumPy timeline on the CPU; everything else must follow the
model's device, and nothing inside ``forward`` may call ``.numpy()`` on a
tensor that can live on the accelerator.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from userlens.batch import Batch, History
from userlens.models import build_model, get_model, list_models

from .conftest import SPEC, random_batch, random_long

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CONTENT = dataclasses.replace(SPEC, content_dim=12)
CASES = [(e.name, SPEC) for e in list_models()] + [("muse", CONTENT), ("qin", CONTENT)]


def _to(batch: Batch, device: str) -> Batch:
    hist = History({k: v.to(device) for k, v in batch.history.values.items()}, batch.history.lengths.to(device))
    return Batch({k: v.to(device) for k, v in batch.target.items()}, hist,
                 None if batch.label is None else batch.label.to(device),
                 {k: v.to(device) for k, v in batch.context.items()}, batch.long)


def _run(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    if hasattr(model, "forward_train"):
        logits, extra = model.forward_train(batch)
    else:
        logits, extra = model(batch), {}
    if any(p.requires_grad for p in model.parameters()):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.label) + sum(extra.values())
        loss.backward()
    return logits.detach().cpu(), {n: p.grad.detach().cpu() for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture(autouse=True)
def _full_precision():  # type: ignore[no-untyped-def]
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize(("name", "spec"), CASES, ids=[f"{n}-content{s.content_dim}" for n, s in CASES])
def test_cuda_forward_and_backward_match_cpu(name: str, spec) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    cfg = get_model(name).config_cls()
    if "use_user" in {f.name for f in dataclasses.fields(cfg)}:
        cfg = dataclasses.replace(cfg, use_user=True)
    cpu = build_model(name, spec, cfg).train()
    gpu = copy.deepcopy(cpu).cuda()
    batch = random_batch(spec, batch=16, seed=2)
    if spec.content_dim:
        batch.long = random_long(spec, 16, seed=2, content_dim=spec.content_dim)
    logits_cpu, grads_cpu = _run(cpu, batch)
    logits_gpu, grads_gpu = _run(gpu, _to(batch, "cuda"))
    torch.testing.assert_close(logits_gpu, logits_cpu, rtol=1e-4, atol=1e-4)
    assert grads_gpu.keys() == grads_cpu.keys()
    for n in grads_cpu:
        torch.testing.assert_close(grads_gpu[n], grads_cpu[n], rtol=1e-4, atol=1e-4, msg=lambda m, n=n: f"{n}: {m}")
    gpu.eval()
    with torch.no_grad():
        assert gpu(_to(batch, "cuda")).device.type == "cuda"
