"""Leased quota against real Redis: the capped-reservation script, shared counters, P processes."""

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from services.clock import ManualClock
from services.ratelimit.lease_authority import Grant
from services.ratelimit.lease_policy import LeasePolicy
from services.ratelimit.leased_counter import LeasedCounter
from services.ratelimit.leases import LeasePool
from services.ratelimit.redis_authority import RedisLeaseAuthority
from services.ratelimit.store import CounterStoreError, Hit
from services.ratelimit.windows import counter_key, seconds_until_reset, window_start
from tests.integration.conftest import StoreFactory
from tests.redis_servers import RedisCluster, RedisServer

pytestmark = pytest.mark.redis

NOW = 1_699_999_200.0  # a window start
AuthorityFactory = Callable[..., RedisLeaseAuthority]


@pytest.fixture
async def make_authority() -> AsyncIterator[AuthorityFactory]:
    """Build ``RedisLeaseAuthority``s on their own clients (closed after the test)."""
    authorities: list[RedisLeaseAuthority] = []

    def make(url: str, *, timeout: float = 2.0, jitter: int = 0) -> RedisLeaseAuthority:
        client = Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        authority = RedisLeaseAuthority(client, timeout=timeout, expiration_jitter=jitter)
        authorities.append(authority)
        return authority

    yield make
    for authority in authorities:
        await authority.close()


class TestGrantScript:
    async def test_grants_are_capped_at_the_limit(
        self, redis_server: RedisServer, make_authority: AuthorityFactory
    ) -> None:
        """Asking 7, 7, 7 of a limit of 10 grants 7, then the 3 left, then nothing."""
        authority = make_authority(redis_server.url)
        first = await authority.acquire("k", 7, 10, 60)
        second = await authority.acquire("k", 7, 10, 60)
        third = await authority.acquire("k", 7, 10, 60)
        assert [(g.granted, g.count) for g in (first, second, third)] == [(7, 7), (3, 10), (0, 10)]
        with redis_server.client() as client:
            assert client.get("k") == b"10"

    async def test_asking_for_nothing_reads_without_creating_the_counter(
        self, redis_server: RedisServer, make_authority: AuthorityFactory
    ) -> None:
        """ask 0 returns the count (0 for none) and leaves no key behind."""
        authority = make_authority(redis_server.url)
        assert await authority.acquire("k", 0, 10, 60) == Grant(0, 0, 0)
        with redis_server.client() as client:
            assert client.exists("k") == 0

    async def test_the_window_ttl_is_set_when_the_counter_starts(
        self, redis_server: RedisServer, make_authority: AuthorityFactory
    ) -> None:
        """The first grant sets the window's TTL; later grants do not push it forward."""
        authority = make_authority(redis_server.url)
        grant = await authority.acquire("k", 2, 10, 40)
        assert 38 <= grant.ttl <= 40
        await authority.acquire("k", 2, 10, 1000)
        with redis_server.client() as client:
            assert 38 <= client.ttl("k") <= 40

    async def test_jitter_is_added_to_the_ttl_like_the_exact_store(
        self, redis_server: RedisServer, make_authority: AuthorityFactory
    ) -> None:
        """With expiration jitter J a new counter lives between ttl and ttl + J seconds."""
        authority = make_authority(redis_server.url, jitter=100)
        ttls = [(await authority.acquire(f"k{i}", 1, 10, 60)).ttl for i in range(20)]
        assert all(58 <= ttl <= 160 for ttl in ttls)
        assert len(set(ttls)) > 5

    async def test_a_counter_pushed_past_its_limit_grants_nothing(
        self, redis_server: RedisServer, make_authority: AuthorityFactory
    ) -> None:
        """Exact hits go on counting past the limit; a lease then gets 0 and sees the count."""
        with redis_server.client() as client:
            client.set("k", 12, ex=60)
        grant = await make_authority(redis_server.url).acquire("k", 5, 10, 60)
        assert (grant.granted, grant.count) == (0, 12)

    async def test_the_script_is_loaded_again_after_script_flush(
        self, redis_server: RedisServer, make_authority: AuthorityFactory
    ) -> None:
        """A server that forgot the scripts (NOSCRIPT) still grants and releases, once each."""
        authority = make_authority(redis_server.url)
        assert (await authority.acquire("k", 3, 10, 60)).count == 3
        with redis_server.client() as client:
            client.script_flush()
        assert (await authority.acquire("k", 3, 10, 60)).count == 6
        with redis_server.client() as client:
            client.script_flush()
        assert await authority.release("k", 2) == 2
        with redis_server.client() as client:
            assert client.get("k") == b"4"


class TestRelease:
    async def test_unspent_units_go_back(
        self, redis_server: RedisServer, make_authority: AuthorityFactory
    ) -> None:
        """Released units leave the counter and can be granted again."""
        authority = make_authority(redis_server.url)
        await authority.acquire("k", 10, 10, 60)
        assert await authority.release("k", 4) == 4
        assert (await authority.acquire("k", 10, 10, 60)).granted == 4

    async def test_never_below_zero_and_never_on_an_ended_window(
        self, redis_server: RedisServer, make_authority: AuthorityFactory
    ) -> None:
        """A release larger than the counter stops at 0; a missing counter stays missing."""
        authority = make_authority(redis_server.url)
        await authority.acquire("k", 3, 10, 60)
        assert await authority.release("k", 5) == 3
        assert await authority.release("gone", 5) == 0
        with redis_server.client() as client:
            assert client.get("k") == b"0"
            assert client.exists("gone") == 0


class TestSharedWithTheExactStore:
    async def test_leased_and_exact_hits_add_up_on_one_counter(
        self,
        redis_server: RedisServer,
        make_authority: AuthorityFactory,
        make_store: StoreFactory,
    ) -> None:
        """The same key: exact INCRBYs and granted units are one count, in either order."""
        exact = make_store(redis_server.url)
        authority = make_authority(redis_server.url)
        key = counter_key("", "1:d|4:user=1:a", 60, window_start(int(NOW), 60))
        assert await exact.increment([Hit(key, 5, 60, 10)]) == [5]
        grant = await authority.acquire(key, 10, 10, 60)
        assert (grant.granted, grant.count) == (5, 10)
        assert await exact.increment([Hit(key, 1, 60, 10)]) == [11]  # over: the exact answer

    async def test_both_give_a_new_counter_the_same_ttl(
        self,
        redis_server: RedisServer,
        make_authority: AuthorityFactory,
        make_store: StoreFactory,
    ) -> None:
        """A counter started by a lease and one started by an exact hit expire alike."""
        await make_store(redis_server.url).increment([Hit("exact", 1, 45, 10)])
        await make_authority(redis_server.url).acquire("leased", 1, 10, 45)
        with redis_server.client() as client:
            assert abs(client.ttl("exact") - client.ttl("leased")) <= 1
            assert 43 <= client.ttl("leased") <= 45

    async def test_a_leased_counter_reads_exact_hits_in_its_values(
        self,
        redis_server: RedisServer,
        make_authority: AuthorityFactory,
        make_store: StoreFactory,
    ) -> None:
        """After 7 exact hits on a limit of 10, a LeasedCounter admits 3 and refuses the 4th."""
        await make_store(redis_server.url).increment([Hit("k", 7, 60, 10)])
        counter = LeasedCounter(
            LeasePool(LeasePolicy()), make_authority(redis_server.url), ManualClock(NOW)
        )
        counts = [(await counter.increment([Hit("k", 1, 60, 10)]))[0] for _ in range(4)]
        assert counts[:3] == [8, 9, 10] and counts[3] > 10


class TestManyProcesses:
    @pytest.mark.parametrize("processes", [2, 8])
    async def test_p_processes_admit_exactly_the_limit_per_window(
        self, redis_server: RedisServer, make_authority: AuthorityFactory, processes: int
    ) -> None:
        """P LeasedCounters, each on its own connection, hammer a limit of 100 for two
        windows: exactly 100 admitted in each, and the Redis counter reads 100."""
        clock = ManualClock(NOW)
        policy = LeasePolicy(processes=processes, safety=2)
        counters = [
            LeasedCounter(LeasePool(policy), make_authority(redis_server.url), clock)
            for _ in range(processes)
        ]
        for _ in range(2):
            now = int(clock.now())
            key = counter_key("", "1:d|4:user=1:a", 60, window_start(now, 60))
            hit = Hit(key, 1, seconds_until_reset(now, 60), 100)
            admitted = 0

            async def hammer(counter: LeasedCounter, hit: Hit = hit) -> None:
                nonlocal admitted
                while True:
                    (count,) = await counter.increment([hit])
                    if count <= hit.limit:
                        admitted += 1
                    elif counter.pool.held(hit.key) == 0:
                        return  # refused with nothing held: the counter is spent

            while True:  # until no refill landed after its process stopped
                await asyncio.gather(*(hammer(c) for c in counters for _ in range(4)))
                for counter in counters:
                    await counter.settle()
                if all(counter.pool.held(key) == 0 for counter in counters):
                    break
            assert admitted == 100
            with redis_server.client() as client:
                assert client.get(key) == b"100"
            clock.advance(60)


class TestFailures:
    async def test_a_stopped_server_is_a_counter_store_error(
        self, private_redis: RedisServer, make_authority: AuthorityFactory
    ) -> None:
        """acquire, release and ping raise CounterStoreError once the server is gone."""
        authority = make_authority(private_redis.url, timeout=0.5)
        await authority.acquire("k", 1, 10, 60)
        private_redis.stop()
        with pytest.raises(CounterStoreError, match="redis"):
            await authority.acquire("k", 1, 10, 60)
        with pytest.raises(CounterStoreError):
            await authority.release("k", 1)
        with pytest.raises(CounterStoreError):
            await authority.ping()

    async def test_a_hung_server_times_out_as_a_counter_store_error(
        self, private_redis: RedisServer, make_authority: AuthorityFactory
    ) -> None:
        """A paused server makes acquire fail with 'timed out' instead of hanging."""
        authority = make_authority(private_redis.url, timeout=0.3)
        await authority.acquire("k", 1, 10, 60)
        private_redis.pause()
        try:
            with pytest.raises(CounterStoreError, match="timed out"):
                await authority.acquire("k", 1, 10, 60)
        finally:
            private_redis.resume()


class TestCluster:
    async def test_grants_route_to_each_keys_node_and_survive_script_flush(
        self, redis_cluster: RedisCluster
    ) -> None:
        """On a 3-master cluster, keys on every node are granted, before and after NOSCRIPT."""
        keys = [f"lease:{i}" for i in range(12)]
        first = redis_cluster.nodes[0]
        client = AsyncRedisCluster(host="127.0.0.1", port=first.port, socket_timeout=2)
        authority = RedisLeaseAuthority(client, timeout=2.0)
        try:
            grants = [await authority.acquire(key, 4, 10, 60) for key in keys]
            assert all(g.granted == 4 for g in grants)
            for node in redis_cluster.nodes:
                with node.client() as sync:
                    sync.script_flush()
            grants = [await authority.acquire(key, 10, 10, 60) for key in keys]
            assert all((g.granted, g.count) == (6, 10) for g in grants)
        finally:
            await authority.close()
        with redis_cluster.client() as sync:
            nodes = {sync.get_node_from_key(key).name for key in keys}
        assert len(nodes) == len(redis_cluster.nodes)
