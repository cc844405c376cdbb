"""Each model file opens with its paper and lists its departures (STYLE §9); variants are named honestly."""

from __future__ import annotations

import importlib
import re

import pytest

from userlens.models import get_model

PAPER_MODELS = ["sim_hard", "sim_soft", "eta", "sdim", "twin", "dare", "muse", "qin", "dien", "tin", "bst", "din"]


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_model_file_cites_its_paper_and_lists_departures(name: str) -> None:
    doc = importlib.import_module(f"userlens.models.{name}").__doc__ or ""
    assert re.search(r"(19|20)\d\d", doc.split("\n\n")[0]), f"{name}: the first paragraph must cite the paper"
    assert "Departure" in doc, f"{name}: list where it departs from the paper"


def test_qin_is_presented_as_qin_style() -> None:
    doc = importlib.import_module("userlens.models.qin").__doc__ or ""
    assert doc.startswith("QIN-style")
    assert "QIN-style" in get_model("qin").summary and "not the paper's model" in get_model("qin").summary
