"""The in-memory lease authority: capped grants, windows that end, releases."""

import asyncio
import threading

from services.clock import ManualClock
from services.ratelimit.lease_authority import Grant
from services.ratelimit.memory_authority import MemoryLeaseAuthority

NOW = 1_700_000_000.0


class TestGrant:
    async def test_grants_are_capped_at_the_limit(self) -> None:
        """7, 7, 7 of a limit of 10: 7, then the 3 left, then nothing."""
        authority = MemoryLeaseAuthority(ManualClock(NOW))
        grants = [await authority.acquire("k", 7, 10, 60) for _ in range(3)]
        assert grants == [Grant(7, 7, 60), Grant(3, 10, 60), Grant(0, 10, 60)]

    async def test_asking_for_nothing_reads(self) -> None:
        """ask 0 returns the count and creates nothing."""
        authority = MemoryLeaseAuthority(ManualClock(NOW))
        assert await authority.acquire("k", 0, 10, 60) == Grant(0, 0, 0)
        await authority.acquire("k", 4, 10, 60)
        assert await authority.acquire("k", 0, 10, 60) == Grant(0, 4, 60)

    async def test_a_limit_of_zero_grants_nothing(self) -> None:
        """requests_per_unit 0: no unit is ever granted."""
        authority = MemoryLeaseAuthority(ManualClock(NOW))
        assert (await authority.acquire("k", 5, 0, 60)).granted == 0

    async def test_the_counter_ends_with_its_window(self) -> None:
        """ttl seconds after the first grant the counter is gone and starts over."""
        clock = ManualClock(NOW)
        authority = MemoryLeaseAuthority(clock, sweep_interval=1.0)
        await authority.acquire("k", 10, 10, 30)
        clock.advance(20)
        assert (await authority.acquire("k", 1, 10, 999)) == Grant(0, 10, 10)
        clock.advance(10)
        assert authority.count("k") == 0
        assert (await authority.acquire("k", 4, 10, 60)) == Grant(4, 4, 60)

    async def test_concurrent_grants_from_threads_never_pass_the_limit(self) -> None:
        """Eight threads asking for 3 at a time share exactly the limit between them."""
        authority = MemoryLeaseAuthority(ManualClock(NOW))
        granted: list[int] = []

        def worker() -> None:
            for _ in range(200):
                granted.append(authority.grant("k", 3, 1000, 60).granted)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for thread in threads:
            thread.start()
        await asyncio.to_thread(lambda: [t.join() for t in threads])
        assert sum(granted) == 1000 and authority.count("k") == 1000


class TestRelease:
    async def test_unspent_units_come_back(self) -> None:
        """Released units leave the counter and can be granted again."""
        authority = MemoryLeaseAuthority(ManualClock(NOW))
        await authority.acquire("k", 10, 10, 60)
        assert await authority.release("k", 4) == 4
        assert (await authority.acquire("k", 9, 10, 60)).granted == 4

    async def test_never_below_zero_nor_into_an_ended_window(self) -> None:
        """A release stops at 0; one for a window that ended (or never was) does nothing."""
        clock = ManualClock(NOW)
        authority = MemoryLeaseAuthority(clock)
        await authority.acquire("k", 3, 10, 10)
        assert await authority.release("k", 5) == 3
        assert await authority.release("never", 5) == 0
        await authority.acquire("k", 2, 10, 10)
        clock.advance(10)
        assert await authority.release("k", 2) == 0
