"""A lease authority in this process's memory: one dict of window counters.

Used by the tests, by an embedded single-process setup, and by a parent process that
hands out leases to its worker processes (their requests arrive over a small protocol
and end in ``grant`` and ``give_back``, which are synchronous for that reason). Grants
are capped reservations (``lease_authority``): a counter never passes its limit
through grants. Everything happens under a lock, without awaiting, so concurrent
callers (tasks or threads) never interleave inside one grant.

A counter expires ``ttl`` seconds after the grant that created it (the end of its
window) and is then freed, as ``memory_store.InMemoryCounterStore`` frees its counters.

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


class MemoryLeaseAuthority:
    """Window counters in a dict; each grant is ``min(ask, limit - count)`` units."""

    name = "memory"

    def __init__(self, clock: Clock, *, sweep_interval: float = 1.0) -> None:
        self._clock = clock
        self._counts: dict[str, int] = {}
        self._expires: dict[str, int] = {}
        self._expiring: dict[int, list[str]] = {}  # expiry second -> keys, for the sweep
        self._sweep_interval = sweep_interval
        self._next_sweep = clock.monotonic() + sweep_interval
        self._lock = threading.Lock()

    def grant(self, key: str, ask: int, limit: int, ttl: int) -> Grant:
        """``acquire`` without the coroutine: for a parent serving worker processes."""
        with self._lock:
            now = int(self._clock.now())
            if self._clock.monotonic() >= self._next_sweep:
                self._sweep(now)
            count = self._counts.get(key, 0)
            expires = self._expires.get(key)
            if expires is not None and expires <= now:  # ended, not swept yet
                count, expires = 0, None
            granted = max(0, min(ask, limit - count))
            if granted:
                count += granted
                self._counts[key] = count
                if expires is None:
                    expires = now + max(ttl, 1)
                    self._expires[key] = expires
                    self._expiring.setdefault(expires, []).append(key)
            return Grant(granted, count, expires - now if expires is not None else 0)

    def add(self, hits: Sequence[Hit]) -> list[int]:
        """``increment`` without the coroutine: each counter after its hit, uncapped."""
        with self._lock:
            now = int(self._clock.now())
            if self._clock.monotonic() >= self._next_sweep:
                self._sweep(now)
            results: list[int] = []
            for hit in hits:
                count = self._counts.get(hit.key, 0)
                expires = self._expires.get(hit.key)
                if expires is not None and expires <= now:  # ended, not swept yet
                    count, expires = 0, None
                if hit.addend > 0:
                    count += hit.addend
                    self._counts[hit.key] = count
                    if expires is None:
                        expires = now + max(hit.ttl, 1)
                        self._expires[hit.key] = expires
                        self._expiring.setdefault(expires, []).append(hit.key)
                results.append(count)
            return results

    def give_back(self, key: str, unused: int) -> int:
        """``release`` without the coroutine."""
        with self._lock:
            count = self._counts.get(key)
            expires = self._expires.get(key, 0)
            if count is None or expires <= int(self._clock.now()) or unused <= 0:
                return 0
            returned = min(unused, count)
            self._counts[key] = count - returned
            return returned

    def count(self, key: str) -> int:
        """The counter's value now (0 for none): what tests and a parent's metrics read."""
        with self._lock:
            expires = self._expires.get(key)
            if expires is None or expires <= int(self._clock.now()):
                return 0
            return self._counts.get(key, 0)

    def _sweep(self, now: int) -> None:
        for second in [s for s in self._expiring if s <= now]:
            for key in self._expiring.pop(second):
                if self._expires.get(key, now + 1) <= now:  # not re-created since
                    del self._expires[key]
                    self._counts.pop(key, None)
        self._next_sweep = self._clock.monotonic() + self._sweep_interval

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
            self._counts.clear()
            self._expires.clear()
            self._expiring.clear()
