"""Store URLs are read strictly: what would open another directory or database than written is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from userlens.errors import InputError
from userlens.serving.store import LMDBStore, open_store


def test_lmdb_relative_and_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with open_store("lmdb://runs/store", cap=5) as store:
        assert isinstance(store, LMDBStore) and (tmp_path / "runs/store/data.mdb").is_file()
    with open_store(f"lmdb://{tmp_path}/abs", cap=5):  # lmdb:// + /tmp/... = lmdb:///tmp/...
        assert (tmp_path / "abs/data.mdb").is_file()


@pytest.mark.parametrize("url, match", [
    ("lmdb:relative", "an LMDB URL starts with lmdb://"),  # once: a folder "lative"
    ("lmdb:/abs/path", "an LMDB URL starts with lmdb://"),
    ("lmdb://", "no path"),
    ("lmdb://store?map_size=1", "no query string or fragment"),
    ("lmdb://store#x", "no query string or fragment"),
    ("lmdb://host:5000/store", "'host:5000' reads as a network location"),
    ("lmdb://user@host/store", "reads as a network location"),
    ("lmdb://~/store", "'~' is not expanded"),
    ("redis://localhost:6379/x", "the path '/x' is not a database number"),  # redis-py: silently db 0
    ("redis://localhost:6379/2/3", "the path '/2/3' is not a database number"),  # redis-py: db 23
    ("redis://localhost:6379/2?db=3", r"give the database once, as the path \(no \?db="),
    ("redis://localhost:6379?db=3", "give the database once"),
])
def test_ambiguous_store_urls_are_refused_with_the_fix(url: str, match: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=match) as e:
        open_store(url, cap=5)
    assert "Fix: " in str(e.value)
    assert not any(tmp_path.iterdir()), "nothing may be created for a refused URL"


@pytest.mark.redis
def test_the_redis_db_in_the_path_is_the_one_written(redis_server) -> None:  # type: ignore[no-untyped-def]
    import redis

    from userlens.serving.store import Event

    base = redis_server.url.rsplit("/", 1)[0]
    with open_store(f"{base}/3", cap=5) as store:
        store.append([Event("db-test-user", "i", 1_600_000_000_000, item=2, category=2)])
    assert any(b"db-test-user" in k for k in redis.Redis.from_url(f"{base}/3").keys())
    assert not any(b"db-test-user" in k for k in redis.Redis.from_url(f"{base}/0").keys())
