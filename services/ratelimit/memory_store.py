"""Counters in this process's memory: the embedded default, and the tests' store.

Counts are per process (two replicas each allow the full limit). All work
happens without awaiting, under a lock, so concurrent requests (on the event loop
or on the gRPC server's threads) never interleave inside one increment. Windows are
freed when they end.
"""

import threading
from collections.abc import Sequence

from services.clock import Clock
from services.ratelimit.store import Hit


class InMemoryCounterStore:
    """A dict of counters, each dropped once its window has ended."""

    name = "memory"

    def __init__(self, clock: Clock, *, sweep_interval: float = 1.0) -> None:
        self._clock = clock
        self._counts: dict[str, int] = {}
        self._expiring: dict[int, list[str]] = {}
        self._sweep_interval = sweep_interval
        self._next_sweep = clock.monotonic() + sweep_interval
        self._lock = threading.Lock()

    async def increment(self, hits: Sequence[Hit]) -> list[int]:
        """Count ``hits`` without awaiting: atomic with respect to other requests."""
        with self._lock:
            if self._clock.monotonic() >= self._next_sweep:
                self._sweep()
            counts = self._counts
            results: list[int] = []
            for hit in hits:
                current = counts.get(hit.key)
                if current is None:
                    current = 0
                    expires = int(self._clock.now()) + hit.ttl
                    self._expiring.setdefault(expires, []).append(hit.key)
                current += hit.addend
                counts[hit.key] = current
                results.append(current)
            return results

    def _sweep(self) -> None:
        now = int(self._clock.now())
        for expires in [e for e in self._expiring if e <= now]:
            for key in self._expiring.pop(expires):
                self._counts.pop(key, None)
        self._next_sweep = self._clock.monotonic() + self._sweep_interval

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        with self._lock:
            self._counts.clear()
            self._expiring.clear()
