"""DecisionCache: TTLs and caps, the bound, LRU eviction, and single flight across threads."""

import math
import threading
from collections.abc import Callable

import pytest

from services.authz.decision_cache import Computed, DecisionCache

THREADS = 16
JOIN_TIMEOUT = 10.0


class Counting:
    """A compute function that counts its calls and answers ``value`` with ``ttl_cap``."""

    def __init__(self, value: str = "v", ttl_cap: float | None = math.inf) -> None:
        self.value = value
        self.ttl_cap = ttl_cap
        self.calls = 0

    def __call__(self) -> Computed[str]:
        self.calls += 1
        return Computed(self.value, self.ttl_cap)


class Gate:
    """A compute function that blocks until ``open`` is called; then it answers or raises."""

    def __init__(self, value: str = "v", error: Exception | None = None) -> None:
        self.value = value
        self.error = error
        self.entered = threading.Event()
        self._open = threading.Event()
        self.calls = 0
        self._lock = threading.Lock()

    def open(self) -> None:
        self._open.set()

    def __call__(self) -> Computed[str]:
        with self._lock:
            self.calls += 1
        self.entered.set()
        assert self._open.wait(JOIN_TIMEOUT)
        if self.error is not None:
            raise self.error
        return Computed(self.value)


def run_threads(target: Callable[[], None], count: int) -> list[threading.Thread]:
    threads = [threading.Thread(target=target) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


def join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "a caller is stuck"


def wait_until(condition: Callable[[], bool]) -> None:
    event = threading.Event()
    for _ in range(1000):
        if condition():
            return
        event.wait(0.005)
    raise AssertionError("condition never held")


class TestTtl:
    def test_hit_within_ttl(self) -> None:
        """A value is served from the cache until its TTL has passed."""
        cache: DecisionCache[str] = DecisionCache(ttl=10)
        compute = Counting()
        assert cache.get_or_compute("k", compute, now=0.0) == "v"
        assert cache.get_or_compute("k", compute, now=9.999) == "v"
        assert compute.calls == 1
        assert (cache.hits, cache.misses) == (1, 1)

    def test_recomputed_at_ttl(self) -> None:
        """At ``now + ttl`` the entry is expired, counted, and computed again."""
        cache: DecisionCache[str] = DecisionCache(ttl=10)
        compute = Counting()
        cache.get_or_compute("k", compute, now=0.0)
        cache.get_or_compute("k", compute, now=10.0)
        assert compute.calls == 2
        assert cache.expirations == 1

    def test_cap_shortens_the_ttl(self) -> None:
        """A value's own cap (its token's exp) wins over a longer configured TTL."""
        cache: DecisionCache[str] = DecisionCache(ttl=60)
        compute = Counting(ttl_cap=5)
        cache.get_or_compute("k", compute, now=0.0)
        cache.get_or_compute("k", compute, now=4.9)
        assert compute.calls == 1
        cache.get_or_compute("k", compute, now=5.0)
        assert compute.calls == 2

    def test_cap_cannot_lengthen_the_ttl(self) -> None:
        """A cap longer than the configured TTL changes nothing."""
        cache: DecisionCache[str] = DecisionCache(ttl=10)
        cache.put("k", "v", now=0.0, ttl_cap=1000)
        assert cache.get("k", now=10.0) is None

    @pytest.mark.parametrize("cap", [None, 0.0, -1.0])
    def test_uncacheable_values_are_not_kept(self, cap: float | None) -> None:
        """A value marked uncacheable (cap None) or already expired is computed every time."""
        cache: DecisionCache[str] = DecisionCache(ttl=10)
        compute = Counting(ttl_cap=cap)
        assert cache.get_or_compute("k", compute, now=0.0) == "v"
        assert cache.get_or_compute("k", compute, now=0.0) == "v"
        assert compute.calls == 2
        assert len(cache) == 0

    def test_jitter_only_shortens(self) -> None:
        """Jitter takes up to its fraction off an entry's TTL, never adds to it."""
        cache: DecisionCache[str] = DecisionCache(ttl=10, jitter=0.2, rand=lambda: 1.0)
        cache.put("k", "v", now=0.0)
        assert cache.get("k", now=7.99) == "v"
        assert cache.get("k", now=8.0) is None

    def test_clear_drops_everything(self) -> None:
        """``clear`` (a reload) leaves no entry to serve."""
        cache: DecisionCache[str] = DecisionCache()
        cache.put("k", "v", now=0.0)
        cache.clear()
        assert cache.get("k", now=0.0) is None


class TestBound:
    def test_entry_count_is_bounded(self) -> None:
        """The cache never holds more than max_entries; the excess is counted as evictions."""
        cache: DecisionCache[int] = DecisionCache(max_entries=3)
        for index in range(10):
            cache.put(index, index, now=0.0)
        assert len(cache) == 3
        assert cache.evictions == 7

    def test_used_entries_get_a_second_chance(self) -> None:
        """A key used since it was stored outlives older unused ones (CLOCK, not FIFO)."""
        cache: DecisionCache[str] = DecisionCache(max_entries=2)
        cache.put("hot", "h", now=0.0)
        cache.put("cold", "c", now=0.0)
        assert cache.get("hot", now=1.0) == "h"
        cache.put("new", "n", now=1.0)
        assert cache.get("cold", now=1.0) is None
        assert cache.get("hot", now=1.0) == "h"
        assert cache.get("new", now=1.0) == "n"

    def test_a_second_chance_is_spent_by_the_next_pass(self) -> None:
        """A hot key that stops being used is evicted on eviction's next pass over it."""
        cache: DecisionCache[str] = DecisionCache(max_entries=2)
        cache.put("once", "o", now=0.0)
        cache.put("other", "x", now=0.0)
        cache.get("once", now=0.0)
        cache.put("a", "a", now=0.0)  # passes "once" over (to the back), evicts "other"
        cache.put("b", "b", now=0.0)  # evicts "a", the oldest now
        assert cache.get("b", now=0.0) == "b"
        cache.put("c", "c", now=0.0)  # "once" was not used again: out ("b" was)
        assert cache.get("once", now=0.0) is None
        assert cache.get("b", now=0.0) == "b"
        assert cache.evictions == 3

    def test_expired_entries_go_before_live_ones(self) -> None:
        """Eviction counts an expired entry as expired, not as a live entry evicted."""
        cache: DecisionCache[str] = DecisionCache(max_entries=1, ttl=1)
        cache.put("old", "o", now=0.0)
        cache.put("new", "n", now=5.0)
        assert (cache.expirations, cache.evictions) == (1, 0)

    def test_keys_are_compared_in_full(self) -> None:
        """Keys whose hashes collide are still two entries: equality decides, not the hash."""

        class Colliding:
            def __init__(self, name: str) -> None:
                self.name = name

            def __hash__(self) -> int:
                return 1

            def __eq__(self, other: object) -> bool:
                return isinstance(other, Colliding) and other.name == self.name

        cache: DecisionCache[str] = DecisionCache()
        cache.put((Colliding("a"),), "a", now=0.0)
        cache.put((Colliding("b"),), "b", now=0.0)
        assert cache.get((Colliding("a"),), now=0.0) == "a"
        assert cache.get((Colliding("b"),), now=0.0) == "b"

    @pytest.mark.parametrize(
        "options", [{"max_entries": 0}, {"ttl": 0.0}, {"jitter": 1.0}, {"jitter": -0.1}]
    )
    def test_bad_settings_are_refused(self, options: dict[str, float]) -> None:
        """A cache that could not hold or keep anything is a configuration error."""
        with pytest.raises(ValueError, match="must be"):
            DecisionCache(**options)  # type: ignore[arg-type]


class TestSingleFlight:
    def test_concurrent_misses_compute_once(self) -> None:
        """N threads missing one key at once run the computation once and share its value."""
        cache: DecisionCache[str] = DecisionCache()
        gate = Gate("shared")
        results: list[str] = []

        def call() -> None:
            results.append(cache.get_or_compute("k", gate, now=0.0))

        threads = run_threads(call, THREADS)
        wait_until(lambda: cache.misses == THREADS)  # every caller is in: one leads, N-1 wait
        gate.open()
        join(threads)
        assert gate.calls == 1
        assert results == ["shared"] * THREADS
        assert cache.coalesced == THREADS - 1

    def test_other_keys_do_not_wait(self) -> None:
        """A slow computation of one key does not hold up another key."""
        cache: DecisionCache[str] = DecisionCache()
        gate = Gate("slow")
        threads = run_threads(lambda: cache.get_or_compute("slow", gate, now=0.0), 1)
        assert gate.entered.wait(JOIN_TIMEOUT)
        assert cache.get_or_compute("fast", Counting("fast"), now=0.0) == "fast"
        gate.open()
        join(threads)

    def test_failed_leader_lets_waiters_compute(self) -> None:
        """When the leader's computation raises, it propagates to the leader only, and each
        waiter computes for itself instead of waiting forever."""
        cache: DecisionCache[str] = DecisionCache()
        gate = Gate(error=RuntimeError("key source down"))
        errors: list[Exception] = []
        results: list[str] = []
        fallback = Counting("own")

        def lead() -> None:
            try:
                cache.get_or_compute("k", gate, now=0.0)
            except RuntimeError as exc:
                errors.append(exc)

        def follow() -> None:
            results.append(cache.get_or_compute("k", fallback, now=0.0))

        leader = run_threads(lead, 1)
        assert gate.entered.wait(JOIN_TIMEOUT)
        waiters = run_threads(follow, 4)
        wait_until(lambda: cache.misses == 5)
        gate.open()
        join(leader + waiters)
        assert len(errors) == 1 and results == ["own"] * 4
        assert cache.abandoned == 1 and cache.coalesced == 0
        assert cache.get_or_compute("k", Counting("later"), now=0.0) == "own"  # cached by one

    def test_slow_leader_does_not_block_waiters(self) -> None:
        """A waiter gives up after wait_timeout and computes itself: delayed, never stuck."""
        cache: DecisionCache[str] = DecisionCache(wait_timeout=0.01)
        gate = Gate("leader")
        leader = run_threads(lambda: cache.get_or_compute("k", gate, now=0.0), 1)
        assert gate.entered.wait(JOIN_TIMEOUT)
        assert cache.get_or_compute("k", Counting("waiter"), now=0.0) == "waiter"
        gate.open()
        join(leader)
        assert cache.get("k", now=0.0) == "leader"  # the later result replaced the earlier

    def test_uncacheable_result_is_not_shared(self) -> None:
        """A leader's value that may not be cached (an error answer) is not handed to
        waiters: each computes its own."""
        cache: DecisionCache[str] = DecisionCache()
        entered = threading.Event()
        release = threading.Event()

        def failing() -> Computed[str]:
            entered.set()
            assert release.wait(JOIN_TIMEOUT)
            return Computed("error", None)

        own = Counting("fresh", ttl_cap=None)
        results: list[str] = []
        leader = run_threads(lambda: results.append(cache.get_or_compute("k", failing, 0.0)), 1)
        assert entered.wait(JOIN_TIMEOUT)
        waiters = run_threads(lambda: results.append(cache.get_or_compute("k", own, 0.0)), 3)
        wait_until(lambda: cache.misses == 4)
        release.set()
        join(leader + waiters)
        assert sorted(results) == ["error", "fresh", "fresh", "fresh"]
        assert own.calls == 3 and len(cache) == 0

    def test_reentrant_leader_does_not_wait_for_itself(self) -> None:
        """A computation that asks for its own key computes at once rather than deadlock."""
        cache: DecisionCache[str] = DecisionCache(wait_timeout=JOIN_TIMEOUT)

        def outer() -> Computed[str]:
            return Computed("outer:" + cache.get_or_compute("k", Counting("inner"), now=0.0))

        done: list[str] = []
        threads = run_threads(lambda: done.append(cache.get_or_compute("k", outer, 0.0)), 1)
        threads[0].join(1.0)
        assert done == ["outer:inner"]

    def test_many_threads_many_keys_stay_consistent(self) -> None:
        """Threads hammering overlapping keys through a small cache see only their key's
        value and never push it past its bound."""
        cache: DecisionCache[int] = DecisionCache(max_entries=20, ttl=0.5)
        wrong: list[tuple[int, int]] = []

        def hammer() -> None:
            for step in range(2000):
                key = step % 50
                found = cache.get_or_compute(key, lambda k=key: Computed(k), now=step / 1000)
                if found != key:
                    wrong.append((key, found))

        join(run_threads(hammer, 8))
        assert wrong == []
        assert len(cache) <= 20
        assert cache.hits + cache.misses == 8 * 2000

    def test_flight_ends_after_the_leader(self) -> None:
        """Once a computation is done, a later miss of its key leads a new one."""
        cache: DecisionCache[str] = DecisionCache(ttl=1)
        compute = Counting()
        cache.get_or_compute("k", compute, now=0.0)
        cache.get_or_compute("k", compute, now=5.0)
        assert compute.calls == 2
        assert cache.coalesced == 0
