"""RedisCounterStore against a real redis-server: one server, Unix socket, auth, Sentinel."""

import asyncio
import time
from random import Random

import pytest

from services.ratelimit.redis_settings import RedisSettings
from services.ratelimit.redis_store import RedisCounterStore
from services.ratelimit.store import CounterStoreError, Hit
from tests.integration.conftest import StoreFactory
from tests.redis_servers import RedisServer, SentinelServer, start_redis


def hit(key: str, addend: int = 1, ttl: int = 60) -> Hit:
    return Hit(key=key, addend=addend, ttl=ttl, limit=100)


def script_calls(server: RedisServer) -> int:
    """How many times the server ran a script (EVALSHA or EVAL) since stats were reset."""
    with server.client() as client:
        stats = client.info("commandstats")
    return sum(
        int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval")
    )


class TestFromSettings:
    @pytest.mark.parametrize(
        ("url", "problem"),
        [
            ("redis://a:1,b:2", "several hosts"),
            ("redis://host:70000", "port must be 1-65535"),
            ("redis://host:6379/x", "database must be a number"),
            ("redis://host?socket_timeout=1", "unknown query parameter 'socket_timeout'"),
            ("redis://host?ssl_cert_reqs=none", "needs a TLS scheme"),
            ("rediss://host?ssl_cert_reqs=maybe", "ssl_cert_reqs must be one of"),
            ("redis+sentinel://host:26379", "/<master-name>"),
            ("redis+cluster://a:7000,b:7001/2", "only database 0"),
            ("unix://host/tmp/redis.sock", "takes no host"),
            ("http://host:6379", "scheme must be one of"),
            ("redis://:@host", "password after ':' is empty"),
        ],
    )
    def test_malformed_url_raises_value_error_naming_the_problem(
        self, url: str, problem: str
    ) -> None:
        """A bad URL fails at construction with ValueError that names the URL and the problem."""
        settings = RedisSettings(
            url, pool_size=4, connect_timeout=1, timeout=1, expiration_jitter=0
        )
        with pytest.raises(ValueError, match="invalid Redis URL") as raised:
            RedisCounterStore.from_settings(settings)
        assert problem in str(raised.value)

    def test_error_message_masks_the_password(self) -> None:
        """The ValueError for a bad URL never shows the password."""
        settings = RedisSettings(
            "redis://user:hunter2@host:1,other:2", 4, 1, 1, expiration_jitter=0
        )
        with pytest.raises(ValueError, match="invalid Redis URL") as raised:
            RedisCounterStore.from_settings(settings)
        assert "hunter2" not in str(raised.value)
        assert "user:***@" in str(raised.value)


@pytest.mark.redis
class TestCounting:
    async def test_counts_accumulate_and_come_back_in_order(
        self, redis_server: RedisServer, make_store: StoreFactory
    ) -> None:
        """Each call returns every counter's value after its hit, in the order of the hits."""
        store = make_store(redis_server.url)
        assert await store.increment([hit("a"), hit("b", 5), hit("c", 2)]) == [1, 5, 2]
        assert await store.increment([hit("c", 3), hit("a")]) == [5, 2]

    async def test_same_key_twice_in_one_call_is_applied_in_order(
        self, redis_server: RedisServer, make_store: StoreFactory
    ) -> None:
        """Two hits on one key in one call see each other: the second count includes the first."""
        store = make_store(redis_server.url)
        assert await store.increment([hit("k", 2), hit("other"), hit("k", 3)]) == [2, 1, 5]

    async def test_addend_zero_reads_without_counting(
        self, redis_server: RedisServer, make_store: StoreFactory
    ) -> None:
        """An addend of 0 returns the current count (0 for a new window) and adds nothing."""
        store = make_store(redis_server.url)
        assert await store.increment([hit("k", 0)]) == [0]
        assert await store.increment([hit("k", 4)]) == [4]
        assert await store.increment([hit("k", 0), hit("k", 0)]) == [4, 4]

    async def test_empty_call_returns_empty_list(
        self, redis_server: RedisServer, make_store: StoreFactory
    ) -> None:
        """No hits, no counts."""
        assert await make_store(redis_server.url).increment([]) == []

    async def test_ttl_is_set_when_the_window_starts(
        self, redis_server: RedisServer, make_store: StoreFactory
    ) -> None:
        """A new counter expires after the hit's TTL; a check-only hit sets it too."""
        store = make_store(redis_server.url)
        await store.increment([hit("counted", 1, ttl=60), hit("checked", 0, ttl=30)])
        with redis_server.client() as client:
            assert 58 <= client.ttl("counted") <= 60
            assert 28 <= client.ttl("checked") <= 30

    async def test_ttl_includes_jitter_within_bounds(
        self, redis_server: RedisServer, make_store: StoreFactory
    ) -> None:
        """With jitter J each new counter's TTL is between ttl and ttl + J, and they differ."""
        store = make_store(redis_server.url, jitter=100, rng=Random(7))
        keys = [f"k{i}" for i in range(20)]
        await store.increment([hit(key, ttl=60) for key in keys])
        with redis_server.client() as client:
            ttls = [client.ttl(key) for key in keys]
        assert all(58 <= ttl <= 160 for ttl in ttls)
        assert len(set(ttls)) > 5

    async def test_later_hits_do_not_push_the_ttl_forward(
        self, redis_server: RedisServer, make_store: StoreFactory
    ) -> None:
        """Only the hit that starts the window sets the TTL; later ones leave it alone."""
        store = make_store(redis_server.url)
        await store.increment([hit("k", ttl=10)])
        await store.increment([hit("k", ttl=1000), hit("k", 2, ttl=1000)])
        with redis_server.client() as client:
            assert 0 < client.ttl("k") <= 10

    async def test_script_is_loaded_again_after_script_flush(
        self, redis_server: RedisServer, make_store: StoreFactory
    ) -> None:
        """A server that forgot the script (NOSCRIPT) still counts, each hit exactly once."""
        store = make_store(redis_server.url)
        assert await store.increment([hit("k")]) == [1]
        with redis_server.client() as client:
            client.script_flush()
        assert await store.increment([hit("k")]) == [2]

    async def test_ping_succeeds_on_a_live_server(
        self, redis_server: RedisServer, make_store: StoreFactory
    ) -> None:
        """ping returns quietly when the server answers."""
        await make_store(redis_server.url).ping()


@pytest.mark.redis
class TestCoalescing:
    async def test_concurrent_increments_give_exact_total_and_distinct_counts(
        self, redis_server: RedisServer, make_store: StoreFactory
    ) -> None:
        """200 concurrent calls on one key each get a different count, 1 to 200."""
        store = make_store(redis_server.url)
        results = await asyncio.gather(*(store.increment([hit("k")]) for _ in range(200)))
        assert sorted(r[0] for r in results) == list(range(1, 201))
        with redis_server.client() as client:
            assert client.get("k") == b"200"

    async def test_concurrent_calls_share_round_trips(
        self, redis_server: RedisServer, make_store: StoreFactory
    ) -> None:
        """A burst of calls is carried by far fewer script runs than calls."""
        store = make_store(redis_server.url)
        await store.ping()
        with redis_server.client() as client:
            client.config_resetstat()
        await asyncio.gather(*(store.increment([hit(f"k{i % 7}")]) for i in range(200)))
        assert script_calls(redis_server) <= 20

    async def test_each_concurrent_caller_gets_its_own_counts(
        self, redis_server: RedisServer, make_store: StoreFactory
    ) -> None:
        """Coalesced calls with several hits each get exactly their own slice, in order."""
        store = make_store(redis_server.url)
        calls = [[hit(f"own{i}", i + 1), hit("shared"), hit(f"own{i}", 1)] for i in range(50)]
        results = await asyncio.gather(*(store.increment(call) for call in calls))
        for i, (own, shared, own_again) in enumerate(results):
            assert (own, own_again) == (i + 1, i + 2)
            assert 1 <= shared <= 50
        assert sorted(r[1] for r in results) == list(range(1, 51))

    async def test_burst_waits_for_a_pool_of_one(
        self, redis_server: RedisServer, make_store: StoreFactory
    ) -> None:
        """With one connection, 100 concurrent calls queue for it and all succeed."""
        store = make_store(redis_server.url, pool_size=1)
        results = await asyncio.gather(*(store.increment([hit("k")]) for _ in range(100)))
        assert sorted(r[0] for r in results) == list(range(1, 101))

    async def test_cancelled_caller_does_not_disturb_the_others(
        self, redis_server: RedisServer, make_store: StoreFactory
    ) -> None:
        """Cancelling one waiting call leaves the other calls' answers intact."""
        store = make_store(redis_server.url, pool_size=1)
        tasks = [asyncio.create_task(store.increment([hit(f"k{i}")])) for i in range(20)]
        await asyncio.sleep(0)
        tasks[10].cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(done[10], asyncio.CancelledError)
        assert [d for i, d in enumerate(done) if i != 10] == [[1]] * 19


@pytest.mark.redis
class TestFailures:
    async def test_paused_server_fails_within_the_timeout_then_recovers(
        self, private_redis: RedisServer, make_store: StoreFactory
    ) -> None:
        """A hung server turns into CounterStoreError in about the timeout; counting resumes."""
        store = make_store(private_redis.url, timeout=0.3)
        assert await store.increment([hit("k")]) == [1]
        private_redis.pause()
        try:
            started = time.monotonic()
            with pytest.raises(CounterStoreError, match="timed out"):
                await store.increment([hit("k")])
            assert time.monotonic() - started < 5 * 0.3
            with pytest.raises(CounterStoreError):
                await store.ping()
        finally:
            private_redis.resume()
        counts = await store.increment([hit("k")])
        assert counts[0] >= 2

    async def test_queued_calls_answer_within_their_own_deadline(
        self, private_redis: RedisServer, make_store: StoreFactory
    ) -> None:
        """Calls queued behind a hung round trip fail within the timeout of their own
        arrival, not of the round trip's start plus their own (up to 2x before)."""
        timeout = 0.4
        store = make_store(private_redis.url, timeout=timeout, pool_size=1)
        assert await store.increment([hit("k")]) == [1]
        private_redis.pause()
        try:

            async def timed(delay: float) -> float:
                await asyncio.sleep(delay)
                started = time.monotonic()
                with pytest.raises(CounterStoreError, match="timed out"):
                    await store.increment([hit("k")])
                return time.monotonic() - started

            # the first call holds the one round trip; the others queue behind it
            took = await asyncio.gather(*(timed(0.05 * i) for i in range(8)))
        finally:
            private_redis.resume()
        assert max(took) < timeout + 0.2, took  # before: up to twice the timeout
        await asyncio.sleep(0.1)
        assert (await store.increment([hit("k")]))[0] >= 2

    async def test_stopped_server_fails_increment_and_ping(
        self, private_redis: RedisServer, make_store: StoreFactory
    ) -> None:
        """Once the server is gone, increment and ping raise CounterStoreError."""
        store = make_store(private_redis.url)
        assert await store.increment([hit("k")]) == [1]
        private_redis.stop()
        with pytest.raises(CounterStoreError, match="redis"):
            await store.increment([hit("k")])
        with pytest.raises(CounterStoreError):
            await store.ping()

    async def test_every_concurrent_caller_gets_the_error(
        self, private_redis: RedisServer, make_store: StoreFactory
    ) -> None:
        """When the server is gone, each of many concurrent callers gets a CounterStoreError."""
        store = make_store(private_redis.url)
        private_redis.stop()
        results = await asyncio.gather(
            *(store.increment([hit("k")]) for _ in range(30)), return_exceptions=True
        )
        assert all(isinstance(r, CounterStoreError) for r in results)
        assert len({id(r) for r in results}) == 30

    async def test_closed_store_refuses_calls(
        self, redis_server: RedisServer, make_store: StoreFactory
    ) -> None:
        """After close, increment and ping raise CounterStoreError."""
        store = make_store(redis_server.url)
        await store.increment([hit("k")])
        await store.close()
        with pytest.raises(CounterStoreError, match="closed"):
            await store.increment([hit("k")])
        with pytest.raises(CounterStoreError, match="closed"):
            await store.ping()


@pytest.mark.redis
class TestConnecting:
    async def test_password_in_url_authenticates(self, make_store: StoreFactory) -> None:
        """A server with requirepass counts for a URL carrying its password, and only then."""
        server = start_redis(password="s3cret/pass")
        try:
            good = make_store(server.url.replace("s3cret/pass", "s3cret%2Fpass"))
            assert await good.increment([hit("k")]) == [1]
            wrong = make_store(f"redis://:nope@127.0.0.1:{server.port}")
            with pytest.raises(CounterStoreError):
                await wrong.increment([hit("k")])
            missing = make_store(f"redis://127.0.0.1:{server.port}")
            with pytest.raises(CounterStoreError):
                await missing.increment([hit("k")])
        finally:
            server.stop()

    async def test_unix_socket_url_counts(self, make_store: StoreFactory) -> None:
        """A unix:// URL reaches the server over its socket."""
        server = start_redis(unix_socket=True)
        try:
            store = make_store(f"unix://{server.socket_path}?db=2")
            assert await store.increment([hit("k", 3)]) == [3]
            with server.client() as client:
                client.select(2)
                assert client.get("k") == b"3"
        finally:
            server.stop()

    async def test_database_number_in_url_is_used(
        self, redis_server: RedisServer, make_store: StoreFactory
    ) -> None:
        """redis://host:port/3 counts in database 3."""
        store = make_store(f"{redis_server.url}/3")
        await store.increment([hit("in-db-3")])
        with redis_server.client() as client:
            assert client.get("in-db-3") is None
            client.select(3)
            assert client.get("in-db-3") == b"1"


@pytest.mark.redis
class TestSentinel:
    async def test_sentinel_url_reaches_the_master_and_counts(
        self, redis_sentinel: SentinelServer, make_store: StoreFactory
    ) -> None:
        """redis+sentinel://host/mymaster counts on the master that Sentinel names."""
        store = make_store(redis_sentinel.url)
        assert await store.increment([hit("k", 2), hit("k")]) == [2, 3]
        await store.ping()
        with redis_sentinel.master.client() as client:
            assert client.get("k") == b"3"
            assert 0 < client.ttl("k") <= 60

    async def test_sentinel_burst_waits_for_a_pool_of_one(
        self, redis_sentinel: SentinelServer, make_store: StoreFactory
    ) -> None:
        """Through Sentinel with one connection, 100 concurrent calls all succeed exactly."""
        store = make_store(redis_sentinel.url, pool_size=1)
        results = await asyncio.gather(*(store.increment([hit("k")]) for _ in range(100)))
        assert sorted(r[0] for r in results) == list(range(1, 101))

    async def test_unknown_master_name_raises_counter_store_error(
        self, redis_sentinel: SentinelServer, make_store: StoreFactory
    ) -> None:
        """A master name the Sentinels do not know is a CounterStoreError, not a hang."""
        store = make_store(f"redis+sentinel://127.0.0.1:{redis_sentinel.port}/nosuchmaster")
        with pytest.raises(CounterStoreError):
            await store.increment([hit("k")])
