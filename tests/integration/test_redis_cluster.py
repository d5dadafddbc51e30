"""RedisCounterStore against a real 3-master Redis Cluster."""

import asyncio

import pytest

from services.ratelimit.store import CounterStoreError, Hit
from tests.integration.conftest import StoreFactory
from tests.redis_servers import RedisCluster, free_port

pytestmark = pytest.mark.redis


def hit(key: str, addend: int = 1, ttl: int = 60) -> Hit:
    return Hit(key=key, addend=addend, ttl=ttl, limit=100)


def spread_keys(cluster: RedisCluster, count: int = 12) -> list[str]:
    """Keys in ``count`` different slots, covering every node of the cluster."""
    with cluster.client() as client:
        keys = [f"spread:{i}" for i in range(count)]
        slots = {client.keyslot(key) for key in keys}
        nodes = {client.get_node_from_key(key).name for key in keys}
    assert len(slots) == count
    assert len(nodes) == len(cluster.nodes)
    return keys


class TestClusterCounting:
    async def test_keys_in_different_slots_come_back_in_input_order(
        self, redis_cluster: RedisCluster, make_store: StoreFactory
    ) -> None:
        """One call with keys on every node returns each key's count at its own position."""
        keys = spread_keys(redis_cluster)
        store = make_store(redis_cluster.url)
        first = await store.increment([hit(key, i + 1) for i, key in enumerate(keys)])
        assert first == [i + 1 for i in range(len(keys))]
        second = await store.increment([hit(key, 10) for key in reversed(keys)])
        assert second == [i + 11 for i in reversed(range(len(keys)))]

    async def test_counts_land_on_the_cluster(
        self, redis_cluster: RedisCluster, make_store: StoreFactory
    ) -> None:
        """The counts returned are the counts stored, each with the window's TTL."""
        keys = spread_keys(redis_cluster)
        store = make_store(redis_cluster.url)
        await store.increment([hit(key, 3, ttl=40) for key in keys])
        with redis_cluster.client() as client:
            assert [client.get(key) for key in keys] == [b"3"] * len(keys)
            assert all(38 <= client.ttl(key) <= 40 for key in keys)

    async def test_same_key_twice_and_addend_zero_in_one_call(
        self, redis_cluster: RedisCluster, make_store: StoreFactory
    ) -> None:
        """Repeated keys apply in order and an addend of 0 only reads, across slots."""
        a, b = spread_keys(redis_cluster)[:2]
        store = make_store(redis_cluster.url)
        assert await store.increment([hit(a, 2), hit(b, 0), hit(a, 3), hit(b)]) == [2, 0, 5, 1]

    async def test_hash_tagged_keys_share_a_slot_and_count(
        self, redis_cluster: RedisCluster, make_store: StoreFactory
    ) -> None:
        """Keys with one {tag} go to one slot as one group and still count separately."""
        keys = [f"{{tenant-7}}:limit:{i}" for i in range(5)]
        with redis_cluster.client() as client:
            assert len({client.keyslot(key) for key in keys}) == 1
        store = make_store(redis_cluster.url)
        assert await store.increment([hit(key, i) for i, key in enumerate(keys)]) == [0, 1, 2, 3, 4]
        assert await store.increment([hit(keys[4]), hit(keys[0])]) == [5, 1]

    async def test_script_is_loaded_again_after_script_flush(
        self, redis_cluster: RedisCluster, make_store: StoreFactory
    ) -> None:
        """Nodes that forgot the script (NOSCRIPT) still count every hit exactly once."""
        keys = spread_keys(redis_cluster)
        store = make_store(redis_cluster.url)
        assert await store.increment([hit(key) for key in keys]) == [1] * len(keys)
        for node in redis_cluster.nodes:
            with node.client() as client:
                client.script_flush()
        assert await store.increment([hit(key) for key in keys]) == [2] * len(keys)

    async def test_ping_reaches_every_node(
        self, redis_cluster: RedisCluster, make_store: StoreFactory
    ) -> None:
        """ping returns quietly when the cluster answers."""
        await make_store(redis_cluster.url).ping()


class TestClusterConcurrency:
    async def test_concurrent_increments_give_exact_total_and_distinct_counts(
        self, redis_cluster: RedisCluster, make_store: StoreFactory
    ) -> None:
        """200 concurrent calls spread over nodes each get a distinct count per key."""
        keys = spread_keys(redis_cluster, count=4)
        store = make_store(redis_cluster.url)
        results = await asyncio.gather(
            *(store.increment([hit(keys[i % 4]), hit("{hot}")]) for i in range(200))
        )
        for k, key in enumerate(keys):
            mine = sorted(result[0] for i, result in enumerate(results) if i % 4 == k)
            assert mine == list(range(1, 51)), key
        assert sorted(result[1] for result in results) == list(range(1, 201))

    async def test_burst_waits_for_a_pool_of_one(
        self, redis_cluster: RedisCluster, make_store: StoreFactory
    ) -> None:
        """With one connection per node, 100 concurrent calls wait their turn and all succeed."""
        keys = spread_keys(redis_cluster, count=6)
        store = make_store(redis_cluster.url, pool_size=1)
        calls = [[hit(key) for key in keys] for _ in range(100)]
        results = await asyncio.gather(*(store.increment(call) for call in calls), store.ping())
        counts = [result for result in results if result is not None]
        assert sorted(c[0] for c in counts) == list(range(1, 101))


class TestClusterFailures:
    async def test_unreachable_cluster_raises_counter_store_error(
        self, make_store: StoreFactory
    ) -> None:
        """Startup nodes nobody listens on make increment and ping raise CounterStoreError."""
        store = make_store(f"redis+cluster://127.0.0.1:{free_port()}", timeout=0.3)
        with pytest.raises(CounterStoreError):
            await store.increment([hit("k")])
        with pytest.raises(CounterStoreError):
            await store.ping()
