"""Bounded window counters: freed when their window ends, and at most max_counters held,
evicting the ended ones first, then the live ones nearest the end of their window."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from services.clock import ManualClock
from services.metrics import Metrics
from services.ratelimit.memory_authority import MemoryLeaseAuthority
from services.ratelimit.memory_store import InMemoryCounterStore
from services.ratelimit.store import Hit
from services.ratelimit.window_counters import WindowCounters


class TestWindowCounters:
    def test_counts_and_ends(self) -> None:
        """A counter is made with its window's end, accumulates, and reads 0 once ended."""
        counters = WindowCounters(10)
        assert counters.add("a", 2, now=100, ttl=60) == 2
        assert counters.add("a", 3, now=130, ttl=60) == 5
        assert counters.ends("a", 130) == 160
        assert counters.value("a", 159) == 5
        assert counters.value("a", 160) == 0
        assert counters.add("a", 1, now=160, ttl=60) == 1  # a new window
        assert counters.ends("a", 160) == 220

    def test_ended_counters_make_room_before_any_live_one_goes(self) -> None:
        """At the cap, ended counters are freed first: nothing live is evicted."""
        counters = WindowCounters(2)
        counters.add("old", 1, now=0, ttl=10)
        counters.add("live", 1, now=5, ttl=100)
        counters.add("new", 1, now=20, ttl=100)
        assert (counters.evicted, len(counters)) == (0, 2)
        assert counters.value("live", 20) == 1

    def test_the_live_counter_nearest_its_end_is_evicted(self) -> None:
        """At the cap with all live, the one whose window ends first goes, and is counted."""
        counters = WindowCounters(3)
        counters.add("month", 7, now=0, ttl=2_592_000)
        counters.add("minute", 7, now=0, ttl=60)
        counters.add("hour", 7, now=0, ttl=3600)
        counters.add("flood", 1, now=1, ttl=2_592_000)
        assert counters.evicted == 1
        assert counters.value("minute", 1) == 0
        assert [counters.value(k, 1) for k in ("month", "hour", "flood")] == [7, 7, 1]

    def test_a_flood_of_new_keys_stays_within_the_cap(self) -> None:
        """100,000 distinct keys in a month-long window: never more than the cap held."""
        counters = WindowCounters(1000)
        for index in range(100_000):
            counters.add(f"path-{index}", 1, now=index // 1000, ttl=2_592_000)
            assert len(counters) <= 1000
        assert counters.evicted == 99_000

    @settings(max_examples=200, deadline=None, database=None)
    @given(
        st.integers(1, 8),
        st.lists(
            st.tuples(st.sampled_from("abcdefghij"), st.integers(0, 3), st.integers(1, 30)),
            max_size=60,
        ),
    )
    def test_against_a_plain_model(self, cap: int, hits: list[tuple[str, int, int]]) -> None:
        """Compared with an unbounded dict of (count, end): every answer is the model's
        unless the key was evicted meanwhile; the table never holds more than the cap."""
        counters = WindowCounters(cap)
        model: dict[str, tuple[int, int]] = {}
        now = 0
        for key, step, ttl in hits:
            now += step
            count, end = model.get(key, (0, 0))
            if end <= now:
                count, end = 0, now + ttl
            evicted_before = counters.evicted
            found = counters.add(key, 1, now, ttl)
            model[key] = (count + 1, end)
            assert len(counters) <= cap
            if found != count + 1:  # only a key evicted earlier may start again
                assert found == 1 and evicted_before > 0
                model[key] = (1, now + ttl)


class TestStoresAtTheCap:
    async def test_memory_store_evicts_and_reports_it(self) -> None:
        """The in-memory store holds at most max_counters and counts evictions in the
        mixerless_counters_evicted_total metric."""
        metrics = Metrics()
        store = InMemoryCounterStore(ManualClock(), max_counters=100)
        metrics.evictions.watch(lambda: store.evicted)
        for index in range(250):
            await store.increment([Hit(f"k{index}", 1, 2_592_000, 10)])
        assert store.evicted == 150
        text = metrics.exposition().decode()
        found = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
        assert found["mixerless_counters_evicted_total"] == 150

    def test_lease_authority_evicts_too(self) -> None:
        """The parent's lease authority keeps the same bound: grants beyond it evict."""
        authority = MemoryLeaseAuthority(ManualClock(), max_counters=10)
        for index in range(30):
            assert authority.grant(f"k{index}", 5, 100, 2_592_000).granted == 5
        assert authority.evicted == 20
        assert authority.count("k29") == 5

    def test_cap_must_be_positive(self) -> None:
        """A cap of 0 is refused when the table is made."""
        with pytest.raises(ValueError, match="at least 1"):
            WindowCounters(0)
