"""Counters known to be over their limit, answered without the store.

Like envoyproxy/ratelimit's local cache: once a counter goes over its limit in a
window, further hits on it in that window are OVER_LIMIT without a round trip
(and without counting). Bounded: the oldest entries go first. Thread-safe: the gRPC
server's handler threads share it.
"""

import threading
from collections import OrderedDict

from services.clock import Clock


class OverLimitCache:
    """Remembers up to ``max_entries`` over-limit counter keys until their window ends."""

    def __init__(self, clock: Clock, max_entries: int) -> None:
        if max_entries <= 0:
            raise ValueError("max_entries must be positive")
        self._clock = clock
        self._max = max_entries
        self._entries: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def is_over(self, key: str) -> bool:
        expires = self._entries.get(key)
        if expires is None:
            return False
        if expires <= self._clock.now():
            self._entries.pop(key, None)  # another thread may have dropped it already
            return False
        return True

    def mark_over(self, key: str, ttl: int) -> None:
        with self._lock:
            self._entries[key] = self._clock.now() + ttl
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
