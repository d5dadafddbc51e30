"""LeasedCounter: counting from leases, with an in-memory authority and a manual clock."""

import asyncio
import threading

import pytest

from services.clock import ManualClock
from services.metrics import Metrics
from services.ratelimit.lease_authority import Grant
from services.ratelimit.lease_policy import LeasePolicy
from services.ratelimit.leased_counter import LeasedCounter
from services.ratelimit.leases import LeasePool
from services.ratelimit.memory_authority import MemoryLeaseAuthority
from services.ratelimit.memory_store import InMemoryCounterStore
from services.ratelimit.model import Code
from services.ratelimit.service import RateLimitOptions, RateLimitService
from services.ratelimit.store import CounterStoreError, Hit
from tests.unit.ratelimit_helpers import compiled, request

NOW = 1_699_999_200.0  # a window start for minutes and hours


class RecordingAuthority(MemoryLeaseAuthority):
    """The in-memory authority, recording every ask; it can fail or hold answers back."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock)
        self.asks: list[tuple[str, int]] = []
        self.released: list[tuple[str, int]] = []
        self.failing = False
        self.gate: asyncio.Event | None = None

    async def acquire(self, key: str, ask: int, limit: int, ttl: int) -> Grant:
        self.asks.append((key, ask))
        if self.gate is not None:
            await self.gate.wait()
        if self.failing:
            raise CounterStoreError("authority unreachable")
        return await super().acquire(key, ask, limit, ttl)

    async def release(self, key: str, unused: int) -> int:
        self.released.append((key, unused))
        return await super().release(key, unused)


class Refusal(Exception):
    """What the before_wait hook raises in these tests (NeedsLoop's stand-in)."""


def make(
    clock: ManualClock | None = None, authority: RecordingAuthority | None = None, **policy: float
) -> tuple[LeasedCounter, RecordingAuthority, ManualClock]:
    clock = clock or ManualClock(NOW)
    authority = authority or RecordingAuthority(clock)
    pool = LeasePool(LeasePolicy(**policy))  # type: ignore[arg-type]
    return LeasedCounter(pool, authority, clock), authority, clock


async def admitted(counter: LeasedCounter, hits: int, *, limit: int) -> int:
    """How many of ``hits`` one-unit hits, sent one after another, were within the limit."""
    within = 0
    for _ in range(hits):
        (count,) = await counter.increment([hit(limit=limit)])
        within += count <= limit
    return within


def hit(key: str = "k", addend: int = 1, limit: int = 1000, ttl: int = 60) -> Hit:
    return Hit(key, addend, ttl, limit)


class TestCounting:
    async def test_one_acquisition_answers_many_hits(self) -> None:
        """A lease of 10 answers the first hits without asking again (no refill yet)."""
        counter, authority, _ = make(min_lease=10, refill_below=0)
        counts = [(await counter.increment([hit()]))[0] for _ in range(10)]
        assert counts == list(range(1, 11))
        assert authority.asks == [("k", 10)]

    async def test_a_single_process_counts_exactly_like_the_exact_store(self) -> None:
        """Alone on its authority, every admitted hit reads what InMemoryCounterStore reads."""
        counter, _, clock = make(min_lease=4)
        exact = InMemoryCounterStore(clock)
        for _ in range(40):
            leased = (await counter.increment([hit(limit=25)]))[0]
            counted = (await exact.increment([hit(limit=25)]))[0]
            assert leased == counted or (leased > 25 and counted > 25)
            await asyncio.sleep(0)  # let a background refill run sometimes

    async def test_the_rate_limit_service_judges_leased_counts_unchanged(self) -> None:
        """Behind RateLimitService, 3/minute admits 3 and refuses the 4th with 0 remaining."""
        clock = ManualClock(NOW + 15)
        counter, _, _ = make(clock)
        config = compiled(
            """
            domain: d
            descriptors:
              - key: user
                rate_limit: {unit: minute, requests_per_unit: 3}
            """
        )
        service = RateLimitService(lambda: config, counter, clock, Metrics(), RateLimitOptions())
        results = [await service.should_rate_limit(request("d", [("user", "a")])) for _ in range(4)]
        assert [r.overall for r in results] == [Code.OK] * 3 + [Code.OVER_LIMIT]
        assert [r.statuses[0].remaining for r in results] == [2, 1, 0, 0]
        assert results[3].statuses[0].reset_seconds == 45

    async def test_hits_of_one_call_are_answered_in_order(self) -> None:
        """Two hits on one key in one call see each other; another key is counted apart."""
        counter, _, _ = make(refill_below=0)
        assert await counter.increment([hit("a", 2), hit("b"), hit("a", 3)]) == [2, 1, 5]

    async def test_a_refused_hit_reads_over_the_limit(self) -> None:
        """With the limit spent, a hit is over: its value is more than the limit."""
        counter, _, _ = make()
        for _ in range(5):
            await counter.increment([hit(limit=5)])
        assert (await counter.increment([hit(limit=5)]))[0] > 5
        assert (await counter.increment([hit(addend=3, limit=5)]))[0] > 5

    async def test_refusals_of_a_spent_counter_do_not_ask_again_until_the_recheck(
        self,
    ) -> None:
        """Over quota, one ask finds the counter spent; the refusals after it are answered
        here, on the calling thread, until ``spent_recheck`` has passed."""
        counter, authority, clock = make(min_lease=10, refill_below=0, spent_recheck=1.0)
        assert await admitted(counter, 12, limit=10) == 10
        asks = len(authority.asks)
        refused = [counter.try_now([hit(limit=10)]) for _ in range(50)]
        assert refused == [[11]] * 50 and len(authority.asks) == asks
        clock.advance(1)
        assert counter.try_now([hit(limit=10)]) is None  # the recheck: ask the authority
        assert await admitted(counter, 1, limit=10) == 0

    async def test_a_limit_of_zero_is_refused_without_the_authority(self) -> None:
        """requests_per_unit 0 blocks, and no acquisition is made for it."""
        counter, authority, _ = make()
        assert (await counter.increment([hit(limit=0)]))[0] == 1
        assert authority.asks == []

    async def test_check_only_hits_read_without_taking_units(self) -> None:
        """addend 0 reads the counter (one read when nothing is leased) and spends nothing."""
        counter, authority, _ = make(refill_below=0)
        assert await counter.increment([hit(addend=0)]) == [0]
        assert authority.asks == [("k", 0)]
        await counter.increment([hit()])
        assert await counter.increment([hit(addend=0)]) == [1]
        assert authority.count("k") == 10

    async def test_a_new_window_starts_from_nothing(self) -> None:
        """Units leased in one window are not spent in the next: its key starts over."""
        counter, authority, clock = make(refill_below=0)
        await counter.increment([hit("k@0", ttl=60)])  # holds 9
        clock.advance(60)
        assert counter.try_now([hit("k@0", ttl=1)]) is None
        assert counter.pool.held("k@0") == 0
        assert await counter.increment([hit("k@60", ttl=60)]) == [1]
        assert [key for key, _ in authority.asks] == ["k@0", "k@60"]


class TestTryNow:
    async def test_answers_from_held_units_on_the_calling_thread(self) -> None:
        """Once leased, try_now answers without the authority."""
        counter, authority, _ = make(refill_below=0)
        await counter.increment([hit()])
        assert counter.try_now([hit(), hit()]) == [2, 3]
        assert len(authority.asks) == 1

    async def test_none_when_a_hit_needs_the_authority_with_nothing_changed(self) -> None:
        """One unleased key makes try_now answer None and leaves the other lease alone."""
        counter, _, _ = make(refill_below=0)
        await counter.increment([hit("a")])
        held = counter.pool.held("a")
        assert counter.try_now([hit("a"), hit("b")]) is None
        assert counter.pool.held("a") == held

    async def test_a_refill_asked_for_on_a_handler_thread_runs_on_the_loop(self) -> None:
        """A take on another thread that runs the lease low tops it up from the loop."""
        counter, authority, _ = make(min_lease=10, refill_below=0.5)
        await counter.increment([hit()])  # holds 9
        answers: list[list[int] | None] = []
        worker = threading.Thread(
            target=lambda: answers.extend(counter.try_now([hit()]) for _ in range(5))
        )
        worker.start()
        await asyncio.to_thread(worker.join)
        await counter.settle()
        assert None not in answers
        assert authority.asks == [("k", 10), ("k", 6)]
        assert counter.pool.held("k") == 10


class TestConcurrency:
    async def test_misses_on_a_cold_key_share_one_acquisition(self) -> None:
        """Eight concurrent first hits wait for one lease of 10 instead of asking eight times."""
        counter, authority, _ = make(min_lease=10, refill_below=0)
        authority.gate = asyncio.Event()
        calls = [asyncio.create_task(counter.increment([hit()])) for _ in range(8)]
        await asyncio.sleep(0)
        authority.gate.set()
        counts = sorted(count for (count,) in await asyncio.gather(*calls))
        assert counts == list(range(1, 9))
        assert authority.asks == [("k", 10)]

    async def test_closing_misses_each_ask_for_their_own_unit(self) -> None:
        """Near the limit nobody waits for anybody: each miss is its own exact grant."""
        clock = ManualClock(NOW)
        authority = RecordingAuthority(clock)
        first, _, _ = make(clock, authority, min_lease=10, refill_below=0, idle_release=1.0)
        second, _, _ = make(clock, authority, min_lease=10, refill_below=0)
        await first.increment([hit(limit=10)])  # leases 5, holds 4
        for _ in range(6):  # leases the other 5, spends them, is refused: closing
            await second.increment([hit(limit=10)])
        assert second.pool.closing("k")
        clock.advance(1)
        assert await first.release_idle() == 4
        authority.asks.clear()
        authority.gate = asyncio.Event()
        calls = [asyncio.create_task(second.increment([hit(limit=10)])) for _ in range(4)]
        for _ in range(3):
            await asyncio.sleep(0)
        assert authority.asks == [("k", 1)] * 4  # all four in flight at once
        authority.gate.set()
        counts = [count for (count,) in await asyncio.gather(*calls)]
        assert all(count <= 10 for count in counts)
        assert authority.count("k") == 10

    async def test_a_cancelled_caller_leaves_its_grant_in_the_pool(self) -> None:
        """The acquisition outlives the caller: granted units are held, not lost."""
        counter, authority, _ = make(min_lease=10, refill_below=0)
        authority.gate = asyncio.Event()
        call = asyncio.create_task(counter.increment([hit()]))
        await asyncio.sleep(0)
        call.cancel()
        authority.gate.set()
        await counter.settle()
        assert authority.count("k") == 10
        assert counter.pool.held("k") == 9  # the cancelled hit was counted, as in the exact store


class TestFailure:
    async def test_an_unreachable_authority_fails_the_hits_that_need_it(self) -> None:
        """A miss raises CounterStoreError, so the service answers UNAVAILABLE."""
        counter, authority, _ = make()
        authority.failing = True
        with pytest.raises(CounterStoreError, match="unreachable"):
            await counter.increment([hit()])

    async def test_held_units_are_still_spent_while_the_authority_is_down(self) -> None:
        """Granted units go on answering, and nothing beyond them is admitted."""
        counter, authority, _ = make(min_lease=5, refill_below=0)
        await counter.increment([hit()])
        authority.failing = True
        assert counter.try_now([hit()] * 4) == [2, 3, 4, 5]
        assert counter.try_now([hit()]) is None
        with pytest.raises(CounterStoreError):
            await counter.increment([hit()])

    async def test_a_failed_refill_is_dropped_and_the_next_miss_asks_again(self) -> None:
        """A background refill that fails leaves the pool as it was, ready to ask again."""
        counter, authority, _ = make(min_lease=4, refill_below=0.5)
        await counter.increment([hit()])  # holds 3
        authority.failing = True
        await counter.increment([hit()])  # holds 2: no refill yet (not below 4 / 2)
        await counter.increment([hit()])  # holds 1: a refill of 3, which fails
        await counter.settle()
        authority.failing = False
        await counter.increment([hit()])  # holds 0: a refill of 4, granted
        await counter.settle()
        assert counter.pool.held("k") == 4
        assert authority.count("k") == 8

    async def test_before_wait_stops_a_call_that_must_wait_without_side_effects(self) -> None:
        """The hook runs only when the authority is needed, before anything changed."""
        clock = ManualClock(NOW)
        authority = RecordingAuthority(clock)
        seen: list[str] = []

        def refuse(what: str) -> None:
            seen.append(what)
            raise Refusal(what)

        pool = LeasePool(LeasePolicy(refill_below=0))
        counter = LeasedCounter(pool, authority, clock, before_wait=refuse)
        with pytest.raises(Refusal):
            await counter.increment([hit()])
        assert authority.asks == [] and pool.outstanding() == 0
        pool.add_grant("k", Grant(5, 5, 60), 5, 1000, NOW + 60, NOW)
        assert await counter.increment([hit()]) == [1]
        assert seen == ["a lease from the authority"]


class TestReturns:
    async def test_idle_leases_go_back_to_the_authority(self) -> None:
        """After idle_release seconds untouched, unspent units are returned to the counter."""
        counter, authority, clock = make(min_lease=10, refill_below=0, idle_release=2.0)
        await counter.increment([hit()])
        assert authority.count("k") == 10
        clock.advance(1)
        assert await counter.release_idle() == 0
        clock.advance(1.5)
        assert await counter.release_idle() == 9
        assert authority.count("k") == 1
        assert authority.released == [("k", 9)]

    async def test_close_returns_everything_and_stops_counting(self) -> None:
        """release_all gives back every unit held; after close, calls fail."""
        counter, authority, _ = make(min_lease=10, refill_below=0)
        await counter.increment([hit("a"), hit("b", 3)])
        assert await counter.release_all() == 9 + 7
        assert (authority.count("a"), authority.count("b")) == (1, 3)
        await counter.close()
        assert counter.try_now([hit("a")]) is None
        with pytest.raises(CounterStoreError, match="closed"):
            await counter.increment([hit("a")])

    async def test_returned_units_are_granted_to_another_process(self) -> None:
        """What one process gives back, another spends: together they admit the whole limit."""
        clock = ManualClock(NOW)
        authority = RecordingAuthority(clock)
        policy = {"min_lease": 10, "refill_below": 0.0, "idle_release": 1.0}
        first, _, _ = make(clock, authority, **policy)
        second, _, _ = make(clock, authority, **policy)
        await first.increment([hit(limit=12)])  # a lease of 12 // 2 = 6: holds 5
        assert await admitted(second, 12, limit=12) == 6
        clock.advance(1)
        assert await first.release_idle() == 5
        assert await admitted(second, 12, limit=12) == 5  # 1 + 6 + 5: the whole limit
