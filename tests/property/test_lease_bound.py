"""The leased-quota bound, checked by simulation: many processes, one authority.

Each simulated process is a real ``LeasedCounter`` with its own ``LeasePool``; all of them
take leases from one ``MemoryLeaseAuthority``, through a wrapper that delays each grant
and each reply by a random number of event-loop turns (so grants, refills, returns and
hits interleave differently on every run) and may fail a call before or after the grant
happened. Arrivals are random in time, size and process, on a manual clock, over several
windows; requests overlap the clock's advance, so grants land late. Everything is seeded:
a failure reproduces.

Per window the simulation checks what ``docs/architecture.md`` ("Leased quota: the
bound") claims:

* admitted <= limit, always (no over-admission while only granted units are spent);
* admitted + units still held + units lost in failed replies == the counter: every unit
  the authority granted is accounted for, none is invented;
* when the counter ended the window exhausted (no return after it last filled up),
  admitted >= limit - units still held: under-admission is the leases' remainders, no more;
* the remainders stay within what the lease-size cap allows: limit / k, plus P hits'
  worth of units for the leases of 1 and the partial grants at the end.
"""

import asyncio
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.clock import ManualClock
from services.ratelimit.lease_authority import Grant
from services.ratelimit.lease_policy import LeasePolicy
from services.ratelimit.leased_counter import LeasedCounter
from services.ratelimit.leases import LeasePool
from services.ratelimit.memory_authority import MemoryLeaseAuthority
from services.ratelimit.store import CounterStoreError, Hit
from services.ratelimit.windows import counter_key, seconds_until_reset, window_start

WINDOW = 60
START = 1_699_999_200.0  # a window start
QUIET_TAIL = 10  # no returns in a window's last steps: what comes back meets traffic


class JitteryAuthority:
    """One authority for every process; each call waits a random number of loop turns
    before and after it takes effect, and may fail on either side of it."""

    name = "simulated"

    def __init__(self, inner: MemoryLeaseAuthority, rng: random.Random, failure_rate: float):
        self.inner = inner
        self.rng = rng
        self.failure_rate = failure_rate
        self.lost: dict[str, int] = {}  # units granted whose reply never arrived
        self.filled_at: dict[str, int] = {}  # key -> sequence number it last reached its limit
        self.returned_at: dict[str, int] = {}  # key -> sequence number of its last return
        self.sequence = 0

    async def _turns(self) -> None:
        for _ in range(self.rng.randint(0, 4)):
            await asyncio.sleep(0)

    def _fails(self) -> bool:
        return self.rng.random() < self.failure_rate

    async def acquire(self, key: str, ask: int, limit: int, ttl: int) -> Grant:
        await self._turns()
        if self._fails():
            raise CounterStoreError("lost before the grant")
        grant = self.inner.grant(key, ask, limit, ttl)
        self.sequence += 1
        if grant.count >= limit:
            self.filled_at[key] = self.sequence
        await self._turns()
        if self._fails():
            self.lost[key] = self.lost.get(key, 0) + grant.granted
            raise CounterStoreError("lost after the grant")
        return grant

    async def release(self, key: str, unused: int) -> int:
        await self._turns()
        returned = self.inner.give_back(key, unused)
        self.sequence += 1
        if returned:
            self.returned_at[key] = self.sequence
        await self._turns()
        return returned

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


@dataclass
class Window:
    """What happened to one window's counter."""

    limit: int
    demand: int = 0  # units asked for
    admitted: int = 0  # units of hits answered within the limit
    refused: int = 0  # hits answered over the limit
    failed: int = 0  # hits that got CounterStoreError
    held: int = 0  # units left in the processes' leases at the window's end
    lost: int = 0  # units granted in replies that failed
    counter: int = 0  # the authority's counter at the window's end
    exhausted_at_end: bool = False  # the counter filled up and nothing came back after


@dataclass
class Scenario:
    """One simulated run: processes, policy and traffic."""

    seed: int
    processes: int
    limit: int
    safety: int = 2
    min_lease: int = 10
    refill_below: float = 0.5
    idle_release: float = 2.0
    windows: int = 3
    steps: int = 120  # arrival steps per window
    arrivals: int = 6  # at most this many arrivals per step
    max_addend: int = 3
    failure_rate: float = 0.0
    favourite: int | None = None  # all traffic after the warm-up goes to this process
    warm_up_steps: int = 0
    vary: bool = True  # per window: a random subset of processes, load and end of traffic
    results: list[Window] = field(default_factory=list)


async def simulate(s: Scenario) -> list[Window]:
    rng = random.Random(s.seed)
    clock = ManualClock(START)
    authority = JitteryAuthority(MemoryLeaseAuthority(clock), rng, s.failure_rate)
    policy = LeasePolicy(
        processes=s.processes,
        safety=s.safety,
        min_lease=s.min_lease,
        max_lease=max(s.min_lease, 200),
        refill_below=s.refill_below,
        idle_release=s.idle_release,
    )
    workers = [
        LeasedCounter(LeasePool(policy), authority, clock)  # type: ignore[arg-type]
        for _ in range(s.processes)
    ]
    step_seconds = WINDOW / (s.steps + 1)
    windows: list[Window] = []
    for _ in range(s.windows):
        now = int(clock.now())
        key = counter_key("", "5:sim|4:user=1:u", WINDOW, window_start(now, WINDOW))
        window = Window(s.limit)
        pending: list[asyncio.Task[None]] = []

        def judge(count: int, addend: int, window: Window = window) -> None:
            if count <= window.limit:
                window.admitted += addend
            else:
                window.refused += 1

        async def call(worker: LeasedCounter, hit: Hit, window: Window = window) -> None:
            try:
                (count,) = await worker.increment([hit])
            except CounterStoreError:
                window.failed += 1
                return
            judge(count, hit.addend, window)

        early, late, shift, load, last_arrival = workers, workers, 0, s.arrivals, s.steps
        if s.vary:  # traffic on some processes, moving to others at some point, or ending
            early = rng.sample(workers, rng.randint(1, s.processes))
            late = rng.sample(workers, rng.randint(1, s.processes))
            shift = rng.randint(0, s.steps)
            load = rng.randint(1, s.arrivals)
            last_arrival = rng.randint(s.steps // 3, s.steps)
        for step in range(s.steps):
            ttl = seconds_until_reset(int(clock.now()), WINDOW)
            for _ in range(rng.randint(0, load) if step < last_arrival else 0):
                if s.favourite is not None and step >= s.warm_up_steps:
                    worker = workers[s.favourite]
                else:
                    worker = rng.choice(early if step < shift else late)
                addend = 1 if rng.random() < 0.7 else rng.randint(1, s.max_addend)
                hit = Hit(key, addend, ttl, s.limit)
                window.demand += addend
                answered = worker.try_now([hit]) if rng.random() < 0.5 else None
                if answered is not None:
                    judge(answered[0], addend)
                else:
                    pending.append(asyncio.create_task(call(worker, hit)))
            for _ in range(rng.randint(0, 6)):
                await asyncio.sleep(0)
            if step < s.steps - QUIET_TAIL:
                for worker in workers:  # each returns idle leases about once a second
                    if rng.random() < step_seconds:
                        pending.append(asyncio.create_task(_release(worker)))
            clock.advance(step_seconds)  # calls in flight finish at a later time
        await asyncio.gather(*pending)
        for worker in workers:
            await worker.settle()
        window.held = sum(worker.pool.held(key) for worker in workers)
        window.lost = authority.lost.get(key, 0)
        window.counter = authority.inner.count(key)
        window.exhausted_at_end = authority.filled_at.get(key, -1) > authority.returned_at.get(
            key, -1
        )
        windows.append(window)
        clock.advance(WINDOW - (clock.now() - START) % WINDOW)  # the next window's start
    return windows


async def _release(worker: LeasedCounter) -> None:
    await worker.release_idle()


def check_bound(s: Scenario, windows: list[Window]) -> None:
    """The claims of the module docstring, for every window of the run."""
    for index, w in enumerate(windows):
        where = f"seed {s.seed}, P {s.processes}, L {s.limit}, window {index}: {w}"
        assert w.admitted <= w.limit, where
        assert w.counter <= w.limit, where
        assert w.admitted + w.held + w.lost == w.counter, where
        if w.exhausted_at_end:
            assert w.admitted >= w.limit - w.held - w.lost, where
        assert w.held <= w.limit // s.safety + s.processes * s.max_addend, where


SCENARIOS = [
    Scenario(seed=seed, processes=processes, limit=limit, arrivals=arrivals)
    for seed, (processes, limit, arrivals) in enumerate(
        [
            (2, 50, 6),
            (3, 100, 6),
            (4, 7, 3),
            (5, 300, 10),
            (8, 100, 6),
            (8, 1000, 30),
            (11, 60, 6),
            (16, 100, 8),
            (16, 5, 4),
        ]
    )
]


class TestBound:
    @pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: f"P{s.processes}-L{s.limit}")
    async def test_never_over_and_under_only_by_what_leases_hold(self, scenario: Scenario) -> None:
        """Random traffic over one authority: no window admits more than its limit, and
        every granted unit is admitted, held or lost in a failed reply."""
        windows = await simulate(scenario)
        check_bound(scenario, windows)
        assert any(w.refused for w in windows)  # the limit was really reached

    async def test_without_returns_the_stranded_units_are_the_whole_shortfall(self) -> None:
        """Leases taken early and never returned: admitted is exactly limit - held, held > 0."""
        scenario = Scenario(
            seed=5,
            processes=8,
            limit=100,
            arrivals=8,
            max_addend=1,
            favourite=0,
            warm_up_steps=8,
            idle_release=1000.0,
            vary=False,
        )
        windows = await simulate(scenario)
        check_bound(scenario, windows)
        for w in windows:
            assert w.exhausted_at_end and 0 < w.held <= 100 // 2
            assert w.admitted == 100 - w.held

    async def test_failures_never_over_admit(self) -> None:
        """With one call in ten failing, before or after its grant, nothing is over-admitted."""
        scenario = Scenario(seed=99, processes=6, limit=120, failure_rate=0.1)
        windows = await simulate(scenario)
        check_bound(scenario, windows)
        assert any(w.failed for w in windows) and any(w.lost for w in windows)

    @given(
        seed=st.integers(0, 2**32 - 1),
        processes=st.integers(2, 16),
        limit=st.integers(0, 400),
        safety=st.integers(1, 4),
        min_lease=st.integers(1, 20),
        refill_below=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
        idle_release=st.sampled_from([0.5, 2.0, 30.0]),
        arrivals=st.integers(1, 12),
    )
    @settings(
        max_examples=40,
        deadline=None,
        derandomize=True,  # the same 40 runs everywhere: CI cannot flake on a new example
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    def test_the_bound_holds_for_any_policy_and_traffic(
        self,
        seed: int,
        processes: int,
        limit: int,
        safety: int,
        min_lease: int,
        refill_below: float,
        idle_release: float,
        arrivals: int,
    ) -> None:
        """Whatever the policy, process count and load: never over, under only by holdings."""
        scenario = Scenario(
            seed=seed,
            processes=processes,
            limit=limit,
            safety=safety,
            min_lease=min_lease,
            refill_below=refill_below,
            idle_release=idle_release,
            arrivals=arrivals,
            windows=2,
            steps=60,
        )
        check_bound(scenario, asyncio.run(simulate(scenario)))


class TestExactAtTheLimit:
    """L = 100, P = 8, k = 2: demand far above the limit gets exactly 100 through."""

    @pytest.mark.parametrize("favourite", range(8))
    async def test_exactly_the_limit_whichever_process_gets_the_traffic(
        self, favourite: int
    ) -> None:
        """All processes lease early on; then one takes all traffic and the idle ones
        give their units back: 100 admitted, per window, nothing left stranded."""
        scenario = Scenario(
            seed=1000 + favourite,
            processes=8,
            limit=100,
            arrivals=8,
            max_addend=1,
            favourite=favourite,
            warm_up_steps=8,
            idle_release=1.0,
            vary=False,
        )
        windows = await simulate(scenario)
        check_bound(scenario, windows)
        assert [w.admitted for w in windows] == [100] * scenario.windows
        assert all(w.demand > 300 for w in windows)

    async def test_exactly_the_limit_when_traffic_is_spread(self) -> None:
        """Traffic on all eight processes until the window ends: exactly 100 admitted."""
        scenario = Scenario(seed=7, processes=8, limit=100, arrivals=12, max_addend=1, vary=False)
        windows = await simulate(scenario)
        check_bound(scenario, windows)
        assert [w.admitted for w in windows] == [100] * scenario.windows
