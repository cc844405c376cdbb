import pytest
import torch
from torch import nn

from userlens.layers.embedding import FeatureEmbedding, Table


@pytest.mark.parametrize("shape", [(57,), (6, 9)])
def test_table_matches_nn_embedding_values_and_gradients(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    ref = nn.Embedding(30, 5, padding_idx=0)
    fast = Table(30, 5, padding_idx=0)
    fast.load_state_dict(ref.state_dict())
    ids = torch.randint(0, 30, shape)
    ids.view(-1)[:7] = 0  # padding, and repeated rows below
    ids.view(-1)[7:15] = 3
    grad = torch.randn(*shape, 5)
    out_ref, out_fast = ref(ids), fast(ids)
    assert torch.equal(out_ref, out_fast)
    out_ref.backward(grad)
    out_fast.backward(grad)
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad, rtol=1e-6, atol=1e-6)
    assert fast.weight.grad[0].abs().sum() == 0  # padding gets no gradient
    assert fast.weight.grad[3].abs().sum() > 0


def test_table_without_grad_and_without_padding() -> None:
    t = Table(10, 4)
    ids = torch.tensor([[1, 0], [9, 9]])
    with torch.no_grad():
        assert torch.equal(t(ids), t.weight[ids])
    t(ids).sum().backward()
    assert t.weight.grad[0].sum() == 4 and t.weight.grad[9].sum() == 8  # row 0 is a real row here


def test_feature_embedding_keeps_nn_embedding_state_dict() -> None:
    emb = FeatureEmbedding(20, 5, 4, n_users=7, context={"hour": 24})
    keys = set(emb.state_dict())
    assert {"item.weight", "category.weight", "user.weight", "context.hour.weight"} <= keys
    assert all(isinstance(m, nn.Embedding) for m in (emb.item, emb.category, emb.user))


def test_context_names_torch_refuses_as_module_keys_still_get_tables() -> None:
    """Column names like "type" (a ModuleDict attribute), "dev.ice" or "" are valid context features."""
    names = {"type": 3, "dev.ice": 4, "dev/ice": 5, "%41": 6, "hour": 7}
    emb = FeatureEmbedding(20, 5, 4, context=names)
    assert {"context.hour.weight", "context.dev/ice.weight"} <= set(emb.state_dict())  # plain names keep their keys
    sizes = {k: v.weight.shape[0] for k, v in emb.context.items()}
    assert sorted(sizes.values()) == sorted(names.values()) and len(sizes) == len(names)

    class _B:  # side() reads the batch's context by the raw names
        target = {}
        context = {k: torch.ones(2, dtype=torch.long) for k in names}

    assert emb.side(_B()).shape == (2, 4 * len(names))  # type: ignore[arg-type]


def test_table_refuses_sparse_gradients_at_construction() -> None:
    with pytest.raises(ValueError, match="dense gradients"):
        Table(10, 4, sparse=True)
