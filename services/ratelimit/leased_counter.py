"""Counting from leased quota: a ``CounterStore`` that asks its authority only for leases.

``LeasedCounter`` puts a ``leases.LeasePool`` (this process's units, pure and
thread-safe) in front of a ``lease_authority.LeaseAuthority`` (Redis, or the parent
process). For each hit it answers the counter's value after the hit, as
``CounterStore.increment`` does, so ``limiter.judge`` and the service work unchanged;
what that value means for a leased answer is in ``leases`` ("Value after a hit").

* ``try_now(hits)`` is the fast path: every hit answered from held units, on the calling
  thread (a gRPC handler thread or the event loop), or ``None`` with nothing changed so
  the caller can go to the loop and call ``increment``.
* ``increment(hits)`` answers what it can from leases and acquires the rest: one
  ``acquire`` per key that is short (keys concurrently, hits on one key in order). While
  an acquisition for a key is in flight, other misses on that key wait for it instead of
  asking too (unless the key is closing: near the limit each miss asks for exactly its
  own shortfall). An acquisition runs as its own task, so a caller that gives up does
  not lose the units granted: they land in the pool. Before its first wait it calls
  ``before_wait`` (``services.inline.require_loop`` in a threaded server), so a call
  started off the loop stops there without a side effect.
* Background refills (``leases``, "Refill early") run as tasks on the loop; one asked
  for on a handler thread is handed to the loop with ``call_soon_threadsafe``.
* ``release_idle()`` returns units of leases nobody used for ``idle_release`` seconds
  (call it every second or so); ``close()`` returns every unit still held.

Failure mode: when the authority fails (``CounterStoreError``), hits the pool can answer
are still answered from units already granted; every other hit fails with that error,
and the service answers UNAVAILABLE, leaving the decision to Envoy's failure mode, as
with the exact stores. Nothing is ever admitted without a granted unit, so the outage
cannot over-admit; a failed background refill is dropped and the next miss asks again.
"""

import asyncio
import math
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import structlog

from services.clock import Clock
from services.ratelimit.lease_authority import LeaseAuthority
from services.ratelimit.leases import LeasePool
from services.ratelimit.store import CounterStoreError, Hit

log = structlog.get_logger("mixerless.ratelimit")


def _retrieve(task: "asyncio.Task[Any]") -> None:
    """Mark a finished task's exception as seen: its caller may have gone (cancelled)."""
    if not task.cancelled():
        task.exception()


class LeasedCounter:
    """Hits answered from leases, leases taken from ``authority``."""

    def __init__(
        self,
        pool: LeasePool,
        authority: LeaseAuthority,
        clock: Clock,
        *,
        before_wait: Callable[[str], None] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        """``before_wait(what)`` is called before the first suspension of a call (it may
        raise to stop the call there); ``loop`` runs refills asked for off the loop
        (else the loop of the first ``increment``)."""
        self.name = f"leased-{authority.name}"
        self.pool = pool
        self._authority = authority
        self._clock = clock
        self._before_wait = before_wait
        self._loop = loop
        self._inflight: dict[str, asyncio.Task[Any]] = {}  # key -> its acquisition
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    # --- counting -------------------------------------------------------------------

    def try_now(self, hits: Sequence[Hit]) -> list[int] | None:
        """Every hit's value after it, answered from held units; None (and nothing
        changed) when some hit needs the authority. Safe on any thread."""
        if self._closed:
            return None
        now = self._clock.now()
        answers = self.pool.take_hits(hits, now)
        if answers is None:
            return None
        for hit, taken in zip(hits, answers, strict=True):
            if taken.refill:
                self._schedule_refill(hit, taken.refill, math.floor(now) + hit.ttl)
        return [taken.count for taken in answers]

    async def increment(self, hits: Sequence[Hit]) -> list[int]:
        """See ``CounterStore.increment``; raises ``CounterStoreError`` when a hit needed
        the authority and it failed."""
        if self._closed:
            raise CounterStoreError("leased counter is closed")
        answered = self.try_now(hits)
        if answered is not None:
            return answered
        if self._before_wait is not None:
            self._before_wait("a lease from the authority")
        self._loop = asyncio.get_running_loop()
        by_key: dict[str, list[int]] = {}
        for position, hit in enumerate(hits):
            by_key.setdefault(hit.key, []).append(position)
        counts = [0] * len(hits)
        groups = [self._count_in_order(hits, positions, counts) for positions in by_key.values()]
        if len(groups) == 1:
            await groups[0]
            return counts
        outcomes = await asyncio.gather(*groups, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return counts

    async def _count_in_order(
        self, hits: Sequence[Hit], positions: list[int], counts: list[int]
    ) -> None:
        for position in positions:
            counts[position] = await self._count(hits[position])

    async def _count(self, hit: Hit) -> int:
        """One hit: from the pool, after waiting for an acquisition in flight, or by
        acquiring what it lacks."""
        waited = False
        while True:
            now = self._clock.now()
            window_end = math.floor(now) + hit.ttl
            taken = self.pool.take(hit.key, hit.addend, hit.limit, window_end, now)
            if taken is not None:
                if taken.refill:
                    self._start_refill(hit, taken.refill, window_end)
                return taken.count
            inflight = self._inflight.get(hit.key)
            if inflight is not None and not waited and not self.pool.closing(hit.key):
                waited = True
                await asyncio.wait([inflight])
                continue
            ask = self.pool.ask(hit.key, hit.addend, hit.limit, now)
            task = self._spawn(hit.key, self._acquire(hit, ask, window_end))
            count: int = await asyncio.shield(task)
            return count

    async def _acquire(self, hit: Hit, ask: int, window_end: float) -> int:
        grant = await self._authority.acquire(hit.key, ask, hit.limit, hit.ttl)
        return self.pool.add_grant(
            hit.key, grant, ask, hit.limit, window_end, self._clock.now(), spend=hit.addend
        )

    # --- background refills ----------------------------------------------------------

    def _schedule_refill(self, hit: Hit, ask: int, window_end: float) -> None:
        """Start a refill on the loop, from whichever thread asked for it."""
        # asyncio's public low-level accessor: None off the loop, without raising.
        if asyncio._get_running_loop() is not None:
            self._start_refill(hit, ask, window_end)
            return
        loop = self._loop
        try:
            if loop is None:
                raise RuntimeError("no event loop yet")
            loop.call_soon_threadsafe(self._start_refill, hit, ask, window_end)
        except RuntimeError:  # no loop, or it is closed: the next miss asks instead
            self.pool.refill_failed(hit.key)

    def _start_refill(self, hit: Hit, ask: int, window_end: float) -> None:
        if self._closed or hit.key in self._inflight:
            self.pool.refill_failed(hit.key)  # the acquisition in flight tops it up
            return
        self._spawn(hit.key, self._refill(hit, ask, window_end))

    async def _refill(self, hit: Hit, ask: int, window_end: float) -> None:
        try:
            grant = await self._authority.acquire(hit.key, ask, hit.limit, hit.ttl)
        except Exception as exc:
            self.pool.refill_failed(hit.key)
            if not isinstance(exc, CounterStoreError):
                log.exception("lease refill failed", key=hit.key)
            return
        except BaseException:
            self.pool.refill_failed(hit.key)
            raise
        now = self._clock.now()
        self.pool.add_grant(hit.key, grant, ask, hit.limit, window_end, now, refill=True)

    def _spawn(self, key: str, work: Coroutine[Any, Any, Any]) -> "asyncio.Task[Any]":
        """Run ``work`` as a task that outlives its caller; the key's acquisition in
        flight unless one already is."""
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_retrieve)
        if key not in self._inflight:
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        return task

    def _forget(self, key: str, task: "asyncio.Task[Any]") -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]

    # --- returning units ------------------------------------------------------------

    async def release_idle(self) -> int:
        """Give back the units of leases idle for ``idle_release`` seconds; returns how
        many the authority took back (a failed return leaves them stranded, no more)."""
        return await self._give_back(self.pool.take_idle(self._clock.now()))

    async def settle(self) -> None:
        """Wait until no acquisition or refill is in flight."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    async def release_all(self) -> int:
        """Wait for acquisitions in flight, then give back every unit held."""
        await self.settle()
        return await self._give_back(self.pool.take_everything(self._clock.now()))

    async def _give_back(self, leases: list[tuple[str, int]]) -> int:
        if not leases:
            return 0
        outcomes = await asyncio.gather(
            *(self._authority.release(key, units) for key, units in leases),
            return_exceptions=True,
        )
        returned = 0
        for outcome in outcomes:
            if isinstance(outcome, int):
                returned += outcome
            elif not isinstance(outcome, CounterStoreError):
                log.error("returning leased units failed", error=repr(outcome))
        return returned

    # --- the rest of CounterStore -------------------------------------------------------

    async def ping(self) -> None:
        if self._closed:
            raise CounterStoreError("leased counter is closed")
        await self._authority.ping()

    async def close(self) -> None:
        """Give back every unit held, then close the authority."""
        if self._closed:
            return
        self._closed = True
        try:
            await self.release_all()
        finally:
            await self._authority.close()
