"""userlens: lifelong user-interest modeling, from raw behavior logs to CTR models."""

from __future__ import annotations

__version__ = "0.1.0"
