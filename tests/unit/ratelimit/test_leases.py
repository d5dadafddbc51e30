"""The lease pool: sizing, windows, all-or-nothing hits, closing mode, returns, threads."""

import threading

from services.ratelimit.lease_authority import Grant
from services.ratelimit.lease_policy import LeasePolicy
from services.ratelimit.leases import LeasePool
from services.ratelimit.store import Hit

NOW = 1_700_000_000.0
END = NOW + 60  # the window of every lease here ends in a minute
LIMIT = 1000


def pool(**policy: float) -> LeasePool:
    return LeasePool(LeasePolicy(**policy))  # type: ignore[arg-type]


def granted(
    leases: LeasePool,
    key: str,
    units: int,
    *,
    count: int | None = None,
    ask: int | None = None,
    limit: int = LIMIT,
    end: float = END,
    now: float = NOW,
    spend: int = 0,
) -> int:
    """Hand ``leases`` a grant of ``units`` (the counter then reads ``count``)."""
    grant = Grant(units, units if count is None else count, 60)
    return leases.add_grant(key, grant, units if ask is None else ask, limit, end, now, spend=spend)


class TestAsk:
    def test_a_cold_key_asks_for_min_lease_capped_by_the_limit(self) -> None:
        """With no history, the first ask is min_lease, or limit/(k*P) if that is less."""
        assert pool(min_lease=10).ask("k", 1, LIMIT, NOW) == 10
        assert pool(min_lease=10, processes=8, safety=2).ask("k", 1, 100, NOW) == 6

    def test_the_ask_follows_recent_demand(self) -> None:
        """After 200 units taken in the last second, the next lease is about 200."""
        leases = pool(min_lease=10, max_lease=1000, refill_below=0)
        granted(leases, "k", 250)
        for _ in range(200):
            assert leases.take("k", 1, LIMIT, END, NOW + 0.5) is not None
        assert leases.ask("k", 100, LIMIT, NOW + 0.5) == 150  # a 200-unit lease, 50 held

    def test_demand_older_than_the_rate_window_is_forgotten(self) -> None:
        """Takes more than rate_window seconds ago no longer raise the size."""
        leases = pool(min_lease=10, rate_window=1.0, refill_below=0)
        granted(leases, "k", 250)
        for _ in range(200):
            leases.take("k", 1, LIMIT, END, NOW)
        assert leases.ask("k", 100, LIMIT, NOW + 5) == 50  # max(100, min_lease 10) - 50 held

    def test_the_ask_shrinks_to_one_unit_near_the_limit(self) -> None:
        """With the counter 5 short of its limit and P*k = 16, a miss asks for 1 unit."""
        leases = pool(processes=8, safety=2)
        granted(leases, "k", 0, count=995, ask=0)
        assert leases.ask("k", 1, LIMIT, NOW) == 1

    def test_a_multi_unit_hit_asks_at_least_its_shortfall(self) -> None:
        """A hit of 7 units with 2 held asks for at least 5, even when leases are size 1."""
        leases = pool(processes=8, safety=2)
        granted(leases, "k", 2, count=995)
        assert leases.ask("k", 7, LIMIT, NOW) == 5

    def test_a_check_only_miss_asks_for_nothing(self) -> None:
        """addend 0 needs no unit: the authority is only asked to read the counter."""
        assert pool().ask("k", 0, LIMIT, NOW) == 0


class TestTake:
    def test_no_lease_means_ask_the_authority(self) -> None:
        """A key this process holds nothing of is not answered locally."""
        assert pool().take("k", 1, LIMIT, END, NOW) is None

    def test_a_granted_lease_answers_hits_until_spent(self) -> None:
        """Three units answer three hits; the fourth goes to the authority."""
        leases = pool(refill_below=0)
        granted(leases, "k", 3)
        counts = [leases.take("k", 1, LIMIT, END, NOW) for _ in range(4)]
        assert [t.count if t else None for t in counts] == [1, 2, 3, None]

    def test_value_after_a_hit_is_the_reported_count_less_units_held(self) -> None:
        """The counter read 50 at our grant of 10 (others hold 40): our first hit reads 41."""
        leases = pool(refill_below=0)
        granted(leases, "k", 10, count=50)
        taken = leases.take("k", 1, LIMIT, END, NOW)
        assert taken is not None and taken.count == 41

    def test_an_admitted_hit_never_reads_over_the_limit(self) -> None:
        """Even when exact hits pushed the counter past the limit, a hit paid for reads <= limit."""
        leases = pool(refill_below=0)
        granted(leases, "k", 2, count=100, limit=100)
        granted(leases, "k", 0, count=130, ask=1, limit=100)  # exact hits went on counting
        taken = leases.take("k", 1, 100, END, NOW)
        assert taken is not None and taken.count == 100

    def test_a_multi_unit_hit_is_all_or_nothing(self) -> None:
        """A hit of 3 with 2 units held is not answered and leaves the 2 units alone."""
        leases = pool(refill_below=0)
        granted(leases, "k", 2)
        assert leases.take("k", 3, LIMIT, END, NOW) is None
        assert leases.held("k") == 2
        taken = leases.take("k", 2, LIMIT, END, NOW)
        assert taken is not None and taken.count == 2 and leases.held("k") == 0

    def test_a_hit_larger_than_the_limit_is_refused_without_asking(self) -> None:
        """addend > limit can never be granted: answered over the limit, locally."""
        taken = pool().take("k", 6, 5, END, NOW)
        assert taken is not None and taken.count > 5

    def test_a_limit_of_zero_blocks_without_asking(self) -> None:
        """requests_per_unit 0 blocks everything, and no authority call is needed for it."""
        taken = pool().take("k", 1, 0, END, NOW)
        assert taken is not None and taken.count == 1

    def test_check_only_reads_without_spending(self) -> None:
        """addend 0 is answered from a lease with the current value and takes no unit."""
        leases = pool(refill_below=0)
        granted(leases, "k", 5, count=20)
        taken = leases.take("k", 0, LIMIT, END, NOW)
        assert taken is not None and taken.count == 15 and leases.held("k") == 5


class TestTakeHits:
    def test_every_hit_answered_in_order(self) -> None:
        """Hits on two keys (one twice) are answered together, each with its own value."""
        leases = pool(refill_below=0)
        granted(leases, "a", 5)
        granted(leases, "b", 5)
        hits = [Hit("a", 2, 60, LIMIT), Hit("b", 1, 60, LIMIT), Hit("a", 3, 60, LIMIT)]
        answers = leases.take_hits(hits, NOW)
        assert answers is not None and [t.count for t in answers] == [2, 1, 5]

    def test_one_short_hit_means_none_answered_and_nothing_changed(self) -> None:
        """If any hit lacks units, no unit is taken for the others either."""
        leases = pool(refill_below=0)
        granted(leases, "a", 5)
        granted(leases, "b", 1)
        hits = [Hit("a", 1, 60, LIMIT), Hit("b", 2, 60, LIMIT)]
        assert leases.take_hits(hits, NOW) is None
        assert (leases.held("a"), leases.held("b")) == (5, 1)

    def test_hits_on_one_key_are_summed_before_deciding(self) -> None:
        """Two hits of 2 on a key holding 3 are not answered locally."""
        leases = pool(refill_below=0)
        granted(leases, "a", 3)
        assert leases.take_hits([Hit("a", 2, 60, LIMIT), Hit("a", 2, 60, LIMIT)], NOW) is None
        assert leases.held("a") == 3


class TestWindows:
    def test_a_lease_dies_with_its_window(self) -> None:
        """At the window's end the units left are dropped, not spent in the next window."""
        leases = pool(refill_below=0)
        granted(leases, "k", 5, end=NOW + 10)
        assert leases.take("k", 1, LIMIT, NOW + 10, NOW + 9.9) is not None
        assert leases.take("k", 1, LIMIT, NOW + 10, NOW + 10) is None
        assert leases.held("k") == 0

    def test_a_grant_that_arrives_after_its_window_answers_its_hit_and_keeps_nothing(
        self,
    ) -> None:
        """The hit belongs to the ended window; the rest of the grant is not kept."""
        leases = pool()
        count = granted(leases, "k", 5, end=NOW + 10, now=NOW + 10.2, spend=1)
        assert count == 1
        assert leases.held("k") == 0

    def test_ended_windows_are_swept_without_being_returned(self) -> None:
        """take_idle drops leases of ended windows and returns nothing for them."""
        leases = pool()
        granted(leases, "old", 5, end=NOW + 10)
        assert leases.take_idle(NOW + 11) == []
        assert leases.outstanding() == 0


class TestRefill:
    def test_a_take_below_half_the_wanted_size_asks_for_a_top_up(self) -> None:
        """Size 10, refill below 5: the take that leaves 4 asks for 6 more, once."""
        leases = pool(min_lease=10, refill_below=0.5)
        granted(leases, "k", 10)
        refills = [leases.take("k", 1, LIMIT, END, NOW) for _ in range(7)]
        assert [t.refill for t in refills if t is not None] == [0, 0, 0, 0, 0, 6, 0]

    def test_a_refill_answered_or_failed_lets_another_start(self) -> None:
        """After refill_failed, the next low take asks again; after the grant it is full."""
        leases = pool(min_lease=10, refill_below=0.5)
        granted(leases, "k", 5)
        first = leases.take("k", 1, LIMIT, END, NOW)
        assert first is not None and first.refill == 6
        leases.refill_failed("k")
        again = leases.take("k", 1, LIMIT, END, NOW)
        assert again is not None and again.refill == 7
        grant = Grant(7, 12, 60)
        leases.add_grant("k", grant, 7, LIMIT, END, NOW, refill=True)
        assert leases.held("k") == 10

    def test_a_refill_grant_spends_nothing(self) -> None:
        """A background refill only adds units."""
        leases = pool(refill_below=0)
        granted(leases, "k", 3)
        leases.add_grant("k", Grant(4, 7, 60), 4, LIMIT, END, NOW, refill=True)
        assert leases.held("k") == 7


class TestClosing:
    def test_a_partial_grant_marks_the_key_closing(self) -> None:
        """Asked 10, granted 3: the counter is nearly spent."""
        leases = pool()
        granted(leases, "k", 3, count=LIMIT, ask=10)
        assert leases.closing("k")

    def test_a_grant_that_fills_the_counter_marks_it_closing(self) -> None:
        """A full grant that leaves nothing at the authority closes the key too."""
        leases = pool()
        granted(leases, "k", 10, count=LIMIT, ask=10)
        assert leases.closing("k")

    def test_closing_misses_ask_exactly_their_shortfall(self) -> None:
        """Near the limit a miss asks for addend - held, whatever demand was."""
        leases = pool(min_lease=50, refill_below=0)
        granted(leases, "k", 3, count=LIMIT - 100, ask=10)
        assert leases.ask("k", 5, LIMIT, NOW) == 2

    def test_closing_keys_are_not_refilled_in_the_background(self) -> None:
        """No prefetch near the limit: a refill could only strand units."""
        leases = pool(min_lease=10, refill_below=0.5)
        granted(leases, "k", 3, count=LIMIT, ask=10)
        taken = leases.take("k", 1, LIMIT, END, NOW)
        assert taken is not None and taken.refill == 0

    def test_room_coming_back_opens_the_key_again(self) -> None:
        """When returned units leave at least 2*k*P free, leases grow again."""
        leases = pool(processes=2, safety=2)
        granted(leases, "k", 3, count=LIMIT, ask=10)
        granted(leases, "k", 1, count=LIMIT - 100, ask=1)
        assert not leases.closing("k")


class TestSpent:
    def test_a_spent_counter_refuses_misses_here_until_the_recheck(self) -> None:
        """After a grant that leaves the counter at its limit, a miss is refused without
        asking for ``spent_recheck`` seconds; then the authority is asked again."""
        leases = pool(spent_recheck=1.0)
        assert granted(leases, "k", 0, ask=1, count=LIMIT, spend=1) > LIMIT
        refused = leases.take("k", 1, LIMIT, END, NOW + 0.5)
        assert refused is not None and refused.count == LIMIT + 1
        assert leases.take("k", 1, LIMIT, END, NOW + 1.0) is None

    def test_units_held_are_still_spent_while_the_counter_is_spent(self) -> None:
        """The last units granted answer their hits; only what they cannot cover is refused."""
        leases = pool(spent_recheck=1.0)
        granted(leases, "k", 2, count=LIMIT)
        assert [leases.take("k", 1, LIMIT, END, NOW).count for _ in range(2)] == [LIMIT - 1, LIMIT]  # type: ignore[union-attr]
        refused = leases.take("k", 1, LIMIT, END, NOW)
        assert refused is not None and refused.count == LIMIT + 1

    def test_a_grant_with_room_ends_it(self) -> None:
        """Returned units (a later grant with room) lift the local refusals at once."""
        leases = pool(spent_recheck=10.0)
        granted(leases, "k", 0, ask=1, count=LIMIT)
        granted(leases, "k", 1, count=LIMIT - 5)
        assert leases.take("k", 1, LIMIT, END, NOW) is not None
        assert leases.take("k", 1, LIMIT, END, NOW) is None  # no units, not spent: ask

    def test_take_hits_refuses_spent_counters_and_answers_the_rest(self) -> None:
        """All or nothing still: a spent key's hit is an answer (over), not a miss."""
        leases = pool(spent_recheck=1.0, refill_below=0)
        granted(leases, "spent", 0, ask=1, count=LIMIT)
        granted(leases, "open", 5)
        hits = [Hit("open", 1, 60, LIMIT), Hit("spent", 1, 60, LIMIT)]
        answers = leases.take_hits(hits, NOW)
        assert answers is not None
        assert [a.count > LIMIT for a in answers] == [False, True]
        assert leases.held("open") == 4

    def test_a_check_only_hit_is_never_refused(self) -> None:
        """Addend 0 reads the counter; it is not a hit to refuse."""
        leases = pool(spent_recheck=1.0)
        granted(leases, "k", 0, ask=1, count=LIMIT)
        taken = leases.take("k", 0, LIMIT, END, NOW)
        assert taken is not None and taken.count <= LIMIT


class TestReturns:
    def test_idle_leases_are_handed_back_and_busy_ones_kept(self) -> None:
        """A lease untouched for idle_release seconds is removed with its units listed."""
        leases = pool(idle_release=2.0, refill_below=0)
        granted(leases, "idle", 5)
        granted(leases, "busy", 5)
        leases.take("busy", 1, LIMIT, END, NOW + 1.5)
        assert leases.take_idle(NOW + 2.5) == [("idle", 5)]
        assert leases.held("idle") == 0 and leases.held("busy") == 4

    def test_a_lease_being_refilled_is_not_handed_back(self) -> None:
        """Returning units while a refill is in flight would only make it ask again."""
        leases = pool(idle_release=2.0, min_lease=10, refill_below=0.5)
        granted(leases, "k", 5)
        taken = leases.take("k", 1, LIMIT, END, NOW)
        assert taken is not None and taken.refill
        assert leases.take_idle(NOW + 10) == []

    def test_take_everything_empties_the_pool(self) -> None:
        """On shutdown every live lease's units are listed for return."""
        leases = pool(refill_below=0)
        granted(leases, "a", 5)
        granted(leases, "b", 2, end=NOW + 1)
        assert leases.take_everything(NOW + 2) == [("a", 5)]
        assert leases.outstanding() == 0


class TestThreads:
    def test_concurrent_takes_spend_each_unit_exactly_once(self) -> None:
        """8 threads racing for 5000 units: 5000 successes, distinct values, none negative."""
        leases = pool(refill_below=0)
        granted(leases, "k", 5000, count=5000, limit=LIMIT * 10)
        counts: list[list[int]] = [[] for _ in range(8)]
        start = threading.Barrier(8)

        def worker(mine: list[int]) -> None:
            start.wait()
            for _ in range(1000):
                taken = leases.take("k", 1, LIMIT * 10, END, NOW)
                if taken is not None:
                    mine.append(taken.count)

        threads = [threading.Thread(target=worker, args=(c,)) for c in counts]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seen = sorted(n for mine in counts for n in mine)
        assert seen == list(range(1, 5001))
        assert leases.held("k") == 0

    def test_concurrent_multi_hit_takes_stay_all_or_nothing(self) -> None:
        """Threads taking two keys at once never leave one key spent without the other."""
        leases = pool(refill_below=0)
        granted(leases, "a", 3000, limit=LIMIT * 10)
        granted(leases, "b", 1000, limit=LIMIT * 10)
        hits = [Hit("a", 1, 60, LIMIT * 10), Hit("b", 1, 60, LIMIT * 10)]
        answered = [0] * 6

        def worker(index: int) -> None:
            for _ in range(500):
                if leases.take_hits(hits, NOW) is not None:
                    answered[index] += 1

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sum(answered) == 1000
        assert (leases.held("a"), leases.held("b")) == (2000, 0)
