from __future__ import annotations

from pathlib import Path

import pytest

from userlens.data.prepare import prepare, sources_from_files
from userlens.data.prepared import PreparedData
from userlens.synthetic import planted_interest_log


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    """A small planted-interest dataset, prepared once per session."""
    d: Path = tmp_path_factory.mktemp("small")
    log = planted_interest_log(n_users=120, n_items=200, n_categories=20, behaviors_per_user=80,
                               impressions_per_user=20, seed=3)
    p = log.write(d / "raw")
    prepare(sources_from_files(p["behaviors"], p["impressions"], p["items"]), d / "data", log=lambda s: None)
    return PreparedData(d / "data")
