"""Window counters in memory, each freed when its window ends, at most ``max_counters``.

The in-memory store and the parent's lease authority keep their counts here. Without a
cap, a long window keyed on values a client chooses (a month-long limit per path, per
header) grows one counter per distinct value until the window ends. So the table holds
at most ``max_counters``: when a new counter would pass the cap, the ended ones go
first, then the live ones nearest the end of their window: of all the counts, those
have the least time left to matter. Each eviction forgets a count (that key starts
again from 0, so it may admit up to one more window's worth); ``evicted`` counts them,
for the ``mixerless_counters_evicted_total`` metric.

Not thread-safe: the stores call it under their own lock.
"""

import heapq

DEFAULT_MAX_COUNTERS = 1_000_000  # about 150 MB of counters


class WindowCounters:
    """Counts by key, each with the second its window ends."""

    def __init__(self, max_counters: int, *, sweep_interval: float = 1.0) -> None:
        if max_counters < 1:
            raise ValueError("max_counters must be at least 1")
        self.max_counters = max_counters
        self._sweep_interval = sweep_interval
        self._next_sweep: float | None = None  # monotonic seconds; None: not yet started
        self.evicted = 0  # live counters dropped to make room, ever
        self._counts: dict[str, int] = {}
        self._ends: dict[str, int] = {}  # key -> the second its window ends
        self._ending: dict[int, list[str]] = {}  # second -> keys ending then
        self._seconds: list[int] = []  # a heap of the seconds in _ending

    def __len__(self) -> int:
        return len(self._counts)

    def value(self, key: str, now: int) -> int:
        """The count of ``key``: 0 when it has none, or its window has ended."""
        end = self._ends.get(key)
        if end is None or end <= now:
            return 0
        return self._counts[key]

    def ends(self, key: str, now: int) -> int | None:
        """The second ``key``'s live window ends; None when it has no live counter."""
        end = self._ends.get(key)
        return end if end is not None and end > now else None

    def add(self, key: str, amount: int, now: int, ttl: int) -> int:
        """Add ``amount`` to ``key``'s count, first making a counter that ends ``ttl``
        seconds from ``now`` if it has no live one; returns the count after."""
        end = self._ends.get(key)
        if end is not None and end <= now:  # ended, not swept yet
            self._forget(key)
            end = None
        if end is None:
            if len(self._counts) >= self.max_counters:
                self._make_room(now)
            end = now + max(ttl, 1)
            self._ends[key] = end
            bucket = self._ending.get(end)
            if bucket is None:
                self._ending[end] = bucket = []
                heapq.heappush(self._seconds, end)
            bucket.append(key)
            count = amount
        else:
            count = self._counts[key] + amount
        self._counts[key] = count
        return count

    def set_live(self, key: str, count: int, now: int) -> bool:
        """Set a live counter's count (a lease given back); False if it has none."""
        if self.ends(key, now) is None:
            return False
        self._counts[key] = count
        return True

    def sweep_if_due(self, now: int, monotonic: float) -> None:
        """``sweep(now)`` once every ``sweep_interval`` seconds of ``monotonic`` time."""
        due = self._next_sweep
        if due is not None and monotonic < due:
            return
        if due is not None:
            self.sweep(now)
        self._next_sweep = monotonic + self._sweep_interval

    def sweep(self, now: int) -> None:
        """Free every counter whose window has ended."""
        seconds = self._seconds
        while seconds and seconds[0] <= now:
            self._drop_second(heapq.heappop(seconds))

    def clear(self) -> None:
        self._counts.clear()
        self._ends.clear()
        self._ending.clear()
        self._seconds.clear()

    def _make_room(self, now: int) -> None:
        """Free the ended counters; if none were, the live one nearest its end."""
        self.sweep(now)
        seconds = self._seconds
        while len(self._counts) >= self.max_counters and seconds:
            bucket = self._ending[seconds[0]]
            key = bucket.pop()
            if self._ends.get(key) == seconds[0]:  # still that counter
                self._forget(key)
                self.evicted += 1
            if not bucket:
                del self._ending[heapq.heappop(seconds)]

    def _drop_second(self, second: int) -> None:
        for key in self._ending.pop(second, ()):
            if self._ends.get(key) == second:  # not re-made with a later end since
                self._forget(key)

    def _forget(self, key: str) -> None:
        del self._counts[key]
        del self._ends[key]
