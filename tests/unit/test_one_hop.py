"""``InCheckQuota``: the Check's counter is the rate limit service, answering as the filter."""

from collections.abc import Sequence
from pathlib import Path

import pytest

from services.authz.quota import QuotaAnswer, QuotaUnavailable
from services.catalog.loader import LoadOptions, load_directory
from services.clock import ManualClock
from services.metrics import Metrics
from services.one_hop import InCheckQuota
from services.ratelimit.memory_store import InMemoryCounterStore
from services.ratelimit.service import RateLimitOptions, RateLimitService
from services.ratelimit.store import CounterStoreError, Hit

ROOT = Path(__file__).parents[2]
ALICE = (("policy", "istio-system/product-per-user"), ("match", "yes"), ("user", "alice"))


class DownStore(InMemoryCounterStore):
    """A store whose every increment fails, as Redis does when it is unreachable."""

    async def increment(self, hits: Sequence[Hit]) -> list[int]:
        raise CounterStoreError("connection refused")


DEFAULTS = RateLimitOptions()


def counter(options: RateLimitOptions = DEFAULTS, down: bool = False) -> InCheckQuota:
    config = load_directory(ROOT / "policies", LoadOptions()).ratelimit
    clock = ManualClock(1_800_000_030.0)  # 30 s into a minute window
    store = DownStore(clock) if down else InMemoryCounterStore(clock)
    return InCheckQuota(RateLimitService(lambda: config, store, clock, Metrics(), options))


async def test_counts_the_demo_quota_and_answers_with_the_filters_headers() -> None:
    """100 within quota with x-ratelimit-*, the 101st over it with x-envoy-ratelimited."""
    count = counter()
    answers = [await count("public", [ALICE]) for _ in range(101)]
    assert answers[0] == QuotaAnswer(
        False,
        (
            ("x-ratelimit-limit", "100, 100;w=60"),
            ("x-ratelimit-remaining", "99"),
            ("x-ratelimit-reset", "30"),
        ),
    )
    assert [a.over for a in answers] == [False] * 100 + [True]
    assert ("x-envoy-ratelimited", "true") in answers[-1].headers


async def test_the_services_ratelimit_headers_come_along_when_enabled() -> None:
    """--response-headers: the service's RateLimit-* headers go first, as Envoy adds them."""
    answer = await counter(RateLimitOptions(response_headers=True))("public", [ALICE])
    names = [name for name, _ in answer.headers]
    assert names == [
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    ]


async def test_a_store_failure_is_quota_unavailable() -> None:
    """The store failing becomes QuotaUnavailable, for the policies' onStoreFailure."""
    with pytest.raises(QuotaUnavailable, match="connection refused"):
        await counter(down=True)("public", [ALICE])
