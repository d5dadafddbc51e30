"""ShouldRateLimit decisions, with the in-memory store and a manual clock.

The upstream README examples (tests/fixtures/ratelimit/upstream, copied verbatim)
must answer as envoyproxy/ratelimit documents them.
"""

from collections.abc import Sequence

import pytest

from services.catalog.loader import LoadOptions, load_directory
from services.clock import ManualClock
from services.metrics import Metrics
from services.ratelimit.local_cache import OverLimitCache
from services.ratelimit.memory_store import InMemoryCounterStore
from services.ratelimit.model import (
    UINT32_MAX,
    Code,
    DescriptorRequest,
    LimitOverride,
    LimitRequest,
    LimitResult,
    RateLimitConfig,
    Unit,
)
from services.ratelimit.service import (
    InvalidRequestError,
    RateLimitOptions,
    RateLimitService,
    UnavailableError,
)
from services.ratelimit.store import CounterStoreError, Hit
from tests.unit.ratelimit_helpers import FIXTURES, compiled, request

UPSTREAM = load_directory(FIXTURES / "upstream", LoadOptions()).ratelimit
NOW = 1_699_999_200  # a multiple of 60 and of 3600: windows start here


class FailingStore:
    """A counter store whose backend is down."""

    name = "broken"

    async def increment(self, hits: Sequence[Hit]) -> list[int]:
        raise CounterStoreError("connection refused")

    async def ping(self) -> None:
        raise CounterStoreError("connection refused")

    async def close(self) -> None:
        return None


class CountingStore(InMemoryCounterStore):
    """The in-memory store, counting how often it is asked."""

    round_trips = 0

    async def increment(self, hits: Sequence[Hit]) -> list[int]:
        self.round_trips += 1
        return await super().increment(hits)


def make_service(
    config: RateLimitConfig | None,
    *,
    clock: ManualClock | None = None,
    options: RateLimitOptions | None = None,
    cache_size: int = 0,
    store: object = None,
) -> RateLimitService:
    clock = clock or ManualClock(NOW)
    return RateLimitService(
        lambda: config,
        store if store is not None else InMemoryCounterStore(clock),  # type: ignore[arg-type]
        clock,
        Metrics(),
        options or RateLimitOptions(),
        OverLimitCache(clock, cache_size) if cache_size else None,
    )


async def hit_times(service: RateLimitService, req: LimitRequest, times: int) -> list[LimitResult]:
    return [await service.should_rate_limit(req) for _ in range(times)]


class TestUpstreamExamples:
    async def test_example1_exact_values(self) -> None:
        """Example 1: database=users gets 500/s; an unconfigured value gets no limit."""
        service = make_service(UPSTREAM)
        result = await service.should_rate_limit(request("mongo_cps", [("database", "users")]))
        status = result.statuses[0]
        assert status.code is Code.OK and status.remaining == 499
        assert status.limit is not None and status.limit.unit is Unit.SECOND
        other = await service.should_rate_limit(request("mongo_cps", [("database", "other")]))
        assert other.statuses[0].limit is None

    async def test_example2_nested_and_aggregate(self) -> None:
        """Example 2: marketing messages 5/day per number, 100/day per number overall, OR-ed."""
        service = make_service(UPSTREAM)
        req = request(
            "messaging",
            [("message_type", "marketing"), ("to_number", "2061111111")],
            [("to_number", "2061111111")],
        )
        results = await hit_times(service, req, 6)
        assert [r.statuses[0].remaining for r in results[:5]] == [4, 3, 2, 1, 0]
        assert results[5].overall is Code.OVER_LIMIT
        assert results[5].statuses[0].code is Code.OVER_LIMIT
        assert results[5].statuses[1].code is Code.OK
        assert results[5].statuses[1].remaining == 94

    async def test_example3_most_specific_match(self) -> None:
        """Example 3: any IP gets 10/s, while 50.0.0.5 has 0 and is always over."""
        service = make_service(UPSTREAM)
        ok = await service.should_rate_limit(
            request("edge_proxy_per_ip", [("remote_address", "50.0.0.1")])
        )
        assert ok.overall is Code.OK and ok.statuses[0].remaining == 9
        blocked = await service.should_rate_limit(
            request("edge_proxy_per_ip", [("remote_address", "50.0.0.5")])
        )
        assert blocked.overall is Code.OVER_LIMIT

    async def test_example4_depth_must_match(self) -> None:
        """Example 4: a two-entry descriptor matches the nested rule, a one-entry one does not."""
        service = make_service(UPSTREAM)
        deep = await service.should_rate_limit(
            request("example4", [("key", "value"), ("subkey", "subvalue")])
        )
        assert deep.statuses[0].limit is not None
        assert deep.statuses[0].limit.requests_per_unit == 300
        shallow = await service.should_rate_limit(request("example4", [("key", "value")]))
        assert shallow.statuses[0].limit is None

    async def test_example5_unlimited(self) -> None:
        """Example 5: an unlimited descriptor answers OK with remaining 2^32-1."""
        service = make_service(UPSTREAM)
        result = await service.should_rate_limit(request("internal", [("ldap", "x")]))
        assert result.statuses[0].code is Code.OK
        assert result.statuses[0].remaining == UINT32_MAX
        assert result.statuses[0].limit is None

    async def test_example6_shadow_mode(self) -> None:
        """Example 6: user-a is over its 10/s but shadow mode answers OK; user-b is limited."""
        service = make_service(UPSTREAM)
        a = request("example6", [("service", "auth-service"), ("user", "user-a")])
        results = await hit_times(service, a, 11)
        last = results[-1]
        assert last.overall is Code.OK
        assert last.statuses[0].code is Code.OK and last.statuses[0].remaining == 0
        b = request("example6", [("service", "auth-service"), ("user", "user-b")])
        assert (await hit_times(service, b, 21))[-1].overall is Code.OVER_LIMIT

    async def test_example7_replaces(self) -> None:
        """Example 7: with both descriptors, the 10/s limit replaces specific_limit's 5/s."""
        service = make_service(UPSTREAM)
        both = request(
            "example7",
            [("key_1", "value_1"), ("user", "bkthomps")],
            [("key_2", "value_2"), ("user", "bkthomps")],
        )
        result = await service.should_rate_limit(both)
        assert result.statuses[0].limit is None  # replaced: not counted, bare OK
        assert result.statuses[1].limit is not None
        assert result.statuses[1].limit.requests_per_unit == 10
        alone = await service.should_rate_limit(
            request("example7", [("key_1", "value_1"), ("user", "bkthomps")])
        )
        assert alone.statuses[0].remaining == 4  # the replaced call did not count


CONFIG = compiled(
    """
    domain: d
    descriptors:
      - key: user
        rate_limit: {unit: minute, requests_per_unit: 3}
      - key: quota
        quota_mode: true
        rate_limit: {unit: minute, requests_per_unit: 1}
      - key: quota2
        quota_mode: true
        rate_limit: {unit: minute, requests_per_unit: 5}
      - key: closed
        rate_limit: {unit: minute, requests_per_unit: 0}
      - key: meta
        metadata: {team: payments, tier: 2}
        rate_limit: {unit: minute, requests_per_unit: 10}
    """
)


class TestCounting:
    async def test_over_limit_after_the_limit(self) -> None:
        """The 4th hit on a 3/minute limit is over, with 0 remaining and the reset time."""
        clock = ManualClock(NOW + 15)
        service = make_service(CONFIG, clock=clock)
        results = await hit_times(service, request("d", [("user", "u")]), 4)
        assert [r.overall for r in results] == [Code.OK] * 3 + [Code.OVER_LIMIT]
        assert [r.statuses[0].remaining for r in results] == [2, 1, 0, 0]
        assert results[-1].statuses[0].reset_seconds == 45

    async def test_new_window_starts_fresh(self) -> None:
        """When the minute ends the counter starts again (windows aligned to the epoch)."""
        clock = ManualClock(NOW + 59)
        service = make_service(CONFIG, clock=clock)
        await hit_times(service, request("d", [("user", "u")]), 4)
        clock.advance(1)
        result = await service.should_rate_limit(request("d", [("user", "u")]))
        assert result.overall is Code.OK and result.statuses[0].remaining == 2

    async def test_zero_limit_blocks(self) -> None:
        """requests_per_unit 0 blocks the first request."""
        service = make_service(CONFIG)
        result = await service.should_rate_limit(request("d", [("closed", "x")]))
        assert result.overall is Code.OVER_LIMIT

    async def test_request_hits_addend(self) -> None:
        """The request's hits_addend counts several hits at once."""
        service = make_service(CONFIG)
        result = await service.should_rate_limit(request("d", [("user", "u")], hits_addend=3))
        assert result.statuses[0].remaining == 0
        assert result.overall is Code.OK

    async def test_descriptor_addend_wins_and_zero_only_checks(self) -> None:
        """A descriptor's own hits_addend wins over the request's; 0 checks without counting."""
        service = make_service(CONFIG)
        check = LimitRequest("d", (DescriptorRequest((("user", "u"),), hits_addend=0),), 5)
        first = await service.should_rate_limit(check)
        assert first.statuses[0].remaining == 3
        counted = LimitRequest("d", (DescriptorRequest((("user", "u"),), hits_addend=2),), 5)
        assert (await service.should_rate_limit(counted)).statuses[0].remaining == 1

    async def test_request_override(self) -> None:
        """A per-request limit override is applied and reported as current_limit."""
        service = make_service(CONFIG)
        req = LimitRequest(
            "d", (DescriptorRequest((("any", "x"),), LimitOverride(1, Unit.HOUR)),), 0
        )
        results = await hit_times(service, req, 2)
        assert results[0].statuses[0].limit is not None
        assert results[0].statuses[0].limit.unit is Unit.HOUR
        assert results[1].overall is Code.OVER_LIMIT

    async def test_unknown_domain_is_ok(self) -> None:
        """An unknown domain answers OK with a bare status per descriptor."""
        service = make_service(CONFIG)
        result = await service.should_rate_limit(request("nope", [("user", "u")], [("a", "b")]))
        assert result.overall is Code.OK
        assert [s.limit for s in result.statuses] == [None, None]


class TestModes:
    async def test_quota_mode_alone_over_is_over(self) -> None:
        """With only quota descriptors, all of them over makes the request over."""
        service = make_service(CONFIG)
        results = await hit_times(service, request("d", [("quota", "q")]), 2)
        assert results[1].statuses[0].code is Code.OVER_LIMIT
        assert results[1].overall is Code.OVER_LIMIT

    async def test_quota_mode_some_quotas_left(self) -> None:
        """One quota over while another has room: the descriptor is over, the request is not."""
        service = make_service(CONFIG)
        req = request("d", [("quota", "q")], [("quota2", "q")])
        results = await hit_times(service, req, 2)
        assert results[1].statuses[0].code is Code.OVER_LIMIT
        assert results[1].overall is Code.OK

    async def test_quota_mode_does_not_hide_normal_limits(self) -> None:
        """A non-quota descriptor over its limit fails the request even with quotas left."""
        service = make_service(CONFIG)
        req = request("d", [("quota2", "q")], [("closed", "x")])
        assert (await service.should_rate_limit(req)).overall is Code.OVER_LIMIT

    async def test_global_shadow_mode(self) -> None:
        """Global shadow mode answers OK overall but keeps per-descriptor OVER_LIMIT."""
        service = make_service(CONFIG, options=RateLimitOptions(shadow_mode=True))
        result = await service.should_rate_limit(request("d", [("closed", "x")]))
        assert result.overall is Code.OK
        assert result.statuses[0].code is Code.OVER_LIMIT

    async def test_response_headers_describe_closest_limit(self) -> None:
        """RateLimit-* headers describe the descriptor with the fewest requests remaining."""
        service = make_service(
            CONFIG, clock=ManualClock(NOW + 20), options=RateLimitOptions(response_headers=True)
        )
        result = await service.should_rate_limit(request("d", [("meta", "m")], [("user", "u")]))
        assert result.headers == (
            ("RateLimit-Limit", "3"),
            ("RateLimit-Remaining", "2"),
            ("RateLimit-Reset", "40"),
        )

    async def test_headers_off_by_default(self) -> None:
        """No headers or metadata unless switched on."""
        service = make_service(CONFIG)
        result = await service.should_rate_limit(request("d", [("user", "u")]))
        assert result.headers == () and result.metadata is None

    async def test_dynamic_metadata(self) -> None:
        """Dynamic metadata names the domain, the descriptors and the rules' metadata."""
        service = make_service(CONFIG, options=RateLimitOptions(dynamic_metadata=True))
        result = await service.should_rate_limit(request("d", [("meta", "m")]))
        assert result.metadata == {
            "domain": "d",
            "descriptors": [{"entries": ["meta=m"]}],
            "metadata": {"team": "payments", "tier": 2},
        }

    async def test_local_cache_answers_without_the_store(self) -> None:
        """Once over, a key in the local cache answers OVER_LIMIT with no store round trip."""
        clock = ManualClock(NOW)
        store = CountingStore(clock)
        service = make_service(CONFIG, clock=clock, cache_size=100, store=store)
        await hit_times(service, request("d", [("user", "u")]), 4)
        assert store.round_trips == 4
        result = await service.should_rate_limit(request("d", [("user", "u")]))
        assert result.overall is Code.OVER_LIMIT
        assert store.round_trips == 4
        clock.advance(60)  # a new window: the store is asked again
        assert (await service.should_rate_limit(request("d", [("user", "u")]))).overall is Code.OK
        assert store.round_trips == 5


class TestErrors:
    async def test_empty_domain_is_invalid(self) -> None:
        """An empty domain is an invalid request, with upstream's message."""
        with pytest.raises(InvalidRequestError, match="rate limit domain must not be empty"):
            await make_service(CONFIG).should_rate_limit(request("", [("user", "u")]))

    async def test_no_descriptors_is_invalid(self) -> None:
        """An empty descriptor list is an invalid request."""
        with pytest.raises(InvalidRequestError, match="descriptor list must not be empty"):
            await make_service(CONFIG).should_rate_limit(request("d"))

    async def test_no_config_is_unavailable(self) -> None:
        """Before any config is loaded the service is unavailable."""
        with pytest.raises(UnavailableError, match="no rate limit configuration loaded"):
            await make_service(None).should_rate_limit(request("d", [("user", "u")]))

    async def test_store_failure_is_unavailable(self) -> None:
        """A failing counter store makes the call unavailable, naming the store."""
        service = make_service(CONFIG, store=FailingStore())
        with pytest.raises(UnavailableError, match="broken counter store failed"):
            await service.should_rate_limit(request("d", [("user", "u")]))

    async def test_unlimited_and_unmatched_do_not_need_the_store(self) -> None:
        """Requests without a counted limit are answered even when the store is down."""
        service = make_service(UPSTREAM, store=FailingStore())
        result = await service.should_rate_limit(request("internal", [("ldap", "x")]))
        assert result.overall is Code.OK
