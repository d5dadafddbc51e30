"""``counting: leased`` through the whole rate limit service over real Redis: exact
admission, shared counters, and far fewer Redis commands than decisions."""

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from services import envoy_api as api
from tests.ratelimit_calls import make_request
from tests.redis_servers import RedisServer

OK = api.RateLimitResponse.OK

POLICY = """\
domain: edge
descriptors:
  - key: leased
    rate_limit: {unit: hour, requests_per_unit: 100, counting: leased}
  - key: exact
    rate_limit: {unit: hour, requests_per_unit: 100}
"""


def _evalsha_calls(server: RedisServer) -> int:
    stats = server.client().info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


@pytest.mark.redis
async def test_a_leased_limit_admits_exactly_its_limit_with_few_round_trips(
    start_replica: Callable[..., Any], redis_server: RedisServer
) -> None:
    """150 calls on a leased limit of 100: exactly 100 admitted, the first 100 with a few
    lease grants (each refused call asks Redis again, unless the over-limit cache is on)."""
    stub = await start_replica(redis_server.url, policy=POLICY)
    before = _evalsha_calls(redis_server)
    request = make_request("edge", [("leased", "u")])
    codes = [(await stub.ShouldRateLimit(request)).overall_code for _ in range(100)]
    grants = _evalsha_calls(redis_server) - before
    codes += [(await stub.ShouldRateLimit(request)).overall_code for _ in range(50)]
    assert codes == [OK] * 100 + [api.RateLimitResponse.OVER_LIMIT] * 50
    assert grants < 30  # exact counting needs 100; leases shrink to 1 unit near the limit


@pytest.mark.redis
async def test_an_exact_limit_still_costs_one_round_trip_per_call(
    start_replica: Callable[..., Any], redis_server: RedisServer
) -> None:
    """Limits without counting: leased keep envoyproxy/ratelimit's per-call counting."""
    stub = await start_replica(redis_server.url, policy=POLICY)
    request = make_request("edge", [("exact", "u")])
    await stub.ShouldRateLimit(request)  # the script is loaded (NOSCRIPT, then EVALSHA)
    before = _evalsha_calls(redis_server)
    codes = [(await stub.ShouldRateLimit(request)).overall_code for _ in range(20)]
    assert codes == [OK] * 20
    assert _evalsha_calls(redis_server) - before == 20


@pytest.mark.redis
async def test_two_replicas_leasing_one_limit_admit_it_once(
    start_replica: Callable[..., Any], redis_server: RedisServer
) -> None:
    """Replicas leasing from one Redis counter never admit more than its limit together."""
    stubs = [
        await start_replica(redis_server.url, policy=POLICY, lease_processes=2) for _ in range(2)
    ]
    request = make_request("edge", [("leased", "shared")])
    replies = await asyncio.gather(*(stubs[i % 2].ShouldRateLimit(request) for i in range(300)))
    admitted = sum(reply.overall_code == OK for reply in replies)
    assert 90 <= admitted <= 100  # never over; short only by units still leased


@pytest.mark.redis
async def test_a_call_on_leased_and_exact_limits_counts_each_once(
    start_replica: Callable[..., Any], redis_server: RedisServer
) -> None:
    """One call hitting both kinds of limit counts each exactly once."""
    stub = await start_replica(redis_server.url, policy=POLICY)
    request = make_request("edge", [("leased", "m")], [("exact", "m")])
    replies = [await stub.ShouldRateLimit(request) for _ in range(5)]
    assert [r.overall_code for r in replies] == [OK] * 5
    assert [s.limit_remaining for s in replies[-1].statuses] == [95, 95]
