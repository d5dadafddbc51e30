"""Real Redis for the integration tests: servers started on free ports, stores built on them.

The session fixtures (``redis_server``, ``redis_cluster``, ``redis_sentinel``) are
shared and flushed before every test that uses them; ``private_redis`` is a
server of the test's own, which it may pause or stop. A test using any of them
must carry ``@pytest.mark.redis`` (checked here).
"""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from random import Random
from typing import Any

import grpc
import pytest

from services import envoy_api as api
from services.grpc_server import ServerOptions
from services.ratelimit.redis_settings import RedisSettings
from services.ratelimit.redis_store import RedisCounterStore
from services.serve import Application
from services.settings import Settings
from tests.ratelimit_calls import POLICY, write_policy
from tests.redis_servers import (
    RedisCluster,
    RedisServer,
    SentinelServer,
    start_cluster,
    start_redis,
    start_sentinel,
)

SHARED = ("redis_server", "redis_cluster", "redis_sentinel")
StoreFactory = Callable[..., RedisCounterStore]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the whole session."""
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A 3-master Redis Cluster for the whole session."""
    cluster = start_cluster(nodes=3)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[SentinelServer]:
    """A Sentinel naming its own master ``mymaster``, for the whole session."""
    master = start_redis()
    try:
        sentinel = start_sentinel(master, name="mymaster")
    except BaseException:
        master.stop()
        raise
    yield sentinel
    sentinel.stop()
    master.stop()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server for this test alone (it may pause or stop it)."""
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _redis_hygiene(request: pytest.FixtureRequest) -> None:
    """Flush the shared servers a test uses, and insist on the ``redis`` marker."""
    used = [name for name in (*SHARED, "private_redis") if name in request.fixturenames]
    if used and request.node.get_closest_marker("redis") is None:
        pytest.fail(f"{request.node.name} uses {', '.join(used)} but is not marked redis")
    for name in used:
        if name in SHARED:
            request.getfixturevalue(name).flush()


@pytest.fixture
async def make_store() -> AsyncIterator[StoreFactory]:
    """Build ``RedisCounterStore``s from a URL (closed after the test)."""
    stores: list[RedisCounterStore] = []

    def make(
        url: str,
        *,
        timeout: float = 0.5,
        pool_size: int = 8,
        jitter: int = 0,
        rng: Random | None = None,
    ) -> RedisCounterStore:
        settings = RedisSettings(
            url=url,
            pool_size=pool_size,
            connect_timeout=timeout,
            timeout=timeout,
            expiration_jitter=jitter,
        )
        store = RedisCounterStore.from_settings(settings, rng=rng)
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


ReplicaFactory = Callable[..., Awaitable[Any]]


@pytest.fixture
async def start_replica(tmp_path: Path) -> AsyncIterator[ReplicaFactory]:
    """Start rate-limit-only ``Application``s on one policy directory and a Redis URL;
    ``await start_replica(url, policy=..., redis_timeout=..., lease_processes=...)`` returns
    a stub to the replica's gRPC port once its policy set has loaded."""
    running: list[tuple[Application, grpc.aio.Channel]] = []

    async def start(
        redis_url: str,
        *,
        policy: str = POLICY,
        redis_timeout: float = 0.5,
        lease_processes: int = 1,
    ) -> Any:
        write_policy(tmp_path, policy)
        settings = Settings(
            services=frozenset({"ratelimit"}),
            policies=tmp_path,
            ratelimit_port=0,
            http_port=0,
            redis=RedisSettings(redis_url, 4, 1.0, redis_timeout, 0),
            lease_processes=lease_processes,
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
