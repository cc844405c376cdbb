"""Upper bounds of the numeric options, in one place so every command and its messages agree.

Why bounds at all: an option far beyond any real use does not fail by itself, it fails
later and worse (``threads=100000`` segfaulted inside OpenMP, ``short_len=1e12`` asked
for terabytes, ``seed=2**70`` overflowed NumPy). Each bound is far above what the
benchmarks use and says why it is where it is; the messages give the allowed range.
"""

from __future__ import annotations

import math

from userlens.errors import InputError, UserlensError

SEED_MAX = 2**32 - 1  # np.random.seed and scikit-learn's random_state take [0, 2**32)
MAX_THREADS = 1024  # torch intra-op threads; 100,000 crashed the process
MAX_WIDTH = 4096  # embedding / hidden / attention sizes, heads, layers, tiers of a model config
MAX_LENGTH = 100_000  # behaviors per sample gathered densely: short_len, a model's k and max_len
MAX_LONG_LEN = 10_000_000  # behaviors a lifelong GSU searches (kept as ranges, never gathered densely)
MAX_BATCH = 1 << 20  # samples per batch, texts per embedding batch
MAX_GATHER = 1 << 28  # batch × short_len entries of one gathered field (int64: 2 GiB)
MAX_COUNT = 1_000_000  # epochs, patience, batches per epoch
MAX_PREFETCH = 64  # batches prepared ahead (each holds a whole batch in memory)
MAX_NEGATIVES = 1000  # sampled negatives per positive (the samples grow by this factor)
MAX_MIN_HISTORY = 10_000_000  # prepare's min_history / min_user_behaviors: beyond the longest history
MAX_WORKERS = 256  # serving worker processes
MAX_CANDIDATES = 100_000  # candidates of one score request
MAX_RELOAD_SECONDS = 86_400.0  # package reload poll interval (a day)


def check_int(name: str, value: int, lo: int, hi: int, why: str = "", error: type[UserlensError] = InputError) -> None:
    """Raise ``error`` unless ``lo <= value <= hi`` (``why``: what the bound protects, shown with it)."""
    if not lo <= value <= hi:
        raise error(f"{name} must be in [{lo}, {hi:,}]{f' ({why})' if why else ''}, got {value}")


def check_float(name: str, value: float, lo: float, hi: float, why: str = "",
                error: type[UserlensError] = InputError) -> None:
    """Raise ``error`` unless ``value`` is finite and ``lo <= value <= hi`` (NaN fails every comparison)."""
    if not (math.isfinite(value) and lo <= value <= hi):
        raise error(f"{name} must be a finite number in [{lo:g}, {hi:g}]{f' ({why})' if why else ''}, got {value}")


def check_seed(name: str, value: int, error: type[UserlensError] = InputError) -> None:
    check_int(name, value, 0, SEED_MAX, "what NumPy and scikit-learn seed with", error)


__all__ = ("MAX_BATCH", "MAX_CANDIDATES", "MAX_COUNT", "MAX_GATHER", "MAX_LENGTH", "MAX_LONG_LEN",
           "MAX_MIN_HISTORY", "MAX_NEGATIVES", "MAX_PREFETCH", "MAX_RELOAD_SECONDS", "MAX_THREADS", "MAX_WIDTH",
           "MAX_WORKERS", "SEED_MAX", "check_float", "check_int", "check_seed")
