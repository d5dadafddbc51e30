"""Durations as people write them in settings and policies: ``250ms``, ``2s``, ``1.5``, ``5m``."""

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Seconds in ``text``; a bare number is seconds. ``ValueError`` says what is expected."""
    found = _DURATION.match(text)
    if found is None:
        raise ValueError(f"expected a duration such as 250ms, 2s or 1m, got {text!r}")
    seconds = float(found.group(1)) * _UNITS[found.group(2)]
    if seconds <= 0:
        raise ValueError(f"must be more than zero, got {text!r}")
    return seconds
