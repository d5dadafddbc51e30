"""How large a lease is, and when leases are refilled, returned, or not used at all.

``lease_size`` is ``clamp(ceil(rate * horizon), min_lease, max_lease)``, capped at
``max(1, floor(remaining / (safety * processes)))``:

* ``rate`` is the units one process admitted for the key over the last ``rate_window``
  seconds; Mixer's prefetch used the count over the last 1 s, at least
  ``min_prefetch_amount`` 10 (istio/proxy ``quota_prefetch.cc``);
* ``remaining`` is the limit less the counter as the authority last reported it;
* ``processes`` (P) is how many processes take leases from the same authority, and
  ``safety`` (k) how far below the remaining their leases together stay: P leases of at
  most ``remaining / (k * P)`` strand at most ``remaining / k`` units (near the limit,
  where every lease is at least 1, at most P).

Far from the limit a lease covers ``horizon`` seconds of demand, so a busy key costs one
grant per ``horizon`` per process; once fewer than ``2 * k * P`` units remain, every lease
is one unit, and each hit is one capped reservation: exact at the limit.
"""

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LeasePolicy:
    """How large leases are, and when they are refilled or returned."""

    processes: int = 1  # P: processes taking leases from the same authority
    safety: int = 2  # k: P leases together hold at most remaining / k
    min_lease: int = 10  # s_min (Mixer's min_prefetch_amount)
    max_lease: int = 1000  # s_max
    horizon: float = 1.0  # seconds of demand a lease should cover
    rate_window: float = 1.0  # the demand estimate looks back this far (predict_window)
    refill_below: float = 0.5  # refill when held < refill_below * wanted size
    idle_release: float = 2.0  # a lease untouched this long is returned (release_idle)
    min_window: int = 60  # shorter windows are counted exactly (worth_leasing)
    sweep_interval: float = 1.0  # how often ended windows are dropped
    spent_recheck: float = 1.0  # a counter found spent is refused locally this long

    def __post_init__(self) -> None:
        for name in ("processes", "safety", "min_lease", "max_lease"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_lease < self.min_lease:
            raise ValueError("max_lease must be at least min_lease")
        if self.horizon <= 0 or self.rate_window <= 0 or self.spent_recheck < 0:
            raise ValueError("horizon and rate_window must be positive, spent_recheck not negative")
        if not 0 <= self.refill_below <= 1:
            raise ValueError("refill_below must be between 0 and 1")

    def lease_size(self, rate: float, remaining: int) -> int:
        """Units to hold for a key admitting ``rate`` units/s with ``remaining`` left."""
        wanted = min(max(math.ceil(rate * self.horizon), self.min_lease), self.max_lease)
        return min(wanted, max(1, remaining // (self.safety * self.processes)))

    def worth_leasing(self, window_seconds: int) -> bool:
        """Whether a limit with this window should be leased rather than counted exactly.

        Prefetch is accurate for long windows and poor for per-second ones (Mixer's own
        tests: up to 33 % rate error at 20/s); those go to the exact store.
        """
        return window_seconds >= self.min_window
