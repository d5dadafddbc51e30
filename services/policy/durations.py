"""Durations: as people write them in settings (``250ms``, ``2s``, ``5m``), and as Istio's
API writes them (protobuf Duration JSON: seconds with an ``s`` suffix, ``"0.5s"``)."""

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


_PROTO_DURATION = re.compile(r"^(-?)(\d+)(?:\.(\d{1,9}))?s$")
_PROTO_DURATION_MAX = 315_576_000_000  # google.protobuf.Duration's range, in seconds
PROTO_DURATION_HINT = 'a protobuf Duration string in seconds, such as "10s" or "0.5s"'


def parse_proto_duration(text: str) -> float:
    """Seconds in a protobuf Duration string (``"5s"``, ``"0.25s"``, ``"0s"``); ``ValueError``
    for anything protojson refuses (``"500ms"``, bare numbers) or for negative values."""
    found = _PROTO_DURATION.match(text)
    if found is None:
        raise ValueError(f"must be {PROTO_DURATION_HINT}, got {text!r}")
    sign, whole, fraction = found.groups()
    seconds = int(whole) + int((fraction or "0").ljust(9, "0")) / 1e9
    if sign and seconds:
        raise ValueError(f"must not be negative, got {text!r}")
    if seconds > _PROTO_DURATION_MAX:
        raise ValueError(f"is out of the range of a protobuf Duration: {text!r}")
    return seconds
