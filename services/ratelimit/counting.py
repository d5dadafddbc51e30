"""Where a hit is counted: exactly in the store, or from leased quota.

A limit says ``counting: leased`` (a ``RateLimitPolicy``'s ``counting``, or the
``rate_limit`` extension key of a descriptor config) to be counted from leases where a
store is shared: ``Router`` sends such hits to the ``LeasedCounter`` (Redis off the
per-request path; ``leased_counter.py``) and every other hit to the exact store, one
round trip per call. Both count the same keys, so a limit that one replica leases and
another counts exactly still has one counter. A per-second limit is always counted
exactly: prefetching is poor for short windows (``LeasePolicy.worth_leasing``).

Without a shared store (one process counting in memory) there is nothing to lease
from: every hit is exact, and ``leased`` changes nothing.

A call whose hits go to both stores waits on the event loop from the start
(``require_loop``): neither part may be counted twice by a call that moves to the loop
half-way (``services/inline.py``).
"""

from collections.abc import Sequence

from services.inline import require_loop
from services.ratelimit.leased_counter import LeasedCounter
from services.ratelimit.store import CounterStore, Hit


class Router:
    """A ``CounterStore`` over an exact store and, optionally, a leased counter."""

    def __init__(self, exact: CounterStore, leased: LeasedCounter | None = None) -> None:
        self.exact = exact
        self.leased = leased
        self.name = exact.name

    def _is_leased(self, hit: Hit) -> bool:
        leased = self.leased
        return leased is not None and hit.leased and leased.pool.policy.worth_leasing(hit.window)

    async def increment(self, hits: Sequence[Hit]) -> list[int]:
        """See ``CounterStore.increment``: each hit counted where its limit says."""
        leased = self.leased
        if leased is None:
            return await self.exact.increment(hits)
        routed = [self._is_leased(hit) for hit in hits]
        if all(routed):
            return await leased.increment(hits)
        if not any(routed):
            return await self.exact.increment(hits)
        require_loop("counting in two stores")
        exact_hits = [hit for hit, to_lease in zip(hits, routed, strict=True) if not to_lease]
        leased_hits = [hit for hit, to_lease in zip(hits, routed, strict=True) if to_lease]
        exact_counts = iter(await self.exact.increment(exact_hits))
        leased_counts = iter(await leased.increment(leased_hits))
        return [next(leased_counts) if to_lease else next(exact_counts) for to_lease in routed]

    async def ping(self) -> None:
        await self.exact.ping()

    async def close(self) -> None:
        """Give leased units back first (they go to the store), then close the store."""
        try:
            if self.leased is not None:
                await self.leased.close()
        finally:
            await self.exact.close()
