"""The in-memory counter store: exact under concurrency, windows freed when they end."""

import asyncio

from services.clock import ManualClock
from services.ratelimit.memory_store import InMemoryCounterStore
from services.ratelimit.store import Hit


class TestInMemoryCounterStore:
    async def test_counts_in_order(self) -> None:
        """Each hit returns its counter after the hit; repeated keys accumulate in order."""
        store = InMemoryCounterStore(ManualClock())
        assert await store.increment([Hit("a", 1, 60, 5), Hit("a", 2, 60, 5)]) == [1, 3]
        assert await store.increment([Hit("b", 0, 60, 5), Hit("a", 1, 60, 5)]) == [0, 4]

    async def test_concurrent_requests_are_exact(self) -> None:
        """500 concurrent increments give exactly 500, each count seen once."""
        store = InMemoryCounterStore(ManualClock())
        results = await asyncio.gather(
            *(store.increment([Hit("k", 1, 60, 1000)]) for _ in range(500))
        )
        assert sorted(r[0] for r in results) == list(range(1, 501))

    async def test_expired_windows_are_freed(self) -> None:
        """A counter is dropped once its window has ended, and counts restart."""
        clock = ManualClock(1000.0)
        store = InMemoryCounterStore(clock, sweep_interval=1.0)
        await store.increment([Hit("old", 5, 10, 100)])
        clock.advance(11)
        await store.increment([Hit("new", 1, 10, 100)])
        assert await store.increment([Hit("old", 1, 10, 100)]) == [1]
