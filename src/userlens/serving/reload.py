"""Hot reload of a model package: a re-exported package is swapped in for the next request.

A thread polls the package's manifest (``reload_seconds``); when the directory was
replaced (``userlens export ... --force`` swaps it in atomically) the new package is
loaded and verified beside the old one, then swapped in. Requests in flight finish
on the package they started with; none is dropped. A package with other
vocabularies or other item categories (the store holds item and category codes of the
current ones: the rule of :func:`~userlens.serving.package.check_store_data`) or another
``long_len`` is refused and the old one kept.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
from prometheus_client import Counter

from userlens.errors import UserlensError
from userlens.serving.package import MANIFEST, load_package
from userlens.serving.scorer import Scorer

log = logging.getLogger("userlens.serving")


class PackageReloader:
    """Holds the current :class:`Scorer`; :meth:`check` swaps in a replaced package (see the module docstring)."""

    def __init__(self, scorer: Scorer, reloads: Counter | None = None) -> None:
        self.scorer = scorer
        self.reloads = reloads
        self._seen = self._stamp()

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = (self.scorer.package.path / MANIFEST).stat()
        except OSError:
            return None  # mid-swap: look again next time
        return st.st_ino, st.st_mtime_ns

    def check(self) -> bool:
        """Load the package again if its directory changed; True when a new one was swapped in."""
        stamp = self._stamp()
        if stamp is None or stamp == self._seen:
            return False
        old = self.scorer.package
        try:
            new = load_package(old.path)
        except UserlensError as e:
            self._count("failed")
            log.warning("package reload failed, keeping %s: %s", old.version, e)
            return False
        self._seen = stamp
        if (new.manifest["vocab_hash"] != old.manifest["vocab_hash"] or new.long_len != old.long_len
                or not np.array_equal(new.item_category, old.item_category)):
            self._count("refused")
            log.warning("package reload refused, keeping %s: other vocabularies, item categories or long_len than "
                        "the store was loaded with; restart with the new package after `userlens load-store`",
                        old.version)
            return False
        self.scorer = Scorer(new, self.scorer.store, self.scorer.state_bytes)
        self._count("ok")
        return True

    def _count(self, result: str) -> None:
        if self.reloads is not None:
            self.reloads.labels(result).inc()

    def watch(self, every: float, stop: threading.Event) -> None:
        while not stop.wait(every):
            self.check()


__all__ = ("PackageReloader",)
