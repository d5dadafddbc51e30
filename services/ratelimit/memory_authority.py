"""A lease authority in this process's memory: one dict of window counters.

Used by the tests, by an embedded single-process setup, and by a parent process that
hands out leases to its worker processes (their requests arrive over a small protocol
and end in ``grant`` and ``give_back``, which are synchronous for that reason). Grants
are capped reservations (``lease_authority``): a counter never passes its limit
through grants. Everything happens under a lock, without awaiting, so concurrent
callers (tasks or threads) never interleave inside one grant.

A counter expires ``ttl`` seconds after the grant that created it (the end of its
window) and is then freed, and at most ``max_counters`` are held (``window_counters``).
Its exact counting is also the embedded default store (``memory_store``).

It also counts exactly (``add``, and ``increment``: it is a ``store.CounterStore`` too):
hits add their addend with no cap, past the limit if need be, as Redis's ``INCRBY``
does. Exact hits and grants on one key share its counter, as they share a Redis key, so
a parent process serves both kinds of counting to its workers from this one dict.
"""

import threading
from collections.abc import Sequence

from services.clock import Clock
from services.ratelimit.lease_authority import Grant
from services.ratelimit.store import Hit
from services.ratelimit.window_counters import DEFAULT_MAX_COUNTERS, WindowCounters


class MemoryLeaseAuthority:
    """Window counters in a bounded table; each grant is ``min(ask, limit - count)`` units."""

    name = "memory"

    def __init__(
        self,
        clock: Clock,
        *,
        sweep_interval: float = 1.0,
        max_counters: int = DEFAULT_MAX_COUNTERS,
    ) -> None:
        self._clock = clock
        self._counters = WindowCounters(max_counters, sweep_interval=sweep_interval)
        self._counters.sweep_if_due(int(clock.now()), clock.monotonic())  # starts the cadence
        self._lock = threading.Lock()

    @property
    def evicted(self) -> int:
        """Live counters evicted to stay within ``max_counters``, ever."""
        return self._counters.evicted

    def grant(self, key: str, ask: int, limit: int, ttl: int) -> Grant:
        """``acquire`` without the coroutine: for a parent serving worker processes."""
        with self._lock:
            now = self._now()
            counters = self._counters
            count = counters.value(key, now)
            granted = max(0, min(ask, limit - count))
            if granted:
                count = counters.add(key, granted, now, ttl)
            end = counters.ends(key, now)
            return Grant(granted, count, end - now if end is not None else 0)

    def add(self, hits: Sequence[Hit]) -> list[int]:
        """``increment`` without the coroutine: each counter after its hit, uncapped."""
        with self._lock:
            now = self._now()
            counters = self._counters
            results: list[int] = []
            for hit in hits:
                if hit.addend > 0:
                    results.append(counters.add(hit.key, hit.addend, now, hit.ttl))
                else:
                    results.append(counters.value(hit.key, now))
            return results

    def give_back(self, key: str, unused: int) -> int:
        """``release`` without the coroutine."""
        with self._lock:
            now = int(self._clock.now())
            count = self._counters.value(key, now)
            if unused <= 0 or self._counters.ends(key, now) is None:
                return 0
            returned = min(unused, count)
            self._counters.set_live(key, count - returned, now)
            return returned

    def count(self, key: str) -> int:
        """The counter's value now (0 for none): what tests and a parent's metrics read."""
        with self._lock:
            return self._counters.value(key, int(self._clock.now()))

    def _now(self) -> int:
        """The second now, after the periodic sweep of ended windows."""
        now = int(self._clock.now())
        self._counters.sweep_if_due(now, self._clock.monotonic())
        return now

    async def acquire(self, key: str, ask: int, limit: int, ttl: int) -> Grant:
        """See ``LeaseAuthority.acquire``; never suspends."""
        return self.grant(key, ask, limit, ttl)

    async def release(self, key: str, unused: int) -> int:
        """See ``LeaseAuthority.release``; never suspends."""
        return self.give_back(key, unused)

    async def increment(self, hits: Sequence[Hit]) -> list[int]:
        """See ``CounterStore.increment``; never suspends."""
        return self.add(hits)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        with self._lock:
            self._counters.clear()
