"""What a model may know of the data: vocabulary sizes and context feature names, nothing about files."""

from __future__ import annotations

from dataclasses import dataclass, field

from userlens.layers.embedding import FeatureEmbedding


@dataclass(frozen=True)
class FeatureSpec:
    """Sizes derived from the prepared data (never set by hand, so never set twice).

    Attributes:
        n_users, n_items, n_categories, n_behaviors: vocabulary sizes incl. the pad (0) and unknown (1) rows.
        context: context feature name → vocabulary size.
        content_dim: size of the frozen item content vectors (``userlens embed-items``), 0 = none.
        counts: the counting features the model reads (:data:`userlens.data.counts.COUNT_FEATURES`, or none:
            the ``count_features`` training key decides; each is a bucket index of
            :data:`~userlens.data.counts.COUNT_BUCKETS` values).
    """

    n_users: int
    n_items: int
    n_categories: int
    n_behaviors: int = 2
    context: dict[str, int] = field(default_factory=dict)
    content_dim: int = 0
    counts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "counts", tuple(self.counts))  # a JSON list when read back from a run

    @classmethod
    def from_meta(cls, meta: dict, content_dim: int = 0, counts: tuple[str, ...] = ()) -> FeatureSpec:
        v = meta["vocab_sizes"]
        return cls(
            n_users=v["user"], n_items=v["item"], n_categories=v["category"], n_behaviors=v["behavior"],
            context={c: v[f"ctx_{c}"] for c in meta.get("context_columns", [])}, content_dim=content_dim,
            counts=counts,
        )

    def to_json(self) -> dict:
        return {"n_users": self.n_users, "n_items": self.n_items, "n_categories": self.n_categories,
                "n_behaviors": self.n_behaviors, "context": dict(self.context),
                "content_dim": self.content_dim, "counts": list(self.counts)}


def feature_embedding(spec: FeatureSpec, dim: int, use_user: bool,
                      item_init_std: float | None = None) -> FeatureEmbedding:
    """The item / category / user / context / counting-feature tables a model over ``spec`` needs."""
    return FeatureEmbedding(spec.n_items, spec.n_categories, dim, n_users=spec.n_users if use_user else 0,
                            context=spec.context, counts=spec.counts, item_init_std=item_init_std)
