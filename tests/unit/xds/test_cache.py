"""SnapshotCache: publish, read, generations, and wake-ups without polling."""

import asyncio

from services import envoy_api as api
from services.xds.cache import SnapshotCache
from services.xds.snapshot import LISTENER, Snapshot


def snapshot(listener: str) -> Snapshot:
    return Snapshot.build({LISTENER: {listener: api.Listener(name=listener)}})


class TestSetGet:
    def test_get_returns_last_published(self) -> None:
        """get() answers the snapshot last set for the key, None for an unknown key."""
        cache = SnapshotCache()
        first, second = snapshot("a"), snapshot("b")
        cache.set("gw", first)
        cache.set("gw", second)
        assert cache.get("gw") is second
        assert cache.get("other") is None

    def test_keys_sorted(self) -> None:
        """keys() lists every published key, sorted."""
        cache = SnapshotCache()
        cache.set("b", snapshot("x"))
        cache.set("a", snapshot("x"))
        assert cache.keys() == ["a", "b"]

    def test_every_set_moves_the_generation(self) -> None:
        """Each set() gives its key a new, larger generation; unknown keys are at 0."""
        cache = SnapshotCache()
        assert cache.generation("gw") == 0
        cache.set("gw", snapshot("a"))
        first = cache.generation("gw")
        cache.set("other", snapshot("a"))
        cache.set("gw", snapshot("a"))
        assert 0 < first < cache.generation("gw")
        assert cache.generation("other") not in (0, first, cache.generation("gw"))


class TestWatch:
    def test_watcher_called_for_its_key_only(self) -> None:
        """A key's watcher is called on every set() of that key, not of others."""
        cache = SnapshotCache()
        seen: list[str] = []
        cache.watch("gw", seen.append)
        cache.set("gw", snapshot("a"))
        cache.set("other", snapshot("a"))
        cache.set("gw", snapshot("b"))
        assert seen == ["gw", "gw"]

    def test_all_keys_watcher(self) -> None:
        """A watcher of None is called on a set() of any key."""
        cache = SnapshotCache()
        seen: list[str] = []
        cache.watch(None, seen.append)
        cache.set("gw", snapshot("a"))
        cache.set("other", snapshot("a"))
        assert seen == ["gw", "other"]

    def test_cancelled_watcher_not_called(self) -> None:
        """The function watch() returns stops the calls; cancelling twice is harmless."""
        cache = SnapshotCache()
        seen: list[str] = []
        cancel = cache.watch("gw", seen.append)
        cancel()
        cancel()
        cache.set("gw", snapshot("a"))
        assert seen == []


class TestWaitForChange:
    async def test_returns_at_once_when_already_changed(self) -> None:
        """A generation older than the key's current one returns immediately."""
        cache = SnapshotCache()
        cache.set("gw", snapshot("a"))
        assert await asyncio.wait_for(cache.wait_for_change("gw", 0), 0.1) == 1

    async def test_wakes_on_set_of_the_key(self) -> None:
        """A waiter wakes on the next set() of its key, not on other keys."""
        cache = SnapshotCache()
        cache.set("gw", snapshot("a"))
        since = cache.generation("gw")
        waiter = asyncio.create_task(cache.wait_for_change("gw", since))
        await asyncio.sleep(0.01)
        cache.set("other", snapshot("a"))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        cache.set("gw", snapshot("b"))
        assert await asyncio.wait_for(waiter, 0.1) == cache.generation("gw") != since

    async def test_cancelled_waiter_leaves_no_watcher(self) -> None:
        """Cancelling a waiter removes its watch."""
        cache = SnapshotCache()
        waiter = asyncio.create_task(cache.wait_for_change("gw", 0))
        await asyncio.sleep(0.01)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert cache._watchers == {}
