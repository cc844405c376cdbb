"""`userlens serve` options: refused before anything starts."""

from __future__ import annotations

import pytest

from userlens.errors import ConfigError
from userlens.serving.server import check_serve_options, serve


def test_defaults_pass() -> None:
    check_serve_options(8000, 1, 1000, 2.0)
    check_serve_options(8000, 1, 1000, 0.0)  # 0 = never reload


@pytest.mark.parametrize(("opts", "match"), [
    ({"reload_seconds": float("nan")}, r"--reload-seconds must be a finite number in \[0, 86400\]"),
    ({"reload_seconds": float("inf")}, r"--reload-seconds must be a finite number"),
    ({"reload_seconds": -1.0}, r"--reload-seconds must be a finite number in \[0,"),
    ({"max_candidates": -1}, r"--max-candidates must be in \[1, 100,000\]"),
    ({"max_candidates": 0}, r"--max-candidates must be in \[1,"),
    ({"workers": 100_000}, r"--workers must be in \[1, 256\]"),
    ({"workers": 0}, r"--workers must be in \[1, 256\]"),
    ({"port": 70_000}, r"--port must be in \[1, 65,535\]"),
])
def test_serve_refuses_options_it_would_misbehave_with(opts: dict, match: str) -> None:
    kw = {"port": 8000, "workers": 1, "max_candidates": 1000, "reload_seconds": 2.0, **opts}
    with pytest.raises(ConfigError, match=match):
        check_serve_options(kw["port"], kw["workers"], kw["max_candidates"], kw["reload_seconds"])
    with pytest.raises(ConfigError, match=match):  # the library entry checks too, before loading the package
        serve("no-such-package", "lmdb:///nowhere", **kw)
