"""Durations as people type them: ``30d``, ``12h``, ``90m``, ``45s``, ``2w``.

One syntax for the command line (``gptimg-webhooks ledger prune --older-than``) and
Django's ``manage.py gptimg_webhooks_prune --older-than``. A plain number is days, as
Django's command has always read it.
"""

from __future__ import annotations

import math
import re

from .errors import ConfigurationError

__all__ = ["DURATION_HELP", "parse_duration"]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)", re.IGNORECASE)
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}

DURATION_HELP = "a number and a unit: 45s, 90m, 12h, 30d, 2w; a plain number is days"


def parse_duration(text: str) -> float:
    """Return the seconds ``text`` names (``30d``, ``12h``, ``90m``, ``45s``; plain = days)."""
    found = _DURATION.fullmatch(str(text).strip())
    if not found:
        raise ConfigurationError(f"not a duration: {text!r} ({DURATION_HELP})")
    seconds = float(found.group(1)) * _UNITS[(found.group(2) or "d").lower()]
    if not math.isfinite(seconds):
        raise ConfigurationError(f"duration out of range: {text!r}")
    return seconds
