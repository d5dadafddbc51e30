"""The whole rate limit service over real Redis: replicas share counts, outages are UNAVAILABLE."""

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from services import envoy_api as api
from services.grpc_server import ServerOptions
from services.ratelimit.redis_settings import RedisSettings
from services.serve import Application
from services.settings import Settings
from tests.ratelimit_calls import POLICY, make_request, write_policy
from tests.redis_servers import RedisCluster, RedisServer

OK = api.RateLimitResponse.OK
OVER = api.RateLimitResponse.OVER_LIMIT


@pytest.fixture(name="start_replica")
async def fixture_start_replica(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    write_policy(tmp_path, POLICY)
    running: list[tuple[Application, grpc.aio.Channel]] = []

    async def start(redis_url: str, redis_timeout: float = 0.5) -> Any:
        redis = RedisSettings(redis_url, 4, 1.0, redis_timeout, 0)
        settings = Settings(
            services=frozenset({"ratelimit"}),
            policies=tmp_path,
            ratelimit_port=0,
            http_port=0,
            redis=redis,
            reload_interval=0.05,
            server=ServerOptions(host="127.0.0.1"),
        )
        app = Application(settings)
        await app.start()
        assert app.ratelimit is not None
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.ratelimit.port}")
        running.append((app, channel))
        for _ in range(100):
            if app.state.current is not None:
                break
            await asyncio.sleep(0.02)
        return api.RateLimitServiceStub(channel)

    yield start
    for app, channel in running:
        await channel.close()
        await app.stop()


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
