"""A bounded, thread-safe decision cache with per-key single flight.

The authz server answers Check on grpcio's sync thread pool, so this cache is made for
threads: one ``threading.Lock`` guards its dicts and is never held while a decision is
computed. What it must and must not do comes from the prior art
(quota-leases-and-decision-caches.md, "Decision cache"):

* **Keys are compared in full.** Entries live in a dict keyed by the caller's tuple
  (``reads.ReadSet.key``); there is no hash-only or joined-string key to collide.
* **Bounded, second-chance FIFO (CLOCK).** At most ``max_entries`` entries. Check
  traffic is skewed: a few hot (token, route) keys carry most requests, and most misses
  are one-off keys (new paths, query strings, tokens seen once). Plain FIFO would evict a
  hot key after every ``max_entries`` insertions of one-offs; LRU keeps it, but moves the
  entry on every hit, which hashes the key a second time (a key holds tokens and paths:
  about 200 ns a hash). CLOCK keeps LRU's effect at FIFO's hit cost: a hit only marks
  the entry used; eviction takes the oldest entry, and one marked used since it was
  stored goes back to the end, unmarked, instead of out.
* **TTL per entry** = min(configured ``ttl``, the ``ttl_cap`` the caller computed for
  that value, e.g. until its token's ``exp``), shortened by up to ``jitter`` of itself
  so entries made together do not all expire together. An expired entry is never served.
* **Not cached:** a value whose ``ttl_cap`` is None (errors, rejected tokens: a passing
  failure must not become a lasting one), and anything whose TTL comes out at 0 or less.
* **Single flight.** On a miss, the first caller of a key computes it; callers of the
  same key meanwhile wait (``threading.Event``, at most ``wait_timeout`` seconds) and
  get its value. If the leader raises, produces a value that may not be cached, or is
  too slow, the waiters compute for themselves: a waiter can be delayed, never stuck.
  A leader that asks for its own key again (re-entrancy) computes at once.
* **Dropped on reload** by its owner: keys start with the plan they were made for
  (``reads.ReadSet.scope``), so entries of a replaced policy set can never match, and
  ``clear`` (or a new cache per config) frees them.

Time is an argument (``now``, monotonic seconds), so tests decide what time it is.
Counters are plain ints that metrics code reads (``hits``, ``misses``, ``evictions``,
``expirations``, ``coalesced``, ``abandoned``).
"""

import math
import random
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, NamedTuple, TypeVar, cast

__all__ = ["Computed", "DecisionCache"]

V = TypeVar("V")

DEFAULT_MAX_ENTRIES = 10_000  # Mixer's check cache default
DEFAULT_TTL = 10.0
DEFAULT_WAIT_TIMEOUT = 1.0


class Computed(NamedTuple, Generic[V]):
    """A computed value and how long it may be served (seconds); None: never cache it."""

    value: V
    ttl_cap: float | None = math.inf


class _Entry:
    """A cached value, when it stops being served, and whether it was used since stored
    (or since eviction last passed it over)."""

    __slots__ = ("expires", "used", "value")

    def __init__(self, expires: float, value: object) -> None:
        self.expires = expires
        self.value = value
        self.used = False


class _Flight:
    """One computation in progress, which callers of the same key wait for."""

    __slots__ = ("done", "leader", "shared", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.leader = threading.get_ident()
        self.shared = False  # True once ``value`` is a cacheable result waiters may take
        self.value: object = None


class DecisionCache(Generic[V]):
    """Values by key, bounded (CLOCK), with per-entry TTLs and single flight per key."""

    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        ttl: float = DEFAULT_TTL,
        *,
        wait_timeout: float = DEFAULT_WAIT_TIMEOUT,
        jitter: float = 0.0,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        if not 0.0 <= jitter < 1.0:
            raise ValueError("jitter must be in [0, 1)")
        self.max_entries = max_entries
        self.ttl = ttl
        self._wait_timeout = wait_timeout
        self._jitter = jitter
        self._rand = rand
        self._lock = threading.Lock()
        # insertion order, oldest first: eviction's queue (popitem is O(1) at either end)
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._flights: dict[Hashable, _Flight] = {}
        self.hits = 0  # served from an entry
        self.misses = 0  # no fresh entry (waiters included)
        self.evictions = 0  # dropped to stay within max_entries
        self.expirations = 0  # found expired and dropped
        self.coalesced = 0  # misses answered by another caller's computation
        self.abandoned = 0  # computations that raised

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, now: float) -> V | None:
        """The fresh value for ``key``, or None (counted as a hit or a miss)."""
        with self._lock:
            entry = self._fresh(key, now)
            return None if entry is None else cast(V, entry.value)

    def put(self, key: Hashable, value: V, now: float, ttl_cap: float | None = math.inf) -> None:
        """Keep ``value`` for min(ttl, ``ttl_cap``) seconds from ``now``; a ``ttl_cap`` of
        None, or a TTL of 0 or less, keeps nothing (and drops an older entry of ``key``)."""
        with self._lock:
            self._store(key, value, now, ttl_cap)

    def get_or_compute(self, key: Hashable, compute: Callable[[], Computed[V]], now: float) -> V:
        """The value for ``key``: cached, another caller's fresh computation of the same
        key, or ``compute()`` (run without the lock held; its exception propagates)."""
        with self._lock:
            entry = self._fresh(key, now)
            if entry is not None:
                return cast(V, entry.value)
            flight = self._flights.get(key)
            if flight is None:
                flight = self._flights[key] = _Flight()
                leading = True
            else:
                leading = False
        if leading:
            return self._lead(key, flight, compute, now)
        waited = flight.leader != threading.get_ident() and flight.done.wait(self._wait_timeout)
        if waited and flight.shared:
            with self._lock:
                self.coalesced += 1
            return cast(V, flight.value)  # _lead set it to a V before sharing it
        # The leader failed, may not share its value, is too slow, or is this very thread.
        computed = compute()
        if computed.ttl_cap is not None:
            self.put(key, computed.value, now, computed.ttl_cap)
        return computed.value

    def _fresh(self, key: Hashable, now: float) -> "_Entry | None":
        """``key``'s entry if it is fresh (lock held), counted as a hit or a miss; an
        expired one is dropped."""
        entry = self._entries.get(key)
        if entry is not None:
            if now < entry.expires:
                entry.used = True
                self.hits += 1
                return entry
            del self._entries[key]
            self.expirations += 1
        self.misses += 1
        return None

    def clear(self) -> None:
        """Drop every entry (e.g. when the policy set is replaced); counters are kept."""
        with self._lock:
            self._entries.clear()

    def _lead(
        self, key: Hashable, flight: _Flight, compute: Callable[[], Computed[V]], now: float
    ) -> V:
        try:
            computed = compute()
        except BaseException:
            with self._lock:
                self._land(key, flight)
                self.abandoned += 1
            flight.done.set()  # the waiters compute for themselves
            raise
        with self._lock:
            self._land(key, flight)
            if computed.ttl_cap is not None:
                flight.value = computed.value
                flight.shared = True
                self._store(key, computed.value, now, computed.ttl_cap)
        flight.done.set()  # after the flight is gone, so a later miss leads anew
        return computed.value

    def _land(self, key: Hashable, flight: _Flight) -> None:
        """End ``flight`` (lock held)."""
        if self._flights.get(key) is flight:
            del self._flights[key]

    def _store(self, key: Hashable, value: V, now: float, ttl_cap: float | None) -> None:
        """Insert or replace ``key`` (lock held), then evict down to ``max_entries``."""
        ttl = 0.0 if ttl_cap is None else min(self.ttl, ttl_cap)
        self._entries.pop(key, None)  # a replaced entry goes to the back of the queue
        if ttl <= 0:
            return
        if self._jitter:
            ttl -= ttl * self._jitter * self._rand()
        self._entries[key] = _Entry(now + ttl, value)
        while len(self._entries) > self.max_entries:
            oldest, entry = self._entries.popitem(last=False)
            if now >= entry.expires:
                self.expirations += 1
            elif entry.used:  # a second chance: to the back, unmarked
                entry.used = False
                self._entries[oldest] = entry
            else:
                self.evictions += 1
