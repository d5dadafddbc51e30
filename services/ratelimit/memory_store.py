"""Counters in this process's memory: the embedded default, and the tests' store.

Counts are per process (two replicas each allow the full limit). All work
happens without awaiting, under a lock, so concurrent requests (on the event loop
or on the gRPC server's threads) never interleave inside one increment. Windows are
freed when they end, and at most ``max_counters`` are held (``window_counters``: past
that, the counters nearest the end of their window are evicted and counted).
"""

import threading
from collections.abc import Sequence

from services.clock import Clock
from services.ratelimit.store import Hit
from services.ratelimit.window_counters import DEFAULT_MAX_COUNTERS, WindowCounters


class InMemoryCounterStore:
    """Window counters in a bounded table, each dropped once its window has ended."""

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

    async def increment(self, hits: Sequence[Hit]) -> list[int]:
        """Count ``hits`` without awaiting: atomic with respect to other requests."""
        with self._lock:
            now = int(self._clock.now())
            self._counters.sweep_if_due(now, self._clock.monotonic())
            add = self._counters.add
            return [add(hit.key, hit.addend, now, hit.ttl) for hit in hits]

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        with self._lock:
            self._counters.clear()
