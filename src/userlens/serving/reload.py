"""Hot reload of a model package, and the rule for which packages a behavior store can serve.

A thread polls the package's manifest (``reload_seconds``); when the directory was
replaced (``userlens export ... --force`` swaps it in atomically) the new package is
loaded and verified beside the old one, then swapped in. Requests in flight finish
on the package they started with; none is dropped.

A store holds item and category codes of the vocabularies it was loaded with, so it
records them (:func:`package_store_info`, written by ``userlens load-store``): the
vocabulary fingerprint, a digest of the item → category table and the cap. A package
whose vocabularies, item categories or ``long_len`` differ would score silently wrong
(or fail with an IndexError on every request): it is refused at startup
(:func:`claim_store`, in ``serve`` and in every worker) and on hot reload, where the old
one is kept. The refused package stays on disk, so the next start refuses it too, until
``userlens load-store`` is run for it. A store without that record (never loaded, or
loaded by an older userlens) is served with a warning and claimed: the package's record
is written, since appends from ``/v1/events`` now store this package's codes.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
from prometheus_client import Counter

from userlens.artifacts import array_digest
from userlens.errors import InputError, UserlensError
from userlens.serving.package import MANIFEST, ModelPackage, load_package
from userlens.serving.scorer import Scorer
from userlens.serving.store.base import BehaviorStore

log = logging.getLogger("userlens.serving")

#: the keys of a store's info that decide whether a package can be served from it
INFO_KEYS = ("vocabularies", "item_category", "cap")


def store_info(vocabularies: str, item_category: np.ndarray, cap: int, **about: object) -> dict:
    """What ``load-store`` records in a store (``BehaviorStore.write_info``): the :data:`INFO_KEYS`, then
    ``about`` (where it came from: ``package``, ``data``), which only messages read."""
    return {"vocabularies": vocabularies, "item_category": array_digest(np.asarray(item_category)), "cap": cap,
            **about}


def package_store_info(pkg: ModelPackage, **about: object) -> dict:
    """The info of a store loaded for ``pkg`` (``vocabularies``: the fingerprint of the data it was exported from)."""
    return store_info(pkg.manifest["data_fingerprint"], pkg.item_category, pkg.long_len, **about)


def check_store_info(pkg: ModelPackage, info: dict, store: str = "URL") -> None:
    """Refuse ``pkg`` over a store (named ``store`` in the message) whose ``info`` says it was loaded for other
    vocabularies, item categories or another cap.

    Raises:
        InputError: naming what differs and the ``userlens load-store`` command that fixes it.
    """
    want = package_store_info(pkg)
    names = {"vocabularies": "vocabularies", "item_category": "item categories",
             "cap": f"long_len ({pkg.long_len}, the store keeps {info.get('cap')} behaviors per user)"}
    differ = [names[k] for k in INFO_KEYS if info.get(k) != want[k]]
    if differ:
        loaded_for = info.get("package") or info.get("data") or "another package"
        raise InputError(f"{pkg.path}: the store {store} was loaded for {loaded_for}, with other "
                         f"{' and '.join(differ)}: its histories hold codes this package would misread. Fix: load "
                         f"the store for this package (`userlens load-store {pkg.manifest['trained_on']['data_dir']} "
                         f"--store {store} --package {pkg.path}`), or serve the package it was loaded for.")


def claim_store(pkg: ModelPackage, store: BehaviorStore, url: str) -> None:
    """Before serving ``pkg`` from ``store`` (at ``url``): refuse it when the store was loaded for another
    package; record it in a store with no info (with a warning: see the module docstring)."""
    info = store.read_info()
    if info is None:
        log.warning("the store %s does not record what it was loaded for (never loaded, or by an older userlens): "
                    "serving %s and recording its vocabularies there. If the store was loaded for another "
                    "package, stop and run `userlens load-store DATA --store %s --package %s`.",
                    url, pkg.version, url, pkg.path)
        store.write_info(package_store_info(pkg, package=str(pkg.path), recorded_by="userlens serve"))
        return
    check_store_info(pkg, info, url)


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
        old, store = self.scorer.package, self.scorer.store
        try:
            new = load_package(old.path)
            info = store.read_info() or package_store_info(old)  # a store serve could not claim: the old package's
        except UserlensError as e:  # a package mid-write, a store unreachable: look again next time
            self._count("failed")
            log.warning("package reload failed, keeping %s: %s", old.version, e)
            return False
        self._seen = stamp
        try:
            check_store_info(new, info, "URL")
            if new.long_len != store.cap:
                raise InputError(f"{new.path}: long_len {new.long_len}, the open store keeps {store.cap} behaviors "
                                 "per user. Fix: restart the server to serve another long_len.")
        except InputError as e:
            self._count("refused")
            log.warning("package reload refused, keeping %s: %s", old.version, e)
            return False
        self.scorer = Scorer(new, self.scorer.store, self.scorer.state_bytes)
        self._count("ok")
        return True

    def _count(self, result: str) -> None:
        if self.reloads is not None:
            self.reloads.labels(result).inc()

    def watch(self, every: float, stop: threading.Event) -> None:
        """Poll until ``stop``; an unexpected error is logged and counted, never ends the polling."""
        while not stop.wait(every):
            try:
                self.check()
            except Exception:
                self._count("failed")
                log.exception("package reload failed, keeping %s", self.scorer.package.version)


__all__ = ("INFO_KEYS", "PackageReloader", "check_store_info", "claim_store", "package_store_info", "store_info")
