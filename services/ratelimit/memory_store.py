"""Counters in this process's memory: the embedded default, and the tests' store.

Counts are per process (two replicas each allow the full limit). The store is the
in-memory lease authority's exact counting (``MemoryLeaseAuthority.increment``: the
same bounded ``window_counters`` table, the same lock), so a process without Redis and
a parent serving its workers count alike: all work happens without awaiting, under a
lock, so concurrent requests (on the event loop or on the gRPC server's threads) never
interleave inside one increment; windows are freed when they end, and at most
``max_counters`` are held (past that, the counters nearest the end of their window are
evicted and counted).
"""

from services.ratelimit.memory_authority import MemoryLeaseAuthority


class InMemoryCounterStore(MemoryLeaseAuthority):
    """Window counters in a bounded table, each dropped once its window has ended."""
