"""Error types. Every message says what was received, what was expected, and how to fix it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserlensError(Exception):
    """Base class: the CLI prints these as a one-line cause and exits non-zero."""


class InputError(UserlensError, ValueError):
    """Bad input data (a file, a row, a column) or a bad option value."""


class ConfigError(UserlensError, ValueError):
    """An invalid or unknown configuration key or value."""


class TrainingError(UserlensError, ValueError):
    """Training cannot go on meaningfully (a diverged loss, non-finite validation scores)."""


class Interrupted(UserlensError):
    """The user interrupted a long command (SIGINT); the message says what was kept and how to go on."""


def did_you_mean(name: str, options: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``options`` to a misspelt ``name``, else ``""``."""
    hit = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f" (did you mean {hit[0]!r}?)" if hit else ""
