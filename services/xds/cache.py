"""The snapshots being served, one per key (a gateway name), and who to wake when one changes.

``set`` publishes a snapshot and wakes, at once, every watcher of that key and every
watcher of all keys: there is no polling, so a connected Envoy is sent a change as soon
as its stream's writer runs. Every ``set`` gets a new generation number (one counter for
the whole cache), so "has it changed since I looked?" is an integer comparison.

The cache lives on one event loop: call ``set`` and ``watch`` from that loop's thread
(the policy watcher swaps state on the loop, so it does).
"""

import asyncio
from collections.abc import Callable

from services.xds.snapshot import Snapshot

Watcher = Callable[[str], None]


class SnapshotCache:
    """The current ``Snapshot`` per key, with change notification."""

    def __init__(self) -> None:
        self._snapshots: dict[str, Snapshot] = {}
        self._generations: dict[str, int] = {}
        self._last_generation = 0
        # key (None: every key) -> watchers, each under a registration id
        self._watchers: dict[str | None, dict[int, Watcher]] = {}
        self._next_watch_id = 0

    def set(self, key: str, snapshot: Snapshot) -> None:
        """Publish ``snapshot`` for ``key`` and wake its watchers (and all-key watchers)."""
        self._last_generation += 1
        self._snapshots[key] = snapshot
        self._generations[key] = self._last_generation
        for scope in (key, None):
            for watcher in list(self._watchers.get(scope, {}).values()):
                watcher(key)

    def get(self, key: str) -> Snapshot | None:
        """The snapshot published for ``key``, or None."""
        return self._snapshots.get(key)

    def generation(self, key: str) -> int:
        """The generation of ``key``'s snapshot; 0 before the first ``set``."""
        return self._generations.get(key, 0)

    def keys(self) -> list[str]:
        """Every key with a snapshot, sorted."""
        return sorted(self._snapshots)

    def watch(self, key: str | None, watcher: Watcher) -> Callable[[], None]:
        """Call ``watcher(key)`` on every ``set`` of ``key`` (None: of any key).

        The watcher runs inside ``set``, so it must only schedule work (put on a queue,
        set an event). Returns the function that cancels the watch.
        """
        watch_id = self._next_watch_id
        self._next_watch_id += 1
        self._watchers.setdefault(key, {})[watch_id] = watcher

        def cancel() -> None:
            watchers = self._watchers.get(key, {})
            watchers.pop(watch_id, None)
            if not watchers:
                self._watchers.pop(key, None)

        return cancel

    async def wait_for_change(self, key: str, since_generation: int) -> int:
        """Return ``key``'s generation as soon as it differs from ``since_generation``."""
        if self.generation(key) == since_generation:
            changed = asyncio.Event()
            cancel = self.watch(key, lambda _key: changed.set())
            try:
                await changed.wait()  # every set() of the key moves its generation
            finally:
                cancel()
        return self.generation(key)
