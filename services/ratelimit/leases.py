"""Leased quota held by one process: spend granted units locally, ask for more early.

Mixer's quota prefetch (istio/proxy ``quota_prefetch.cc``), without its optimistic
pre-grant and its fail-open. A process takes a block of a counter's remaining quota from
a ``LeaseAuthority`` (one Redis script, or its parent process) and answers hits from it
until it is spent or its window ends. This module is the pure, synchronous half: no
awaits and no I/O, one ``threading.Lock``, so gRPC handler threads and the event loop
can call it at once. ``leased_counter.LeasedCounter`` does the asking.

**Lease size** (``lease_policy.LeasePolicy.lease_size``): about ``horizon`` seconds of
the demand this process saw for the key over the last ``rate_window`` seconds, capped so
that P processes together hold at most ``remaining / k``; 1 unit near the limit. The
pool keeps the demand estimate (the units it admitted, in ten time slots) and the
remaining (``limit`` less the counter as the authority last reported it).

**Refill early.** A take that leaves fewer than ``refill_below`` x the wanted size asks
the caller to top the lease up to that size in the background (``Taken.refill``), at
most one refill per key at a time, so a steady stream does not run dry between grants.

**Closing.** A grant smaller than asked (or one that leaves the counter at its limit)
means the counter is nearly spent: the key is marked *closing*, misses then ask for
exactly the shortfall (``addend - units held``), there are no background refills, and
each decision is one exact round trip. A later grant that shows room again (returned
units: at least ``2 * safety * processes`` left) opens the key again.

**Spent.** A grant that leaves the counter at or over its limit means nothing is left
for anyone until units come back (returned idle leases). For ``spent_recheck`` seconds
(1 s) after it, a hit the lease cannot cover is refused here, without asking: over
quota, a stream of refusals would otherwise cost one authority round trip each. Units
another process returns meanwhile reach this process that much later (``docs/
architecture.md``, "Leased quota: the bound").

**Windows.** A lease carries its window's end and dies there: a take at or after it
finds nothing, and its units are dropped, never spent in the next window (the counter
key names the window as well, ``windows.counter_key``).

**All or nothing.** A hit of ``addend`` units is answered from the lease only if the
lease holds all of them; ``take_hits`` answers every hit of a call or none, with no side
effect when it answers none.

**Value after a hit.** A leased answer must look like ``CounterStore.increment``'s (the
counter's value after the hit; over the limit means over), so ``limiter.judge`` works
unchanged. It is ``known - held``: the counter as the authority last reported it (which
includes every unit granted to anyone by then) less the units this process still holds
after the hit, capped at ``limit`` for an admitted hit. Units other processes hold count
as used, so the remaining it implies is what this process could still admit as of its
last grant. "Over" stays exact: a hit is over exactly when no unit could be granted for
it, and then it reads ``max(limit, known) + addend`` (more than the limit, as the exact
path would report). A check-only hit (addend 0) reads ``known - held``.

The bound this gives is in ``docs/architecture.md`` ("Leased quota: the bound"): units
are only spent if granted, so nothing is over-admitted while the authority answers;
under-admission is at most the units left in leases when the window ends.
"""

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from services.ratelimit.lease_authority import Grant
from services.ratelimit.lease_policy import LeasePolicy
from services.ratelimit.store import Hit

_SLOTS = 10  # the rate window is kept in this many time slots (Mixer: 20)


@dataclass(frozen=True, slots=True)
class Taken:
    """A hit answered locally."""

    count: int  # the counter's value after the hit, as ``CounterStore.increment`` returns
    refill: int = 0  # > 0: ask the authority for this many units in the background


@dataclass(slots=True)
class _Lease:
    """What one process holds of one window counter."""

    window_end: float
    units: int = 0  # granted, not yet spent
    known: int = 0  # the highest count the authority reported (all grants, everyone's)
    closing: bool = False
    refilling: bool = False
    spent_until: float = 0.0  # until then, refuse what the units held cannot cover
    last_used: float = 0.0
    slot_ids: list[int] = field(default_factory=lambda: [-1] * _SLOTS)
    slot_units: list[int] = field(default_factory=lambda: [0] * _SLOTS)


def _denied(lease: _Lease | None, limit: int, addend: int) -> int:
    """The value a refused hit reads: over the limit, as the exact path would answer."""
    return max(limit, lease.known if lease is not None else 0) + addend


class LeasePool:
    """Units this process holds, per counter key; thread-safe, never awaits."""

    def __init__(self, policy: LeasePolicy) -> None:
        self.policy = policy
        self._leases: dict[str, _Lease] = {}
        self._lock = threading.Lock()
        self._slot_seconds = policy.rate_window / _SLOTS
        self._next_sweep = -math.inf

    # --- the request path ----------------------------------------------------------

    def take(
        self, key: str, addend: int, limit: int, window_end: float, now: float
    ) -> Taken | None:
        """Answer one hit from the lease, or None: not enough units held, ask the authority.

        A hit that no grant could ever satisfy (``addend > limit``) is answered here,
        refused, without asking.
        """
        with self._lock:
            self._maybe_sweep(now)
            lease = self._live(key, now)
            if addend > limit:
                return Taken(_denied(lease, limit, addend))
            if lease is None or lease.units < addend:
                if lease is not None and addend and lease.spent_until > now:
                    return Taken(_denied(lease, limit, addend))  # spent: refused here
                return None
            return self._spend(lease, addend, limit, now)

    def take_hits(self, hits: Sequence[Hit], now: float) -> list[Taken] | None:
        """Answer every hit from leases, in order, or none of them (and change nothing)."""
        with self._lock:
            self._maybe_sweep(now)
            needed: dict[str, int] = {}
            refused: set[int] = set()  # hits answered "over" without spending
            for position, hit in enumerate(hits):
                lease = self._live(hit.key, now)
                if hit.addend > hit.limit:
                    refused.add(position)
                    continue
                need = needed.get(hit.key, 0) + hit.addend
                if lease is None or lease.units < need:
                    if lease is not None and hit.addend and lease.spent_until > now:
                        refused.add(position)  # spent: refused here, as ``take`` does
                        continue
                    return None
                needed[hit.key] = need
            answers: list[Taken] = []
            for position, hit in enumerate(hits):
                lease = self._leases.get(hit.key)
                if position in refused:
                    answers.append(Taken(_denied(lease, hit.limit, hit.addend)))
                else:
                    assert lease is not None  # checked above
                    answers.append(self._spend(lease, hit.addend, hit.limit, now))
            return answers

    def ask(self, key: str, addend: int, limit: int, now: float) -> int:
        """How many units to ask the authority for, after ``take`` found too few.

        The shortfall when closing; else enough to hold the wanted lease size after
        the hit (``max(addend, size) - held``). 0 for a check-only hit: a read.
        """
        if addend <= 0:
            return 0
        with self._lock:
            lease = self._live(key, now)
            held = lease.units if lease is not None else 0
            if lease is not None and lease.closing:
                return max(addend - held, 1)
            return max(addend, self._size(lease, limit, now)) - held  # > 0: held < addend

    def add_grant(
        self,
        key: str,
        grant: Grant,
        ask: int,
        limit: int,
        window_end: float,
        now: float,
        *,
        spend: int = 0,
        refill: bool = False,
    ) -> int:
        """Add ``grant`` (the answer to asking for ``ask``) and spend ``spend`` from it.

        Returns the value after the hit of ``spend`` units: within the limit when the
        lease then held all of them (they are spent, all together), over it when not
        (nothing is spent; granted units stay for later hits). ``refill`` marks the
        answer to a background refill (another may start after it). A grant that
        arrives after its window ended still answers its hit, which belongs to that
        window, but what is left of it is dropped.
        """
        with self._lock:
            lease = self._live(key, now)
            if lease is None:
                lease = self._leases[key] = _Lease(window_end, last_used=now)
            lease.units += grant.granted
            lease.known = max(lease.known, grant.count)
            if refill:
                lease.refilling = False
            room = limit - grant.count
            if grant.granted < ask or room <= 0:
                lease.closing = True
            elif lease.closing and room >= 2 * self.policy.safety * self.policy.processes:
                lease.closing = False  # units came back: lease again
            if room <= 0:  # nothing left for anyone until units come back
                lease.spent_until = min(lease.window_end, now + self.policy.spent_recheck)
            else:
                lease.spent_until = 0.0
            if spend > lease.units or spend > limit:
                count = _denied(lease, limit, spend)
            else:
                count = self._spend(lease, spend, limit, now, may_refill=False).count
            if lease.window_end <= now:
                del self._leases[key]
            return count

    def refill_failed(self, key: str) -> None:
        """A background refill did not happen: let a later take start another."""
        with self._lock:
            lease = self._leases.get(key)
            if lease is not None:
                lease.refilling = False

    # --- returning units ----------------------------------------------------------

    def take_idle(self, now: float) -> list[tuple[str, int]]:
        """Remove leases untouched for ``idle_release`` seconds; returns (key, units) to
        give back. Ended windows are dropped (their units are worth nothing)."""
        idle_before = now - self.policy.idle_release
        returned: list[tuple[str, int]] = []
        with self._lock:
            for key, lease in list(self._leases.items()):
                if lease.window_end <= now:
                    del self._leases[key]
                elif lease.last_used <= idle_before and not lease.refilling:
                    del self._leases[key]
                    if lease.units:
                        returned.append((key, lease.units))
        return returned

    def take_everything(self, now: float) -> list[tuple[str, int]]:
        """Empty the pool (shutdown); returns (key, units) of live windows to give back."""
        with self._lock:
            leases, self._leases = self._leases, {}
        return [(k, x.units) for k, x in leases.items() if x.units and x.window_end > now]

    # --- reading (tests, metrics) --------------------------------------------------

    def held(self, key: str) -> int:
        """Units held for ``key`` (0 if none)."""
        with self._lock:
            lease = self._leases.get(key)
            return lease.units if lease is not None else 0

    def outstanding(self) -> int:
        """Units held for every key: what would be stranded if the windows ended now."""
        with self._lock:
            return sum(lease.units for lease in self._leases.values())

    def closing(self, key: str) -> bool:
        """Whether ``key`` is near its limit: misses ask for exactly what they need."""
        with self._lock:
            lease = self._leases.get(key)
            return lease is not None and lease.closing

    # --- internals (the lock is held) ------------------------------------------------

    def _live(self, key: str, now: float) -> _Lease | None:
        """The lease for ``key`` if its window has not ended; an ended one is dropped."""
        lease = self._leases.get(key)
        if lease is not None and lease.window_end <= now:
            del self._leases[key]
            return None
        return lease

    def _spend(
        self, lease: _Lease, addend: int, limit: int, now: float, *, may_refill: bool = True
    ) -> Taken:
        lease.units -= addend
        lease.last_used = now
        count = lease.known - lease.units
        if addend:
            count = min(count, limit)
            slot = int(now // self._slot_seconds)
            index = slot % _SLOTS
            if lease.slot_ids[index] != slot:
                lease.slot_ids[index] = slot
                lease.slot_units[index] = 0
            lease.slot_units[index] += addend
        if lease.closing or lease.refilling or not may_refill:
            return Taken(count)
        size = self._size(lease, limit, now)
        if lease.units >= self.policy.refill_below * size:
            return Taken(count)
        lease.refilling = True
        return Taken(count, size - lease.units)

    def _size(self, lease: _Lease | None, limit: int, now: float) -> int:
        """The lease size the policy wants for this key now."""
        if lease is None:
            return self.policy.lease_size(0.0, limit)
        current = int(now // self._slot_seconds)
        units = sum(
            n
            for slot, n in zip(lease.slot_ids, lease.slot_units, strict=True)
            if current - _SLOTS < slot <= current
        )
        return self.policy.lease_size(units / self.policy.rate_window, limit - lease.known)

    def _maybe_sweep(self, now: float) -> None:
        """Drop leases whose window ended, at most once per ``sweep_interval``."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.policy.sweep_interval
        for key in [k for k, lease in self._leases.items() if lease.window_end <= now]:
            del self._leases[key]
