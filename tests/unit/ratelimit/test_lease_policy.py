"""Lease sizes: demand over a horizon, bounded, shrinking to one unit near the limit."""

import pytest

from services.ratelimit.lease_policy import LeasePolicy


class TestLeaseSize:
    def test_far_from_the_limit_a_lease_covers_the_horizon(self) -> None:
        """Demand of 300 units/s over a 2 s horizon asks for 600."""
        policy = LeasePolicy(horizon=2.0, min_lease=10, max_lease=1000)
        assert policy.lease_size(rate=300, remaining=1_000_000) == 600

    def test_min_and_max_bound_the_size(self) -> None:
        """A trickle still gets min_lease; a flood no more than max_lease."""
        policy = LeasePolicy(min_lease=10, max_lease=50)
        assert policy.lease_size(rate=0.5, remaining=1_000_000) == 10
        assert policy.lease_size(rate=10_000, remaining=1_000_000) == 50

    def test_the_size_is_capped_by_remaining_over_k_times_p(self) -> None:
        """With 100 left, k=2 and P=8, no process asks for more than 6."""
        policy = LeasePolicy(processes=8, safety=2, min_lease=10)
        assert policy.lease_size(rate=1000, remaining=100) == 6

    @pytest.mark.parametrize("remaining", [15, 1, 0, -3])
    def test_near_the_limit_the_size_shrinks_to_one(self, remaining: int) -> None:
        """Below k*P units left, each lease is a single unit: every hit is exact."""
        policy = LeasePolicy(processes=8, safety=2)
        assert policy.lease_size(rate=1000, remaining=remaining) == 1

    def test_the_size_shrinks_monotonically_as_the_counter_fills(self) -> None:
        """Walking remaining from 1000 down to 0 never makes a lease grow."""
        policy = LeasePolicy(processes=4, safety=2, min_lease=10, max_lease=100)
        sizes = [policy.lease_size(rate=50, remaining=r) for r in range(1000, -1, -1)]
        assert sizes == sorted(sizes, reverse=True)
        assert sizes[0] == 50 and sizes[-1] == 1

    @pytest.mark.parametrize(
        "bad",
        [
            {"processes": 0},
            {"safety": 0},
            {"min_lease": 0},
            {"min_lease": 20, "max_lease": 10},
            {"horizon": 0},
            {"refill_below": 1.5},
        ],
    )
    def test_nonsense_policies_are_refused(self, bad: dict[str, float]) -> None:
        """A policy that could not bound anything raises ValueError when built."""
        with pytest.raises(ValueError, match="must"):
            LeasePolicy(**bad)  # type: ignore[arg-type]

    def test_short_windows_are_not_worth_leasing(self) -> None:
        """Per-second limits go to the exact store; minute windows and longer are leased."""
        policy = LeasePolicy()
        assert not policy.worth_leasing(1)
        assert policy.worth_leasing(60) and policy.worth_leasing(86_400)
