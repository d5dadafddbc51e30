"""The counter store seam: where hits are counted.

``CounterStore`` is the one protocol the rate limit service talks to. A request's
hits go to the store together (one call, one Redis round trip) and each ``Hit``
carries its limit and window, so a store may also answer from quota it holds
locally instead of asking a shared backend every time.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Hit:
    """Add ``addend`` to counter ``key``; the window it counts ends in ``ttl`` seconds.

    ``window`` is the window's length in seconds; ``leased`` says the limit may be
    counted from leased quota (``counting.py`` decides where a hit goes).
    """

    key: str
    addend: int
    ttl: int
    limit: int
    window: int = 0
    leased: bool = False


class CounterStoreError(Exception):
    """The store could not count: a timeout, a lost connection, a server error."""


class CounterStore(Protocol):
    """Protocol: counts hits in fixed windows."""

    name: str

    async def increment(self, hits: Sequence[Hit]) -> list[int]:
        """Apply every hit; return each counter's value after its own hit, in order.

        Hits on the same key within one call are applied in order. Raises
        ``CounterStoreError`` when counting failed (no partial answer).
        """
        ...

    async def ping(self) -> None:
        """Raise ``CounterStoreError`` unless the store can count right now."""
        ...

    async def close(self) -> None:
        """Release connections; further calls fail."""
        ...
