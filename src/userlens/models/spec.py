"""What a model may know of the data: vocabulary sizes and context feature names, nothing about files."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FeatureSpec:
    """Sizes derived from the prepared data (never set by hand, so never set twice).

    Attributes:
        n_users, n_items, n_categories, n_behaviors: vocabulary sizes incl. the pad (0) and unknown (1) rows.
        context: context feature name → vocabulary size.
        content_dim: size of the frozen item content vectors (``userlens embed-items``), 0 = none.
    """

    n_users: int
    n_items: int
    n_categories: int
    n_behaviors: int = 2
    context: dict[str, int] = field(default_factory=dict)
    content_dim: int = 0

    @classmethod
    def from_meta(cls, meta: dict, content_dim: int = 0) -> FeatureSpec:
        v = meta["vocab_sizes"]
        return cls(
            n_users=v["user"], n_items=v["item"], n_categories=v["category"], n_behaviors=v["behavior"],
            context={c: v[f"ctx_{c}"] for c in meta.get("context_columns", [])}, content_dim=content_dim,
        )

    def to_json(self) -> dict:
        return {"n_users": self.n_users, "n_items": self.n_items, "n_categories": self.n_categories,
                "n_behaviors": self.n_behaviors, "context": dict(self.context),
                "content_dim": self.content_dim}
