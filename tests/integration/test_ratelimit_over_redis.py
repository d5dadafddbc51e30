"""The whole rate limit service over real Redis: replicas share counts, outages are UNAVAILABLE."""

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from services import envoy_api as api
from tests.ratelimit_calls import make_request
from tests.redis_servers import RedisCluster, RedisServer

OK = api.RateLimitResponse.OK
OVER = api.RateLimitResponse.OVER_LIMIT


@pytest.mark.redis
async def test_two_replicas_share_counts(
    start_replica: Callable[..., Any], redis_server: RedisServer
) -> None:
    """Two mixerless processes on one Redis count one user's calls together."""
    first = await start_replica(redis_server.url)
    second = await start_replica(redis_server.url)
    request = make_request("edge", [("user", "shared")])
    codes = []
    for stub in (first, second, first, second):
        codes.append((await stub.ShouldRateLimit(request)).overall_code)
    assert codes == [OK, OK, OK, OVER]


@pytest.mark.redis
async def test_cluster_backed_service(
    start_replica: Callable[..., Any], redis_cluster: RedisCluster
) -> None:
    """The service counts multi-descriptor requests on a Redis Cluster."""
    stub = await start_replica(redis_cluster.url)
    request = make_request("edge", *[[("user", f"c{i}")] for i in range(6)])
    replies = [await stub.ShouldRateLimit(request) for _ in range(4)]
    assert [r.overall_code for r in replies] == [OK, OK, OK, OVER]
    assert [s.limit_remaining for s in replies[1].statuses] == [1] * 6


@pytest.mark.redis
async def test_outage_is_unavailable_then_recovers(
    start_replica: Callable[..., Any], private_redis: RedisServer
) -> None:
    """A paused Redis makes calls UNAVAILABLE within the timeout; service resumes after."""
    stub = await start_replica(private_redis.url, redis_timeout=0.3)
    request = make_request("edge", [("user", "outage")])
    assert (await stub.ShouldRateLimit(request)).overall_code == OK
    private_redis.pause()
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ShouldRateLimit(request, timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "redis" in (info.value.details() or "")
    finally:
        private_redis.resume()
    reply = await stub.ShouldRateLimit(request)
    assert reply.overall_code == OK
