"""The rate limit decision for one ShouldRateLimit call, independent of gRPC.

Matching and judging are pure (``match``, ``limiter``); this module strings them
together around the two stateful parts, the counter store and the optional local
over-limit cache, and records per-rule metrics.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.clock import Clock
from services.metrics import Metrics
from services.ratelimit import limiter
from services.ratelimit.local_cache import OverLimitCache
from services.ratelimit.match import Match, find_limit
from services.ratelimit.model import (
    Code,
    DescriptorStatus,
    LimitRequest,
    LimitResult,
    RateLimitConfig,
)
from services.ratelimit.store import CounterStore, CounterStoreError, Hit
from services.ratelimit.windows import counter_key, seconds_until_reset, window_start


class InvalidRequestError(Exception):
    """The request cannot be answered as sent (gRPC INVALID_ARGUMENT)."""


class UnavailableError(Exception):
    """No answer can be given right now (gRPC UNAVAILABLE); Envoy's failure mode decides."""


@dataclass(frozen=True, slots=True)
class RateLimitOptions:
    """Service-wide switches, named after envoyproxy/ratelimit's settings."""

    cache_key_prefix: str = ""
    near_limit_ratio: float = 0.8
    shadow_mode: bool = False
    quota_mode: bool = False
    response_headers: bool = False
    header_names: tuple[str, str, str] = (
        "RateLimit-Limit",
        "RateLimit-Remaining",
        "RateLimit-Reset",
    )
    dynamic_metadata: bool = False


class RateLimitService:
    """Answers ShouldRateLimit calls against the config ``current_config`` returns."""

    def __init__(
        self,
        current_config: Callable[[], RateLimitConfig | None],
        store: CounterStore,
        clock: Clock,
        metrics: Metrics,
        options: RateLimitOptions,
        local_cache: OverLimitCache | None = None,
    ) -> None:
        self._current_config = current_config
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._options = options
        self._local_cache = local_cache
        # labels() costs ~10 µs; a dict hit costs ~0.1 µs. Bounded by rules x outcomes
        # (per value only for rules that opt into detailed_metric).
        self._hit_counters: dict[tuple[str, str, limiter.Outcome], Any] = {}

    async def should_rate_limit(self, request: LimitRequest) -> LimitResult:
        """Decide ``request``; raises ``InvalidRequestError`` or ``UnavailableError``."""
        if not request.domain:
            raise InvalidRequestError("rate limit domain must not be empty")
        if not request.descriptors:
            raise InvalidRequestError("rate limit descriptor list must not be empty")
        config = self._current_config()
        if config is None:
            raise UnavailableError("no rate limit configuration loaded")

        options = self._options
        now = int(self._clock.now())
        matches = limiter.drop_replaced(
            [find_limit(config, request.domain, d) for d in request.descriptors]
        )
        statuses: list[DescriptorStatus] = [limiter.NO_LIMIT] * len(matches)
        pending: list[tuple[int, Match, int, int]] = []  # index, match, addend, reset
        hits: list[Hit] = []
        # Metrics are recorded once the store has answered: a store that must wait raises
        # NeedsLoop off the event loop, and the call then runs again (services/inline.py).
        outcomes: list[tuple[Match, limiter.Outcome, int]] = []
        cache = self._local_cache
        for index, match in enumerate(matches):
            if match is None:
                continue
            limit = match.limit
            if limit.unlimited:
                statuses[index] = limiter.UNLIMITED
                continue
            addend = limiter.hits_addend(request, request.descriptors[index])
            seconds = limit.unit.seconds
            reset = seconds_until_reset(now, seconds)
            key = counter_key(
                options.cache_key_prefix, match.counter, seconds, window_start(now, seconds)
            )
            if cache is not None and cache.is_over(key):
                verdict = limiter.judge(
                    limit,
                    0,
                    reset,
                    near_limit_ratio=options.near_limit_ratio,
                    from_local_cache=True,
                )
                statuses[index] = verdict.status
                outcomes.append((match, verdict.outcome, addend))
                continue
            pending.append((index, match, addend, reset))
            hits.append(Hit(key, addend, reset, limit.requests_per_unit, seconds, limit.leased))

        if hits:
            try:
                counts = await self._store.increment(hits)
            except CounterStoreError as exc:
                self._metrics.backend_errors.labels(self._store.name).inc()
                raise UnavailableError(f"{self._store.name} counter store failed: {exc}") from exc
            for (index, match, addend, reset), count, hit in zip(
                pending, counts, hits, strict=True
            ):
                verdict = limiter.judge(
                    match.limit, count, reset, near_limit_ratio=options.near_limit_ratio
                )
                statuses[index] = verdict.status
                if verdict.over and cache is not None:
                    cache.mark_over(hit.key, reset)
                outcomes.append((match, verdict.outcome, addend))

        if request.domain not in config.domains:
            self._metrics.ratelimit_unknown_domain.inc()
        for match, outcome, addend in outcomes:
            self._record(request.domain, match, outcome, addend)

        overall = limiter.overall_code(statuses, quota_mode=options.quota_mode)
        if options.shadow_mode and overall is Code.OVER_LIMIT:
            self._metrics.ratelimit_global_shadow.inc()
            overall = Code.OK
        headers: tuple[tuple[str, str], ...] = ()
        if options.response_headers:
            closest = limiter.closest_status(statuses, quota_mode=options.quota_mode)
            headers = limiter.limit_headers(closest, options.header_names)
        metadata = limiter.dynamic_metadata(request, matches) if options.dynamic_metadata else None
        return LimitResult(overall, tuple(statuses), headers, metadata)

    def _record(self, domain: str, match: Match, outcome: limiter.Outcome, addend: int) -> None:
        if not addend:
            return
        key = (domain, match.stat_key, outcome)
        counter = self._hit_counters.get(key)
        if counter is None:
            counter = self._metrics.ratelimit_hits.labels(domain, match.stat_key, outcome.value)
            self._hit_counters[key] = counter
        counter.inc(addend)
