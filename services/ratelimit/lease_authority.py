"""The lease authority seam: where a process takes blocks of a counter's quota.

A process that answers rate limit hits from *leased quota* (``leases.LeasePool``,
``leased_counter.LeasedCounter``) asks one authority for units of a counter and spends
them locally. Every process sharing a limit asks the same authority: Redis
(``redis_authority.RedisLeaseAuthority``) or, for worker processes of one parent, the
parent's memory (``memory_authority.MemoryLeaseAuthority``).

The contract is a **capped reservation** (Mixer's ``best_effort=true`` quota call):
``acquire`` atomically grants ``g = min(ask, limit - count)``, never below 0, adds ``g``
to the counter and returns ``g`` with the counter's value after the grant. So the
counter never passes ``limit`` through grants, and a process that admits only from
granted units cannot over-admit (``docs/architecture.md``, "Leased quota: the bound").
Counters are the exact counters of ``store.CounterStore``: the same keys, the same
window TTLs, so hits counted exactly and units granted as leases add up.
"""

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Grant:
    """The answer to one ``acquire``."""

    granted: int  # units given, 0 <= granted <= ask: min(ask, limit - count before), at least 0
    count: int  # the counter after the grant: every unit granted (or counted) in the window
    ttl: int  # seconds the counter lives on (its window's end, plus jitter); 0 if it does not


class LeaseAuthority(Protocol):
    """Protocol: grants units of window counters, atomically and never past the limit."""

    name: str

    async def acquire(self, key: str, ask: int, limit: int, ttl: int) -> Grant:
        """Grant ``min(ask, limit - count)`` units (at least 0) of counter ``key``.

        ``ttl`` is the seconds left in the key's window: a counter the grant creates
        expires then. ``ask`` 0 reads the counter without changing it. Raises
        ``store.CounterStoreError`` when the authority cannot answer; the grant may then
        have happened or not (units stranded, never units spent without a grant).
        """
        ...

    async def release(self, key: str, unused: int) -> int:
        """Give back ``unused`` granted units that were never spent; returns how many.

        The counter goes down by at most its own value (never below 0), and a counter
        that no longer exists (its window ended) is left alone: returned units of an
        ended window are worth nothing. Only units the caller holds unspent may be
        returned, so the counter never drops below the units really spent.
        """
        ...

    async def ping(self) -> None:
        """Raise ``store.CounterStoreError`` unless the authority can answer right now."""
        ...

    async def close(self) -> None:
        """Release connections; further calls fail."""
        ...
