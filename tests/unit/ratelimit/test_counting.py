"""Router: each hit counted where its limit says, exact or leased, never twice."""

import asyncio
from collections.abc import Sequence

import pytest

from services.clock import ManualClock
from services.inline import NeedsLoop
from services.ratelimit.counting import Router
from services.ratelimit.lease_policy import LeasePolicy
from services.ratelimit.leased_counter import LeasedCounter
from services.ratelimit.leases import LeasePool
from services.ratelimit.memory_authority import MemoryLeaseAuthority
from services.ratelimit.memory_store import InMemoryCounterStore
from services.ratelimit.store import Hit

NOW = 1_699_999_200.0


class Recording(InMemoryCounterStore):
    """The memory store, remembering which keys it was asked to count."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock)
        self.keys: list[str] = []

    async def increment(self, hits: Sequence[Hit]) -> list[int]:
        self.keys.extend(hit.key for hit in hits)
        return await super().increment(hits)


def router(clock: ManualClock) -> tuple[Router, Recording, MemoryLeaseAuthority]:
    exact = Recording(clock)
    authority = MemoryLeaseAuthority(clock)
    leased = LeasedCounter(LeasePool(LeasePolicy()), authority, clock)
    return Router(exact, leased), exact, authority


def hit(key: str, *, window: int = 60, leased: bool = True) -> Hit:
    return Hit(key, 1, window, 100, window, leased)


async def test_hits_go_where_their_limit_says() -> None:
    """Leased minute limits are leased; exact limits and per-second windows are exact."""
    clock = ManualClock(NOW)
    store, exact, authority = router(clock)
    counts = await store.increment(
        [hit("leased"), hit("exact", leased=False), hit("second", window=1)]
    )
    assert counts == [1, 1, 1]
    assert exact.keys == ["exact", "second"]
    assert authority.count("leased") >= 1  # a lease was taken from the authority


async def test_without_a_leased_counter_everything_is_exact() -> None:
    """One process counting in memory has nothing to lease from: leased changes nothing."""
    clock = ManualClock(NOW)
    exact = Recording(clock)
    assert await Router(exact).increment([hit("a"), hit("b", leased=False)]) == [1, 1]
    assert exact.keys == ["a", "b"]


async def test_a_mixed_call_off_the_loop_moves_before_counting_anything() -> None:
    """Off the loop, a call with hits for both stores raises NeedsLoop and counts nothing."""
    clock = ManualClock(NOW)
    store, exact, authority = router(clock)
    mixed = [hit("leased"), hit("exact", leased=False)]

    def off_loop() -> None:
        coro = store.increment(mixed)
        with pytest.raises(NeedsLoop):
            coro.send(None)

    await asyncio.to_thread(off_loop)
    assert exact.keys == [] and authority.count("leased") == 0
    assert await store.increment(mixed) == [1, 1]  # on the loop: each counted once
