"""Fixed windows aligned to the Unix epoch, and the counter keys that name them.

Keys are length-prefixed (``7:example|4:user=5:alice|60@1700000040``), so no choice
of keys or values can make two different descriptors share a counter; the
``_``-joined keys of envoyproxy/ratelimit can (``a_b`` + ``c`` vs ``a`` + ``b_c``).
"""

from collections.abc import Iterable


def window_start(now: int, seconds: int) -> int:
    """The start of the window holding ``now``."""
    return now - now % seconds


def seconds_until_reset(now: int, seconds: int) -> int:
    """Seconds until the window holding ``now`` ends: from ``seconds`` down to 1."""
    return seconds - now % seconds


def descriptor_key(domain: str, entries: Iterable[tuple[str, str]]) -> str:
    """The window-independent part of a counter key: domain plus every entry."""
    parts = [f"{len(domain)}:{domain}"]
    parts.extend(f"{len(k)}:{k}={len(v)}:{v}" for k, v in entries)
    return "|".join(parts)


def counter_key(prefix: str, descriptor: str, seconds: int, start: int) -> str:
    """The key of one descriptor's counter in one window."""
    return f"{prefix}{descriptor}|{seconds}@{start}"
